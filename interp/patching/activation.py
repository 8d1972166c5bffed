"""Activation patching: every site of a (layer, pos / head) grid, stacked many per forward."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Int

from ..cache import cached
from .engine import (
    BaseRun,
    explicit_attention_hooks,
    prepare,
    progress_reporter,
    rows_per_forward,
    splice_hook,
    where_hook,
)
from .metrics import as_metrics, evaluate, metric_end, resolve
from .result import PatchResult, labelled
from .sites import (
    Progress,
    act_hook_names,
    chunks,
    pos_axis,
    site_grid,
    site_mask,
    window,
)


@torch.no_grad()
def activation_patching(
    model,
    clean: Int[torch.Tensor, "batch pos"],
    corrupted: Int[torch.Tensor, "batch pos"],
    metric,
    act: str = "resid_pre",
    by: Optional[str] = None,
    *,
    direction: str = "denoise",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    attention_mask: Optional[torch.Tensor] = None,
    reduce: str = "mean",
    pos_labels: Optional[Sequence[str]] = None,
    memory_budget: Optional[int] = None,
    sites_per_forward: Optional[int] = None,
    progress: Progress = None,
    strategy: str = "auto",
) -> PatchResult:
    """Patch `act` at every site of a grid and score each patched run with `metric`.

    Args:
        clean, corrupted: (batch, pos) token ids of the same shape.
        metric: a `Metric`, a TL-style callable, a name ("logit_diff", "logprob", "prob",
            "loss": built from the unpatched runs, see `metrics.from_name`), or a mapping
            name -> any of these (module docstring).
        act, by: what to patch and how to split it (module docstring); `by=None` takes the
            first choice (`"pos"` for stream acts, `"head"` for z/q/k/v/pattern).
        direction: "denoise" (patch clean into corrupted) or "noise" (corrupted into clean).
        layers / positions / heads: restrict the grid (default: all).
        attention_mask: (batch, pos), True = real token, shared by both prompts.
        reduce: "mean" over prompts, or "none" to keep a trailing batch axis.
        pos_labels: display names of the positions (e.g. the clean prompt's tokens).
        memory_budget: bytes one stacked forward may use (see `rows_per_forward`).
        sites_per_forward: force the number of sites stacked per forward.
        progress: `(done, total)` callback after each forward, or True for a tqdm bar.
        strategy: "partial" runs each chunk from its first patched block and position (least
            work: the CPU choice); "one_forward" stacks the source run, the base run and every
            site in a single forward (fewest kernel launches: the choice on CUDA when all of it
            fits in one forward); "auto" picks. Same numbers either way.

    Returns:
        A `PatchResult` with `dims` ("layer", "pos") / ("layer",) / ("layer", "head") /
        ("layer", "pos", "head").
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    base, source, mask = prepare(model, clean, corrupted, attention_mask, direction)
    B, T = base.shape
    clean, corrupted = (source, base) if direction == "denoise" else (base, source)
    metrics, many = as_metrics(resolve(metric, model, clean, corrupted, mask))
    per_example = reduce == "none"
    sites = site_grid(model, act, by, T, layers, positions, heads)
    site_layers = sorted(set(sites.layer.tolist()))
    patch_names = {l: act_hook_names(model, act, l) for l in site_layers}
    rows = rows_per_forward(model, T, memory_budget, act == "pattern")
    if strategy == "auto":
        on_gpu = torch.device(model.cfg.device).type == "cuda"
        strategy = "one_forward" if on_gpu and sites_per_forward is None and (len(sites) + 2) * B <= rows else "partial"
    if strategy not in ("partial", "one_forward"):
        raise ValueError(f"strategy must be 'auto', 'partial' or 'one_forward', got {strategy!r}")
    if strategy == "one_forward":
        masks = {l: site_mask(model, act, sites, slice(0, len(sites)), l, T, base.device) for l in site_layers}
        hooks = [(name, splice_hook(masks[l], B, len(sites))) for l in site_layers for name in patch_names[l]]
        hooks += explicit_attention_hooks(model, range(model.cfg.n_layers), base.device)
        stacked = torch.cat([source, base, base.repeat(len(sites), 1)])
        with model.hooks(fwd_hooks=hooks):
            logits = model(stacked, attention_mask=None if mask is None else mask.repeat(len(sites) + 2, 1))
        source_v, base_v = (evaluate(metrics, logits[i * B:(i + 1) * B], 1, per_example)[:, 0] for i in (0, 1))
        values = evaluate(metrics, logits[2 * B:], len(sites), per_example)
        progress_reporter(progress, len(sites), f"patching {act}")(len(sites))
        values = values.reshape(len(metrics), *[len(v) for v in sites.index.values()], *values.shape[2:])
        return labelled(values, metrics, many, per_example, sites.index, pos_labels, base_v, source_v, act, direction,
                        "activation")

    source_logits, source_cache = cached(model, source, names=[n for ns in patch_names.values() for n in ns],
                                         attention_mask=mask, return_logits=True)
    run = BaseRun(model, base, mask)
    base_v = evaluate(metrics, run.logits, 1, per_example)[:, 0]
    source_v = evaluate(metrics, source_logits, 1, per_example)[:, 0]

    per_forward = sites_per_forward or max(1, rows // B)
    report = progress_reporter(progress, len(sites), f"patching {act}")
    axis = pos_axis(act)
    end = metric_end(metrics, T)
    out = []
    for chunk in chunks(sites.layer, per_forward):
        S = chunk.stop - chunk.start
        # positions before the chunk's first patched position are the base run's
        offset = 0 if mask is not None or (sites.pos[chunk] < 0).any() else int(sites.pos[chunk].min())
        if offset >= end:  # patched after every position the metric reads: nothing can change
            out.append(base_v[:, None].expand(-1, S, *base_v.shape[1:]))
            report(chunk.stop)
            continue
        hooks = []
        for l in sorted(set(sites.layer[chunk].tolist())):
            m = window(site_mask(model, act, sites, chunk, l, T, base.device), act, axis + 2, offset, end)
            for name in patch_names[l]:
                hooks.append((name, where_hook(m, window(source_cache[name], act, axis + 1, offset, end), S)))
        logits = run.run(S, int(sites.layer[chunk].min()), hooks, offset, end)
        out.append(evaluate(metrics, logits, S, per_example))
        report(chunk.stop)
    values = torch.cat(out, dim=1)
    values = values.reshape(len(metrics), *[len(v) for v in sites.index.values()], *values.shape[2:])
    return labelled(values, metrics, many, per_example, sites.index, pos_labels, base_v, source_v, act, direction,
                   "activation")
