"""The Coconut curriculum (Hao et al. 2024) and its baselines as a trainer: `train.trainer: coconut`.

```yaml
train:
  trainer: coconut
  coconut: {mode: coconut, c_thought: 1, epochs_per_stage: 5, max_latent_stage: 6,
            reset_optimizer: true, uniform_prob: 0.0, pad_latent_to_max: true}
```

Every task whose examples tag their chain-of-thought steps works: `graph` and `rules` record
each step's token span (`meta["step_spans"]`); for others (arithmetic's scratchpad) the step
segment between `<bot>` and `<eot>` is cut after every `;`. Stage `k` of the curriculum
replaces the first `k` steps by `k * c_thought` latent slots:

    prompt <bot> <latent> x n_latent  steps[k:]  <eot> answer <eos>

with labels -100 on the prompt, `<bot>`, the slots (and `<eot>` when no language step is
left), as in the reference implementation. `n_latent = c_thought * min(k, max_latent_stage)`
with `pad_latent_to_max`, else `c_thought * min(k, max_latent_stage, n_steps)`. The stage is
`step // steps_per_stage` (`epochs_per_stage` epochs of the train split each; stage 0 lasts
`first_stage_epochs` instead when given) up to
`max_latent_stage + 1`, the last stage, where every step is latent: a pure function of the
step, so resuming anywhere (a stage boundary included) continues exactly. `uniform_prob`
trains each example, with that probability, at a stage drawn uniformly (seeded by the stage)
from 0..n_steps (`uniform_stages: all`, as facebookresearch/coconut) or from 0..the current
stage (`so_far`, as Ber666/reasoning-by-superposition: never a stage not yet reached). `reset_optimizer` starts a fresh AdamW at every stage switch.

`mode` picks what the slots are:

* `coconut`: continuous thoughts (`models.thoughts.LatentReasoner`, n + 1 KV-cached passes);
* `pause`: the same curriculum, but the slots stay ordinary `<latent>` tokens with a learned
  embedding (the paper's "pause as thought" baseline);
* `cot`: the full chain of thought, no curriculum (stage 0 throughout);
* `no_cot`: prompt then answer, no `<bot>`, steps or `<eot>`.

Evaluation (`evaluate_coconut`) decodes greedily the way each mode answers: CoT writes its
steps, Coconut thinks `n_latent` thoughts after `<bot>` and, at the last stage, is handed
`<eot>`; an example is right when the tokens after `<eot>` (after the prompt for `no_cot`)
are the answer and `<eos>`. `mean_generated_tokens` counts generated language tokens (up to
`<eos>`) plus, for Coconut, the thoughts (the paper's "# tokens"); pause tokens are fed, not
generated. Tasks without `<latent>` in their tokenizer (arithmetic) get it appended as the
last id (`with_latent_token`).
"""

from __future__ import annotations

import math
import random
from typing import Any, Optional, Sequence

import torch

from models.generation import generate
from models.thoughts import LATENT_TOKEN, LatentLayout, LatentReasoner, THOUGHT_SOURCES, latent_layout

from ..tasks.base import ANSWER, IGNORE_INDEX, PROMPT, STEP, Example
from ..tokenizers import Tokenizer
from .config import TrainConfigError, autocast, param_groups
from .data import ExampleTensors, TrainData
from .loop import Sinks, Trainer, info, register_trainer

MODES = ("coconut", "pause", "cot", "no_cot")
UNIFORM_STAGES = ("all", "so_far")
# tasks whose val and test splits do not depend on n_train (drawn first, by sampling)
TEST_FIRST = ("graph", "rules", "prosqa")
COCONUT_DEFAULTS: dict[str, Any] = dict(
    mode="coconut",
    c_thought=1,  # latent slots per replaced step
    epochs_per_stage=5,  # epochs of the train split per stage (a float is fine)
    first_stage_epochs=None,  # stage 0 (plain CoT) only, when it should be longer (from scratch); None: epochs_per_stage
    max_latent_stage=6,  # stages 0..max_latent_stage, then the last stage (all steps latent)
    reset_optimizer=True,  # fresh AdamW at every stage switch
    uniform_prob=0.0,  # probability of training an example at a uniformly drawn stage
    uniform_stages="all",  # drawn from: all (0..n_steps, as Coconut) | so_far (0..the current stage, as Zhu et al.)
    pad_latent_to_max=True,  # n_latent does not depend on the example's step count
    thought="resid",  # resid: the final-norm input; normed: ln_final of it (HF hidden_states[-1])
)


def coconut_options(given: Optional[dict]) -> dict:
    """`train.coconut` with defaults filled in, validated (errors name the key)."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise TrainConfigError(f"train.coconut must be a mapping of options, got {given!r}")
    unknown = sorted(set(given) - set(COCONUT_DEFAULTS))
    if unknown:
        raise TrainConfigError(f"train.coconut: unknown key(s) {unknown}; known: {sorted(COCONUT_DEFAULTS)}")
    o = {**COCONUT_DEFAULTS, **given}
    if o["mode"] not in MODES:
        raise TrainConfigError(f"train.coconut.mode={o['mode']!r}; choose from {list(MODES)}")
    for key in ("c_thought", "max_latent_stage"):
        if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < (1 if key == "c_thought" else 0):
            raise TrainConfigError(f"train.coconut.{key} must be an integer >= {1 if key == 'c_thought' else 0}, "
                                   f"got {o[key]!r}")
    if isinstance(o["epochs_per_stage"], bool) or not isinstance(o["epochs_per_stage"], (int, float)) \
            or not o["epochs_per_stage"] > 0:
        raise TrainConfigError(f"train.coconut.epochs_per_stage must be a positive number, got {o['epochs_per_stage']!r}")
    if o["first_stage_epochs"] is not None and (isinstance(o["first_stage_epochs"], bool) or not isinstance(
            o["first_stage_epochs"], (int, float)) or not o["first_stage_epochs"] > 0):
        raise TrainConfigError(f"train.coconut.first_stage_epochs must be a positive number or null, got "
                               f"{o['first_stage_epochs']!r}")
    if isinstance(o["uniform_prob"], bool) or not isinstance(o["uniform_prob"], (int, float)) \
            or not 0 <= o["uniform_prob"] <= 1:
        raise TrainConfigError(f"train.coconut.uniform_prob must be in [0, 1], got {o['uniform_prob']!r}")
    for key in ("reset_optimizer", "pad_latent_to_max"):
        if not isinstance(o[key], bool):
            raise TrainConfigError(f"train.coconut.{key} must be true or false, got {o[key]!r}")
    if o["uniform_stages"] not in UNIFORM_STAGES:
        raise TrainConfigError(f"train.coconut.uniform_stages={o['uniform_stages']!r}; choose from {list(UNIFORM_STAGES)}")
    if o["thought"] not in THOUGHT_SOURCES:
        raise TrainConfigError(f"train.coconut.thought={o['thought']!r}; choose from {list(THOUGHT_SOURCES)}")
    return o


# ============================================================================ layouts
def with_latent_token(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` itself when it has `<latent>`, else a copy with `<latent>` appended as the
    last id (every other id unchanged)."""
    if LATENT_TOKEN in tokenizer.get_vocab():
        return tokenizer
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(tokenizer.to_json_str())
    hf.add_special_tokens([LATENT_TOKEN])
    return Tokenizer(hf)


def cot_steps(example: Example, tokenizer: Tokenizer) -> list[tuple[int, int]]:
    """[start, end) token spans of the example's chain-of-thought steps: `meta["step_spans"]`,
    or the step segment between `<bot>` and `<eot>` cut after every `;`."""
    if "step_spans" in example.meta:
        return [(int(s), int(e)) for s, e in example.meta["step_spans"]]
    ids, seg = example.input_ids, example.segments
    inner = [i for i, s in enumerate(seg) if s == STEP and ids[i] not in (tokenizer.bot_token_id, tokenizer.eot_token_id)]
    if not inner:
        return []
    sep = tokenizer.get_vocab().get(";")
    spans, start = [], inner[0]
    for i in inner:
        if ids[i] == sep:
            spans.append((start, i + 1))
            start = i + 1
    if start <= inner[-1]:
        spans.append((start, inner[-1] + 1))
    return spans


def n_latent_slots(n_steps: int, stage: int, o: dict) -> tuple[int, int]:
    """(steps replaced, latent slots) of an example with `n_steps` steps at `stage`."""
    top = o["max_latent_stage"]
    skip = min(stage, n_steps)
    n = min(stage, top) if o["pad_latent_to_max"] else min(stage, top, n_steps)
    return skip, n * o["c_thought"]


class StageExample:
    """One example cut into its parts, so any stage's layout is a concatenation."""

    def __init__(self, example: Example, tokenizer: Tokenizer):
        ids, labels = example.input_ids, example.labels
        bot, eot = tokenizer.bot_token_id, tokenizer.eot_token_id
        try:
            b, e = ids.index(bot), len(ids) - 1 - ids[::-1].index(eot)
        except ValueError:
            raise ValueError(f"example has no <bot> ... <eot> chain of thought to replace: {example.text!r}") from None
        self.spans = cot_steps(example, tokenizer)
        self.prompt = (ids[:b], labels[:b])
        self.bot = (ids[b], labels[b])
        self.steps = [(ids[s:t], labels[s:t]) for s, t in self.spans]
        self.eot = (ids[e], labels[e])
        self.answer = (ids[e + 1 :], labels[e + 1 :])
        self.example = example

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def layout(self, mode: str, stage: int, o: dict, latent_id: int) -> tuple[list[int], list[int], list[int]]:
        """(input_ids, labels, segments) of this example in `mode` at `stage`."""
        P, A = self.prompt, self.answer
        if mode == "cot":
            ex = self.example
            return list(ex.input_ids), list(ex.labels), list(ex.segments)
        if mode == "no_cot":
            return (P[0] + A[0], [IGNORE_INDEX] * len(P[0]) + list(A[1]),
                    [PROMPT] * len(P[0]) + [ANSWER] * len(A[0]))
        skip, n = n_latent_slots(self.n_steps, stage, o)
        rest_ids = [t for s in self.steps[skip:] for t in s[0]]
        rest_labels = [t for s in self.steps[skip:] for t in s[1]]
        eot_label = self.eot[1] if rest_ids else IGNORE_INDEX
        ids = P[0] + [self.bot[0]] + [latent_id] * n + rest_ids + [self.eot[0]] + A[0]
        labels = [IGNORE_INDEX] * (len(P[0]) + 1 + n) + rest_labels + [eot_label] + list(A[1])
        segments = [PROMPT] * len(P[0]) + [STEP] * (1 + n + len(rest_ids) + 1) + [ANSWER] * len(A[0])
        return ids, labels, segments

    def length(self, mode: str, stage: int, o: dict) -> int:
        if mode == "cot":
            return len(self.example.input_ids)
        if mode == "no_cot":
            return len(self.prompt[0]) + len(self.answer[0])
        skip, n = n_latent_slots(self.n_steps, stage, o)
        return len(self.prompt[0]) + 2 + n + sum(len(s[0]) for s in self.steps[skip:]) + len(self.answer[0])


def final_stage(o: dict) -> int:
    return o["max_latent_stage"] + 1


class StagedTask:
    """A task seen through the curriculum: the same splits, in the layout of a stage, with a
    tokenizer that has `<latent>`. `name` and `config()` are the task's own, so checkpoints
    record the task as it is (`make_task(**config)` rebuilds it)."""

    def __init__(self, task: Any, options: dict):
        self.task, self.o = task, options
        self.name = getattr(task, "name", "task")
        self.tokenizer = with_latent_token(task.tokenizer)
        self.latent_id = self.tokenizer.token_to_id(LATENT_TOKEN)
        self._parts: dict[str, list[StageExample]] = {}

    def config(self) -> dict:
        return self.task.config() if hasattr(self.task, "config") else {}

    def parts(self, split: str) -> list[StageExample]:
        if split not in self._parts:
            self._parts[split] = [StageExample(ex, self.tokenizer) for ex in self.task.split(split)]
        return self._parts[split]

    @property
    def max_len(self) -> int:
        mode, o = self.o["mode"], self.o
        stages = range(final_stage(o) + 1) if mode in ("coconut", "pause") else [0]
        return max(p.length(mode, s, o) for split in ("train", "val", "test") for p in self.parts(split)
                   for s in stages)

    def examples(self, split: str, stage: int, seed: Optional[int] = None, n: Optional[int] = None) -> list[Example]:
        """The split (its first `n` examples) in the layout of `stage` (`seed`: draw the
        `uniform_prob` mixing)."""
        mode, o = self.o["mode"], self.o
        rng = random.Random(seed * 1_000_003 + stage) if seed is not None and o["uniform_prob"] > 0 else None
        out = []
        for p in self.parts(split)[:n]:
            s = stage
            if rng is not None and rng.random() < o["uniform_prob"]:
                s = rng.randint(0, p.n_steps if o["uniform_stages"] == "all" else min(stage, p.n_steps))
            ids, labels, segments = p.layout(mode, s, o, self.latent_id)
            out.append(Example(ids, labels, segments, "", dict(p.example.meta, stage=s)))
        return out

    def split(self, name: str):
        return self.task.split(name)

    def answer_spans(self, example: Example):
        return self.task.answer_spans(example)


# ============================================================================ evaluation
@torch.no_grad()
def evaluate_coconut(
    model,
    staged: StagedTask,
    split: str = "test",
    *,
    stage: Optional[int] = None,
    n: Optional[int] = None,
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    amp: Optional[torch.dtype] = None,
    return_rows: bool = False,
    start: int = 0,
) -> dict:
    """Greedy answers of `n` examples of `split` from index `start` (default: the first `n`), the
    way `staged.o["mode"]` answers (at `stage`, default the last): accuracy, mean generated tokens
    (language tokens up to `<eos>`, plus thoughts for Coconut) and mean language tokens.
    Decoding takes the static KV cache on CUDA, uncompiled: every stage and chunk is a new
    shape, and compiling one costs seconds, more than a small model's whole evaluation.
    `return_rows` adds a per-example list (correct, generated ids)."""
    o, mode, tok = staged.o, staged.o["mode"], staged.tokenizer
    stage = final_stage(o) if stage is None else stage
    if mode in ("cot", "no_cot"):
        stage = 0
    device = device or next(model.parameters()).device
    parts = staged.parts(split)[start : start + n if n is not None else None]
    eos, eot, bot = tok.eos_token_id, tok.eot_token_id, tok.bot_token_id
    jobs: dict[tuple[int, bool], list[int]] = {}  # (n_latent, feed <eot>) -> example indices
    prompts, targets, budgets = [], [], []
    for i, p in enumerate(parts):
        answer = [t for t in p.answer[0]]
        if mode == "cot":
            prompt, n_lat, feed = list(p.prompt[0]), 0, False
            budget = len(p.example.input_ids) - len(prompt) + 4
        elif mode == "no_cot":
            prompt, n_lat, feed = list(p.prompt[0]), 0, False
            budget = len(answer) + 2
        else:
            skip, n_lat = n_latent_slots(p.n_steps, stage, o)
            feed = skip == p.n_steps
            prompt = list(p.prompt[0]) + [bot]
            budget = sum(len(s[0]) for s in p.steps[skip:]) + (0 if feed else 1) + len(answer) + 4
            if mode == "pause":
                prompt += [staged.latent_id] * n_lat + ([eot] if feed else [])
        prompts.append(prompt)
        targets.append(answer)
        budgets.append(budget)
        key = (n_lat if mode == "coconut" else 0, feed if mode == "coconut" else False)
        jobs.setdefault(key, []).append(i)
    reasoner = LatentReasoner(model, staged.latent_id, thought=o["thought"]) if mode == "coconut" else None
    rows: list[Optional[tuple[bool, list[int]]]] = [None] * len(parts)
    generated = language = 0
    was_training = model.training
    model.eval()
    try:
        for (n_lat, feed), idx in jobs.items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                budget = max(budgets[i] for i in chunk)
                with autocast(device, amp):
                    if reasoner is not None:
                        out = reasoner.generate([prompts[i] for i in chunk], n_lat, max_new_tokens=budget,
                                                eot_token_id=eot if feed else None, stop_tokens=[eos], compile=False)
                    else:
                        out = generate(model, [prompts[i] for i in chunk], max_new_tokens=budget, greedy=True,
                                       stop_tokens=[eos], return_output=True, compile=False)
                for i, new in zip(chunk, out.new_tokens):
                    fed_eot = mode == "pause" and prompts[i][-1] == eot or reasoner is not None and feed
                    rows[i] = (_answer_correct(new, targets[i], eos, eot, needs_eot=mode != "no_cot" and not fed_eot), new)
                    used = new[: new.index(eos) + 1] if eos in new else new
                    language += len(used)
                    generated += len(used) + (n_lat if reasoner is not None else 0)
    finally:
        model.train(was_training)
    total = max(len(parts), 1)
    metrics = {"split": split, "stage": stage, "mode": mode, "n_examples": len(parts),
               "accuracy": sum(r[0] for r in rows) / total if parts else None,
               "mean_generated_tokens": generated / total, "mean_language_tokens": language / total}
    if return_rows:
        metrics["rows"] = [{"correct": bool(r[0]), "generated": r[1]} for r in rows]
    return metrics


def _answer_correct(new: Sequence[int], answer: Sequence[int], eos: int, eot: int, needs_eot: bool) -> bool:
    """The generated tokens after `<eot>` (or from the start when `<eot>` was fed or the mode
    has none) begin with the answer, which ends with `<eos>`."""
    new = list(new)
    if needs_eot:
        if eot not in new:
            return False
        new = new[new.index(eot) + 1 :]
    want = list(answer) if answer and answer[-1] == eos else list(answer) + [eos]
    return new[: len(want)] == want


def coconut_run_options(meta: dict) -> Optional[dict]:
    """`train.coconut` (defaults filled) of a checkpoint's config, or None when the run did not
    use `train.trainer: coconut`."""
    train = ((meta.get("training") or {}).get("run_config") or {}).get("train") or {}
    return coconut_options(train.get("coconut")) if train.get("trainer") == "coconut" else None


def describe_mode(o: dict) -> str:
    """How a model of these options answers (what `evaluate_coconut` runs), in words."""
    n = o["c_thought"] * o["max_latent_stage"]
    count = f"{n}" if o["pad_latent_to_max"] else f"one per CoT step (c_thought {o['c_thought']}), at most {n}"
    return {"coconut": f"Coconut: {count} continuous thought(s) after <bot> (thought = {o['thought']}), then <eot> "
                       "and the greedy answer",
            "pause": f"pause as thought: {count} <latent> token(s) after <bot>, then <eot> and the greedy answer",
            "cot": "CoT: writes its chain of thought after <bot>, then <eot> and the answer (greedy)",
            "no_cot": "No-CoT: the answer right after the question (greedy)"}[o["mode"]]


def evaluate_coconut_checkpoint(model, meta: dict, split: str = "val", *, device: torch.device,
                                batch_size: int = 32, max_batches: Optional[int] = None, n_generate: int = 64,
                                amp: Optional[torch.dtype] = None, task: Any = None) -> dict:
    """`interp eval` for a `train.trainer: coconut` checkpoint, in the mode it was trained in at
    its last stage: the teacher-forced loss of that layout (first `batch_size * max_batches`
    examples) and `evaluate_coconut`'s greedy accuracy and token counts (first `n_generate`)."""
    from .config import build_task

    o = coconut_run_options(meta)
    if o is None:
        raise TrainConfigError("not a Coconut checkpoint (train.trainer is not coconut)")
    if task is None:
        task_cfg = dict(meta["task"])
        if split != "train" and task_cfg.get("name") in TEST_FIRST:
            task_cfg["n_train"] = 0  # same val/test splits, without drawing the training set
        task = build_task(task_cfg)
    staged = StagedTask(task, o)
    if staged.tokenizer.vocab_size > model.cfg.d_vocab:
        raise TrainConfigError(f"the task's vocabulary ({staged.tokenizer.vocab_size} tokens, <latent> included) does "
                               f"not fit the model's d_vocab={model.cfg.d_vocab}")
    stage = final_stage(o) if o["mode"] in ("coconut", "pause") else 0
    n = batch_size * max_batches if max_batches else None
    examples = staged.examples(split, stage, n=n)
    forward = LatentReasoner(model, staged.latent_id, thought=o["thought"]) if o["mode"] == "coconut" else model
    pad = staged.tokenizer.pad_token_id or 0
    was_training = model.training
    model.eval()
    try:
        metrics: dict[str, Any] = {"split": split, "mode": o["mode"], "evaluated_as": describe_mode(o), "stage": stage,
                                   "loss": stage_loss(forward, examples, pad, device, batch_size, amp),
                                   "n_examples": len(examples)}
    finally:
        model.train(was_training)
    if n_generate > 0:
        gen = evaluate_coconut(model, staged, split, n=n_generate, batch_size=max(batch_size, 1), device=device, amp=amp)
        metrics.update(accuracy=gen["accuracy"], exact_match=gen["accuracy"], n_generated=gen["n_examples"],
                       mean_generated_tokens=gen["mean_generated_tokens"],
                       mean_language_tokens=gen["mean_language_tokens"])
    return metrics


@torch.no_grad()
def stage_loss(forward, examples: Sequence[Example], pad_id: int, device, batch_size: int = 256,
               amp: Optional[torch.dtype] = None) -> float:
    """Teacher-forced mean loss over the examples' targets (in their stage layout)."""
    total = count = 0.0
    for start in range(0, len(examples), batch_size):
        t = ExampleTensors.from_examples(examples[start : start + batch_size], pad_id, device)
        with autocast(device, amp):
            per_token = forward(t.input_ids, return_type="loss", labels=t.labels, loss_per_token=True)
        total += float(per_token.float().sum())
        count += float((t.labels[:, 1:] != IGNORE_INDEX).sum())
    return total / max(count, 1.0)


# ============================================================================ the trainer
class CoconutTrainer(Trainer):
    """`Trainer` with the curriculum: stage data, optimizer resets and latent evaluation."""

    def __init__(self, cfg: dict, resume=None, task: Any = None):
        from .config import build_task

        self.o = coconut_options(cfg["train"].get("coconut"))
        cfg["train"]["coconut"] = self.o
        base = task if task is not None else build_task(cfg["task"])
        self.staged = StagedTask(base, self.o)
        self._data_stage: Optional[int] = None
        self.layout: Optional[LatentLayout] = None  # the stage's fixed latent layout (coconut mode)
        super().__init__(cfg, resume=resume, task=self.staged)

    # ------------------------------------------------------------------ the schedule
    @property
    def steps_per_epoch(self) -> int:
        t = self.t
        n = len(self.staged.task.split("train"))
        per_step = n if t["batch_size"] == "full" else int(t["batch_size"]) * int(t["grad_accum"])
        return max(1, math.ceil(n / per_step))

    @property
    def steps_per_stage(self) -> int:
        return max(1, round(self.o["epochs_per_stage"] * self.steps_per_epoch))

    @property
    def steps_first_stage(self) -> int:
        """Stage 0 (the CoT itself): `first_stage_epochs`, default `epochs_per_stage`."""
        epochs = self.o["first_stage_epochs"]
        return self.steps_per_stage if epochs is None else max(1, round(epochs * self.steps_per_epoch))

    def stage_at(self, step: int) -> int:
        """The curriculum stage of optimizer step `step` (0-based)."""
        if self.o["mode"] not in ("coconut", "pause"):
            return 0
        first = self.steps_first_stage
        if step < first:
            return 0
        return min(1 + (step - first) // self.steps_per_stage, final_stage(self.o))

    # ------------------------------------------------------------------ extension points
    def make_data(self) -> TrainData:
        return self.make_data_for(self.stage_at(self.start_step))

    def make_forward(self):
        """Coconut: the latent forward under the stage's fixed layout (every batch of the stage
        runs the same passes, planned on the device), so the whole step, its n + 1 passes
        included, is captured as one CUDA graph (`train.cuda_graphs`); `train.compile: true`
        compiles it too (once per stage). Other modes: the model's own step."""
        if self.o["mode"] == "coconut":
            reasoner = LatentReasoner(self.model, self.staged.latent_id, thought=self.o["thought"], layout=self.layout)
            return torch.compile(reasoner, dynamic=False) if self.t["compile"] is True else reasoner
        return super().make_forward()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        t = self.t
        cuda = self.device.type == "cuda"
        return torch.optim.AdamW(
            param_groups(self.model, float(t["weight_decay"]), bool(t["decay_all"])), lr=float(t["lr"]),
            betas=tuple(t["betas"]), eps=float(t["eps"]),
            **({"fused": True} if cuda else {}), **({"capturable": True} if self.graphs else {}),
        )

    def before_step(self, step: int, sinks: Sinks) -> None:
        stage = self.stage_at(step)
        switched = step > 0 and stage != self.stage_at(step - 1)
        if switched and self.o["reset_optimizer"]:
            self.optimizer = self._new_optimizer()
            self.step_runner.reset(self.optimizer)
        if stage != self._data_stage:
            self.data.close()
            self.data = self.make_data_for(stage)
            self.step_runner.forward = self.make_forward()  # under the new stage's layout
            self.step_runner.reset()
        if switched or step == self.start_step:
            sinks.log({"event": "stage", "step": step, "stage": stage, "mode": self.o["mode"],
                       "steps_per_stage": self.steps_per_stage, "optimizer_reset": bool(switched and
                                                                                      self.o["reset_optimizer"])})
            if switched:
                info(f"step {step}: stage {stage}" + (" (optimizer reset)" if self.o["reset_optimizer"] else ""))

    def make_data_for(self, stage: int) -> TrainData:
        """The train split in the layout of `stage` (its `uniform_prob` mixing seeded by the stage)."""
        self._data_stage = stage
        t = self.t
        tensors = ExampleTensors.from_examples(self.staged.examples("train", stage, seed=t["seed"]), self.pad_id,
                                               self.device)
        if self.o["mode"] == "coconut":  # one host read per stage, none per step
            self.layout = latent_layout(tensors.input_ids, self.staged.latent_id)
        return TrainData(tensors, t["batch_size"], t["grad_accum"], t["seed"], self.device)

    # ------------------------------------------------------------------ evaluation
    def _eval_metrics(self, split: str, stage: int) -> dict:
        t = self.t
        bs = t["eval_batch_size"] or (t["batch_size"] if t["batch_size"] != "full" else 256)
        examples = self.staged.examples(split, stage, n=bs * t["eval_batches"] if t["eval_batches"] else None)
        # evaluation batches are planned one by one (no fixed layout)
        forward = (LatentReasoner(self.model, self.staged.latent_id, thought=self.o["thought"])
                   if self.o["mode"] == "coconut" else self.model)
        was_training = self.model.training
        self.model.eval()
        try:
            metrics = {"split": split, "stage": stage, "loss": stage_loss(forward, examples, self.pad_id, self.device,
                                                                          bs, self.amp)}
        finally:
            self.model.train(was_training)
        if t["eval_generate"]:
            gen = evaluate_coconut(self.model, self.staged, split, stage=stage, n=t["eval_generate"], batch_size=bs,
                                   device=self.device, amp=self.amp)
            metrics.update(exact_match=gen["accuracy"], accuracy=gen["accuracy"],
                           mean_generated_tokens=gen["mean_generated_tokens"],
                           mean_language_tokens=gen["mean_language_tokens"], n_generated=gen["n_examples"])
        return metrics

    def _evaluate(self, step: int, sinks: Sinks, bar) -> Optional[float]:
        stage = self.stage_at(step - 1)  # the stage the step just taken trained at
        self.last_eval = self._eval_metrics(self.t["eval_split"], stage)
        on_train = self._eval_metrics("train", stage)
        for key in ("loss", "accuracy"):
            self.last_eval[f"train_{key}"] = on_train.get(key)
        sinks.log({"event": "eval", "step": step, "mode": self.o["mode"], **self.last_eval})
        bar.set_postfix(stage=stage, val=f"{self.last_eval['loss']:.4f}",
                        acc=f"{self.last_eval.get('accuracy') or 0:.3f}")
        # "best" only means something once the layout stops changing: the last stage
        if stage == self.stage_at(self.t["steps"] - 1) and self.last_eval.get("accuracy") is not None:
            return 1.0 - self.last_eval["accuracy"]
        return None

    def evaluate(self, split: str = "val") -> dict:
        """Loss and greedy accuracy on `split` at the stage the data is in now."""
        return self._eval_metrics(split, self._data_stage)


register_trainer("coconut", CoconutTrainer)
