"""The machinery every sweep shares: the unpatched base run that stacked patched runs start
from (part-way through the model and the sequence), chunk sizes from a memory budget, the
hooks that patch stacked activations, progress reporting."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from models import KVCache

from ..cache import cached
from .sites import DIRECTIONS, Progress


def stream_hooks(model) -> list[str]:
    """Hooks whose values are exactly the stream entering each block."""
    if model.cfg.stream == "factored":
        return [f"blocks.{l}.hook_{s}_pre" for l in range(model.cfg.n_layers) for s in ("xt", "xe")]
    return [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]


class BaseRun:
    """The unpatched base run, from which every stacked patched run starts part-way.

    It keeps the logits, the stream entering every block and, for unpadded prompts, every
    layer's keys and values. A patch at block l and position p changes nothing before block
    l, nor at any position before p (attention is causal), so a stacked run starts at block
    l from the base stream and computes positions p.. only, reading the keys/values of
    positions < p from the base run (the model's own KV-cache path, as in generation).
    """

    def __init__(self, model, tokens: torch.Tensor, mask: Optional[torch.Tensor], names: Sequence[str] = ()):
        self.model, self.mask = model, mask
        self.B, self.T = tokens.shape
        self.kv = KVCache(model.cfg.n_layers) if mask is None else None
        self.logits, self.cache = cached(model, tokens, names=stream_hooks(model) + list(names), attention_mask=mask,
                                         return_logits=True, past_kv_cache=self.kv)

    def run(self, n_sites: int, layer: int, hooks: list, offset: int = 0, end: Optional[int] = None,
            stop_after: Optional[int] = None, explicit: Optional[bool] = None):
        """Logits (n_sites * B, T, V) of the base prompts tiled `n_sites` times, run from block
        `layer` over positions `offset`..`end` - 1 with `hooks` attached; positions before
        `offset` are the base run's logits, from `end` on NaN (None with `stop_after`: the run
        ends after that block).

        `explicit`: see `explicit_attention_hooks`."""
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
        hooks = hooks + explicit_attention_hooks(model, range(layer, last + 1), stream[0].device, explicit)
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


def explicit_attention_hooks(model, layers, device, explicit: Optional[bool] = None) -> list:
    """Hooks that take `layers` off the fused attention path (observing the scores does), by
    default only for ALiBi on CUDA: its fused path is FlexAttention compiled for one shape,
    and stacked runs change the batch size from sweep to sweep (a recompile each)."""
    if explicit is None:
        explicit = model.cfg.positional == "alibi" and torch.device(device).type == "cuda"
    return [(f"blocks.{i}.attn.hook_attn_scores", _observe) for i in layers] if explicit else []


def _observe(x, hook):
    return None


def bytes_per_row(model, T: int, explicit_layers: int) -> int:
    """Rough peak bytes of one batch row of a no-grad forward: the stream(s), one block's
    widest intermediates, explicit attention scores where a pattern is hooked, the logits."""
    cfg = model.cfg
    width = 4 * cfg.d_model + (3 if cfg.gated else 2) * cfg.d_mlp + 4 * cfg.n_heads * cfg.d_head
    per_pos = width + 3 * cfg.d_vocab + (4 * cfg.n_heads * T if explicit_layers else 0)
    return T * per_pos * torch.finfo(cfg.dtype).bits // 8


def rows_per_forward(model, T: int, memory_budget: Optional[int] = None, explicit: bool = False) -> int:
    """How many (site x prompt) rows one forward may stack within `memory_budget` bytes.

    Default: on CUDA, half the free GPU memory, and at most ~256k tokens a forward (enough to
    fill the GPU; smaller chunks start later in the sequence: a chunk starts at its first
    patched position); on CPU 24 MiB, where a cache-sized forward is as fast per row as a
    large one."""
    device = model.cfg.device
    explicit = explicit or (model.cfg.positional == "alibi" and torch.device(device).type == "cuda")
    per_row = bytes_per_row(model, T, explicit)
    if memory_budget is not None:
        return max(1, int(memory_budget // per_row))
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(int(free // 2 // per_row), max(256, 2**18 // T)))
    return max(1, int(24 * 2**20 // per_row))


def progress_reporter(progress: Progress, total: int, desc: str):
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


def prepare(model, clean, corrupted, attention_mask, direction):
    """(base, source, attention_mask) on the model's device, checked: the base run is the one
    patched (corrupted when denoising, clean when noising), the source the one patched from."""
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
        if attention_mask.shape != clean.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != prompts {tuple(clean.shape)}")
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return base, source, attention_mask


def where_hook(mask: torch.Tensor, source: torch.Tensor, n_sites: int):
    """Hook replacing the masked entries of each site's rows with the source activation."""

    def hook(act, hook):
        stacked = act.view(n_sites, -1, *act.shape[1:])
        return torch.where(mask, source.to(act.dtype), stacked).view_as(act)

    return hook


def splice_hook(mask: torch.Tensor, batch: int, n_sites: int):
    """Hook for a one-forward sweep, whose rows are [source (batch), base (batch), site 0 (batch),
    site 1, ...]: each site's masked entries take the source rows' activation, computed in
    the same forward at the same point."""

    def hook(act, hook):
        source, sites = act[:batch], act[2 * batch:].view(n_sites, batch, *act.shape[1:])
        return torch.cat([act[: 2 * batch], torch.where(mask, source, sites).flatten(0, 1)])

    return hook


def frozen_hook(sel: Optional[torch.Tensor], source: Optional[torch.Tensor], base: torch.Tensor, n_sites: int):
    """Hook setting the activation to `base` everywhere except where `sel` picks `source`."""

    def hook(act, hook):
        value = base if sel is None else torch.where(sel, source, base)
        return value.to(act.dtype).expand(n_sites, *base.shape).reshape(act.shape)

    return hook


def record_hook(store: dict, key):
    """Hook keeping the activation it sees in `store[key]` (it flows on unchanged)."""

    def hook(act, hook):
        store[key] = act

    return hook
