"""Small analyses behind the explorer app (`app/explorer.py`): stream norms, top MLP neurons,
and step-by-step generation with the new token's attention.

```python
from interp import explore
norms = explore.stream_norms(model, tokens)              # StreamNorms: resid (L+1, T), xt/xe for factored
idx, val = explore.top_neurons(model, tokens, layer=1, pos=-1, k=10)
steps = explore.generate_steps(model, tokens, n_steps=8, k=5, greedy=True)   # generate + one cached pass
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
    """Generate up to `n_steps` tokens and record, per step, the full next-token
    distribution, its top k, and the attention of the predicting query in every layer/head.

    The tokens come from `models.generation.generate` (KV cache; `greedy`, `temperature`,
    `top_k`, `top_p`, `seed`), stopping after a token in `stop_tokens` (default: the model's
    eos; `[]` never stops). Then one forward pass over prompt + generated tokens, caching the
    patterns of the generating queries only, gives every step's distribution and attention:
    the same numbers a step-by-step loop would compute, in one pass. `probs` is the model's
    softmax at temperature 1 whatever the sampling settings.
    """
    from models.generation import generate

    seq = _one(tokens).to(model.cfg.device)
    T0 = seq.shape[1]
    gen = generate(model, seq, max_new_tokens=n_steps, stop_tokens=stop_tokens, seed=seed, return_output=True,
                   **sampling)
    new = [int(t) for t in gen.new_tokens[0]]
    if not new:
        return []
    full = torch.cat([seq, torch.tensor([new[:-1]], dtype=seq.dtype, device=seq.device)], dim=1)
    logits, cache = cached(model, full, names="pattern", batch=0, pos=slice(T0 - 1, None), return_logits=True)
    probs = logits.float().softmax(-1).cpu()  # (n, vocab): row i predicts new[i]
    attn = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]).float().cpu()
    out: list[Step] = []
    for i, tok in enumerate(new):
        top = probs[i].topk(min(k, probs.shape[-1]))
        out.append(Step(T0 - 1 + i, tok, probs[i], top.indices, top.values, attn[:, :, i, : T0 + i]))
    return out
