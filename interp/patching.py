"""Activation patching and path patching, batched: many patch sites per forward.

```python
from interp import patching
metric = patching.logit_diff(answer=ans_ids, wrong=wrong_ids, pos=-1)     # batched metric
res = patching.activation_patching(model, clean, corrupted, metric, act="resid_pre")   # (layer, pos)
res = patching.activation_patching(model, clean, corrupted, metric, act="z", by="head")  # (layer, head)
res.values; res.normalized(); res.to_frame(); res.top(5)
paths = patching.path_patching(model, clean, corrupted, metric, receivers=[(1, 0), (1, 1)], receiver_input="k")
```

**Directions.** `direction="denoise"` (default, TL's): run the corrupted prompts and patch in
clean activations; a site that restores the clean metric carries the information.
`"noise"`: run the clean prompts and patch in corrupted activations; a site whose patch
breaks the metric is necessary. The run that is patched is the *base*, the run the patched
values come from is the *source*; `PatchResult.baseline` / `.source` hold the metric of both
unpatched runs.

**Sites.** `act` is a hook kind:
`resid_pre | resid_mid | resid_post | attn_out | mlp_out` and, for factored-stream models,
`xt_pre | xt_mid | xt_post | xe_pre | xe_mid | xe_post` (by `"pos"`: a (layer, pos) grid, or
`"layer"`: every position of a layer at once); `z | q | k | v` (by `"head"`: (layer, head),
every position; or `"head_pos"`: (layer, pos, head)); `pattern` (by `"head"` or `"head_pos"`,
where pos is the query position). On a factored model `resid_*` patches `xt` and `xe`
together (the whole residual state; `hook_resid_*` there is a read-only view). For GQA/MQA
models `k` and `v` sites are key/value heads.

**Batching.** Each forward stacks S sites x B prompts along the batch axis (rows s*B + b),
starts at the first block any of its sites touches (the blocks before are the base run's,
taken from its cache), and is chunked so a forward fits `memory_budget` bytes. The numbers
equal one forward per site (TL's `transformer_lens.patching`), tested in fp32 to 1e-5.

**Metrics.** A metric maps logits to a number per prompt. The built-ins (`logit_diff`,
`logprob`, `prob`, `loss`) are `Metric`s: they take logits (*sites, batch, pos, d_vocab) and
return (*sites, batch), so one call scores a whole chunk. Any other callable is TL's
contract: logits (batch, pos, d_vocab) -> a scalar or a (batch,) tensor, called per site.
A mapping name -> metric scores several metrics on the same forwards (a leading metric axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from .cache import cached

__all__ = [
    "Metric", "logit_diff", "logprob", "prob", "loss", "PatchResult", "activation_patching", "path_patching",
    "act_hook_names", "rows_per_forward", "STREAM_ACTS", "HEAD_ACTS", "DIRECTIONS",
]

STREAM_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
               "xt_pre", "xt_mid", "xt_post", "xe_pre", "xe_mid", "xe_post")
HEAD_ACTS = ("z", "q", "k", "v")
PATTERN_ACTS = ("pattern",)
DIRECTIONS = ("denoise", "noise")
BY = {"stream": ("pos", "layer"), "head": ("head", "head_pos"), "pattern": ("head", "head_pos")}
Progress = Union[None, bool, Callable[[int, int], None]]
Head = tuple[int, int]


# ============================================================================ metrics
class Metric:
    """A batched metric: `fn(logits (*sites, batch, pos, d_vocab)) -> (*sites, batch)`.

    `last_read(T)`, when known, is the last position whose logits the metric reads: patched
    runs then stop there (a causal model's later positions cannot change those logits) and
    hand the metric NaN logits beyond it."""

    batched = True

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str,
                 last_read: Optional[Callable[[int], int]] = None):
        self.fn, self.name, self.last_read = fn, name, last_read

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits)

    def __repr__(self) -> str:
        return f"Metric({self.name})"


def _index_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.long)  # validated on the host: no device sync
    if t.ndim > 2:
        raise ValueError(f"{name} must be an int, (batch,) or (batch, n) ids, got shape {tuple(t.shape)}")
    return t


def _pick(logits: torch.Tensor, pos, token) -> torch.Tensor:
    """logits (*s, B, T, V) at positions `pos` for tokens `token` -> (*s, B, n) where both are an
    int, (B,) or (B, n) (broadcast together)."""
    B, T = logits.shape[-3], logits.shape[-2]
    pos, token = _index_tensor(pos, "pos"), _index_tensor(token, "token")
    pos = pos.reshape(-1, 1) if pos.ndim == 1 else pos.reshape(1, 1) if pos.ndim == 0 else pos
    token = token.reshape(-1, 1) if token.ndim == 1 else token.reshape(1, 1) if token.ndim == 0 else token
    pos, token = torch.broadcast_tensors(pos, token)
    if pos.shape[0] not in (1, B):
        raise ValueError(f"pos/token give {pos.shape[0]} rows for a batch of {B} prompts")
    if ((pos < -T) | (pos >= T)).any():
        raise ValueError(f"positions {pos.unique().tolist()} are outside a sequence of {T} tokens")
    pos, token = pos.expand(B, -1).to(logits.device), token.expand(B, -1).to(logits.device)
    rows = torch.arange(B, device=logits.device)[:, None]
    sel = logits[..., rows, pos % T, :]  # (*s, B, n, V)
    return sel, token


def _last_of(pos) -> Callable[[int], int]:
    pos = _index_tensor(pos, "pos")
    return lambda T: int((pos % T).max())


def logit_diff(answer, wrong, pos=-1) -> Metric:
    """logit[answer] - logit[wrong] at `pos`, averaged over the positions given per prompt.

    `answer`, `wrong`, `pos`: an int, (batch,) (one per prompt) or (batch, n) / (1, n) (n per
    prompt), broadcast together; negative positions count from the end."""

    def fn(logits):
        sel, a = _pick(logits, pos, answer)
        _, w = _pick(logits, pos, wrong)
        idx = lambda t: t.expand(*sel.shape[:-1])[..., None]
        return (sel.gather(-1, idx(a)) - sel.gather(-1, idx(w)))[..., 0].float().mean(-1)

    return Metric(fn, "logit_diff", _last_of(pos))


def logprob(target, pos=-1) -> Metric:
    """log p(target) at `pos`, averaged over the positions given per prompt."""

    def fn(logits):
        sel, t = _pick(logits, pos, target)
        return sel.float().log_softmax(-1).gather(-1, t.expand(*sel.shape[:-1])[..., None])[..., 0].mean(-1)

    return Metric(fn, "logprob", _last_of(pos))


def prob(target, pos=-1) -> Metric:
    """p(target) at `pos`, averaged over the positions given per prompt."""

    def fn(logits):
        sel, t = _pick(logits, pos, target)
        return sel.float().softmax(-1).gather(-1, t.expand(*sel.shape[:-1])[..., None])[..., 0].mean(-1)

    return Metric(fn, "prob", _last_of(pos))


def loss(tokens: Int[torch.Tensor, "batch pos"], attention_mask: Optional[torch.Tensor] = None) -> Metric:
    """Mean next-token cross-entropy of each prompt (logits[t] predicts tokens[t + 1]); padded
    targets (attention_mask False) are left out."""
    tokens = torch.as_tensor(tokens)
    keep = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    keep = keep[:, 1:] & keep[:, :-1]

    def fn(logits):
        lp = logits[..., :-1, :].float().log_softmax(-1)
        t = tokens[:, 1:].to(logits.device).expand(*lp.shape[:-1])
        nll = -lp.gather(-1, t[..., None])[..., 0]
        k = keep.to(logits.device)
        return (nll * k).sum(-1) / k.sum(-1).clamp(min=1)

    return Metric(fn, "loss")


def _end(metrics: dict, T: int) -> int:
    """1 + the last position any metric reads (T when one does not say)."""
    return 1 + max((m.last_read(T) if getattr(m, "last_read", None) else T - 1) for m in metrics.values())


def _metric_name(m) -> str:
    return getattr(m, "name", None) or getattr(m, "__name__", None) or "metric"


def _evaluate(metrics: dict, logits: torch.Tensor, n_sites: int, per_example: bool) -> torch.Tensor:
    """(metric, site) or (metric, site, batch) values of every metric on stacked logits."""
    stacked = logits.view(n_sites, -1, *logits.shape[1:])
    B = stacked.shape[1]
    out = []
    for name, m in metrics.items():
        if getattr(m, "batched", False):
            v = m(stacked)
            v = v.reshape(n_sites, -1)
        else:
            v = torch.stack([torch.as_tensor(m(stacked[s])).reshape(-1) for s in range(n_sites)])
        if v.shape[1] not in (1, B):
            raise ValueError(f"metric {name!r} returned {v.shape[1]} values for {B} prompts; return a scalar or (batch,)")
        if per_example and v.shape[1] != B:
            raise ValueError(f"reduce='none' needs metric {name!r} to return one value per prompt, (batch,)")
        out.append(v.float() if per_example else v.float().mean(1))
    return torch.stack(out)


# ============================================================================ results
@dataclass
class PatchResult:
    """Metric of every patched run, on a labelled grid.

    values: (*grid) — or (metric, *grid) when several metrics were given, with a trailing
        batch axis under reduce="none". `dims` names the axes, `index` holds the layer /
        position / head each entry stands for, `labels` their display names.
    baseline / source: the metric of the unpatched base run and of the source run, shaped
        like one cell ((metric,)? (batch,)?). For method="attribution" the values are the
        first-order estimates baseline + grad . (source - base).
    """

    values: torch.Tensor
    dims: tuple[str, ...]
    index: dict[str, list]
    labels: dict[str, list[str]]
    baseline: torch.Tensor
    source: torch.Tensor
    act: str
    direction: str
    method: str = "activation"
    metric_names: list[str] = field(default_factory=lambda: ["metric"])

    @property
    def effect(self) -> torch.Tensor:
        """values - baseline: what patching the site changed."""
        return self.values - self._cell(self.baseline)

    def normalized(self) -> torch.Tensor:
        """(values - baseline) / (source - baseline): 1 = the patch moves the metric all the
        way to the source run's value, 0 = no change."""
        return self.effect / self._cell(self.source - self.baseline)

    def _cell(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-cell quantity against `values`."""
        grid = [d for d in self.dims if d not in ("metric", "batch")]
        shape = list(x.shape)
        lead = shape[:1] if "metric" in self.dims else []
        tail = shape[len(lead):]
        return x.reshape(*lead, *([1] * len(grid)), *tail)

    def __getitem__(self, metric: str) -> "PatchResult":
        """The result for one metric of a multi-metric sweep."""
        if "metric" not in self.dims:
            raise KeyError("this result holds a single metric")
        i = self.metric_names.index(metric)
        return PatchResult(self.values[i], self.dims[1:], {k: v for k, v in self.index.items() if k != "metric"},
                           {k: v for k, v in self.labels.items() if k != "metric"}, self.baseline[i], self.source[i],
                           self.act, self.direction, self.method, [metric])

    def to_frame(self):
        """Long format: one row per cell; columns = the dims (their labels and indices), value,
        effect, normalized."""
        import pandas as pd

        vals, eff, norm = self.values.numpy(), self.effect.numpy(), self.normalized().numpy()
        rows = []
        for cell in np.ndindex(*vals.shape):
            if not np.isfinite(vals[cell]):
                continue
            row = {}
            for d, i in zip(self.dims, cell):
                row[d] = self.labels[d][i]
                if d in self.index:
                    row[f"{d}_index"] = self.index[d][i]
            row.update(value=float(vals[cell]), effect=float(eff[cell]), normalized=float(norm[cell]))
            rows.append(row)
        return pd.DataFrame(rows)

    def top(self, k: int = 10, by: str = "effect") -> list[tuple[str, float]]:
        """The k cells with the largest |effect| (or |normalized|), as ("L1 H0", value) pairs."""
        if "metric" in self.dims or "batch" in self.dims:
            raise ValueError("top() ranks a single-metric, batch-reduced result; index it first (result['name'])")
        score = self.effect if by == "effect" else self.normalized()
        flat = score.flatten().nan_to_num(0.0)
        order = flat.abs().argsort(descending=True)[:k]
        out = []
        for i in order.tolist():
            cell = np.unravel_index(i, score.shape)
            out.append((" ".join(self.labels[d][j] for d, j in zip(self.dims, cell)), float(flat[i])))
        return out


# ============================================================================ sites
def _kind(act: str) -> str:
    if act in STREAM_ACTS:
        return "stream"
    if act in HEAD_ACTS:
        return "head"
    if act in PATTERN_ACTS:
        return "pattern"
    raise ValueError(f"act={act!r} is not one of {list(STREAM_ACTS + HEAD_ACTS + PATTERN_ACTS)}")


def act_hook_names(model, act: str, layer: int) -> list[str]:
    """The hook point(s) patching `act` at `layer` edits: one, or xt and xe for `resid_*` on a
    factored model. Raises naming the reason when the model has no such activation."""
    cfg = model.cfg
    kind = _kind(act)
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is outside the model's {cfg.n_layers} layers")
    if act.startswith(("xt_", "xe_")) and cfg.stream != "factored":
        raise ValueError(f"act={act!r} needs a factored-stream model; this one has cfg.stream={cfg.stream!r}")
    if act == "mlp_out" and cfg.attn_only:
        raise ValueError("act='mlp_out': this model is attention-only (no MLP)")
    if act == "resid_mid" and (cfg.attn_only or cfg.block != "sequential"):
        why = "attention-only" if cfg.attn_only else f"block={cfg.block!r} (attention and MLP read the same resid_pre)"
        raise ValueError(f"act='resid_mid': this model has no resid_mid, it is {why}; use resid_pre/resid_post")
    if act.startswith("resid_") and cfg.stream == "factored":
        stage = act.split("_")[1]
        return [f"blocks.{layer}.hook_xt_{stage}", f"blocks.{layer}.hook_xe_{stage}"]
    if kind == "stream":
        return [f"blocks.{layer}.hook_{act}"]
    return [f"blocks.{layer}.attn.hook_{act}"]


def _n_heads(model, act: str) -> int:
    return model.cfg.n_kv_heads if act in ("k", "v") else model.cfg.n_heads


@dataclass
class _Sites:
    """A flat list of patch sites (layer, pos, head), -1 = every position / head, in grid order."""

    layer: np.ndarray
    pos: np.ndarray
    head: np.ndarray
    dims: tuple[str, ...]
    index: dict[str, list]
    by: str

    def __len__(self) -> int:
        return len(self.layer)


def _grid(model, act: str, by: Optional[str], T: int, layers, positions, heads) -> _Sites:
    kind = _kind(act)
    by = by or BY[kind][0]
    if by not in BY[kind]:
        raise ValueError(f"by={by!r} is not available for act={act!r}; choose from {list(BY[kind])}")
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(l) for l in layers]
    for l in layers:
        act_hook_names(model, act, l)  # validates layer and act
    positions = list(range(T)) if positions is None else [int(p) % T for p in positions]
    H = _n_heads(model, act)
    heads = list(range(H)) if heads is None else [int(h) for h in heads]
    if any(not 0 <= h < H for h in heads):
        raise ValueError(f"heads {heads} outside [0, {H}) for act={act!r}")
    if by == "layer":
        axes = {"layer": layers}
    elif by == "pos":
        axes = {"layer": layers, "pos": positions}
    elif by == "head":
        axes = {"layer": layers, "head": heads}
    else:
        axes = {"layer": layers, "pos": positions, "head": heads}
    mesh = np.meshgrid(*[np.asarray(v) for v in axes.values()], indexing="ij")
    flat = {d: m.reshape(-1) for d, m in zip(axes, mesh)}
    n = len(flat["layer"])
    return _Sites(flat["layer"], flat.get("pos", np.full(n, -1)), flat.get("head", np.full(n, -1)),
                  tuple(axes), axes, by)


def _pos_axis(act: str) -> int:
    """The position axis of an activation without its batch axis (the query axis of a pattern)."""
    return 1 if _kind(act) == "pattern" else 0


def _mask(model, act: str, sites: _Sites, chunk: slice, layer: int, T: int, device) -> Optional[torch.Tensor]:
    """(S, 1, ...) bool mask of the chunk's sites at `layer`, broadcastable against the
    activation viewed as (S, B, ...); None when no site of the chunk is at `layer`."""
    lay, pos, head = sites.layer[chunk], sites.pos[chunk], sites.head[chunk]
    S = len(lay)
    kind = _kind(act)
    if kind == "stream":
        m = np.zeros((S, T), bool)
    elif kind == "head":
        m = np.zeros((S, T, _n_heads(model, act)), bool)
    else:
        m = np.zeros((S, model.cfg.n_heads, T), bool)
    here = np.nonzero(lay == layer)[0]
    if len(here) == 0:
        return None
    for s in here:
        p = slice(None) if pos[s] < 0 else pos[s]
        if kind == "stream":
            m[s, p] = True
        elif kind == "head":
            m[s, p, slice(None) if head[s] < 0 else head[s]] = True
        else:
            m[s, slice(None) if head[s] < 0 else head[s], p] = True
    return torch.from_numpy(m).to(device)[:, None, ..., None]  # (S, 1, *dims, 1)


def _window(x: torch.Tensor, act: str, axis: int, offset: int, end: int) -> torch.Tensor:
    """Positions offset..end - 1 along `axis` (and keys ..end - 1 of a pattern, the last axis)."""
    if _kind(act) == "pattern":
        x = x[..., :end]
    return x.narrow(axis, offset, end - offset)


# ============================================================================ the engine
def _stream_hooks(model) -> list[str]:
    """Hooks whose values are exactly the stream entering each block."""
    if model.cfg.stream == "factored":
        return [f"blocks.{l}.hook_{s}_pre" for l in range(model.cfg.n_layers) for s in ("xt", "xe")]
    return [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]


class _BaseRun:
    """The unpatched base run, from which every stacked patched run starts part-way.

    It keeps the logits, the stream entering every block and, for unpadded prompts, every
    layer's keys and values. A patch at block l and position p changes nothing before block
    l, nor at any position before p (attention is causal), so a stacked run starts at block
    l from the base stream and computes positions p.. only, reading the keys/values of
    positions < p from the base run (the model's own KV-cache path, as in generation).
    """

    def __init__(self, model, tokens: torch.Tensor, mask: Optional[torch.Tensor], names: Sequence[str] = ()):
        from models import KVCache

        self.model, self.mask = model, mask
        self.B, self.T = tokens.shape
        self.kv = KVCache(model.cfg.n_layers) if mask is None else None
        self.logits, self.cache = cached(model, tokens, names=_stream_hooks(model) + list(names), attention_mask=mask,
                                         return_logits=True, past_kv_cache=self.kv)

    def run(self, n_sites: int, layer: int, hooks: list, offset: int = 0, end: Optional[int] = None,
            stop_after: Optional[int] = None):
        """Logits (n_sites * B, T, V) of the base prompts tiled `n_sites` times, run from block
        `layer` over positions `offset`..`end` - 1 with `hooks` attached; positions before
        `offset` are the base run's logits, from `end` on NaN (None with `stop_after`: the run
        ends after that block)."""
        model, S = self.model, n_sites
        end = self.T if end is None else end
        tile = lambda x: x.repeat(S, *([1] * (x.ndim - 1)))
        if self.model.cfg.stream == "factored":
            names = (f"blocks.{layer}.hook_xt_pre", f"blocks.{layer}.hook_xe_pre")
        else:
            names = (f"blocks.{layer}.hook_resid_pre",)
        stream = tuple(tile(self.cache[n][:, offset:end]) for n in names)
        stream = stream if len(stream) == 2 else (stream[0], None)
        kv = None
        if offset:
            assert self.kv is not None, "a position offset needs unpadded prompts"
            from models import KVCache

            kv = KVCache(model.cfg.n_layers)
            for i in range(layer, model.cfg.n_layers):
                kv.layers[i].k = tile(self.kv.layers[i].k[:, :, :offset])
                kv.layers[i].v = tile(self.kv.layers[i].v[:, :, :offset])
            if layer > 0:  # KVCache.length reads layer 0; blocks below `layer` never run
                kv.layers[0].k = self.kv.layers[0].k[:, :, :offset]
            kv.positions = torch.arange(offset, device=stream[0].device)[None]
        mask = None if self.mask is None else tile(self.mask[:, :end])
        ctx = model._context(stream[0].shape[:2], stream[0].device, mask, None, kv)
        last = model.cfg.n_layers - 1 if stop_after is None else stop_after
        with model.hooks(fwd_hooks=hooks):
            # the tail of HookedTransformer.forward (tests check both agree on every preset)
            for i in range(layer, last + 1):
                stream = model.blocks[i](stream, ctx, None if kv is None else kv.layers[i])
        if stop_after is not None:
            return None
        resid = stream[0] if stream[1] is None else stream[0] + stream[1]
        logits = model.unembed_resid(model.ln_final(resid))
        if offset or end < self.T:
            after = logits.new_full((logits.shape[0], self.T - end, logits.shape[2]), float("nan"))
            logits = torch.cat([tile(self.logits[:, :offset]), logits, after], dim=1)
        return logits


def _bytes_per_row(model, T: int, explicit_layers: int) -> int:
    """Rough peak bytes of one batch row of a no-grad forward: the stream(s), one block's
    widest intermediates, explicit attention scores where a pattern is hooked, the logits."""
    cfg = model.cfg
    width = 4 * cfg.d_model + (3 if cfg.gated else 2) * cfg.d_mlp + 4 * cfg.n_heads * cfg.d_head
    per_pos = width + 3 * cfg.d_vocab + (4 * cfg.n_heads * T if explicit_layers else 0)
    return T * per_pos * torch.finfo(cfg.dtype).bits // 8


def rows_per_forward(model, T: int, memory_budget: Optional[int] = None, explicit: bool = False) -> int:
    """How many (site x prompt) rows one forward may stack within `memory_budget` bytes.

    Default: on CUDA, half the free GPU memory, and at most ~128k tokens a forward (enough to
    fill the GPU; smaller chunks start later in the sequence: a chunk starts at its first
    patched position); on CPU 24 MiB, where a cache-sized forward is as fast per row as a
    large one."""
    device = model.cfg.device
    per_row = _bytes_per_row(model, T, explicit)
    if memory_budget is not None:
        return max(1, int(memory_budget // per_row))
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(int(free // 2 // per_row), max(256, 2**17 // T)))
    return max(1, int(24 * 2**20 // per_row))


def _progress(progress: Progress, total: int, desc: str):
    """A `(done) -> None` reporter: the caller's callback, a tqdm bar (True), or nothing."""
    if progress is True:
        bar = tqdm(total=total, desc=desc)

        def report(done):
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()

        return report
    if callable(progress):
        return lambda done: progress(done, total)
    return lambda done: None


def _prepare(model, clean, corrupted, attention_mask, direction):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if model.training:
        raise ValueError("patching needs the model in eval mode (dropout would make every run differ): call model.eval()")
    device = model.cfg.device
    clean, corrupted = (torch.as_tensor(t).to(device) for t in (clean, corrupted))
    clean, corrupted = (t[None] if t.ndim == 1 else t for t in (clean, corrupted))
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} prompts must have the same "
            "(batch, pos) shape: a patch at position p swaps the activation at the same position"
        )
    if attention_mask is not None:
        attention_mask = attention_mask.to(device).bool()
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return base, source, attention_mask


def _metrics(metric) -> tuple[dict, bool]:
    if isinstance(metric, Mapping):
        if not metric:
            raise ValueError("metric mapping is empty")
        return dict(metric), True
    return {_metric_name(metric): metric}, False


def _finish(values, metrics, many, per_example, axes: dict[str, list], pos_labels, base_v, source_v, act, direction,
            method) -> PatchResult:
    """Label (metric, *grid[, batch]) values whose grid axes are `axes` (dim -> indices)."""
    names = {"layer": lambda l: f"L{l}", "head": lambda h: f"H{h}",
             "pos": lambda p: str(p) if pos_labels is None else str(pos_labels[p])}
    labels = {d: [names[d](i) for i in idx] for d, idx in axes.items()}
    index = dict(axes)
    dims = ("metric",) * many + tuple(axes) + ("batch",) * per_example
    if many:
        labels["metric"] = index["metric"] = list(metrics)
    if per_example:
        labels["batch"] = [str(b) for b in range(values.shape[-1])]
    values = values.cpu()
    if not many:
        values, base_v, source_v = values[0], base_v[0], source_v[0]
    return PatchResult(values, dims, index, labels, base_v.cpu(), source_v.cpu(), act, direction, method, list(metrics))


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
) -> PatchResult:
    """Patch `act` at every site of a grid and score each patched run with `metric`.

    Args:
        clean, corrupted: (batch, pos) token ids of the same shape.
        metric: a `Metric`, a TL-style callable, or a mapping name -> metric (module docstring).
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

    Returns:
        A `PatchResult` with `dims` ("layer", "pos") / ("layer",) / ("layer", "head") /
        ("layer", "pos", "head").
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    base, source, mask = _prepare(model, clean, corrupted, attention_mask, direction)
    B, T = base.shape
    metrics, many = _metrics(metric)
    per_example = reduce == "none"
    sites = _grid(model, act, by, T, layers, positions, heads)
    site_layers = sorted(set(sites.layer.tolist()))
    patch_names = {l: act_hook_names(model, act, l) for l in site_layers}

    source_logits, source_cache = cached(model, source, names=[n for ns in patch_names.values() for n in ns],
                                         attention_mask=mask, return_logits=True)
    run = _BaseRun(model, base, mask)
    base_v = _evaluate(metrics, run.logits, 1, per_example)[:, 0]
    source_v = _evaluate(metrics, source_logits, 1, per_example)[:, 0]

    per_forward = sites_per_forward or max(1, rows_per_forward(model, T, memory_budget, act == "pattern") // B)
    report = _progress(progress, len(sites), f"patching {act}")
    axis = _pos_axis(act)
    end = _end(metrics, T)
    out = []
    for chunk in _chunks(sites.layer, per_forward):
        S = chunk.stop - chunk.start
        # positions before the chunk's first patched position are the base run's
        offset = 0 if mask is not None or (sites.pos[chunk] < 0).any() else int(sites.pos[chunk].min())
        if offset >= end:  # patched after every position the metric reads: nothing can change
            out.append(base_v[:, None].expand(-1, S, *base_v.shape[1:]))
            report(chunk.stop)
            continue
        hooks = []
        for l in sorted(set(sites.layer[chunk].tolist())):
            m = _window(_mask(model, act, sites, chunk, l, T, base.device), act, axis + 2, offset, end)
            for name in patch_names[l]:
                hooks.append((name, _where_hook(m, _window(source_cache[name], act, axis + 1, offset, end), S)))
        logits = run.run(S, int(sites.layer[chunk].min()), hooks, offset, end)
        out.append(_evaluate(metrics, logits, S, per_example))
        report(chunk.stop)
    values = torch.cat(out, dim=1)
    values = values.reshape(len(metrics), *[len(v) for v in sites.index.values()], *values.shape[2:])
    return _finish(values, metrics, many, per_example, sites.index, pos_labels, base_v, source_v, act, direction,
                   "activation")


def _chunks(layers: np.ndarray, size: int) -> list[slice]:
    """Consecutive runs of at most `size` sites that never straddle two layers: a chunk runs
    from its lowest layer and its first position, so mixing layers would redo blocks."""
    out, start = [], 0
    for stop in range(1, len(layers) + 1):
        if stop == len(layers) or stop - start == size or layers[stop] != layers[start]:
            out.append(slice(start, stop))
            start = stop
    return out


def _where_hook(mask: torch.Tensor, source: torch.Tensor, n_sites: int):
    """Hook replacing the masked entries of each site's rows with the source activation."""

    def hook(act, hook):
        stacked = act.view(n_sites, -1, *act.shape[1:])
        return torch.where(mask, source.to(act.dtype), stacked).view_as(act)

    return hook


# ============================================================================ path patching
def _check_heads(model, heads: Sequence[Head], what: str) -> list[Head]:
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
    receivers = _check_heads(model, receivers, "receiver")
    top = max(l for l, _ in receivers)
    senders = [(l, h) for l in range(top) for h in range(cfg.n_heads)] if senders is None else _check_heads(
        model, senders, "sender")
    bad = [s for s in senders if s[0] >= top]
    if bad:
        raise ValueError(f"senders {bad} do not sit below any receiver (receiver layers {sorted({l for l, _ in receivers})})")
    base, source, mask = _prepare(model, clean, corrupted, attention_mask, direction)
    B, T = base.shape
    metrics, many = _metrics(metric)
    per_example = reduce == "none"
    L, H = cfg.n_layers, cfg.n_heads
    low = min(l for l, _ in senders)

    z_names = [f"blocks.{l}.attn.hook_z" for l in range(low, top)]
    mlp_names = [f"blocks.{l}.hook_mlp_out" for l in range(low, top)] if freeze_mlps and not cfg.attn_only else []
    recv_names = {(l, c): f"blocks.{l}.attn.hook_{c}" for l in sorted({l for l, _ in receivers}) for c in inputs}
    source_logits, source_cache = cached(model, source, names=z_names, attention_mask=mask, return_logits=True)
    run = _BaseRun(model, base, mask, names=z_names + mlp_names)
    base_v = _evaluate(metrics, run.logits, 1, per_example)[:, 0]
    source_v = _evaluate(metrics, source_logits, 1, per_example)[:, 0]

    order = sorted(senders)
    end = _end(metrics, T)
    per_forward = sites_per_forward or max(1, rows_per_forward(model, T, memory_budget) // B)
    report = _progress(progress, len(order), "path patching")
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
            hooks.append((name, _frozen_hook(sending[l], source_cache[name][:, :end], run.cache[name][:, :end], S)))
            if mlp_names:
                name = f"blocks.{l}.hook_mlp_out"
                hooks.append((name, _frozen_hook(None, None, run.cache[name][:, :end], S)))
        for key, name in recv_names.items():
            hooks.append((name, _record_hook(recorded, key)))
        run.run(S, first, hooks, end=end, stop_after=top)
        # 2. only the receivers' inputs change
        hooks = [(name, _where_hook(receiving[l], recorded[(l, c)].view(S, B, *recorded[(l, c)].shape[1:]), S))
                 for (l, c), name in recv_names.items()]
        logits = run.run(S, min(l for l, _ in receivers), hooks, end=end)
        flat.append(_evaluate(metrics, logits, S, per_example))
        report(start + S)
    flat = torch.cat(flat, dim=1)
    grid = torch.full((len(metrics), L, H, *flat.shape[2:]), float("nan"), device=flat.device)
    for s, (l, h) in enumerate(order):
        grid[:, l, h] = flat[:, s]
    axes = {"layer": list(range(L)), "head": list(range(H))}
    return _finish(grid, metrics, many, per_example, axes, None, base_v, source_v, "z", direction, "path")


def _frozen_hook(sel: Optional[torch.Tensor], source: Optional[torch.Tensor], base: torch.Tensor, n_sites: int):
    """Hook setting the activation to `base` everywhere except where `sel` picks `source`."""

    def hook(act, hook):
        value = base if sel is None else torch.where(sel, source, base)
        return value.to(act.dtype).expand(n_sites, *base.shape).reshape(act.shape)

    return hook


def _record_hook(store: dict, key):
    def hook(act, hook):
        store[key] = act

    return hook
