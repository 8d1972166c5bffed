"""Fast decoding, gpt-fast style: a static KV cache and compiled prefill / decode graphs.

`models.generation.generate` takes this path by itself on CUDA when nothing is hooked
(`fast=False` opts out); `fast_generate` is the loop behind it.

* `StaticKVCache`: per layer, keys and values preallocated to (batch, n_kv_heads, max_len,
  d_head), plus the cached positions and validity of every column. Prefill writes the prompt
  into columns [0, T); each decode step writes one column in place (`index_copy_` at a step
  counter that lives on the device), so the step's shapes never change.
* Prefill is one compiled graph (dynamic in the prompt length); the decode step is another,
  compiled with `mode="reduce-overhead"` (CUDA graphs): one graph launch per token instead of
  hundreds of kernel launches, which is what bounds a ~100M-parameter model at small batch.
* The decode step attends over the whole cache with a mask built from the cached validity
  and causality (`Attention._attend_static`); ALiBi is computed there from the cached
  positions, RoPE from the step's positions, learned positions index `W_pos`.
* The host only samples and bookkeeps; with stop tokens it looks at the device every
  `STOP_CHECK_EVERY` tokens, and the output is trimmed to exactly what the step-by-step loop
  returns.

Greedy output equals the dynamic-cache loop (`tests/test_decoding.py`, every preset, fp32).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Callable, Optional, Union

import torch
from jaxtyping import Bool, Int

from .attention import AttnContext
from .config import ModelConfig
from .hooks import HookPoint
from .positions import positions_from_mask

STOP_CHECK_EVERY = 16  # decode steps between host checks of "has every row stopped?"
LENGTH_BUCKET = 64  # cache lengths are rounded up to this, so nearby lengths share a graph
POOL_SIZE = 2  # static caches kept per model (a CUDA graph is recorded per cache)


class StaticLayerKV:
    """One layer's preallocated keys/values, (batch, n_kv_heads, max_len, d_head)."""

    def __init__(self, cache: "StaticKVCache", k: torch.Tensor, v: torch.Tensor):
        self.cache, self.k, self.v = cache, k, v

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values in place. Prefill attends over the prompt only (returns
        `k`, `v`); a decode step attends over the whole cache (returns the buffers)."""
        if self.cache.phase == "prefill":
            T = k.shape[2]
            self.k[:, :, :T].copy_(k)
            self.v[:, :, :T].copy_(v)
            return k, v
        self.k.index_copy_(2, self.cache.step, k.to(self.k.dtype))
        self.v.index_copy_(2, self.cache.step, v.to(self.v.dtype))
        return self.k, self.v


class StaticKVCache:
    """Preallocated keys/values of every layer plus per-column positions and validity.

    `phase` is "prefill" (the next forward is the prompt, written to columns [0, T)) or
    "decode" (the next forward is one token per row, written to column `step`). Positions
    count only real tokens, as in `KVCache`, so left padding and rows that stopped early do
    not shift them. All state is on the device; nothing in a decode step reads it on the host.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype: torch.dtype):
        if cfg.uses_learned_positions and max_len > cfg.n_ctx:
            raise ValueError(f"max_len={max_len} is past n_ctx={cfg.n_ctx} of a model with learned positions")
        self.batch, self.max_len, self.dtype = batch, max_len, dtype
        shape = (batch, cfg.n_kv_heads, max_len, cfg.d_head)
        self.layers = [
            StaticLayerKV(self, torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(cfg.n_layers)
        ]
        self.positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens so far = next position
        self.step = torch.zeros(1, dtype=torch.long, device=device)  # the column the next token goes to
        self.phase = "prefill"
        # Positions never exceed the column index, so this bound holds for every call.
        self.max_position = max_len - 1
        for t in self.tensors():
            # The compiled step reads and writes these in place: CUDA graphs may use their
            # addresses directly instead of copying them in every replay.
            torch._dynamo.mark_static_address(t, guard=False)

    def tensors(self) -> list[torch.Tensor]:
        return [t for kv in self.layers for t in (kv.k, kv.v)] + [self.positions, self.valid, self.n_real, self.step]

    @property
    def length(self) -> int:
        raise TypeError("a StaticKVCache has no host-side length; its step counter lives on the device")

    def context(self, model, shape, device, attention_mask: Optional[torch.Tensor]) -> AttnContext:
        """The `AttnContext` of the next forward (called by `HookedTransformer.forward`)."""
        B, T = shape
        if B != self.batch:
            raise ValueError(f"batch {B} != the static cache's batch {self.batch}")
        if self.phase == "prefill":
            if T > self.max_len:
                raise ValueError(f"prompt of {T} tokens does not fit a static cache of {self.max_len}")
            ctx = model._context(shape, device, attention_mask, None, None)  # a fresh sequence
            self.positions[:, :T].copy_(ctx.q_pos.expand(B, T))
            if attention_mask is None:
                self.valid[:, :T].fill_(True)
                self.n_real.fill_(T)
            else:
                self.valid[:, :T].copy_(attention_mask)
                self.n_real.copy_(attention_mask.long().sum(-1))
            self.step.fill_(T)
            ctx.max_position = T - 1
            return ctx
        if T != 1 or attention_mask is None:
            raise ValueError("a decode step takes one token per row and its (batch, 1) attention_mask")
        alive = attention_mask
        q_pos = positions_from_mask(alive, past=self.n_real)  # (B, 1): the dynamic cache's rule
        self.positions.index_copy_(1, self.step, q_pos)
        self.valid.index_copy_(1, self.step, alive)
        self.n_real.add_(alive[:, 0].long())
        rope = model.blocks[0].attn.rotary.angles(q_pos) if model.cfg.uses_rope else None
        return AttnContext(
            q_pos=q_pos, k_pos=self.positions, key_mask=self.valid, past=0, rope=rope,
            q_cols=self.step, max_position=self.max_position,
        )


# ---------------------------------------------------------------------------- the two graphs
def _prefill(model, cache: StaticKVCache, tokens, mask):
    """Logits of the last prompt position, (batch, vocab); fills the cache."""
    return model(tokens, attention_mask=mask, past_kv_cache=cache, last_position_only=True)[:, -1]


def _decode(model, cache: StaticKVCache, tokens, alive):
    """One token per row: logits (batch, vocab); writes column `step` and advances it."""
    logits = model(tokens, attention_mask=alive, past_kv_cache=cache)[:, -1]
    cache.step.add_(1)
    return logits


# Greedy decoding picks the token inside the graph: the step hands back (batch,) ids, so no
# (batch, vocab) logits leave the graph and no argmax launches between two replays.
def _prefill_greedy(model, cache: StaticKVCache, tokens, mask):
    return _prefill(model, cache, tokens, mask).argmax(-1)


def _decode_greedy(model, cache: StaticKVCache, tokens, alive):
    return _decode(model, cache, tokens, alive).argmax(-1)


_COMPILED: dict = {}


def compiled_steps(backend: Union[bool, str] = False, greedy: bool = False) -> tuple[Callable, Callable]:
    """(prefill, decode) callables returning logits, or ids with `greedy`. `backend` False:
    eager; True: inductor (decode with CUDA graphs on CUDA); a string: that `torch.compile`
    backend (e.g. "eager" to check that the decode step traces into one graph)."""
    prefill, decode = (_prefill_greedy, _decode_greedy) if greedy else (_prefill, _decode)
    if backend is False:
        return prefill, decode
    backend = "inductor" if backend is True else backend
    if (backend, greedy) not in _COMPILED:
        decode_kw = dict(mode="reduce-overhead") if backend == "inductor" else {}
        _COMPILED[backend, greedy] = (
            torch.compile(prefill, backend=backend, dynamic=None),
            torch.compile(decode, backend=backend, fullgraph=True, **decode_kw),
        )
    return _COMPILED[backend, greedy]


# ---------------------------------------------------------------------------- when it applies
def hooks_attached(model: torch.nn.Module) -> bool:
    """True when any forward/backward hook is attached anywhere in `model` (or globally):
    then a generate call runs eagerly so the hook sees every step."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or nn_module._global_backward_hooks:
        return True
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
        if isinstance(m, HookPoint) and (m.fwd_hooks or m.bwd_hooks):
            return True
    return False


def cache_length(cfg: ModelConfig, prompt_width: int, max_new_tokens: int) -> Optional[int]:
    """Columns a static cache needs (the last new token is never fed back), rounded up to
    `LENGTH_BUCKET`; None when learned positions would run past n_ctx (the dynamic loop then
    raises at the step that does, unless every row stops before)."""
    need = prompt_width + max_new_tokens - 1
    length = -(-need // LENGTH_BUCKET) * LENGTH_BUCKET
    if cfg.uses_learned_positions:
        if need > cfg.n_ctx:
            return None
        length = min(length, cfg.n_ctx)
    return length


_POOLS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def static_cache(model, batch: int, max_len: int, dtype: torch.dtype) -> StaticKVCache:
    """A static cache for `model`, reused across calls with the same shape (the compiled
    decode step's CUDA graph is recorded against its addresses)."""
    device = next(model.parameters()).device
    pool = _POOLS.setdefault(model, {})
    key = (batch, max_len, dtype, str(device))
    cache = pool.pop(key, None)
    if cache is None:
        while len(pool) >= POOL_SIZE:
            pool.pop(next(iter(pool)))
        cache = StaticKVCache(model.cfg, batch, max_len, device, dtype)
    pool[key] = cache  # most recently used last
    return cache


def release(model) -> None:
    """Free the static caches kept for `model` (they are reused across `generate` calls)."""
    _POOLS.pop(model, None)


def _cache_dtype(model, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


# ---------------------------------------------------------------------------- the loop
@torch.no_grad()
def fast_generate(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Bool[torch.Tensor, "batch pos"],
    max_new_tokens: int,
    stop: Int[torch.Tensor, "n_stop"],
    pad: int,
    sample: Optional[Callable[[torch.Tensor], torch.Tensor]],
    compile: Union[bool, str] = False,
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Decode `max_new_tokens` after left-padded `tokens` with a static cache.

    `sample` maps (batch, vocab) logits to (batch,) ids; None means greedy, picked inside the
    compiled step (the same ids as `argmax` outside it). Returns (tokens, mask, new_tokens)
    exactly as the step-by-step loop of `models.generation.generate` builds them: rows stop
    at a token in `stop`, later tokens of a stopped row are `pad` and masked out, and the
    output ends at the step where the last row stopped.
    """
    if compile is not False and model in _COMPILE_FAILED:
        compile = False
    if compile is not False:
        try:
            return _fast_generate(model, tokens, mask, max_new_tokens, stop, pad, sample, compile)
        except torch._dynamo.exc.TorchDynamoException as e:
            # A model or torch build the compiler cannot handle must not cost the caller its
            # run (e.g. a trainer's exact-match eval): decode eagerly from here on, loudly.
            _COMPILE_FAILED.add(model)
            warnings.warn(f"compiled decoding failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "this model decodes eagerly with the static cache from now on")
    return _fast_generate(model, tokens, mask, max_new_tokens, stop, pad, sample, False)


_COMPILE_FAILED: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def _fast_generate(model, tokens, mask, max_new_tokens, stop, pad, sample, compile):
    B, T = tokens.shape
    device = tokens.device
    length = cache_length(model.cfg, T, max_new_tokens)
    if length is None:
        raise ValueError(f"{T} + {max_new_tokens} tokens run past n_ctx={model.cfg.n_ctx} (learned positions)")
    cache = static_cache(model, B, length, _cache_dtype(model, device))
    greedy = sample is None
    prefill, decode = compiled_steps(compile, greedy)
    padded = not bool(mask.all())
    graphs = compile is not False and device.type == "cuda"

    cache.phase = "prefill"
    logits = prefill(model, cache, tokens, mask if padded else None)
    cache.phase = "decode"

    def feed(nxt, alive):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return decode(model, cache, nxt, alive)

    out, alive_out, new_tokens = decode_tokens(logits, feed, max_new_tokens, stop, pad,
                                               _picked if greedy else sample, compiled=compile is not False)
    return torch.cat([tokens, out], dim=1), torch.cat([mask, alive_out], dim=1), new_tokens


def _picked(ids: torch.Tensor) -> torch.Tensor:
    return ids  # greedy: the step already picked the token


def decode_tokens(
    logits: torch.Tensor,
    feed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_new_tokens: int,
    stop: Int[torch.Tensor, "n_stop"],
    pad: int,
    sample: Callable[[torch.Tensor], torch.Tensor],
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """The host side of static-cache decoding, from the (batch, vocab) `logits` of the last
    fed position (or whatever `feed` returns that `sample` maps to ids): sample, then `feed((batch, 1) ids, (batch, 1) alive)` -> the next logits.
    Returns (out, alive_out, new_tokens) as the step-by-step loop builds them: rows stop at a
    token in `stop`, later tokens of a stopped row are `pad` and not alive, and the output ends
    at the step where the last row stopped (checked on the host every `STOP_CHECK_EVERY`
    tokens). `compiled`: `feed` runs a compiled step; its guards are skipped from the third
    token on (the inputs then only change in value)."""
    B, device = logits.shape[0], logits.device
    out = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
    alive_out = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=device)
    all_done = torch.zeros(max_new_tokens, dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    check_stops = stop.numel() > 0
    alive = ~done
    n_steps = max_new_tokens
    with contextlib.ExitStack() as stance:
        for i in range(max_new_tokens):
            nxt = sample(logits)
            if check_stops:  # without stop tokens every row stays alive: no per-step bookkeeping
                nxt = nxt.masked_fill(done, pad)
                alive = ~done
            out[:, i] = nxt
            alive_out[:, i] = alive
            if check_stops:
                done = done | torch.isin(nxt, stop)
                all_done[i] = done.all()
                if (i + 1) % STOP_CHECK_EVERY == 0 and bool(all_done[i]):
                    break
            if i + 1 == max_new_tokens:
                break
            if i == 2 and compiled:
                # The step has been compiled (or matched) under full guards; from here on the
                # inputs only change in value, so skip re-checking its guards every token.
                stance.enter_context(_skip_guards())
            logits = feed(nxt[:, None], alive[:, None])
    if check_stops and bool(all_done.any()):
        n_steps = int(all_done.nonzero()[0, 0]) + 1
    out, alive_out = out[:, :n_steps], alive_out[:, :n_steps]
    new_tokens = [row[keep].tolist() for row, keep in zip(out.cpu(), alive_out.cpu())]
    return out, alive_out, new_tokens


def _skip_guards():
    try:
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
    except (AttributeError, TypeError):  # torch < 2.6
        return contextlib.nullcontext()


def applies(model, max_new_tokens: int, prompt_width: int) -> bool:
    """Whether `fast_generate` computes what the step-by-step loop would: nothing hooked,
    and learned positions stay within n_ctx."""
    return (
        max_new_tokens > 0
        and not hooks_attached(model)
        and cache_length(model.cfg, prompt_width, max_new_tokens) is not None
    )


__all__ = [
    "StaticKVCache", "StaticLayerKV", "fast_generate", "decode_tokens", "compiled_steps", "hooks_attached", "applies",
    "cache_length", "static_cache", "release",
]
