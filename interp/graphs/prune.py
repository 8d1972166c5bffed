"""Influence, pruning and scores of an attribution graph (Circuit Tracing §3.3 and §5.1).

All functions take the adjacency matrix A (rows = targets, columns = sources; A[t, s] the
direct effect of s on t) and `logit_weights` (n,), the target logits' probabilities (zero
elsewhere), as circuit-tracer does:

* `normalize(A)`: |A| with each row divided by its sum, so a node's inputs are fractions;
* `influence(A, w)`: w @ (Â + Â² + ...), each node's share of the (weighted) logit inputs
  over paths of every length (the series ends: the graph is acyclic);
* `prune(A, w, kinds, node_threshold, edge_threshold)`: keep the nodes carrying
  `node_threshold` of the total influence (tokens and logits always), recompute influence on
  what remains, keep the edges carrying `edge_threshold` of it, then drop feature / error
  nodes left without an outgoing edge (features: or an incoming one), until nothing changes;
* `scores(A, w, kinds, unexplained)`: **replacement** = the tokens' share of the influence
  that reaches the logits from tokens and from `unexplained` nodes (errors; in a pruned graph
  also the pruned features), **completeness** = the influence-weighted share of every node's
  input that does not come from an unexplained node.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["normalize", "influence", "prune", "scores", "PruneResult", "KINDS"]

KINDS = ("feature", "error", "embedding", "logit")  # kind codes 0..3 in the `kinds` tensors below


def normalize(A: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    M = A.abs()
    return M / M.sum(1, keepdim=True).clamp_min(1e-10)


def influence(A: Float[Tensor, "n n"], w: Float[Tensor, "n"], normalized: bool = False,
              max_iter: int = 10_000) -> Float[Tensor, "n"]:
    """Each node's influence on the weighted logits through paths of length >= 1:
    w Â + w Â² + ..., computed as repeated (v / rowsum) @ |A| (Â is never built)."""
    M = A if normalized else A.abs()
    rowsum = M.sum(1).clamp_min(1e-10) if not normalized else None
    step = (lambda v: v @ M) if normalized else (lambda v: (v / rowsum) @ M)
    cur = step(w)
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = step(cur)
        total += cur
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")  # pragma: no cover


def _threshold(scores: Tensor, fraction: float) -> Tensor:
    """The score above which the top-scoring entries hold `fraction` of the total."""
    s = scores.flatten().sort(descending=True).values
    total = s.sum()
    if total <= 0:
        return s.new_tensor(float("inf"))
    cum = s.cumsum(0) / total
    i = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype, device=cum.device)).clamp(max=len(s) - 1))
    return s[i]


class PruneResult(NamedTuple):
    kept: Tensor  # (k,) indices of the kept nodes, ascending
    edge_mask: Bool[Tensor, "k k"]  # the kept edges among them (rows = targets)
    node_influence: Float[Tensor, "n"]  # influence in the unpruned graph
    cumulative: Float[Tensor, "n"]  # a node's rank as the cumulative share of influence down to it


def prune(A: Float[Tensor, "n n"], w: Float[Tensor, "n"], kinds: Tensor, node_threshold: float = 0.8,
          edge_threshold: float = 0.98) -> PruneResult:
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}={v}: must be between 0 and 1")
    node_inf = influence(A, w)
    node_mask = (node_inf >= _threshold(node_inf, node_threshold)) | (kinds == 2) | (kinds == 3)  # tokens, logits
    kept = node_mask.nonzero().flatten()
    # edges: on the kept nodes only (the rest of the matrix is zeroed by the node mask anyway)
    sub, ws, ks = A[kept][:, kept], w[kept], kinds[kept]
    M = normalize(sub)
    edge_scores = M * (influence(M, ws, normalized=True) + ws)[:, None]
    edge_mask = (edge_scores >= _threshold(edge_scores, edge_threshold)) & (sub != 0)
    keep = torch.ones(len(kept), dtype=torch.bool)
    inner = (ks == 0) | (ks == 1)  # features and errors
    while True:
        old = keep.clone()
        edge_mask &= keep[:, None] & keep[None, :]
        keep &= ~inner | edge_mask.any(0)  # features and errors must feed something
        keep &= (ks != 0) | edge_mask.any(1)  # features must be fed by something
        if torch.equal(old, keep):
            break
    order = node_inf.argsort(descending=True)
    cum = torch.zeros_like(node_inf)
    cum[order] = node_inf[order].cumsum(0) / node_inf.sum().clamp_min(1e-10)
    return PruneResult(kept[keep], edge_mask[keep][:, keep], node_inf, cum)


def scores(A: Float[Tensor, "n n"], w: Float[Tensor, "n"], kinds: Tensor,
           unexplained: Optional[Bool[Tensor, "n"]] = None) -> tuple[float, float]:
    """(replacement, completeness); `unexplained` defaults to the error nodes."""
    bad = (kinds == 1) if unexplained is None else unexplained
    absA = A.abs()
    rowsum = absA.sum(1)
    inf = influence(A, w)
    tokens = inf[kinds == 2].sum()
    errors = inf[bad].sum()
    replacement = float(tokens / (tokens + errors).clamp_min(1e-10))
    explained = 1 - (absA @ bad.to(absA.dtype)) / rowsum.clamp_min(1e-10)
    out = inf + w
    completeness = float((explained * out).sum() / out.sum().clamp_min(1e-10))
    return replacement, completeness
