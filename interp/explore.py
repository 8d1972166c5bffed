"""Small analyses behind the explorer app (`app/explorer.py`): stream norms, top MLP neurons,
and step-by-step generation with the new token's attention.

```python
from interp import explore
norms = explore.stream_norms(model, tokens)              # StreamNorms: resid (L+1, T), xt/xe for factored
idx, val = explore.top_neurons(model, tokens, layer=1, pos=-1, k=10)
steps = explore.generate_steps(model, tokens, n_steps=8, k=5, greedy=True)
steps[0].top_ids, steps[0].attention.shape               # (k,), (layer, head, T0)
```

Everything takes one sequence: `tokens` (pos,) or (1, pos).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float, Int

from .cache import cached
from .lens import lens_hooks

__all__ = ["StreamNorms", "stream_norms", "top_neurons", "Step", "generate_steps"]


def _one(tokens: torch.Tensor) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"expected one sequence (pos,) or (1, pos), got shape {tuple(tokens.shape)}")
    return tokens


@dataclass
class StreamNorms:
    """L2 norms per (lens layer, position); layer 0 = embedding, layer i+1 = after block i.
    `xt`/`xe` are None unless the model has a factored stream."""

    layer_names: list[str]
    resid: Float[torch.Tensor, "layer pos"]
    xt: Optional[Float[torch.Tensor, "layer pos"]] = None
    xe: Optional[Float[torch.Tensor, "layer pos"]] = None


@torch.no_grad()
def stream_norms(model, tokens: Int[torch.Tensor, "pos"]) -> StreamNorms:
    """||resid|| (and ||xt||, ||xe|| for factored models) at the embedding and after each block."""
    tokens = _one(tokens).to(model.cfg.device)
    n = model.cfg.n_layers
    streams = ["resid"] + (["xt", "xe"] if model.cfg.stream == "factored" else [])
    names = {s: lens_hooks(model, s) for s in streams}
    cache = cached(model, tokens, names=[x for v in names.values() for x in v], batch=0)
    norms = {s: torch.stack([cache[h].float().norm(dim=-1) for h in hs]).cpu() for s, hs in names.items()}
    return StreamNorms(["embed"] + [f"block {i}" for i in range(n)], norms["resid"], norms.get("xt"), norms.get("xe"))


@torch.no_grad()
def top_neurons(
    model, tokens: Int[torch.Tensor, "pos"], layer: int, pos: int = -1, k: int = 20
) -> tuple[Int[torch.Tensor, "k"], Float[torch.Tensor, "k"]]:
    """The k MLP neurons of `layer` with the largest |activation| (`mlp.hook_post`) at `pos`:
    (indices, activations), largest |activation| first."""
    if model.cfg.attn_only:
        raise ValueError(f"model {model.cfg.name!r} is attention-only: it has no MLP neurons")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.cfg.n_layers - 1}")
    tokens = _one(tokens).to(model.cfg.device)
    T = tokens.shape[1]
    if not -T <= pos < T:
        raise ValueError(f"position {pos} out of range for {T} tokens")
    name = f"blocks.{layer}.mlp.hook_post"
    act = cached(model, tokens, names=[name], batch=0, pos=pos)[name][0].float().cpu()  # (d_mlp,)
    order = act.abs().argsort(descending=True)[: min(k, act.numel())]
    return order, act[order]


@dataclass
class Step:
    """One decoding step. `position` is the query that predicted `token` (the last position of
    the sequence so far); `attention` is that query's pattern (layer, head, keys)."""

    position: int
    token: int
    probs: Float[torch.Tensor, "vocab"]
    top_ids: Int[torch.Tensor, "k"]
    top_probs: Float[torch.Tensor, "k"]
    attention: Float[torch.Tensor, "layer head key"]


@torch.no_grad()
def generate_steps(
    model,
    tokens: Int[torch.Tensor, "pos"],
    n_steps: int = 8,
    k: int = 5,
    stop_tokens: Optional[list[int]] = None,
    seed: Optional[int] = 0,
    **sampling,
) -> list[Step]:
    """Generate up to `n_steps` tokens one at a time, recording per step the full next-token
    distribution, its top k, and the attention of the predicting query in every layer/head.

    Sampling follows `models.generation.sample_logits` (`greedy`, `temperature`, `top_k`,
    `top_p`). Stops after a token in `stop_tokens` (default: the model's eos). Each step is a
    full forward pass (patterns of the last query only), fine for the small models it serves.
    """
    from models.generation import sample_logits

    seq = _one(tokens).to(model.cfg.device)
    if stop_tokens is None:
        stop_tokens = [model.cfg.eos_token_id] if model.cfg.eos_token_id is not None else []
    generator = torch.Generator(device=seq.device).manual_seed(seed) if seed is not None else None
    out: list[Step] = []
    for _ in range(n_steps):
        logits, cache = cached(model, seq, names="pattern", batch=0, pos=-1, return_logits=True)
        last = logits[-1].float()
        tok = int(sample_logits(last[None], generator=generator, **sampling)[0])
        probs = last.softmax(-1).cpu()
        top = probs.topk(min(k, probs.numel()))
        attn = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][:, -1] for l in range(model.cfg.n_layers)]).float().cpu()
        out.append(Step(seq.shape[1] - 1, tok, probs, top.indices, top.values, attn))
        seq = torch.cat([seq, torch.tensor([[tok]], device=seq.device)], dim=1)
        if tok in stop_tokens:
            break
    return out
