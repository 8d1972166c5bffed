"""Small analyses behind the explorer app (`app/explorer.py`): stream norms, top MLP neurons,
step-by-step generation with the new token's attention, per-token loss, top-1 predictions,
and the one-token corruption the Patching page starts from.

```python
from interp import explore
norms = explore.stream_norms(model, tokens)              # StreamNorms: resid (L+1, T), xt/xe for factored
idx, val = explore.top_neurons(model, tokens, layer=1, pos=-1, k=10)
steps = explore.generate_steps(model, tokens, n_steps=8, k=5, greedy=True)   # generate + one cached pass
steps[0].top_ids, steps[0].attention.shape               # (k,), (layer, head, T0)
explore.token_losses(model, tokens), explore.top1(model, tokens)   # (T - 1,), (T,)
change = explore.one_token_corruption(model, tokens, read_at=7, positions=range(6, 0, -1))
```

Everything takes one sequence: `tokens` (pos,) or (1, pos).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from .cache import cached
from .lens import lens_hooks

__all__ = ["StreamNorms", "stream_norms", "top_neurons", "Step", "generate_steps", "token_losses", "top1",
           "OneTokenChange", "one_token_corruption"]


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


@torch.no_grad()
def token_losses(model, tokens: Int[torch.Tensor, "pos"]) -> Float[torch.Tensor, "pos_minus_1"]:
    """Teacher-forced next-token cross-entropy at each position: entry i scores token i + 1."""
    tokens = _one(tokens).to(model.cfg.device)
    logits = model(tokens)[0].float()
    return F.cross_entropy(logits[:-1], tokens[0, 1:], reduction="none").cpu()


@torch.no_grad()
def top1(model, tokens: Int[torch.Tensor, "pos"]) -> Int[torch.Tensor, "pos"]:
    """The model's top-1 next token at every position."""
    return model(_one(tokens).to(model.cfg.device))[0].argmax(-1).cpu()


@dataclass
class OneTokenChange:
    """Token `position` replaced by `token`; `changes_at`: the position whose top-1
    prediction the change alters (None: it alters none that was looked at)."""

    position: int
    token: int
    changes_at: Optional[int]


@torch.no_grad()
def one_token_corruption(
    model,
    tokens: Int[torch.Tensor, "pos"],
    read_at: int,
    positions: Iterable[int],
    protected: Iterable[int] = (),
    n_alternatives: int = 3,
    travel: bool = False,
) -> Optional[OneTokenChange]:
    """A corrupted twin of `tokens` for activation patching: one token replaced by one of the
    model's own top alternatives there (its top predictions at the position before, never a
    `protected` id), scored with one batched forward over every candidate.

    Candidates are tried at `positions` in order. `travel=False`: the first change that alters
    the top-1 prediction at `read_at` wins. `travel=True` (free text, where any later position
    may read): the change whose effect reaches furthest from where it was made (then: latest)
    wins, reading at least two positions on. When none qualifies, the change at `read_at`
    itself that alters its prediction, else the first candidate there. None without candidates.
    """
    seq = _one(tokens).to(model.cfg.device)
    ids = seq[0].tolist()
    T = len(ids)
    protected = set(int(i) for i in protected)
    logits = model(seq)[0]
    base = logits.argmax(-1)
    cands = []
    for q in positions:
        if q < 1 or q >= T or ids[q] in protected:
            continue
        alts = [int(t) for t in logits[q - 1].topk(min(2 * n_alternatives, logits.shape[-1])).indices
                if int(t) not in protected and int(t) != ids[q]][:n_alternatives]
        cands += [(q, t) for t in alts]
    if not cands:
        return None
    batch = seq.repeat(len(cands), 1)
    for i, (q, t) in enumerate(cands):
        batch[i, q] = t
    flips = (model(batch).argmax(-1) != base).cpu()  # (candidate, pos)
    best, at = None, None
    for i, (q, _) in enumerate(cands):
        if not travel:
            if bool(flips[i, read_at]):
                best, at = i, read_at
                break
            continue
        later = [r for r in range(q + 2, T) if bool(flips[i, r])]
        if later and (best is None or (later[-1] - q, later[-1]) > (at - cands[best][0], at)):
            best, at = i, later[-1]
    if best is None:
        here = [i for i, (q, _) in enumerate(cands) if q == read_at]
        best = next((i for i in here if bool(flips[i, read_at])), here[0] if here else 0)
        at = read_at if bool(flips[best, read_at]) else None
    q, t = cands[best]
    return OneTokenChange(q, t, at)
