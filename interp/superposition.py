"""Reasoning by superposition (Zhu, Hao et al. 2025) measured on a Coconut model's thoughts:
does continuous thought k hold the breadth-first frontier after k expansions of the graph?

```python
from interp import thoughts, superposition
reasoner, tokenizer, staged = thoughts.load("data/checkpoints/coconut_prosqa_coconut", task_overrides={"n_train": 0})
nodes = superposition.thought_node_scores(reasoner, staged, "test", n=200)    # per thought k, per node group
edges = superposition.edge_attention(reasoner, staged, "test", n=200)         # the last layer's attention to edges
heads = superposition.edge_copy_heads(reasoner, staged, "test", n=200)        # which first-layer heads copy edges
```

Thought k (k = 1 .. n) is the vector fed into latent slot k - 1: the last hidden state at the
position before it (`<bot>` for k = 1; `reasoner.thoughts[:, k - 1]`). Node groups for thought k,
as in the paper's notebook (they overlap): **reachable** (BFS distance from the root <= k),
**frontier** (distance exactly k), **optimal** (distance k and on a shortest path to the
target: `neighbor_k[k]`, or the CoT path's node k when the data has no `neighbor_k`), **not
reachable** (every other node of the graph: farther than k, or unreachable from the root).
Scores per node: the inner product of the thought with the node's token embedding, and the
node's probability under the thought's logit lens (the model's own next-token distribution
at the position that produced the thought).

Edges (symbolic vocabulary: `s t |` triplets before `[Q]`): when producing thought k the model
should read the edges out of the nodes it has reached, k - 1 expansions: **reachable** (source
within k - 1 steps), **frontier** (source exactly k - 1 steps away), **optimal** (a frontier edge
into an optimal node of thought k), **not reachable** (the rest). The answer (the `<eot>`
position) is read the same way with all n expansions. `edge_copy_heads` scores each head of a
layer (default: the first) by the attention from each `|` to its edge's two nodes, and from
each edge target to its source.

Examples are run one by one, each with its own number of thoughts (with
`pad_latent_to_max: false` that is its number of CoT steps).
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float

from models.thoughts import LatentReasoner

from .thoughts import latent_batch, pass_caches

__all__ = ["NODE_GROUPS", "node_groups", "thought_node_scores", "edge_positions", "edge_attention",
           "edge_copy_heads"]

NODE_GROUPS = ("reachable", "frontier", "optimal", "not_reachable")


def node_groups(meta: dict, k: int) -> dict[str, list[str]]:
    """The node tokens of each group for thought k (1-based) of a graph example (`Example.meta`)."""
    if "depth" not in meta or "edges" not in meta:
        raise ValueError("the superposition measures need graph-task examples (meta['depth'], meta['edges'])")
    depth = meta["depth"]
    nodes = list(dict.fromkeys(n for e in meta["edges"] for n in e))
    nk = meta.get("neighbor_k")
    if nk is not None:
        optimal = list(nk.get(k, nk.get(str(k), [])))
    else:
        optimal = [meta["path"][k]] if k < len(meta["path"]) else []
    return {"reachable": [v for v in nodes if depth.get(v, 1 << 30) <= k],
            "frontier": [v for v in nodes if depth.get(v) == k],
            "optimal": optimal,
            "not_reachable": [v for v in nodes if depth.get(v, 1 << 30) > k]}


def _thought_probs(reasoner: LatentReasoner, thoughts: torch.Tensor) -> torch.Tensor:
    """Lens distribution of fed thoughts: the model's output distribution at the producing position."""
    model = reasoner.model
    if reasoner.thought_source == "normed":  # the thought already is ln_final of the residual
        return model.unembed_resid(thoughts).float().softmax(-1)
    return model.unembed_resid(model.ln_final(thoughts)).float().softmax(-1)


@torch.no_grad()
def thought_node_scores(reasoner: LatentReasoner, staged, split: str = "test", n: int = 100, start: int = 0) -> dict:
    """Per thought k and node group: the mean inner product with the group's node embeddings,
    the mean lens probability per node and the mean total lens mass of the group (averaged over
    the examples that have thought k and a non-empty group), plus every (example, k, node) score
    for distribution plots (`rows`)."""
    tok = staged.tokenizer
    vocab = tok.get_vocab()
    emb = reasoner.model.embed.weight
    rows: list[dict] = []
    sums: dict[tuple[int, str], list[float]] = {}
    n = min(n, len(staged.parts(split)) - start)
    for i in range(start, start + n):
        batch = latent_batch(staged, split, 1, start=i, device=emb.device)
        reasoner(batch.input_ids)
        thoughts = reasoner.thoughts[0]  # (slot, d_model)
        inner = (thoughts.float() @ emb.float().T).cpu()  # (slot, vocab)
        probs = _thought_probs(reasoner, thoughts).cpu()
        meta = batch.examples[0].meta
        for k in range(1, thoughts.shape[0] + 1):
            groups = node_groups(meta, k)
            member = {v: [g for g, vs in groups.items() if v in vs] for vs in groups.values() for v in vs}
            for v, gs in member.items():
                t = vocab[v]
                rows.append({"example": i, "k": k, "node": v, "depth": meta["depth"].get(v), "groups": gs,
                             "inner": float(inner[k - 1, t]), "prob": float(probs[k - 1, t])})
            for g, vs in groups.items():
                if not vs:
                    continue
                ids = [vocab[v] for v in vs]
                acc = sums.setdefault((k, g), [0.0, 0.0, 0.0, 0])
                acc[0] += float(inner[k - 1, ids].mean())
                acc[1] += float(probs[k - 1, ids].mean())
                acc[2] += float(probs[k - 1, ids].sum())
                acc[3] += 1
    ks = sorted({k for k, _ in sums})
    out = {"groups": list(NODE_GROUPS), "thoughts": ks, "n_examples": n, "rows": rows}
    for j, key in enumerate(("inner", "prob_per_node", "mass")):
        out[key] = {g: [sums[(k, g)][j] / sums[(k, g)][3] if (k, g) in sums else None for k in ks] for g in NODE_GROUPS}
    out["count"] = {g: [sums[(k, g)][3] if (k, g) in sums else 0 for k in ks] for g in NODE_GROUPS}
    return out


def edge_positions(staged, input_ids: list[int]) -> list[tuple[int, int, int]]:
    """(source, target, separator) positions of every edge of a symbolic-vocabulary prompt
    (`<bos> s t | s t | ... s t [Q] ...`; the last edge's separator is `[Q]`)."""
    tok = staged.tokenizer
    vocab = tok.get_vocab()
    if "[Q]" not in vocab or "|" not in vocab:
        raise ValueError("edge positions need the symbolic vocabulary (prosqa vocabulary: symbolic)")
    q = input_ids.index(vocab["[Q]"])
    out = []
    for s in range(1, q, 3):
        if s + 2 > q or (s + 2 < q and input_ids[s + 2] != vocab["|"]):
            raise ValueError(f"position {s}: not an 's t |' edge triplet")
        out.append((s, s + 1, s + 2))
    return out


def _edge_groups(meta: dict, k: int) -> list[str]:
    """Per stated edge, its group when producing thought k (k - 1 expansions done)."""
    depth = meta["depth"]
    optimal = set(node_groups(meta, k)["optimal"])
    out = []
    for s, t in meta["edges"]:
        d = depth.get(s)
        if d is None or d > k - 1:
            out.append("not_reachable")
        elif d == k - 1:
            out.append("optimal" if t in optimal else "frontier")
        else:
            out.append("reachable")
    return out


@torch.no_grad()
def edge_attention(reasoner: LatentReasoner, staged, split: str = "test", n: int = 100, layer: int = -1,
                   start: int = 0) -> dict:
    """Attention (summed over heads, over an edge's three tokens) from the position producing
    each thought, and from `<eot>` (the answer), to the edges, by edge group. `mean[g][k]` is the
    mean per edge of group g (the paper's notebook's measure); `share[g][k]` the mean share of
    the position's total attention that lands on group g. Thought columns are k = 1 .. n; the
    answer is reported separately (`answer_mean`, `answer_share`, with n expansions)."""
    model = reasoner.model
    layer = layer % model.cfg.n_layers
    name = f"blocks.{layer}.attn.hook_pattern"
    groups = ("reachable", "frontier", "optimal", "not_reachable")
    per_edge: dict[tuple[object, str], list[float]] = {}
    share: dict[tuple[object, str], list[float]] = {}
    n = min(n, len(staged.parts(split)) - start)
    device = model.embed.weight.device
    for i in range(start, start + n):
        batch = latent_batch(staged, split, 1, start=i, device=device)
        ids = batch.input_ids[0].tolist()
        pos = edge_positions(staged, ids)
        meta = batch.examples[0].meta
        _check_stated(meta, ids, pos, staged, i)
        run = pass_caches(reasoner, batch.input_ids, names=[name])
        plan = run.plan
        producers = plan.producer_columns()
        queries = [(k, producers[k - 1]) for k in range(1, plan.max_slots + 1)] + [("answer", int(batch.eot[0]))]
        for key, col in queries:
            pattern = run.at(name, col)[0].sum(0).float().cpu()  # (key,), summed over heads
            gs = _edge_groups(meta, plan.max_slots + 1 if key == "answer" else key)
            total = float(pattern.sum())
            for g in groups:
                vals = [float(pattern[list(p)].sum()) for p, gg in zip(pos, gs) if gg == g]
                if vals:
                    per_edge.setdefault((key, g), []).append(sum(vals) / len(vals))
                    share.setdefault((key, g), []).append(sum(vals) / total)
    ks = sorted(k for k in {k for k, _ in per_edge} if k != "answer")
    mean = lambda d, key, g: sum(d[(key, g)]) / len(d[(key, g)]) if (key, g) in d else None  # noqa: E731
    return {"layer": layer, "groups": list(groups), "thoughts": ks, "n_examples": n,
            "mean": {g: [mean(per_edge, k, g) for k in ks] for g in groups},
            "share": {g: [mean(share, k, g) for k in ks] for g in groups},
            "answer_mean": {g: mean(per_edge, "answer", g) for g in groups},
            "answer_share": {g: mean(share, "answer", g) for g in groups}}


def _check_stated(meta: dict, ids: list[int], pos: list[tuple[int, int, int]], staged, index: int) -> None:
    """The prompt's edge triplets are meta['edges'], in order (what the groups are computed on)."""
    tok = staged.tokenizer
    stated = [[tok.id_to_token(ids[s]), tok.id_to_token(ids[t])] for s, t, _ in pos]
    if stated != [list(e) for e in meta["edges"]]:
        raise ValueError(f"example {index}: the prompt's edges are not meta['edges'] in order")


@torch.no_grad()
def edge_copy_heads(reasoner: LatentReasoner, staged, split: str = "test", n: int = 50, layer: int = 0,
                    start: int = 0) -> dict:
    """Per head of `layer`: mean attention from each edge's separator to the edge's two nodes
    (`separator_to_edge`), and from each edge target to its source (`target_to_source`); a head
    that puts most of its attention there copies edges (the paper's first-layer heads)."""
    model = reasoner.model
    name = f"blocks.{layer}.attn.hook_pattern"
    H = model.cfg.n_heads
    sep = torch.zeros(H)
    tgt = torch.zeros(H)
    count = 0
    n = min(n, len(staged.parts(split)) - start)
    device = model.embed.weight.device
    for i in range(start, start + n):
        batch = latent_batch(staged, split, 1, start=i, device=device)
        pos = edge_positions(staged, batch.input_ids[0].tolist())
        run = pass_caches(reasoner, batch.input_ids, names=[name])
        for s, t, e in pos:
            sep += run.at(name, e)[0][:, [s, t]].sum(-1).float().cpu()
            tgt += run.at(name, t)[0][:, s].float().cpu()
        count += len(pos)
    sep, tgt = sep / max(count, 1), tgt / max(count, 1)
    return {"layer": layer, "separator_to_edge": sep.tolist(), "target_to_source": tgt.tolist(), "n_edges": count,
            "copy_heads": [h for h in range(H) if max(float(sep[h]), float(tgt[h])) > 0.5]}


def mean_by_group(scores: dict, key: str = "inner") -> Float[torch.Tensor, "group thought"]:
    """`scores[key]` (from `thought_node_scores`) as a (group, thought) tensor, NaN where empty."""
    return torch.tensor([[v if v is not None else float("nan") for v in scores[key][g]] for g in scores["groups"]])
