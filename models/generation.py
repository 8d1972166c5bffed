"""Sampling with a KV cache, for every positional scheme.

* `generate(model, prompts, max_new_tokens=..., temperature=..., top_k=..., top_p=...,
  greedy=..., stop_tokens=...)`: batched prompts of different lengths are left-padded; the
  cache tracks padding and positions, so each row generates exactly what it would alone.
* `generate_next_token(model, tokens, ...)`: one step, returning the token and its logits,
  for step-by-step analysis.

Learned positions refuse to go past `n_ctx`; RoPE, ALiBi and no-position models keep going.

On CUDA, `generate` decodes with a static KV cache and compiled prefill / decode graphs (the
decode step as a CUDA graph; see `models.decoding`) unless something is hooked, in which case
that call runs step by step eagerly so the hooks see every step. `fast=False` opts out;
`fast=True` also takes the static cache on CPU (eager there unless `compile=True`).

`model` is any `models.HookedTransformer` (or a module with its `forward`, `cfg` and
`to_tokens`); this module imports only `KVCache` from below it, so `HookedTransformer.generate`
can import it without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float, Int

from torch import nn

from . import decoding
from .attention import KVCache


@dataclass
class Generation:
    tokens: Int[torch.Tensor, "batch pos"]  # prompt + generated, left-padded
    attention_mask: torch.Tensor  # (batch, pos) bool, False on padding and after a stop
    prompt_lengths: list[int]
    new_tokens: list[list[int]]  # per row, generated ids (stop token included)


def sample_logits(
    logits: Float[torch.Tensor, "batch vocab"],
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    greedy: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Int[torch.Tensor, "batch"]:
    """Greedy, or sampling with temperature then top-k then nucleus (top-p) filtering."""
    if greedy or temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, -1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        tokens[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = True
    return tokens.to(device), mask.to(device)  # built on the host, copied once


def _as_prompts(model: nn.Module, input) -> list[list[int]]:
    if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and isinstance(input[0], str)):
        texts = [input] if isinstance(input, str) else list(input)
        return [model.to_tokens(t)[0].tolist() for t in texts]
    if isinstance(input, torch.Tensor):
        return [row.tolist() for row in (input[None] if input.ndim == 1 else input)]
    return [list(p) for p in input]


@torch.no_grad()
def generate_next_token(
    model: nn.Module,
    tokens: Int[torch.Tensor, "batch pos"],
    attention_mask: Optional[torch.Tensor] = None,
    past_kv_cache: Optional[KVCache] = None,
    **sampling,
) -> tuple[Int[torch.Tensor, "batch"], Float[torch.Tensor, "batch vocab"]]:
    """One decoding step: (next token, its logits at the last position).

    With `past_kv_cache`, `tokens` holds only the tokens the cache has not seen yet.
    """
    logits = model(tokens, attention_mask=attention_mask, past_kv_cache=past_kv_cache)
    last = logits[:, -1]
    return sample_logits(last, **sampling), last


@torch.no_grad()
def generate(
    model: nn.Module,
    input: Union[str, Sequence[str], torch.Tensor, Sequence[Sequence[int]]],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    greedy: bool = False,
    stop_tokens: Optional[Sequence[int]] = None,
    use_kv_cache: bool = True,
    seed: Optional[int] = None,
    return_output: bool = False,
    fast: Optional[bool] = None,
    compile: Optional[bool] = None,
):
    """Generate continuations. Returns the (batch, pos) tokens (left-padded), or a
    `Generation` with masks and per-row new tokens when `return_output=True`.

    Rows stop independently at any of `stop_tokens` (the model's `eos_token_id` by default);
    the loop ends when every row has stopped or `max_new_tokens` were made.

    `fast`: None (default) decodes with the static cache and compiled graphs on CUDA
    (`models.decoding.fast_generate`), False always runs the step-by-step dynamic-cache loop,
    True takes the static cache on any device. Either way a call with a hook attached anywhere
    in the model runs step by step. `compile`: compile the static path's prefill and decode
    step (decode as a CUDA graph on CUDA); None means on CUDA only. Outputs are the same.
    """
    was_training = model.training
    model.eval()
    device = model.cfg.device
    prompts = _as_prompts(model, input)
    pad = model.cfg.pad_token_id if model.cfg.pad_token_id is not None else 0
    tokens, mask = left_pad(prompts, pad, device)
    if stop_tokens is None:
        stop_tokens = [model.cfg.eos_token_id] if model.cfg.eos_token_id is not None else []
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator)
    padded = not bool(mask.all())

    use_fast = fast if fast is not None else tokens.is_cuda
    if use_fast and use_kv_cache and decoding.applies(model, max_new_tokens, tokens.shape[1]):
        compile = tokens.is_cuda if compile is None else compile
        try:
            tokens, mask, new_tokens = decoding.fast_generate(
                getattr(model, "_orig_mod", model), tokens, mask, max_new_tokens, stop, pad,
                None if greedy or temperature == 0 else (lambda logits: sample_logits(logits, **sampling)),
                compile=compile,
            )
        finally:
            model.train(was_training)
        if return_output:
            return Generation(tokens, mask, [len(p) for p in prompts], new_tokens)
        return tokens

    B = len(prompts)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens: list[list[int]] = [[] for _ in range(B)]
    cache = KVCache(model.cfg.n_layers) if use_kv_cache else None
    step_input, step_mask = tokens, (mask if padded else None)
    try:
        for _ in range(max_new_tokens):
            if cache is not None:
                nxt, _ = generate_next_token(model, step_input, step_mask, cache, **sampling)
            else:
                nxt, _ = generate_next_token(model, tokens, mask if padded else None, None, **sampling)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            alive = ~done
            for i in alive.nonzero().flatten().tolist():
                new_tokens[i].append(int(nxt[i]))
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            mask = torch.cat([mask, alive[:, None]], dim=1)
            if not bool(alive.all()):
                padded = True
            step_input = nxt[:, None]
            step_mask = alive[:, None] if padded else None
            if stop.numel():
                done = done | torch.isin(nxt, stop)
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    if return_output:
        return Generation(tokens, mask, [len(p) for p in prompts], new_tokens)
    return tokens
