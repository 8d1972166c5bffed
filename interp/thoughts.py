"""Inspecting continuous thoughts (Coconut): what each thought decodes to, layer by layer; how
much of it is the search frontier; how much the answer attends to it; what patching it does.

```python
from interp import thoughts
reasoner, tokenizer, staged = thoughts.load("data/checkpoints/coconut_graph_coconut")
batch = thoughts.latent_batch(staged, "test", n=16)               # prompt <bot> slots <eot> answer
run = thoughts.pass_caches(reasoner, batch.input_ids)              # one activation dict per pass
lens = thoughts.thought_lens(reasoner, batch.input_ids, k=5)       # (batch, thought, layer, k)
mass = thoughts.frontier_mass(lens.probs[:, :, -1], batch.examples, tokenizer)   # graph task
attn = thoughts.answer_attention(reasoner, batch)                  # (batch, layer, head, slot)
curve = thoughts.answer_prob_by_thoughts(reasoner, staged, "test", n=16)
patched = thoughts.patch_thought(reasoner, batch, source=other_batch, slot=2)
```

Positions. A batch in the last-stage layout is `prompt <bot> <latent> x n <eot> answer <eos>`;
thought j (j = 0 .. n - 1) is fed into slot j and is the final residual at the position
before it (`<bot>` for j = 0). "Thought n" here is the last slot's own output, which is not fed
(`<eot>` follows) but is the model's state after n thoughts, so lens and frontier results
cover j = 0 .. n. In the graph task the chain of thought's step k+1 starts with the node
reached after k steps, so thought j is where the model would name the node at depth j: the
frontier of a breadth-first search after j expansions (`frontier_mass`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int

from models.thoughts import LatentPlan, LatentReasoner

from .tasks.base import Example

__all__ = ["load", "latent_batch", "LatentBatch", "pass_caches", "PassCaches", "thought_lens", "ThoughtLens",
           "frontier_mass", "FRONTIER_CATEGORIES", "answer_attention", "answer_prob_by_thoughts", "patch_thought",
           "timeline", "deciding_answer_offset", "showcase", "best_donor"]


# ============================================================================ loading, inputs
def load(path, device: Union[str, torch.device] = "cpu", task_overrides: Optional[dict] = None):
    """(reasoner, tokenizer, staged task) of a checkpoint trained with `train.trainer: coconut`.
    `task_overrides` change task options, e.g. `{"n_train": 0}`: test and val examples are
    drawn before train, so they stay the same while loading skips building the train split."""
    from . import checkpoint as ckpt_lib
    from .tasks import make_task
    from .training.coconut import StagedTask, coconut_options

    model, tokenizer = ckpt_lib.load(path, device=device)
    _, meta = ckpt_lib.load_config(path)
    train = ((meta.get("training") or {}).get("run_config") or {}).get("train") or {}
    if train.get("trainer") != "coconut":
        raise ValueError(f"{path}: not a Coconut run (train.trainer={train.get('trainer')!r}); "
                         "train one with train.trainer: coconut")
    options = coconut_options(train.get("coconut"))
    staged = StagedTask(make_task(**{**meta["task"], **(task_overrides or {})}), options)
    model.eval()
    return LatentReasoner(model, staged.latent_id, thought=options["thought"]), tokenizer, staged


@dataclass
class LatentBatch:
    """Examples in the last-stage layout, right-padded; positions are per row."""

    input_ids: Int[torch.Tensor, "batch pos"]
    labels: Int[torch.Tensor, "batch pos"]
    examples: list[Example]  # the task's own examples (meta: graph, answer, ...)
    bot: Int[torch.Tensor, "batch"]  # position of <bot>
    eot: Int[torch.Tensor, "batch"]  # position of <eot> (its logits predict the first answer token)
    answer: Int[torch.Tensor, "batch"]  # the tracked answer token's id (default: the first answer token)
    n_latents: int
    answer_pos: Optional[Int[torch.Tensor, "batch"]] = None  # its position (default: eot + 1)

    def __post_init__(self) -> None:
        if self.answer_pos is None:
            self.answer_pos = self.eot + 1

    @property
    def reader(self) -> Int[torch.Tensor, "batch"]:
        """The position whose logits predict the tracked answer token (teacher-forced)."""
        return self.answer_pos - 1

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def latent_batch(staged, split: str = "test", n: int = 16, n_latents: Optional[int] = None, start: int = 0,
                 device: Union[str, torch.device] = "cpu", answer_offset: Union[int, Sequence[int]] = 0) -> LatentBatch:
    """Examples `start .. start + n` of `split` as `prompt <bot> <latent> x n_latents <eot> answer
    <eos>` (default `n_latents`: the last stage's count; every step latent). `answer_offset`
    (one, or one per example) picks the tracked answer token: 0 is the first."""
    from .training.coconut import final_stage, n_latent_slots

    o = staged.o
    parts = staged.parts(split)[start : start + n]
    if not parts:
        raise ValueError(f"split {split!r} has no examples from {start}")
    offsets = [answer_offset] * len(parts) if isinstance(answer_offset, int) else list(answer_offset)
    if len(offsets) != len(parts):
        raise ValueError(f"{len(offsets)} answer offsets for {len(parts)} examples")
    rows, bots, eots, answers, where = [], [], [], [], []
    tok = staged.tokenizer
    for p, off in zip(parts, offsets):
        if not 0 <= off < len(p.answer[0]):
            raise ValueError(f"answer offset {off} is outside the answer ({len(p.answer[0])} tokens)")
        k = n_latents if n_latents is not None else n_latent_slots(p.n_steps, final_stage(o), o)[1]
        ids = p.prompt[0] + [tok.bot_token_id] + [staged.latent_id] * k + [tok.eot_token_id] + p.answer[0]
        rows.append(ids)
        bots.append(len(p.prompt[0]))
        eots.append(len(p.prompt[0]) + 1 + k)
        answers.append(p.answer[0][off])
        where.append(eots[-1] + 1 + off)
    counts = {e - b - 1 for b, e in zip(bots, eots)}
    if len(counts) != 1:
        raise ValueError(f"examples have different latent counts {sorted(counts)}; pass n_latents=")
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id or 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    labels = torch.full_like(ids, -100)
    for i, (e, r) in enumerate(zip(eots, rows)):
        labels[i, e + 1 : len(r)] = ids[i, e + 1 : len(r)]
    dev = torch.device(device)
    return LatentBatch(ids.to(dev), labels.to(dev), [p.example for p in parts], torch.tensor(bots), torch.tensor(eots),
                       torch.tensor(answers), counts.pop(), torch.tensor(where))


# ============================================================================ per-pass caches
@dataclass
class PassCaches:
    """Activations of one latent forward, per pass: `acts[p][name]` is what hook `name` saw in
    pass p (positions = the pass's columns, `plan.passes[p]`, in the aligned layout). The final
    norm runs once, after the passes, on the caller's layout: its hooks are in `final`."""

    logits: Float[torch.Tensor, "batch pos d_vocab"]
    thoughts: Float[torch.Tensor, "batch slot d_model"]
    plan: LatentPlan
    acts: list[dict[str, torch.Tensor]]
    final: dict[str, torch.Tensor]

    def at(self, name: str, column: int) -> torch.Tensor:
        """`name`'s activation at aligned `column` (batch, ...), from the pass that computed it
        (position axis 1, or the query axis 2 of attention patterns/scores)."""
        for p, (c0, c1) in enumerate(self.plan.passes):
            if c0 <= column < c1:
                x = self.acts[p][name]
                return x[:, :, column - c0] if name.endswith(("hook_pattern", "hook_attn_scores")) else x[:, column - c0]
        raise IndexError(f"column {column} is outside the plan's width {self.plan.width}")


@torch.no_grad()
def pass_caches(reasoner: LatentReasoner, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                names: Union[None, Sequence[str], Callable[[str], bool]] = None) -> PassCaches:
    """Run the latent forward once, saving every hook (or those `names` selects) per pass."""
    if names is None:
        keep = lambda name: True  # noqa: E731
    elif callable(names):
        keep = names
    else:
        wanted = set(names)
        unknown = sorted(wanted - set(reasoner.hook_dict))
        if unknown:
            raise KeyError(f"no hook point(s) {unknown} on this model")
        keep = wanted.__contains__
    acts: list[dict[str, torch.Tensor]] = []
    final: dict[str, torch.Tensor] = {}

    def save(tensor, hook):
        p = reasoner.pass_index
        if p is None:
            final[hook.name] = tensor.detach()
            return
        while len(acts) <= p:
            acts.append({})
        acts[p][hook.name] = tensor.detach()

    with reasoner.hooks(fwd_hooks=[(keep, save)]):
        logits = reasoner(input_ids, attention_mask=attention_mask)
    return PassCaches(logits, reasoner.thoughts, reasoner.plan, acts, final)


# ============================================================================ the lens
@dataclass
class ThoughtLens:
    """Logit lens at the position producing each thought j = 0 .. n (see the module docstring),
    for the embedding and after every block. probs: (batch, thought, layer, d_vocab)."""

    layer_names: list[str]
    probs: Float[torch.Tensor, "batch thought layer d_vocab"]
    top_ids: Int[torch.Tensor, "batch thought layer k"]
    top_probs: Float[torch.Tensor, "batch thought layer k"]


@torch.no_grad()
def thought_lens(reasoner: LatentReasoner, input_ids: torch.Tensor, k: int = 5,
                 attention_mask: Optional[torch.Tensor] = None) -> ThoughtLens:
    from .lens import lens_hooks, lens_logits

    model = reasoner.model
    names = lens_hooks(model)
    run = pass_caches(reasoner, input_ids, attention_mask, names=names)
    plan = run.plan
    if plan.max_slots == 0:
        raise ValueError("the batch has no <latent> slots: there are no thoughts to read")
    columns = plan.producer_columns() + [plan.slot_columns()[-1]]
    resid = torch.stack([torch.stack([run.at(name, c) for name in names], dim=1) for c in columns], dim=1)
    probs = lens_logits(model, resid).float().softmax(-1)  # (batch, thought, layer, vocab)
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    layer_names = ["embed"] + [f"block {i}" for i in range(model.cfg.n_layers)]
    return ThoughtLens(layer_names, probs.cpu(), top_i.cpu(), top_p.cpu())


FRONTIER_CATEGORIES = ("frontier_path", "frontier_other", "reachable_other", "unreachable", "not_a_node")


def frontier_mass(probs: Float[torch.Tensor, "batch thought d_vocab"], examples: Sequence[Example], tokenizer,
                  top_k: int = 3) -> dict:
    """Where each thought's next-node distribution puts its mass (graph task).

    For thought j of an example: `frontier_path` = the path node at depth j, `frontier_other`
    = the other nodes at BFS depth j (the rest of the search frontier: dead-end branches),
    `reachable_other` = reachable nodes at other depths, `unreachable` = graph nodes the root
    cannot reach (the distractor side), `not_a_node` = every other token. Returns per thought
    the mean mass of each category, the mean probability *per node* of each node category (a
    fair comparison: categories differ in size) and how often a non-path frontier node is
    among the top `top_k` tokens when the example has one."""
    vocab = tokenizer.get_vocab()
    B, S, _ = probs.shape
    mass = torch.zeros(S, len(FRONTIER_CATEGORIES))
    per_node = torch.zeros(S, 4)
    per_node_n = torch.zeros(S, 4)
    hits = torch.zeros(S)
    has_other = torch.zeros(S)
    for b, ex in enumerate(examples):
        meta = ex.meta
        if "depth" not in meta:
            raise ValueError("frontier_mass needs graph-task examples (meta['depth'], meta['edges'])")
        depth = meta["depth"]
        nodes = {n for e in meta["edges"] for n in e}
        ids = {n: vocab[n] for n in nodes}
        for j in range(S):
            p = probs[b, j].float().cpu()
            groups = [[ids[meta["path"][j]]] if j < len(meta["path"]) else [],
                      [ids[n] for n, d in depth.items() if d == j and (j >= len(meta["path"]) or n != meta["path"][j])],
                      [ids[n] for n, d in depth.items() if d != j],
                      [ids[n] for n in nodes if n not in depth]]
            total = 0.0
            for c, g in enumerate(groups):
                m = float(p[g].sum()) if g else 0.0
                mass[j, c] += m
                total += m
                if g:
                    per_node[j, c] += m / len(g)
                    per_node_n[j, c] += 1
            mass[j, 4] += 1.0 - total
            if groups[1]:
                has_other[j] += 1
                top = set(p.topk(top_k).indices.tolist())
                hits[j] += bool(top & set(groups[1]))
    mass /= max(B, 1)
    per_node = per_node / per_node_n.clamp(min=1)
    return {
        "categories": list(FRONTIER_CATEGORIES),
        "mass": mass.tolist(),  # (thought, category)
        "per_node": {c: per_node[:, i].tolist() for i, c in enumerate(FRONTIER_CATEGORIES[:4])},
        f"other_frontier_in_top{top_k}": (hits / has_other.clamp(min=1)).tolist(),
        "n_with_other_frontier": has_other.tolist(),
    }


# ============================================================================ attention, curves, patching
@torch.no_grad()
def answer_attention(reasoner: LatentReasoner, batch: LatentBatch) -> Float[torch.Tensor, "batch layer head slot"]:
    """Attention from the position whose logits give the tracked answer token (`<eot>` for the
    first) to each latent slot, every layer and head (the last pass's patterns)."""
    n_layers = reasoner.model.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    run = pass_caches(reasoner, batch.input_ids, names=names)
    plan = run.plan
    eot_col = (batch.reader + plan.shift).tolist()
    slots = torch.tensor(plan.slot_columns())
    out = []
    for name in names:
        per_row = []
        for b, c in enumerate(eot_col):
            pattern = run.at(name, c)[b]  # (head, key)
            per_row.append(pattern[:, slots])
        out.append(torch.stack(per_row))
    return torch.stack(out, dim=1).cpu()


@torch.no_grad()
def answer_prob_by_thoughts(reasoner: LatentReasoner, staged, split: str = "test", n: int = 16,
                            max_thoughts: Optional[int] = None, start: int = 0,
                            answer_offset: Union[int, Sequence[int]] = 0) -> Float[torch.Tensor, "batch n_thoughts"]:
    """P(tracked answer token), teacher-forced, when examples `start .. start + n` are given 0,
    1, ..., `max_thoughts` thoughts (default: the last stage's count) before `<eot>`: column t is
    t thoughts. `answer_offset`: which answer token (0: the first)."""
    from .training.coconut import final_stage, n_latent_slots

    top = max_thoughts if max_thoughts is not None else n_latent_slots(99, final_stage(staged.o), staged.o)[1]
    cols = []
    for t in range(top + 1):
        batch = latent_batch(staged, split, n, n_latents=t, start=start, answer_offset=answer_offset,
                             device=reasoner.model.embed.weight.device)
        logits = reasoner(batch.input_ids)
        at = logits[torch.arange(len(batch)), batch.reader.to(logits.device)].float().softmax(-1)
        cols.append(at[torch.arange(len(batch)), batch.answer.to(logits.device)])
    return torch.stack(cols, dim=1).cpu()


@torch.no_grad()
def patch_thought(reasoner: LatentReasoner, batch: LatentBatch, source: LatentBatch, slot: int) -> dict:
    """Replace thought `slot` of every row of `batch` by the same thought of the matching row of
    `source` (same latent count); returns, at the position predicting each row's tracked answer
    token (`<eot>` for the first), the probabilities of that token and of the source's tracked
    token before and after, and the top token before and after."""
    if len(batch) != len(source) or batch.n_latents != source.n_latents:
        raise ValueError("batch and source need the same size and latent count")
    if not 0 <= slot < batch.n_latents:
        raise ValueError(f"slot {slot} is outside 0 .. {batch.n_latents - 1}")
    rows = torch.arange(len(batch))
    reasoner(source.input_ids)
    donor = reasoner.thoughts[:, slot : slot + 1]

    def swap(thought, hook):
        return donor.to(thought.dtype) if reasoner.pass_index == slot + 1 else thought

    at = batch.reader.to(batch.input_ids.device)
    clean = reasoner(batch.input_ids)[rows, at].float().softmax(-1)
    with reasoner.hooks(fwd_hooks=[("hook_thought", swap)]):
        patched = reasoner(batch.input_ids)[rows, at].float().softmax(-1)
    own, other = batch.answer.to(clean.device), source.answer.to(clean.device)
    return {"p_answer": clean[rows, own].cpu(), "p_answer_patched": patched[rows, own].cpu(),
            "p_source_answer": clean[rows, other].cpu(), "p_source_answer_patched": patched[rows, other].cpu(),
            "top_patched": patched.argmax(-1).cpu(), "top": clean.argmax(-1).cpu()}


def _answer_probs(reasoner: LatentReasoner, staged, split: str, index: int, n_latents: int) -> torch.Tensor:
    """Teacher-forced probability of every answer token (its `<eos>` excluded) of one example
    given `n_latents` thoughts."""
    batch = latent_batch(staged, split, 1, n_latents=n_latents, start=index, device=reasoner.model.embed.weight.device)
    part = staged.parts(split)[index]
    n = len(part.answer[0]) - (part.answer[0][-1] == staged.tokenizer.eos_token_id)
    logits = reasoner(batch.input_ids)[0].float()
    e = int(batch.eot[0])
    at = torch.arange(e, e + max(n, 1), device=logits.device)
    return logits[at].softmax(-1)[torch.arange(len(at)), batch.input_ids[0, at + 1]].cpu()


@torch.no_grad()
def deciding_answer_offset(reasoner: LatentReasoner, staged, split: str, index: int) -> int:
    """The answer token the thoughts matter most for: the one whose teacher-forced probability
    rises most from no thought to all of them (the first answer token is often settled by the
    question alone: a leading carry, or the root's name in "Sally is a sterpus ."). Ties: the first."""
    k = latent_batch(staged, split, 1, start=index).n_latents
    gain = _answer_probs(reasoner, staged, split, index, k) - _answer_probs(reasoner, staged, split, index, 0)
    return int(max(range(len(gain)), key=lambda i: (round(float(gain[i]), 6), -i)))


@torch.no_grad()
def showcase(reasoner: LatentReasoner, staged, split: str = "test", n: int = 32, start: int = 0) -> list[dict]:
    """Examples `start .. start + n` ranked by how much the thoughts matter: the teacher-forced
    probability of the deciding answer token (`deciding_answer_offset`) with all thoughts minus
    with none. Each entry: index, answer_offset, p_none, p_all, gain."""
    out = []
    for i in range(start, min(start + n, len(staged.parts(split)))):
        k = latent_batch(staged, split, 1, start=i).n_latents
        p_all, p_none = _answer_probs(reasoner, staged, split, i, k), _answer_probs(reasoner, staged, split, i, 0)
        gain = p_all - p_none
        off = int(max(range(len(gain)), key=lambda j: (round(float(gain[j]), 6), -j)))
        out.append({"index": i, "answer_offset": off, "p_none": float(p_none[off]), "p_all": float(p_all[off]),
                    "gain": float(gain[off])})
    return sorted(out, key=lambda r: (-r["gain"], r["index"]))


@torch.no_grad()
def best_donor(reasoner: LatentReasoner, staged, split: str, index: int, slot: int, candidates: Sequence[int],
               answer_offset: int = 0) -> Optional[dict]:
    """Of `candidates` (example indices with the same number of thoughts as `index`), the donor
    whose thought `slot` lowers example `index`'s tracked answer probability most when patched
    in, preferring a patch that changes the model's top token there. None if no candidate fits."""
    target = latent_batch(staged, split, 1, start=index, answer_offset=answer_offset)
    fits = [c for c in candidates if c != index and latent_batch(staged, split, 1, start=c).n_latents == target.n_latents]
    if not fits or not 0 <= slot < target.n_latents:
        return None
    m = len(fits)
    rep = LatentBatch(target.input_ids.repeat(m, 1), target.labels.repeat(m, 1), target.examples * m,
                      target.bot.repeat(m), target.eot.repeat(m), target.answer.repeat(m), target.n_latents,
                      target.answer_pos.repeat(m))
    donors = [latent_batch(staged, split, 1, start=c) for c in fits]
    width = max(d.input_ids.shape[1] for d in donors)
    pad = staged.tokenizer.pad_token_id or 0
    ids = torch.full((len(fits), width), pad, dtype=torch.long)
    for j, d in enumerate(donors):
        ids[j, : d.input_ids.shape[1]] = d.input_ids[0]
    source = LatentBatch(ids, ids, [d.examples[0] for d in donors], torch.cat([d.bot for d in donors]),
                         torch.cat([d.eot for d in donors]), torch.cat([d.answer for d in donors]), target.n_latents)
    r = patch_thought(reasoner, rep, source, slot)
    drop = r["p_answer"] - r["p_answer_patched"]
    flipped = r["top_patched"] != r["top"]
    best = max(range(len(fits)), key=lambda j: (bool(flipped[j]), float(drop[j])))
    return {"donor": fits[best], "slot": slot, "p_answer": float(r["p_answer"][best]),
            "p_answer_patched": float(r["p_answer_patched"][best]), "flipped": bool(flipped[best])}


@torch.no_grad()
def timeline(reasoner: LatentReasoner, staged, split: str = "test", index: int = 0, k: int = 5,
             answer_offset: Optional[int] = None) -> dict:
    """Everything the Latent thoughts view shows for one example: per thought j = 0 .. n its top-k
    decoded tokens (last layer) and, for the slots, the tracked answer token's attention into it
    (mean over heads, per layer); and that token's probability with 0 .. n thoughts. The tracked
    token (`answer_offset` into the answer) defaults to the one the thoughts matter most for
    (`deciding_answer_offset`)."""
    if answer_offset is None:
        answer_offset = deciding_answer_offset(reasoner, staged, split, index)
    batch = latent_batch(staged, split, 1, start=index, answer_offset=answer_offset)
    lens = thought_lens(reasoner, batch.input_ids, k=k)
    attn = answer_attention(reasoner, batch)[0].mean(1)  # (layer, slot)
    curve = answer_prob_by_thoughts(reasoner, staged, split, 1, batch.n_latents, start=index,
                                    answer_offset=answer_offset)
    tok = staged.tokenizer
    return {
        "example": batch.examples[0],
        "text": staged.tokenizer.decode(batch.input_ids[0].tolist()),
        "answer": tok.decode([int(batch.answer[0])]),
        "answer_offset": answer_offset,
        "top_tokens": [[tok.decode([i]) for i in row] for row in lens.top_ids[0, :, -1].tolist()],
        "top_probs": lens.top_probs[0, :, -1].tolist(),
        "attention": attn.tolist(),  # (layer, slot)
        "answer_prob": curve[0].tolist(),  # index t: t thoughts
        "layer_names": lens.layer_names,
    }
