"""Path patching (Wang et al. 2022): a sender head's effect through receivers' q/k/v only."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from jaxtyping import Int

from ..cache import cached
from .engine import (
    BaseRun,
    frozen_hook,
    prepare,
    progress_reporter,
    record_hook,
    rows_per_forward,
    where_hook,
)
from .metrics import as_metrics, evaluate, metric_end, resolve
from .result import PatchResult, labelled
from .sites import Head, Progress


def check_heads(model, heads: Sequence[Head], what: str) -> list[Head]:
    out = []
    for h in heads:
        l, i = int(h[0]), int(h[1])
        if not (0 <= l < model.cfg.n_layers and 0 <= i < model.cfg.n_heads):
            raise ValueError(f"{what} head {tuple(h)} is outside {model.cfg.n_layers} layers x {model.cfg.n_heads} heads")
        out.append((l, i))
    if not out:
        raise ValueError(f"no {what} heads given")
    return out


@torch.no_grad()
def path_patching(
    model,
    clean: Int[torch.Tensor, "batch pos"],
    corrupted: Int[torch.Tensor, "batch pos"],
    metric,
    receivers: Sequence[Head],
    receiver_input: Union[str, Sequence[str]] = "qkv",
    senders: Optional[Sequence[Head]] = None,
    *,
    direction: str = "denoise",
    freeze_mlps: bool = False,
    attention_mask: Optional[torch.Tensor] = None,
    reduce: str = "mean",
    memory_budget: Optional[int] = None,
    sites_per_forward: Optional[int] = None,
    progress: Progress = None,
) -> PatchResult:
    """Path patching (Wang et al. 2022): the effect of each sender head on the metric through
    the receivers' query / key / value inputs only.

    For each sender head (one site), two stacked runs on the base prompts:
      1. the sender's output (hook_z) takes the source value, every other head is frozen at
         its base value (and every MLP too with `freeze_mlps=True`, leaving only the direct
         path), and the receivers' `receiver_input` activations (hook_q/k/v, i.e. the q/k/v
         each receiver computes from the residual it now reads) are recorded;
      2. the receivers' q/k/v are set to those recorded values, nothing else is touched, and
         the metric is read.

    Args:
        metric: as in `activation_patching` (a `Metric`, a callable, a name, or a mapping).
        receivers: (layer, head) pairs, patched together.
        receiver_input: any of "q", "k", "v" (a string like "qk" or a list).
        senders: (layer, head) pairs, one site each; default: every head below the last
            receiver layer. A sender must sit below the layer of some receiver.
        direction: "denoise" (base = corrupted, senders from clean; default) or "noise"
            (base = clean, senders from corrupted; Wang et al.'s setting).
        freeze_mlps: freeze MLP outputs too (direct sender -> receiver path only).

    Returns:
        `PatchResult` on a (layer, head) grid of senders; cells that are not senders are NaN.
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    inputs = sorted(set(receiver_input))
    if not inputs or any(c not in "qkv" for c in inputs):
        raise ValueError(f"receiver_input must be made of 'q', 'k', 'v', got {receiver_input!r}")
    cfg = model.cfg
    if cfg.n_kv_heads != cfg.n_heads and set(inputs) & {"k", "v"}:
        raise ValueError(
            f"receiver_input={receiver_input!r}: with n_kv_heads={cfg.n_kv_heads} < n_heads={cfg.n_heads} "
            "(GQA/MQA) a receiver's key/value head is shared with other query heads, so its k/v input "
            "cannot be patched alone; use receiver_input='q'"
        )
    receivers = check_heads(model, receivers, "receiver")
    top = max(l for l, _ in receivers)
    senders = [(l, h) for l in range(top) for h in range(cfg.n_heads)] if senders is None else check_heads(
        model, senders, "sender")
    bad = [s for s in senders if s[0] >= top]
    if bad:
        raise ValueError(f"senders {bad} do not sit below any receiver (receiver layers {sorted({l for l, _ in receivers})})")
    base, source, mask = prepare(model, clean, corrupted, attention_mask, direction)
    B, T = base.shape
    clean, corrupted = (source, base) if direction == "denoise" else (base, source)
    metrics, many = as_metrics(resolve(metric, model, clean, corrupted, mask))
    per_example = reduce == "none"
    L, H = cfg.n_layers, cfg.n_heads
    low = min(l for l, _ in senders)

    z_names = [f"blocks.{l}.attn.hook_z" for l in range(low, top)]
    mlp_names = [f"blocks.{l}.hook_mlp_out" for l in range(low, top)] if freeze_mlps and not cfg.attn_only else []
    recv_names = {(l, c): f"blocks.{l}.attn.hook_{c}" for l in sorted({l for l, _ in receivers}) for c in inputs}
    source_logits, source_cache = cached(model, source, names=z_names, attention_mask=mask, return_logits=True)
    run = BaseRun(model, base, mask, names=z_names + mlp_names)
    base_v = evaluate(metrics, run.logits, 1, per_example)[:, 0]
    source_v = evaluate(metrics, source_logits, 1, per_example)[:, 0]

    order = sorted(senders)
    end = metric_end(metrics, T)
    per_forward = sites_per_forward or max(1, rows_per_forward(model, T, memory_budget) // B)
    report = progress_reporter(progress, len(order), "path patching")
    receiving = torch.zeros(L, 1, 1, 1, H, 1, dtype=torch.bool)
    for rl, rh in receivers:
        receiving[rl, 0, 0, 0, rh] = True
    receiving = receiving.to(base.device)
    flat = []
    for start in range(0, len(order), per_forward):
        chunk = order[start : start + per_forward]
        S = len(chunk)
        first = min(l for l, _ in chunk)
        # 1. senders from the source, every other head (and MLP) frozen at the base; record receivers
        sending = torch.zeros(L, S, 1, 1, H, 1, dtype=torch.bool)
        for s, (sl, sh) in enumerate(chunk):
            sending[sl, s, 0, 0, sh] = True
        sending = sending.to(base.device)
        hooks, recorded = [], {}
        for l in range(first, top):
            name = f"blocks.{l}.attn.hook_z"
            hooks.append((name, frozen_hook(sending[l], source_cache[name][:, :end], run.cache[name][:, :end], S)))
            if mlp_names:
                name = f"blocks.{l}.hook_mlp_out"
                hooks.append((name, frozen_hook(None, None, run.cache[name][:, :end], S)))
        for key, name in recv_names.items():
            hooks.append((name, record_hook(recorded, key)))
        run.run(S, first, hooks, end=end, stop_after=top)
        # 2. only the receivers' inputs change
        hooks = [(name, where_hook(receiving[l], recorded[(l, c)].view(S, B, *recorded[(l, c)].shape[1:]), S))
                 for (l, c), name in recv_names.items()]
        logits = run.run(S, min(l for l, _ in receivers), hooks, end=end)
        flat.append(evaluate(metrics, logits, S, per_example))
        report(start + S)
    flat = torch.cat(flat, dim=1)
    grid = torch.full((len(metrics), L, H, *flat.shape[2:]), float("nan"), device=flat.device)
    for s, (l, h) in enumerate(order):
        grid[:, l, h] = flat[:, s]
    axes = {"layer": list(range(L)), "head": list(range(H))}
    return labelled(grid, metrics, many, per_example, axes, None, base_v, source_v, "z", direction, "path")
