"""What a dictionary's latents are about: the measures a researcher checks first.

```python
acts = latent_activations(sae, model, token_batches(ckpt, "test", n_tokens=50_000))
purity, top = token_purity(acts.latents, acts.tokens, model.cfg.d_vocab)     # token-like latents
auc = label_auc(acts.latents[rows], labels[rows])                            # latents that track a bit
share = fourier_share(directions_over_numbers, key_freqs=[14, 26, 37, 43])   # modular arithmetic
```

* `token_purity`: the share of a latent's activation mass that falls on its most frequent
  token (1.0: it fires on one token only). On the current token it says "token-like"; on the
  previous token (`LatentActivations.prev_tokens`) it finds previous-token features.
* `label_auc`: each latent's ROC AUC for a binary label (rank statistic, ties averaged; 0.5 is
  chance, 1.0 a perfect detector, 0.0 a perfect detector of the other class).
* `fourier_share`: of each direction's power over the Fourier basis of Z_p (constant left
  out), the share in the given frequencies (cos + sin), as `interp.training.progress`'s
  embedding spectrum counts it.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int

from .dictionary import SparseDictionary


class LatentActivations(NamedTuple):
    """One row per real (unpadded) token position read."""

    latents: Float[torch.Tensor, "n d_sae"]
    tokens: Int[torch.Tensor, "n"]       # the token at the position
    prev_tokens: Int[torch.Tensor, "n"]  # the token before it (-1 at a sequence's first position)
    positions: Int[torch.Tensor, "n"]    # the position in its sequence
    rows: Int[torch.Tensor, "n"]         # which sequence (counting over all batches)


@torch.no_grad()
def latent_activations(sae: SparseDictionary, model, batches: Iterable, exclude_first: bool = False) -> LatentActivations:
    """Run `model` over `batches` (`features.TokenBatch`es, or (b, t) token tensors), read the
    dictionary's input hook and encode it: the latents of every real position, with the token
    there and the one before. `exclude_first` leaves out each sequence's first position (a BOS)."""
    hook = sae.cfg.hook_name
    out = {k: [] for k in LatentActivations._fields}
    seen = 0
    for batch in batches:
        tokens, mask = (batch.tokens, batch.mask) if hasattr(batch, "tokens") else (batch, None)
        tokens = tokens.to(model.cfg.device)
        store = {}

        def grab(x, hook):
            store["x"] = x.detach()

        model.run_with_hooks(tokens, attention_mask=mask, return_type=None, fwd_hooks=[(hook, grab)])
        x = store["x"]
        B, T = tokens.shape
        keep = torch.ones(B, T, dtype=torch.bool, device=tokens.device) if mask is None else mask.to(tokens.device).bool()
        if exclude_first:
            keep[:, 0] = False
        prev = torch.cat([tokens.new_full((B, 1), -1), tokens[:, :-1]], dim=1)
        pos = torch.arange(T, device=tokens.device).expand(B, T)
        row = (torch.arange(B, device=tokens.device) + seen)[:, None].expand(B, T)
        out["latents"].append(sae.encode(x[keep].to(sae.W_enc.dtype)).float().cpu())
        for name, t in (("tokens", tokens), ("prev_tokens", prev), ("positions", pos), ("rows", row)):
            out[name].append(t[keep].cpu())
        seen += B
    if not out["latents"]:
        raise ValueError("latent_activations: no batches")
    return LatentActivations(*(torch.cat(out[k]) for k in LatentActivations._fields))


def token_purity(latents: Float[torch.Tensor, "n d_sae"], token_ids: Int[torch.Tensor, "n"], n_vocab: int
                 ) -> tuple[Float[torch.Tensor, "d_sae"], Int[torch.Tensor, "d_sae"]]:
    """(purity, top token) per latent: the largest share of its activation mass on one token
    id. NaN purity (and top token -1) for a latent that never fires. Ids < 0 are left out."""
    valid = token_ids >= 0
    latents, token_ids = latents[valid].clamp_min(0).double(), token_ids[valid]
    mass = torch.zeros(n_vocab, latents.shape[1], dtype=torch.float64)
    mass.index_add_(0, token_ids, latents)  # (vocab, d_sae): activation mass per token
    total = mass.sum(0)
    best, top = mass.max(0)
    dead = total <= 0
    purity = torch.where(dead, torch.full_like(total, float("nan")), best / total.clamp_min(1e-300))
    return purity.float(), torch.where(dead, torch.full_like(top, -1), top)


def label_auc(latents: Float[torch.Tensor, "n d_sae"], labels: Bool[torch.Tensor, "n"]) -> Float[torch.Tensor, "d_sae"]:
    """ROC AUC of each latent's activation as a score for `labels` (Mann-Whitney U / n1 n0,
    ties given half credit). NaN when only one class is present."""
    labels = labels.bool()
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return torch.full((latents.shape[1],), float("nan"))
    ranks = _average_ranks(latents.double())  # (n, d_sae), 1-based, ties averaged
    u = ranks[labels].sum(0) - n1 * (n1 + 1) / 2
    return (u / (n1 * n0)).float()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Column-wise ranks 1..n with ties given their average rank."""
    n = x.shape[0]
    order = x.argsort(dim=0, stable=True)
    sorted_x = x.gather(0, order)
    # every member of a run of equal values gets the run's mean rank
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[1:] = sorted_x[1:] != sorted_x[:-1]
    run_id = new_run.long().cumsum(0) - 1  # (n, d): index of the run each sorted entry is in
    pos = torch.arange(1, n + 1, dtype=x.dtype)[:, None].expand_as(x)
    run_sum = torch.zeros_like(x).scatter_add_(0, run_id, pos)
    run_len = torch.zeros_like(x).scatter_add_(0, run_id, torch.ones_like(x))
    mean_rank = (run_sum / run_len.clamp_min(1)).gather(0, run_id)
    return torch.empty_like(x).scatter_(0, order, mean_rank)


def fourier_share(directions: Float[torch.Tensor, "n p"], freqs: Sequence[int]) -> Float[torch.Tensor, "n"]:
    """For functions on Z_p (one per row, e.g. a decoder direction read through the number
    tokens' unembedding), the share of their non-constant Fourier power in `freqs` (1-based,
    cos and sin together). NaN for a constant row."""
    from interp.training.progress import fourier_basis

    p = directions.shape[1]
    basis, _ = fourier_basis(p)
    coef = directions.double() @ basis.T  # (n, p): constant, cos 1, sin 1, ...
    k = p // 2
    power = coef[:, 1:1 + 2 * k].pow(2).view(-1, k, 2).sum(-1)  # (n, k)
    idx = torch.tensor([f - 1 for f in freqs], dtype=torch.long)
    total = power.sum(-1)
    share = power[:, idx].sum(-1) / total.clamp_min(1e-300)
    constant = total <= 1e-12 * coef.pow(2).sum(-1)  # nothing but the constant (up to rounding)
    return torch.where(constant, torch.full_like(share, float("nan")), share).float()


def live(latents: Float[torch.Tensor, "n d_sae"], min_count: int = 1) -> Bool[torch.Tensor, "d_sae"]:
    """Latents that fire (activation > 0) on at least `min_count` of the rows."""
    return (latents > 0).sum(0) >= min_count


def summarize(values: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict:
    """median / mean / quartiles of the finite `values` (under `mask`)."""
    v = values if mask is None else values[mask]
    v = v[torch.isfinite(v)].double()
    if v.numel() == 0:
        return {"n": 0}
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {"n": int(v.numel()), "mean": float(v.mean()), "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}
