"""How good a dictionary is, on held-out tokens of its model's own task.

```python
stats = features.evaluate(sae, "data/checkpoints/shakespeare_vanilla", tokens=50_000)
stats["fve"], stats["l0"], stats["ce_recovered"], stats["dead_fraction"]
```

Definitions (over the real, non-pad tokens; `x` the dictionary's input, `y` its target, the
same activation for an SAE, `y_hat` the reconstruction, `z` the latents):

* `l0`: mean number of latents > 0 per token.
* `fve`: 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 (fraction of variance explained).
* `mse`: mean squared error per element; `cosine`: mean cos(y, y_hat); `l2_ratio`: mean
  ||y_hat|| / ||y|| (below 1: shrinkage).
* `ce_loss_clean`, `ce_loss_spliced` (reconstruction in place of the activation it replaces:
  `y` at the output hook), `ce_loss_zero_ablation` (that activation set to 0),
  `ce_loss_mean_ablation` (set to its mean over the evaluated tokens): mean next-token
  cross-entropy over every position whose next token is real.
* `ce_recovered` = (zero - spliced) / (zero - clean); `ce_recovered_mean` the same against
  mean ablation (1: as good as the model, 0: as bad as ablating the activation).
* `kl`: mean KL(clean || spliced) of the next-token distributions.
* `dead_fraction`: latents that never fired on these tokens; `dense_fraction`: latents that
  fire on more than 10% of them; `latent_density` (per latent) and `density_histogram`
  (log10 density of the live latents).

With `exclude_bos` (the default, as the trainer's `data.exclude_bos`) a leading BOS token,
whose activations are outliers the dictionary never trained on, is left out of the
reconstruction metrics and keeps its clean activation in the spliced run; next-token losses
count every position.

Two passes over the data: the first measures the mean activation for mean ablation, the
second runs clean, spliced, zero- and mean-ablated forwards per batch. Sums are float64 on
the device until the end.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn.functional as F

from .data import TokenBatch, token_batches
from .dictionary import DictionaryError, SparseDictionary
from .splicing import _flat, splice

DENSE = 0.1  # a latent firing on more than this share of tokens is "dense"
HIST_EDGES = [x / 4 for x in range(-32, 1)]  # log10 density bins, 1e-8 .. 1


def _batches(data: Any, default_source: Any, split: str, tokens: int, batch_size: int, seq_len: Optional[int],
             device: torch.device) -> list[TokenBatch]:
    if data is None:
        if default_source is None:
            raise DictionaryError("features.evaluate: give a checkpoint directory, or data= token batches, "
                                  "to evaluate a (model, tokenizer) pair")
        return list(token_batches(default_source, split, tokens, batch_size, seq_len, device))
    if isinstance(data, torch.Tensor):
        data = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
    out = []
    for b in data:
        b = b if isinstance(b, TokenBatch) else TokenBatch(b, None)
        out.append(TokenBatch(b.tokens.to(device), None if b.mask is None else b.mask.to(device)))
    return out


def _capture(name: str, store: dict):
    def hook(act, hook):
        store[name] = act
    return hook


def _next_token_stats(logits: torch.Tensor, targets: torch.Tensor, ref_logp: Optional[torch.Tensor] = None):
    """(sum of CE, count) over positions with a target; with `ref_logp` also sum KL(ref || this)."""
    valid = targets != -100
    logp = logits.float().log_softmax(-1)
    ce = F.nll_loss(logp.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    kl = None
    if ref_logp is not None:
        kl = ((ref_logp.exp() * (ref_logp - logp)).sum(-1) * valid).sum()
    return ce.double(), valid.sum(), kl, logp


@torch.no_grad()
def evaluate(sae: SparseDictionary, model: Any, tokens: int = 50_000, batch_size: int = 32,
             device: Union[None, str, torch.device] = None, *, split: str = "test", seq_len: Optional[int] = None,
             data: Optional[Iterable] = None, progress: bool = True, check_model: bool = True,
             exclude_bos: bool = True) -> dict:
    """Metrics of `sae` (module docstring) on `tokens` held-out tokens.

    Args:
        model: a checkpoint directory (its task supplies the tokens), or a `(model, tokenizer)`
            pair / a model (tokens from `data=`, or from the checkpoint recorded in
            `sae.cfg.model["checkpoint"]`).
        device: where to run (default: the model's device, or cpu for a checkpoint path).
        split: the task split the tokens come from.
        data: token batches instead of the task's: a (n, t) tensor, or an iterable of tensors
            / `TokenBatch`es.
        check_model: refuse a dictionary whose `cfg.model` identity differs from the model's.
        exclude_bos: leave a leading BOS position out (module docstring).
    """
    from interp.checkpoint import load as load_checkpoint
    from interp.training.config import resolve_device

    source = None
    if isinstance(model, (str, os.PathLike)):
        source = model
        dev = resolve_device(device or "cpu")
        model, _ = load_checkpoint(model, device=dev)
    else:
        if isinstance(model, tuple):
            model = model[0]
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        model = model.to(dev)
        source = sae.cfg.model.get("checkpoint")
    batches = _batches(data, source, split, tokens, batch_size, seq_len, dev)
    if not batches:
        raise DictionaryError("features.evaluate: no tokens to evaluate on")
    was_model, was_sae = model.training, sae.training
    sae_dev = next(sae.parameters()).device
    model.eval()
    sae.eval().to(dev)
    try:
        return _evaluate(sae, model, batches, progress, check_model, exclude_bos)
    finally:
        model.train(was_model)
        sae.train(was_sae).to(sae_dev)


def _positions(b: TokenBatch, bos: Optional[int]) -> torch.Tensor:
    """(b, t) bool: the positions whose activations are scored (real, and not a leading BOS)."""
    m = torch.ones(b.tokens.shape, dtype=torch.bool, device=b.tokens.device) if b.mask is None else b.mask.clone()
    if bos is not None:
        m[:, 0] &= b.tokens[:, 0] != bos
    return m


def _evaluate(sae: SparseDictionary, model, batches: list[TokenBatch], progress: bool, check_model: bool,
              exclude_bos: bool) -> dict:
    from tqdm.auto import tqdm

    from models import HookedTransformer

    cfg = sae.cfg
    in_name, out_name = cfg.hook_name, cfg.out_hook_name or cfg.hook_name
    dev = batches[0].tokens.device
    bos = getattr(model.cfg, "bos_token_id", None) if exclude_bos else None
    # pass 1: mean of the replaced activation, for mean ablation
    total = torch.zeros(cfg.d_out, dtype=torch.float64, device=dev)
    count = 0
    store: dict = {}
    for b in tqdm(batches, desc=f"features eval: mean of {out_name}", disable=not progress, leave=False):
        model.run_with_hooks(b.tokens, return_type=None, attention_mask=b.mask,
                             fwd_hooks=[(out_name, _capture("y", store))])
        y = _flat(store.pop("y"), cfg.d_out).double()
        m = _positions(b, bos)
        total += y[m].sum(0)
        count += int(m.sum())
    mean_act = (total / max(count, 1)).float()

    d_sae = cfg.d_sae
    fire_counts = torch.zeros(d_sae, dtype=torch.float64, device=dev)
    sums = torch.zeros(12, dtype=torch.float64, device=dev)
    # n_tok, sse, sum||y||^2, l0, cos, l2ratio, ce_clean, n_ce, ce_spliced, ce_zero, ce_mean, kl
    sum_y = torch.zeros(cfg.d_out, dtype=torch.float64, device=dev)
    for b in tqdm(batches, desc=f"features eval: {cfg.arch} on {in_name}", disable=not progress):
        store.clear()
        hooks = [(in_name, _capture("x", store))] + ([(out_name, _capture("y", store))] if cfg.is_transcoder else [])
        logits = model.run_with_hooks(b.tokens, attention_mask=b.mask, fwd_hooks=hooks)
        targets = HookedTransformer.next_token_targets(b.tokens, b.mask)
        ce_clean, n_ce, _, logp_clean = _next_token_stats(logits, targets)
        clean_out = store["y"] if cfg.is_transcoder else store["x"]
        x = _flat(store["x"], cfg.d_in)
        y = _flat(store["y"], cfg.d_out) if cfg.is_transcoder else x
        m = _positions(b, bos)
        x, y = x[m], y[m].float()
        y_hat, z = sae(x)
        y_hat = y_hat.float()
        err = (y - y_hat).pow(2).sum(-1)
        ny, nyh = y.norm(dim=-1), y_hat.norm(dim=-1)
        fires = z > 0
        fire_counts += fires.sum(0).double()
        sum_y += y.double().sum(0)
        # every intervention acts where the metrics look: pads and a leading BOS keep their clean value
        keep = (~m).reshape(m.shape + (1,) * (clean_out.ndim - 2))

        def at(value_fn):
            return [(out_name, lambda a, hook: torch.where(keep, clean_out, value_fn(a).to(a.dtype)))]

        with splice(model, sae, check_model=check_model):  # the splice writes first, `at` restores
            spliced = model.run_with_hooks(b.tokens, attention_mask=b.mask, fwd_hooks=at(lambda a: a))
        ce_sp, _, kl, _ = _next_token_stats(spliced, targets, logp_clean)
        zero = model.run_with_hooks(b.tokens, attention_mask=b.mask, fwd_hooks=at(torch.zeros_like))
        mean = model.run_with_hooks(b.tokens, attention_mask=b.mask,
                                    fwd_hooks=at(lambda a: mean_act.reshape(a.shape[2:]).expand_as(a)))
        ce_zero = _next_token_stats(zero, targets)[0]
        ce_mean = _next_token_stats(mean, targets)[0]
        sums += torch.stack([
            torch.tensor(float(len(y)), device=dev, dtype=torch.float64), err.double().sum(),
            ny.double().pow(2).sum(), fires.sum(-1).double().sum(),
            F.cosine_similarity(y_hat, y, dim=-1, eps=1e-12).double().sum(),
            (nyh / ny.clamp_min(1e-12)).double().sum(), ce_clean, n_ce.double(), ce_sp, ce_zero, ce_mean,
            kl.double()])
    v = sums.tolist()
    n, n_ce = v[0], v[7]
    sst = v[2] - float((sum_y / n).pow(2).sum()) * n  # sum ||y - mean||^2
    clean, spliced, zero_l, mean_l = (v[6] / n_ce, v[8] / n_ce, v[9] / n_ce, v[10] / n_ce)
    density = (fire_counts / n).float().cpu()
    live = density[density > 0]
    hist = torch.histogram(live.log10().clamp(HIST_EDGES[0], 0.0), torch.tensor(HIST_EDGES)).hist if len(live) \
        else torch.zeros(len(HIST_EDGES) - 1)

    def ratio(a: float, b: float) -> float:
        return a / b if b != 0 else float("nan")

    return {
        "arch": cfg.arch, "hook_name": cfg.hook_name, "out_hook_name": cfg.out_hook_name, "d_sae": d_sae,
        "n_tokens": int(n),
        "l0": v[3] / n,
        "fve": 1.0 - ratio(v[1], sst),
        "mse": v[1] / (n * cfg.d_out),
        "cosine": v[4] / n,
        "l2_ratio": v[5] / n,
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablation": zero_l,
        "ce_loss_mean_ablation": mean_l,
        "ce_recovered": ratio(zero_l - spliced, zero_l - clean),
        "ce_recovered_mean": ratio(mean_l - spliced, mean_l - clean),
        "kl": v[11] / n_ce,
        "dead_fraction": float((density == 0).float().mean()),
        "dense_fraction": float((density > DENSE).float().mean()),
        "density_histogram": {"log10_density_edges": HIST_EDGES, "counts": [int(c) for c in hist.tolist()],
                              "dead": int((density == 0).sum())},
        "latent_density": density.tolist(),
    }


def summary(stats: dict) -> dict:
    """`stats` without the per-latent lists (for printing)."""
    return {k: v for k, v in stats.items() if k not in ("latent_density",)}


__all__ = ["evaluate", "summary", "DENSE"]
