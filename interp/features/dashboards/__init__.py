"""Feature dashboards: what each latent of a dictionary fires on and what it writes.

```python
from interp import features
store = features.dashboard("runs/sae", "data/checkpoints/shakespeare_vanilla", tokens=200_000)
d = store.latent(7)        # LatentDashboard, read from disk: no model needed
d.top[0].pieces, d.top[0].acts          # the top context's tokens and the latent on each
d.intervals[3].contexts, d.hist_counts, d.logit_top, d.neighbours
store.table()["density"]   # every latent, for the latent table
```
```bash
interp features dashboard runs/sae --ckpt data/checkpoints/shakespeare_vanilla --tokens 200000 --out runs/sae/dashboard
```

Per latent, over held-out tokens of the checkpoint's own task (its test split by default):
the `n_top` (20) top-activating contexts with the latent's activation on every token of
each, `n_intervals` (10) equal bins of (0, max] with `per_interval` (5) random samples each,
a 50-bin histogram, density, mean and max; from the weights, the top / bottom 10 tokens of
its direct logit effect and its 10 nearest decoder neighbours (`compute.py` says how). Written
once to a store on disk (`store.py`) from which a page opens any latent in milliseconds.

Positions that are scored: real tokens, and not a leading BOS (`exclude_bos`, as
`features.evaluate`): its activations are outliers no dictionary is trained on. BOS still
shows inside contexts, at activation 0.

The model runs once: the second pass reads the dictionary inputs kept from the first (up to
`CACHE_BYTES`, 2 GiB; beyond that it runs the model again).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Optional, Union

import torch

from ..data import TokenBatch, token_batches
from ..dictionary import DictionaryError, SparseDictionary
from ..splicing import IDENTITY_FIELDS, _flat, hook_widths, model_identity
from .compute import collect, decoder_neighbours, logit_effects
from .store import (FORMAT, LATENTS, MANIFEST, TENSORS, VOCAB, Context, DashboardStore, Interval, LatentDashboard,
                    fingerprint, open_dashboards, summarise)

__all__ = ["dashboard", "prompt_latents", "open_dashboards", "DashboardStore", "LatentDashboard", "Context", "Interval", "fingerprint",
           "check_reads", "DEFAULT_DIR"]

PathLike = Union[str, os.PathLike]
DEFAULT_DIR = "dashboard"  # a dictionary's store, by default: DICT/dashboard
CACHE_BYTES = 2 * 2**30  # dictionary inputs kept for the second pass up to this size (else the model runs again)
Progress = Union[bool, Callable[[float, str], None]]


def check_reads(model, sae: SparseDictionary, check_model: bool = True) -> None:
    """One clear DictionaryError unless `model` has the hook `sae` reads, at the right width,
    and (with `check_model`) is the model the dictionary was trained on."""
    cfg = sae.cfg
    name = cfg.hook_name
    if name not in model.hook_dict:
        raise DictionaryError(f"dictionary hook {name!r} is not a hook of this model ({model.cfg.name}, "
                              f"{model.cfg.n_layers} layers); valid hooks: {', '.join(sorted(model.hook_dict))}")
    widths = hook_widths(model)
    if name not in widths:
        raise DictionaryError(f"{name}: not one vector per position (attention patterns / scores); a dictionary "
                              "cannot read it")
    if widths[name] != cfg.d_in:
        raise DictionaryError(f"dictionary d_in={cfg.d_in} does not fit {name}, which is {widths[name]} wide in "
                              f"this model ({model.cfg.name})")
    if check_model and cfg.model:
        ours = model_identity(model)
        diff = [f"{f}: dictionary {cfg.model[f]!r} vs model {ours[f]!r}" for f in IDENTITY_FIELDS
                if f in cfg.model and f in ours and cfg.model[f] != ours[f]]
        if diff:
            src = f" (trained on {cfg.model['checkpoint']})" if cfg.model.get("checkpoint") else ""
            raise DictionaryError(f"dictionary for {name} was trained on another model{src}: {', '.join(diff)}; "
                                  "pass check_model=False to use it anyway")


@torch.no_grad()
def prompt_latents(model, sae: SparseDictionary, tokens: torch.Tensor, check_model: bool = True) -> torch.Tensor:
    """(t, d_sae) float latents of `sae` on every position of one prompt (`tokens` (t,) ids):
    the forward stops after the block the dictionary reads."""
    check_reads(model, sae, check_model)
    tokens = torch.as_tensor(tokens).reshape(1, -1).to(next(model.parameters()).device)
    seen: dict = {}
    stop = _stop_layer(sae.cfg.hook_name, model.cfg.n_layers)
    model.run_with_hooks(tokens, stop_at_layer=stop, fwd_hooks=[(sae.cfg.hook_name, lambda a, hook: seen.update(x=a))],
                         **({} if stop is not None else {"return_type": None}))
    x = _flat(seen["x"], sae.cfg.d_in).to(sae.W_enc.device)
    return sae.activation(sae.pre_acts(x))[0].float()


def _stop_layer(name: str, n_layers: int) -> Optional[int]:
    """`stop_at_layer` for a forward that only needs the hook `name` (None: the whole model)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        need = int(parts[1]) + 1
        return need if need < n_layers else None
    return 0 if name in ("hook_embed", "hook_pos_embed") else None


def _reporter(progress: Progress, total: int, what: str):
    """(callback(phase, n_rows), close) for a tqdm bar or a user's `progress(fraction, message)`."""
    if callable(progress):
        done = [0]

        def step(phase: str, n: int) -> None:
            done[0] += n
            progress(min(done[0] / total, 1.0), f"{what}: {phase}")

        return step, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"dashboards {what}", unit="seq", disable=not progress)

    def tick(phase: str, n: int) -> None:
        bar.set_postfix_str(phase, refresh=False)
        bar.update(n)

    return tick, bar.close


def _token_set(data: Any, source: Any, split: str, tokens: int, batch_size: int, seq_len: Optional[int],
               device: torch.device) -> list[TokenBatch]:
    if data is None:
        if source is None:
            raise DictionaryError("features.dashboard: give a checkpoint directory, or data= token batches")
        batches = list(token_batches(source, split, tokens, batch_size, seq_len, device))
    else:
        if isinstance(data, torch.Tensor):
            data = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
        batches = [b if isinstance(b, TokenBatch) else TokenBatch(b, None) for b in data]
        batches = [TokenBatch(b.tokens.to(device), None if b.mask is None else b.mask.to(device)) for b in batches]
    if not batches:
        raise DictionaryError("features.dashboard: no tokens")
    widths = {b.tokens.shape[1] for b in batches}
    if len(widths) != 1:
        raise DictionaryError(f"features.dashboard: token batches of different widths {sorted(widths)}; pad them to one")
    return batches


@torch.no_grad()
def dashboard(sae: Union[SparseDictionary, PathLike], model: Any = None, tokens: int = 200_000,
              out: Optional[PathLike] = None, *, split: str = "test", batch_size: int = 32,
              seq_len: Optional[int] = None, device: Union[None, str, torch.device] = None,
              data: Optional[Iterable] = None, n_top: int = 20, n_intervals: int = 10, per_interval: int = 5,
              n_bins: int = 50, n_logits: int = 10, n_neighbours: int = 10, context: tuple[int, int] = (24, 8),
              exclude_bos: bool = True, seed: int = 0, progress: Progress = True,
              check_model: bool = True) -> DashboardStore:
    """Compute the dashboards of every latent of `sae` and write them to `out`; returns the store.

    Args:
        sae: a dictionary, or its directory (then `out` defaults to `DIR/dashboard`).
        model: a checkpoint directory (its task's `split` gives the tokens), or a loaded model
            (tokens from `data=`, else from the checkpoint `sae.cfg.model` records); default:
            that recorded checkpoint.
        tokens: how many held-out tokens (the last batch is cut to about this many).
        device: where to compute (default: the model's device, cpu for a path; "auto" = cuda
            when there is one).
        data: token batches instead of the task's: a (n, T) tensor or `TokenBatch`es of one width.
        context: tokens shown before and after each activation.
        progress: a tqdm bar (True), none (False), or `progress(fraction, message)`.
    """
    from interp.checkpoint import load as load_checkpoint
    from interp.training.config import resolve_device

    from ..io import load as load_dictionary

    t0 = time.perf_counter()
    dict_path = None
    if isinstance(sae, (str, os.PathLike)):
        dict_path = str(sae)
        sae = load_dictionary(sae)
    if not isinstance(sae, SparseDictionary):
        raise DictionaryError(f"features.dashboard: expected a dictionary or its directory, got {type(sae).__name__}")
    if out is None:
        if dict_path is None:
            raise DictionaryError("features.dashboard: give out= (where to write) for a dictionary not loaded from disk")
        out = os.path.join(dict_path, DEFAULT_DIR)
    for name, v, lo in (("tokens", tokens, 1), ("batch_size", batch_size, 1), ("n_top", n_top, 1),
                        ("n_intervals", n_intervals, 1), ("per_interval", per_interval, 1), ("n_bins", n_bins, 1),
                        ("n_logits", n_logits, 1), ("n_neighbours", n_neighbours, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise DictionaryError(f"features.dashboard: {name} must be an integer >= {lo}, got {v!r}")
    if len(context) != 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in context):
        raise DictionaryError(f"features.dashboard: context must be (before, after), two integers >= 0, got {context!r}")

    if model is None:
        model = sae.cfg.model.get("checkpoint")
        if model is None:
            raise DictionaryError("features.dashboard: the dictionary records no checkpoint; pass the model")
    source, tokenizer = None, None
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        dev = resolve_device(device or "cpu")
        model, tokenizer = load_checkpoint(model, device=dev)
    else:
        dev = resolve_device(device) if device is not None else next(model.parameters()).device
        model = model.to(dev)
        tokenizer = getattr(model, "tokenizer", None)
        source = sae.cfg.model.get("checkpoint")
    check_reads(model, sae, check_model)
    batches = _token_set(data, source, split, tokens, batch_size, seq_len, dev)

    was_model, was_sae, sae_dev = model.training, sae.training, sae.W_enc.device
    model.eval()
    sae.eval().to(dev)
    try:
        tensors, n_scored, note = _compute(sae, model, batches, n_top, n_intervals, per_interval, n_bins, n_logits,
                                           n_neighbours, context, exclude_bos, seed, progress)
    finally:
        model.train(was_model)
        sae.train(was_sae)
    vocab = [tokenizer.decode([i]) if tokenizer is not None else f"<{i}>" for i in range(model.cfg.d_vocab)]
    T = tensors["tokens"].shape[1]
    summaries = summarise(tensors["top_token"], tensors["top_value"], tensors["tokens"], T, vocab,
                          tensors.get("logit_top_id"), tensors["n_fired"], n_scored)
    manifest = {
        "format": FORMAT, "d_sae": sae.cfg.d_sae,
        "dictionary": {"path": dict_path, "config": sae.cfg.to_dict(), "fingerprint": fingerprint(sae)},
        "checkpoint": source, "model": model_identity(model),
        "tokens": {"split": split if data is None else "data=", "n_sequences": int(tensors["tokens"].shape[0]),
                   "seq_len": T, "n_scored": n_scored, "exclude_bos": exclude_bos},
        "settings": {"n_top": n_top, "n_intervals": n_intervals, "per_interval": per_interval, "n_bins": n_bins,
                     "n_logits": n_logits, "n_neighbours": n_neighbours, "context": list(context), "seed": seed},
        "logit_effect": note, "device": str(dev), "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    sae.to(sae_dev)
    return _write(out, tensors, manifest, vocab, summaries)


def _compute(sae, model, batches, n_top, n_intervals, per_interval, n_bins, n_logits, n_neighbours, context,
             exclude_bos, seed, progress):
    cfg = sae.cfg
    T = batches[0].tokens.shape[1]
    bos = getattr(model.cfg, "bos_token_id", None) if exclude_bos else None
    stop = _stop_layer(cfg.hook_name, model.cfg.n_layers)
    n_rows = sum(len(b.tokens) for b in batches)
    store: dict = {}

    def capture(act, hook):
        store["x"] = act

    def scored(b: TokenBatch) -> torch.Tensor:
        m = torch.ones(b.tokens.shape, dtype=torch.bool, device=b.tokens.device) if b.mask is None else b.mask.bool()
        if bos is not None:
            m = m.clone()
            m[:, 0] &= b.tokens[:, 0] != bos
        return m

    # the second pass reuses the first pass's dictionary inputs when they fit in `CACHE_BYTES`
    n_tok = sum(b.tokens.numel() for b in batches)
    keep = n_tok * cfg.d_in * 4 <= CACHE_BYTES
    inputs: list[torch.Tensor] = []

    def latent_batches():
        row = 0
        for i, b in enumerate(batches):
            if i < len(inputs):
                x = inputs[i]
            else:
                model.run_with_hooks(b.tokens, attention_mask=b.mask, stop_at_layer=stop,
                                     fwd_hooks=[(cfg.hook_name, capture)], **({} if stop is not None else {"return_type": None}))
                x = _flat(store.pop("x"), cfg.d_in)
                if keep:
                    inputs.append(x)
            z = sae.activation(sae.pre_acts(x)).float()
            yield z * scored(b)[..., None], row
            row += len(b.tokens)

    step, close = _reporter(progress, 2 * n_rows, f"{cfg.arch} on {cfg.hook_name}")
    try:
        stats = collect(latent_batches, cfg.d_sae, T, n_top=n_top, n_intervals=n_intervals, per_interval=per_interval,
                        n_bins=n_bins, context=context, seed=seed, progress=step)
    finally:
        close()
    n_scored = int(sum(int(scored(b).sum()) for b in batches))
    effects, note = logit_effects(sae, model, n_logits)
    ids, cos = decoder_neighbours(sae.W_dec, n_neighbours)
    tensors = dict(stats, neighbour_id=ids.int(), neighbour_cos=cos,
                   tokens=torch.cat([b.tokens for b in batches]).int().cpu(),
                   mask=torch.cat([torch.ones_like(b.tokens, dtype=torch.bool) if b.mask is None else b.mask.bool()
                                   for b in batches]).cpu())
    if effects is not None:
        tensors.update(logit_top_id=effects["top_id"].int(), logit_top_value=effects["top_value"],
                       logit_bottom_id=effects["bottom_id"].int(), logit_bottom_value=effects["bottom_value"])
    return tensors, n_scored, note


def _write(out: PathLike, tensors: dict, manifest: dict, vocab: list[str], summaries: list[str]) -> DashboardStore:
    """All files into a temp dir beside `out`, then renamed into place (a reader never sees half a store)."""
    from safetensors.torch import save_file

    from interp.checkpoint import CheckpointError, _atomic_dir

    try:
        with _atomic_dir(out) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / TENSORS), metadata={"format": FORMAT})
            (tmp / VOCAB).write_text(json.dumps(vocab, ensure_ascii=False))
            (tmp / LATENTS).write_text(json.dumps({"summary": summaries}, ensure_ascii=False))
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    except (CheckpointError, OSError) as e:
        raise DictionaryError(f"features.dashboard: cannot write {out}: {e}") from None
    return DashboardStore(out)
