"""Per-head attention scores: previous-token, induction, duplicate-token, first-token,
entropy, mean distance, and the head's ALiBi slope.

```python
from interp import heads
table = heads.head_scores(model, tokens)           # HeadScores; fields are (layer, head)
table.prev_token[1, 3]; table.to_rows()             # rows for a dataframe
heads.previous_token_score(pattern)                 # (head,) from a (batch, head, q, k) pattern
```

Every score function takes a pattern (batch, head, q, k) (or (head, q, k)) and returns one
number per head, a mean over the *scored queries* of each example pooled across the batch.
Padding: with `attention_mask` (batch, pos) (True = real), padded queries are never
scored and padded keys never count as targets. Definitions (i = query, j = key, positions
are indices in the padded sequence):

* previous-token: attention i -> i-1, over queries i >= 1 where i-1 is real.
* duplicate-token: attention mass on earlier keys j < i with tokens[j] == tokens[i], over
  queries that have such a key.
* induction: attention mass on keys j = p + 1 <= i where p < i and tokens[p] == tokens[i]
  (the token after a previous occurrence of the current token), over queries that have
  such a key. On `make_induction_tokens` sequences that is the second repeat.
* first-token: attention to the first real key (BOS), over real queries after it.
* entropy: -sum_j A_ij log A_ij (nats), over real queries (0 = one key, log(i+1) = uniform).
* mean distance: sum_j A_ij (i - j), over real queries.

A head with no scored query gets NaN. For shaped-attention (SAS-P) models the "pattern"
alpha*I + beta*softmax - gamma*C is not a distribution: scores are computed on it as is,
and entropy on its positive part.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Bool, Float, Int

Pattern = Float[torch.Tensor, "batch head q k"]

SCORE_NAMES = ("prev_token", "induction", "duplicate_token", "first_token", "entropy", "mean_distance")


def _prep(pattern: torch.Tensor, attention_mask: Optional[torch.Tensor]):
    if pattern.ndim == 3:
        pattern = pattern[None]
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must be (batch, head, q, k) with q == k, got shape {tuple(pattern.shape)}")
    B, _, T, _ = pattern.shape
    if attention_mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=pattern.device)
    else:
        mask = attention_mask.to(pattern.device).bool()
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != (B, T):
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} != (batch, pos) = {(B, T)}")
    return pattern.float(), mask


def _tokens(tokens: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    tokens = tokens.to(pattern.device)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.shape != (pattern.shape[0], pattern.shape[-1]):
        raise ValueError(f"tokens shape {tuple(tokens.shape)} != (batch, pos) {(pattern.shape[0], pattern.shape[-1])}")
    return tokens


def masked_mean_over_queries(
    per_query: Float[torch.Tensor, "batch head q"], scored: Bool[torch.Tensor, "batch q"]
) -> Float[torch.Tensor, "head"]:
    """Mean of `per_query` over the scored queries of every example; NaN where none."""
    w = scored[:, None, :].to(per_query.dtype)
    total = (per_query.nan_to_num() * w).sum((0, 2))
    n = w.sum((0, 2))
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, float("nan")))


def score_on_keys(
    pattern: Pattern, targets: Bool[torch.Tensor, "batch q k"], attention_mask: Optional[torch.Tensor] = None
) -> Float[torch.Tensor, "head"]:
    """Mean over queries that have at least one target key of the attention mass on targets."""
    pattern, mask = _prep(pattern, attention_mask)
    targets = targets.to(pattern.device) & mask[:, None, :] & mask[:, :, None]
    mass = (pattern * targets[:, None].to(pattern.dtype)).sum(-1)  # (B, H, q)
    return masked_mean_over_queries(mass, targets.any(-1))


def previous_token_score(pattern: Pattern, attention_mask: Optional[torch.Tensor] = None) -> Float[torch.Tensor, "head"]:
    """Mean attention from each query i to key i - 1 (both real)."""
    T = pattern.shape[-1]
    prev = torch.diag(torch.ones(T - 1, dtype=torch.bool, device=pattern.device), -1)
    B = 1 if pattern.ndim == 3 else pattern.shape[0]
    return score_on_keys(pattern, prev.expand(B, T, T), attention_mask)


def duplicate_token_score(
    pattern: Pattern, tokens: Int[torch.Tensor, "batch pos"], attention_mask: Optional[torch.Tensor] = None
) -> Float[torch.Tensor, "head"]:
    """Attention mass on earlier occurrences of the query's own token."""
    tokens = _tokens(tokens, pattern)
    T = tokens.shape[1]
    earlier = torch.tril(torch.ones(T, T, dtype=torch.bool, device=tokens.device), -1)
    same = tokens[:, :, None] == tokens[:, None, :]
    return score_on_keys(pattern, same & earlier, attention_mask)


def induction_targets(tokens: Int[torch.Tensor, "batch pos"]) -> Bool[torch.Tensor, "batch q k"]:
    """targets[b, i, j] = True when j = p + 1 <= i for some p < i with tokens[p] == tokens[i]."""
    T = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, i, p)
    earlier = torch.tril(torch.ones(T, T, dtype=torch.bool, device=tokens.device), -1)
    occ = same & earlier  # p < i with the same token
    targets = torch.zeros_like(occ)
    targets[:, :, 1:] = occ[:, :, :-1]  # key j = p + 1 (<= i since p < i)
    return targets


def induction_score(
    pattern: Pattern, tokens: Int[torch.Tensor, "batch pos"], attention_mask: Optional[torch.Tensor] = None
) -> Float[torch.Tensor, "head"]:
    """Attention mass on the tokens that followed earlier occurrences of the query's token."""
    tokens = _tokens(tokens, pattern)
    return score_on_keys(pattern, induction_targets(tokens), attention_mask)


def first_token_score(pattern: Pattern, attention_mask: Optional[torch.Tensor] = None) -> Float[torch.Tensor, "head"]:
    """Attention to the first real key, over real queries after it."""
    p, mask = _prep(pattern, attention_mask)
    B, _, T, _ = p.shape
    first = mask.long().argmax(-1)  # first real position per example
    targets = torch.zeros(B, T, T, dtype=torch.bool, device=p.device)
    targets[torch.arange(B), :, first] = True
    after = torch.arange(T, device=p.device)[None, :] > first[:, None]  # (B, q)
    targets &= after[:, :, None]
    return score_on_keys(p, targets, mask)


def attention_entropy(pattern: Pattern, attention_mask: Optional[torch.Tensor] = None) -> Float[torch.Tensor, "head"]:
    """Mean entropy (nats) of each real query's attention distribution."""
    p, mask = _prep(pattern, attention_mask)
    p = p.clamp(min=0) * mask[:, None, None, :].to(p.dtype)
    ent = -torch.special.xlogy(p, p).sum(-1)
    return masked_mean_over_queries(ent, mask)


def mean_attention_distance(pattern: Pattern, attention_mask: Optional[torch.Tensor] = None) -> Float[torch.Tensor, "head"]:
    """Mean over real queries of the attention-weighted distance i - j to the keys."""
    p, mask = _prep(pattern, attention_mask)
    T = p.shape[-1]
    idx = torch.arange(T, device=p.device, dtype=p.dtype)
    dist = (idx[:, None] - idx[None, :]).clamp(min=0)
    per_q = (p * mask[:, None, None, :].to(p.dtype) * dist).sum(-1)
    return masked_mean_over_queries(per_q, mask)


def make_induction_tokens(
    n: int, seq_len: int, vocab: Union[int, Sequence[int]], seed: int = 0, bos: Optional[int] = None
) -> Int[torch.Tensor, "n pos"]:
    """n rows of a random sequence of `seq_len` tokens repeated twice: (n, 2 * seq_len), or
    (n, 2 * seq_len + 1) with a leading `bos`. Tokens are drawn uniformly from range(vocab)
    (or from the given ids) without repeats inside a row's sequence when the vocabulary
    allows, so the only repeats are the induction ones."""
    ids = torch.arange(vocab) if isinstance(vocab, int) else torch.as_tensor(list(vocab), dtype=torch.long)
    if bos is not None:
        ids = ids[ids != bos]
    g = torch.Generator().manual_seed(seed)
    if len(ids) >= seq_len:
        rows = torch.stack([ids[torch.randperm(len(ids), generator=g)[:seq_len]] for _ in range(n)])
    else:
        rows = ids[torch.randint(len(ids), (n, seq_len), generator=g)]
    tokens = torch.cat([rows, rows], dim=1)
    if bos is not None:
        tokens = torch.cat([torch.full((n, 1), bos, dtype=torch.long), tokens], dim=1)
    return tokens


@dataclass
class HeadScores:
    """Scores per (layer, head). Every field except `alibi_slope` follows the module
    docstring; `alibi_slope` is NaN for models without ALiBi."""

    prev_token: Float[torch.Tensor, "layer head"]
    induction: Float[torch.Tensor, "layer head"]
    duplicate_token: Float[torch.Tensor, "layer head"]
    first_token: Float[torch.Tensor, "layer head"]
    entropy: Float[torch.Tensor, "layer head"]
    mean_distance: Float[torch.Tensor, "layer head"]
    alibi_slope: Float[torch.Tensor, "layer head"]

    @property
    def names(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(f"no score {name!r}; scores: {self.names}")
        return getattr(self, name)

    def to_rows(self) -> list[dict]:
        """One dict per head: {"layer", "head", "name" ("L0H1"), <score>: float, ...}."""
        L, H = self.prev_token.shape
        rows = []
        for layer in range(L):
            for head in range(H):
                row = dict(layer=layer, head=head, name=f"L{layer}H{head}")
                row.update({n: float(getattr(self, n)[layer, head]) for n in self.names})
                rows.append(row)
        return rows


def alibi_slopes(model) -> Float[torch.Tensor, "layer head"]:
    """Each attention layer's ALiBi slopes, NaN when `cfg.positional != "alibi"`."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if model.cfg.positional != "alibi":
        return torch.full((L, H), float("nan"))
    return torch.stack([b.attn.alibi_slopes.detach().float().cpu() for b in model.blocks])


@torch.no_grad()
def head_scores(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Optional[torch.Tensor] = None,
    induction_tokens: Union[None, bool, torch.Tensor] = None,
) -> HeadScores:
    """All scores for every head of `model`.

    Previous-token, duplicate-token, first-token, entropy and distance are measured on
    `tokens` (with `attention_mask`). Induction is measured on `induction_tokens`: by default
    (None) on `make_induction_tokens(8, seq_len, model.cfg.d_vocab)` with seq_len =
    min(32, (n_ctx - 1) // 2) (after the BOS token when the config has one; NaN when a model
    with learned positions has no room for two repeats of 2 tokens); pass a tensor to choose,
    or False to measure it on `tokens` instead.
    """
    from .cache import cached

    if tokens.ndim == 1:
        tokens = tokens[None]
    pats = cached(model, tokens, names="pattern", attention_mask=attention_mask)
    per_layer = {n: [] for n in ("prev_token", "duplicate_token", "first_token", "entropy", "mean_distance", "induction")}
    for layer in range(model.cfg.n_layers):
        p = pats[f"blocks.{layer}.attn.hook_pattern"]
        per_layer["prev_token"].append(previous_token_score(p, attention_mask))
        per_layer["duplicate_token"].append(duplicate_token_score(p, tokens, attention_mask))
        per_layer["first_token"].append(first_token_score(p, attention_mask))
        per_layer["entropy"].append(attention_entropy(p, attention_mask))
        per_layer["mean_distance"].append(mean_attention_distance(p, attention_mask))
    ind_pats = None
    if induction_tokens is False:
        ind_tokens, ind_mask, ind_pats = tokens, attention_mask, pats
    else:
        if induction_tokens is None or induction_tokens is True:
            seq_len = min(32, (model.cfg.n_ctx - 1) // 2)  # room for a BOS token either way
            if seq_len >= 2 or not model.cfg.uses_learned_positions:  # a repeat of >= 2 tokens fits the context
                induction_tokens = make_induction_tokens(8, max(2, seq_len), model.cfg.d_vocab, seed=0,
                                                         bos=model.cfg.bos_token_id)
            else:
                induction_tokens = None
        if induction_tokens is not None:
            ind_tokens, ind_mask = induction_tokens.to(model.cfg.device), None
            ind_pats = cached(model, ind_tokens, names="pattern")
    for layer in range(model.cfg.n_layers):
        if ind_pats is None:  # n_ctx too short for a repeated sequence: the score is undefined
            per_layer["induction"].append(torch.full((model.cfg.n_heads,), float("nan"), device=tokens.device))
            continue
        p = ind_pats[f"blocks.{layer}.attn.hook_pattern"]
        per_layer["induction"].append(induction_score(p, ind_tokens, ind_mask))
    stacked = {n: torch.stack(v).cpu() for n, v in per_layer.items()}
    return HeadScores(alibi_slope=alibi_slopes(model), **stacked)
