"""What a dashboard shows, computed from a stream of latent batches and from the weights.

Over the data (two passes, so no (all tokens x d_sae) matrix is ever held, only one batch):

* pass 1: per latent, how many scored tokens it fires on, the sum of its activations, and
  its `n_top` largest activations with the activations of that latent on a window of
  tokens around each (`TopBuffer`, a running top-k per latent merged batch by batch);
* pass 2, once the maximum of each latent is known: the activation histogram (`n_bins`
  equal bins of (0, max]) and `n_intervals` equal bins of (0, max] with `per_interval`
  samples drawn uniformly at random from each (a top-k of random keys per (latent, bin):
  exact uniform sampling without replacement, in one pass). Equal-width bins of the
  activation range are what sae_vis calls "quantile groups"; how many tokens fall in each
  bin is kept too, so a page can say which share of the firing tokens a bin holds.

From the weights: each latent's logit effect (its decoder direction, mapped into the
residual stream where it is not already there, centred when the final norm is a LayerNorm,
times the unembedding with the final norm's weight folded in:
`HookedTransformer.tokens_to_residual_directions`) and its nearest decoder neighbours by
cosine.

Everything runs on the latents' device; the batch of latents is the only dense
(tokens, d_sae) tensor.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

RESIDUAL_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                  "hook_xt_pre", "hook_xt_mid", "hook_xt_post", "hook_xe_pre", "hook_xe_mid", "hook_xe_post",
                  "hook_embed", "hook_pos_embed")


# ============================================================================ running top-k
def _descending(key: Float[Tensor, "n"]) -> Int[Tensor, "n"]:
    """float32 keys -> int64 in [0, 2^32) whose ascending order is the keys' descending order
    (IEEE bits made order-preserving: negative floats have their non-sign bits flipped)."""
    b = key.float().contiguous().view(torch.int32).long()
    b = torch.where(b < 0, b ^ 0x7FFFFFFF, b)  # now ascending with the float
    return (2**31 - 1) - b  # descending, non-negative


def top_per_group(group: Int[Tensor, "n"], key: Float[Tensor, "n"], k: int) -> tuple[Tensor, Tensor]:
    """For entries tagged with `group`, the indices of the `k` largest `key`s of every group
    and their rank in it (0 = largest): one sort of (group, -key) packed into an int64."""
    n = group.numel()
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=group.device)
        return empty, empty
    order = (group.long() * 2**32 + _descending(key)).argsort()
    g = group[order]
    rank = torch.arange(n, device=g.device) - torch.searchsorted(g, g)  # searchsorted: first index of g's group
    keep = rank < k
    return order[keep], rank[keep]


class TopBuffer:
    """The `k` entries with the largest keys of each of `n_groups` groups seen so far, each
    with its value, its global token index and a window of activations (`width` floats).

    An update only looks at the new entries whose key beats their group's current k-th best
    (after the first batches, few do) and re-sorts only the groups they fall in, so the cost
    per batch shrinks as the stream goes on. Windows are computed once, when an entry gets
    in, into an append-only pool; the buffer holds pool indices (`window()` gathers them)."""

    def __init__(self, n_groups: int, k: int, width: int, device: torch.device):
        self.n_groups, self.k, self.width = n_groups, k, width
        self.key = torch.full((n_groups, k), float("-inf"), device=device)
        self.value = torch.zeros(n_groups, k, device=device)
        self.token = torch.full((n_groups, k), -1, dtype=torch.long, device=device)
        self.slot = torch.full((n_groups, k), -1, dtype=torch.long, device=device)  # row of the window pool
        self.pool: list[Tensor] = []
        self.pooled = 0

    def update(self, group: Tensor, key: Tensor, value: Tensor, token: Tensor,
               windows: Callable[[Tensor], Tensor]) -> None:
        """Merge new entries; `windows(i)` gives the (len(i), width) windows of new entries
        `i` (called only for the entries that make it into the buffer)."""
        cand = (key > self.key[group, -1]).nonzero().flatten()  # beats its group's k-th best
        if cand.numel() == 0:
            return
        group, key, value, token = group[cand], key[cand], value[cand], token[cand]
        rows = (torch.bincount(group, minlength=self.n_groups) > 0).nonzero().flatten()  # the groups that change
        held = self.token[rows] >= 0  # (m, k)
        n_old = int(held.sum())
        all_group = torch.cat([rows[:, None].expand_as(held)[held], group])
        idx, rank = top_per_group(all_group, torch.cat([self.key[rows][held], key]), self.k)
        new = (idx >= n_old).nonzero().flatten()
        slots = torch.cat([self.slot[rows][held], torch.full_like(cand, -1)])[idx]
        if new.numel():
            self.pool.append(windows(cand[idx[new] - n_old]))
            slots[new] = torch.arange(self.pooled, self.pooled + new.numel(), device=slots.device)
            self.pooled += new.numel()
        g = all_group[idx]
        keys, values, tokens = (torch.cat([a[rows][held], b])[idx] for a, b in
                                ((self.key, key), (self.value, value), (self.token, token)))
        self.key[rows], self.value[rows], self.token[rows], self.slot[rows] = float("-inf"), 0.0, -1, -1
        self.key[g, rank], self.value[g, rank], self.token[g, rank], self.slot[g, rank] = keys, values, tokens, slots
        if self.pooled > 4 * self.n_groups * self.k:  # compact: keep only the windows still held
            live = self.window().reshape(-1, self.width)
            ids = torch.arange(live.shape[0], device=live.device).reshape(self.n_groups, self.k)
            self.slot = torch.where(self.slot >= 0, ids, -1)
            self.pool, self.pooled = [live], live.shape[0]

    def window(self) -> Tensor:
        """(n_groups, k, width) windows of the entries held (0 where a slot is empty)."""
        pool = torch.cat(self.pool + [torch.zeros(1, self.width, device=self.key.device)])  # last row: empty
        return pool[torch.where(self.slot >= 0, self.slot, pool.shape[0] - 1)]


# ============================================================================ the two passes
def _windows(z: Float[Tensor, "n_tok d_sae"], T: int, before: int, after: int):
    """entries (batch-local flat token, latent) -> that latent's activations on the tokens
    [pos - before, pos + after] of the same sequence (0 outside it)."""
    offsets = torch.arange(-before, after + 1, device=z.device)

    def get(tok: Tensor, lat: Tensor) -> Tensor:
        row, pos = tok // T, tok % T
        at = pos[:, None] + offsets
        inside = (at >= 0) & (at < T)
        flat = row[:, None] * T + at.clamp(0, T - 1)
        return z[flat, lat[:, None]] * inside

    return get


@torch.no_grad()
def collect(latent_batches: Callable[[], Iterable[tuple[Tensor, int]]], d_sae: int, T: int, *, n_top: int = 20,
            n_intervals: int = 10, per_interval: int = 5, n_bins: int = 50, context: tuple[int, int] = (24, 8),
            seed: int = 0, progress: Optional[Callable[[str, int], None]] = None) -> dict[str, Tensor]:
    """Per-latent statistics over a stream (module docstring).

    `latent_batches()` yields, each time it is called (once per pass, the same batches in the
    same order), `(z, first_row)`: `z` (b, T, d_sae) float latents, 0 at positions that are
    not scored (padding, a leading BOS), and the index of the batch's first sequence in the
    whole token set; a token's global index is `sequence * T + position`. `progress(phase,
    n_rows)` is called after each batch.

    Returns CPU tensors: `n_fired` (d_sae,) int64, `act_sum` (d_sae,) float64,
    `top_value`/`top_token` (d_sae, n_top) (token -1: fewer firings than n_top),
    `top_acts` (d_sae, n_top, W), `hist` (d_sae, n_bins) int64, `interval_count`
    (d_sae, n_intervals) int64, `interval_value`/`interval_token` (d_sae, n_intervals,
    per_interval), `interval_acts` (d_sae, n_intervals, per_interval, W), W = before + 1 + after.
    """
    before, after = context
    width = before + 1 + after
    dev = None
    top = n_fired = act_sum = None
    for z, first_row in latent_batches():  # ---------------------------------------- pass 1
        if dev is None:
            dev = z.device
            top = TopBuffer(d_sae, n_top, width, dev)
            n_fired = torch.zeros(d_sae, dtype=torch.long, device=dev)
            act_sum = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        b = z.shape[0]
        zf = z.reshape(b * T, d_sae)
        tok, lat = zf.nonzero(as_tuple=True)
        val = zf[tok, lat]
        n_fired += torch.bincount(lat, minlength=d_sae)
        act_sum.index_add_(0, lat, val.double())
        top.update(lat, val, val, tok + first_row * T, lambda i: _windows(zf, T, before, after)(tok[i], lat[i]))
        if progress is not None:
            progress("top activations", b)
    if dev is None:
        raise ValueError("no tokens: the token set is empty")
    peak = top.value[:, 0].clamp_min(torch.finfo(torch.float32).tiny)  # each latent's max (dead: unused)
    hist = torch.zeros(d_sae * n_bins, dtype=torch.long, device=dev)
    counts = torch.zeros(d_sae * n_intervals, dtype=torch.long, device=dev)
    samples = TopBuffer(d_sae * n_intervals, per_interval, width, dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    for z, first_row in latent_batches():  # ---------------------------------------- pass 2
        b = z.shape[0]
        zf = z.reshape(b * T, d_sae)
        tok, lat = zf.nonzero(as_tuple=True)
        val = zf[tok, lat]
        share = val / peak[lat]  # in (0, 1]; bin j of m holds (j/m, (j+1)/m]
        hist.index_add_(0, lat * n_bins + ((share * n_bins).ceil().long() - 1).clamp(0, n_bins - 1),
                        torch.ones_like(lat))
        ibin = ((share * n_intervals).ceil().long() - 1).clamp(0, n_intervals - 1)
        group = lat * n_intervals + ibin
        counts.index_add_(0, group, torch.ones_like(lat))
        key = torch.rand(val.shape, generator=gen, device=dev)
        samples.update(group, key, val, tok + first_row * T,
                       lambda i: _windows(zf, T, before, after)(tok[i], lat[i]))
        if progress is not None:
            progress("activation bins", b)
    return {
        "n_fired": n_fired.cpu(), "act_sum": act_sum.cpu(),
        "top_value": top.value.cpu(), "top_token": top.token.cpu(), "top_acts": top.window().cpu(),
        "hist": hist.reshape(d_sae, n_bins).cpu(), "interval_count": counts.reshape(d_sae, n_intervals).cpu(),
        "interval_value": samples.value.reshape(d_sae, n_intervals, per_interval).cpu(),
        "interval_token": samples.token.reshape(d_sae, n_intervals, per_interval).cpu(),
        "interval_acts": samples.window().reshape(d_sae, n_intervals, per_interval, width).cpu(),
    }


# ============================================================================ from the weights
def residual_directions(sae, model) -> tuple[Optional[Float[Tensor, "d_sae d_model"]], str]:
    """Each latent's decoder direction in the residual stream, in model units (what one unit
    of the latent adds there), and where it came from; `(None, why)` where the hook the
    dictionary writes is not one the residual stream is read from linearly."""
    cfg = sae.cfg
    out = cfg.out_hook_name or cfg.hook_name
    D = sae.W_dec.detach().float() / sae.scale_out.float()
    kind = out.rsplit(".", 1)[-1]
    d_model = model.cfg.d_model
    standard = getattr(model.cfg, "stream", "standard") == "standard"
    parts = out.split(".")
    layer = int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else None
    if kind in RESIDUAL_KINDS and D.shape[1] == d_model:
        return D, f"decoder rows written at {out}"
    if out.endswith("mlp.hook_post") and standard and layer is not None:
        W_out = model.blocks[layer].mlp.W_out.detach().float()  # (d_mlp, d_model)
        return D @ W_out.to(D.device), f"decoder rows at {out} through blocks.{layer}.mlp.W_out"
    if out.endswith("attn.hook_z") and standard and layer is not None:
        W_O = model.blocks[layer].attn.W_O.detach().float()  # (head, d_head, d_model)
        return D @ W_O.reshape(-1, d_model).to(D.device), f"decoder rows at {out} through blocks.{layer}.attn.W_O"
    return None, (f"{out} is not read linearly by the residual stream of this model "
                  f"({'factored' if not standard else 'standard'} stream), so the latent has no direct logit effect")


@torch.no_grad()
def logit_effects(sae, model, k: int = 10, chunk: int = 1024) -> tuple[Optional[dict], str]:
    """Top and bottom `k` tokens of each latent's direct logit effect: direction (centred if
    the final norm is a LayerNorm, which removes the mean) @ (W_U * ln_final.w). Returns
    ({"top_id", "top_value", "bottom_id", "bottom_value"}: (d_sae, k) CPU tensors, how), or
    (None, why) (see `residual_directions`)."""
    D, how = residual_directions(sae, model)
    if D is None:
        return None, how
    if getattr(model.cfg, "norm", None) == "layernorm":
        D = D - D.mean(-1, keepdim=True)
        how += ", centred (LayerNorm)"
    vocab = model.cfg.d_vocab
    U = model.tokens_to_residual_directions(torch.arange(vocab, device=model.W_U.device)).detach().float()  # (vocab, d)
    U = U.to(D.device)
    k = min(k, vocab)
    out = {n: [] for n in ("top_id", "top_value", "bottom_id", "bottom_value")}
    for start in range(0, D.shape[0], chunk):
        eff = D[start : start + chunk] @ U.T  # (chunk, vocab)
        hi, lo = eff.topk(k, dim=-1), eff.topk(k, dim=-1, largest=False)
        out["top_id"].append(hi.indices)
        out["top_value"].append(hi.values)
        out["bottom_id"].append(lo.indices)
        out["bottom_value"].append(lo.values)
    return {n: torch.cat(v).cpu() for n, v in out.items()}, how + ", times W_U with ln_final.w folded in"


@torch.no_grad()
def decoder_neighbours(W_dec: Float[Tensor, "d_sae d_out"], k: int = 10, chunk: int = 1024
                       ) -> tuple[Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"]]:
    """The `k` other latents whose decoder rows have the largest cosine with each latent's."""
    W = W_dec.detach().float()
    W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = W.shape[0]
    k = min(k, n - 1)
    ids, cos = [], []
    for start in range(0, n, chunk):
        sim = W[start : start + chunk] @ W.T
        rows = torch.arange(start, min(start + chunk, n), device=W.device)
        sim[rows - start, rows] = float("-inf")  # not itself
        top = sim.topk(k, dim=-1)
        ids.append(top.indices)
        cos.append(top.values)
    return torch.cat(ids).cpu(), torch.cat(cos).cpu()
