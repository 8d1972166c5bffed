"""Steering with a feature and ablating one, in the real model.

```python
from interp import features
r = features.steer(model, sae, latent=7, prompt="To be or not to", alpha=8.0)   # all positions
r = features.steer(model, sae, 7, tokens, alpha=8.0, positions=[-1])            # the last prompt token only
r = features.ablate(model, sae, [7, 12], tokens)                                # zero features 7 and 12
r.before.top, r.after.top          # next-token [(token id, prob)] at the last prompt position
r.before.continuation, r.after.continuation, r.kl
```

**Steering** adds `alpha * W_dec[latent] / scale_out` at the hook the dictionary writes (an
SAE's `hook_name`, a transcoder's `out_hook_name`): exactly what raising the latent by `alpha`
would add to the reconstruction, so `alpha` is in the latent's own units and a dashboard's
max activation says what is large. **Ablation** subtracts, at the same hook, what the
feature writes there, `z_latent(x) * W_dec[latent] / scale_out` with `z` the latent computed
from the real activation `x` at `hook_name`. That is what splicing the dictionary with its
error term and zeroing the latent does (`features.splice(model, sae, include_error=True)`
with a hook on `hook_sae_acts_post`, the cross-check in the tests), computed without the
round trip: a feature that does not fire leaves every activation bit for bit as in the
model, and everything else the model computes is the real model's.

Both return the next-token distribution at the last prompt position and a greedy
continuation (`models.generation.generate`, which takes its step-by-step path because hooks
are attached), before and after. `positions` (prompt positions, negative from the end)
restrict the intervention to those tokens; by default it acts on every position, generated
tokens included.

Refused with one `SteeringError` each: a latent out of range, a non-finite alpha, an added
vector longer than `MAX_STEER` times the mean norm of the activation it is added to on this
prompt (beyond that the model is far outside anything it has seen), logits that overflow
(inf / nan), a hook the model lacks or cannot write (the splice's checks), a prompt longer
than a learned-position model's context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .dictionary import DictionaryError, SparseDictionary
from .splicing import _check, _flat, hook_widths

__all__ = ["steer", "ablate", "Intervention", "Distribution", "SteeringError", "steering_hooks", "ablation_hooks",
           "MAX_STEER"]

MAX_STEER = 1000.0  # |alpha| * ||direction|| at most this many times the hook's mean activation norm on the prompt


class SteeringError(DictionaryError):
    """A steering / ablation request that cannot give a meaningful answer; says why."""


@dataclass
class Distribution:
    """The next-token distribution at the last prompt position, and a greedy continuation."""

    probs: Float[Tensor, "vocab"]
    top: list[tuple[int, float]]  # the k most likely (token id, probability)
    continuation: list[int]  # greedily generated token ids


@dataclass
class Intervention:
    latents: list[int]
    alpha: Optional[float]  # None: an ablation
    positions: Optional[list[int]]  # prompt positions (None: all, generated ones included)
    hook: str  # where the intervention acts
    before: Distribution
    after: Distribution
    kl: float  # KL(before || after) of the next-token distributions, nats
    added_norm: float = 0.0  # steering: the norm of the vector added at each position
    act_norm: float = 0.0  # mean norm of the activation at the hook on the prompt (clean)

    def change(self, token: int) -> float:
        """after - before probability of `token`."""
        return float(self.after.probs[token] - self.before.probs[token])


# ============================================================================ the hooks
class _Positions:
    """Which positions of each forward an intervention touches, through a KV-cached
    generation: the prompt's forward sees positions 0..T-1, each cached step one more."""

    def __init__(self, positions: Optional[Sequence[int]]):
        self.positions = None if positions is None else sorted(set(positions))
        self.offset = 0

    def reset(self) -> None:
        self.offset = 0

    def mask(self, n: int, device) -> Optional[Tensor]:
        """(n,) bool for the next forward's n positions (None: all), and move on."""
        lo = self.offset
        self.offset += n
        if self.positions is None:
            return None
        at = torch.arange(lo, lo + n, device=device)
        return torch.isin(at, torch.tensor(self.positions, device=device))


def direction(sae: SparseDictionary, latent: int) -> Float[Tensor, "d_out"]:
    """What one unit of `latent` adds to the reconstruction, in model units."""
    return (sae.W_dec[latent].detach().float() / sae.scale_out.float())


def _add(out: Tensor, delta: Tensor, where: Optional[Tensor]) -> Tensor:
    """out + delta ((b, t, d_flat) in out's flat shape) at the positions `where` (None: all)."""
    flat = _flat(out, delta.shape[-1])
    if where is not None:
        delta = delta * where[None, :, None].to(delta.dtype)
    return (flat + delta.to(flat.dtype)).reshape(out.shape)


def steering_hooks(sae: SparseDictionary, latent: int, alpha: float, positions: Optional[Sequence[int]] = None):
    """`(fwd_hooks, positions_tracker)` adding `alpha * direction(latent)` at the dictionary's
    output hook (call `tracker.reset()` before each new sequence)."""
    name = sae.cfg.out_hook_name or sae.cfg.hook_name
    track = _Positions(positions)
    vec = alpha * direction(sae, latent)

    def hook(act, hook):
        where = track.mask(act.shape[1], act.device)
        return _add(act, vec.to(act.device).expand(*act.shape[:2], -1), where)

    return [(name, hook)], track


def ablation_hooks(sae: SparseDictionary, latents: Sequence[int], positions: Optional[Sequence[int]] = None):
    """`(fwd_hooks, positions_tracker)` removing what `latents` write at the dictionary's
    output hook, their values computed from the real activation at `hook_name`."""
    cfg = sae.cfg
    track = _Positions(positions)
    idx = torch.tensor(list(latents), dtype=torch.long)
    seen: dict[str, Tensor] = {}

    def written(x: Tensor) -> Tensor:
        z = sae.activation(sae.pre_acts(_flat(x, cfg.d_in)))[..., idx.to(x.device)]  # (b, t, n)
        D = sae.W_dec[idx.to(x.device)].detach()  # (n, d_out)
        return (z.to(D.dtype) @ D) / sae.scale_out.to(D.dtype)

    if not cfg.is_transcoder:
        def hook(act, hook):
            where = track.mask(act.shape[1], act.device)
            return _add(act, -written(act), where)

        return [(cfg.hook_name, hook)], track

    def read(act, hook):
        seen["x"] = act

    def write(act, hook):
        where = track.mask(act.shape[1], act.device)
        return _add(act, -written(seen.pop("x")), where)

    return [(cfg.hook_name, read), (cfg.out_hook_name, write)], track


# ============================================================================ the runs
def _tokens(model, prompt) -> Int[Tensor, "t"]:
    if isinstance(prompt, str):
        try:
            t = model.to_tokens(prompt)
        except ValueError as e:
            raise SteeringError(f"cannot tokenize the prompt: {e}") from None
    else:
        t = torch.as_tensor(prompt)
    t = t.reshape(-1) if t.ndim == 2 and t.shape[0] == 1 else t
    if t.ndim != 1 or t.numel() == 0:
        raise SteeringError(f"give one prompt (a string or a 1-D list of token ids), got shape {tuple(t.shape)}")
    if t.dtype not in (torch.int64, torch.int32):
        raise SteeringError(f"token ids must be integers, got {t.dtype}")
    V = model.cfg.d_vocab
    if int(t.min()) < 0 or int(t.max()) >= V:
        raise SteeringError(f"token id {int(t.max()) if int(t.max()) >= V else int(t.min())} is outside the "
                            f"vocabulary (0 to {V - 1})")
    return t.long().to(model.cfg.device)


def _validate(model, sae: SparseDictionary, latents: Sequence[int], positions, T: int) -> Optional[list[int]]:
    """The splice's checks (hook exists, writable, right width, the dictionary's model), the
    latents and the positions; returns the positions as non-negative indices."""
    if not isinstance(sae, SparseDictionary):
        raise SteeringError(f"expected a dictionary (features.load(...)), got {type(sae).__name__}")
    _check(model, sae, hook_widths(model), check_model=True)
    n = sae.cfg.d_sae
    for i in latents:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise SteeringError(f"latent {i!r} is out of range: the dictionary on {sae.cfg.hook_name} has {n} latents "
                                f"(0 to {n - 1})")
    if positions is None:
        return None
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not -T <= p < T:
            raise SteeringError(f"position {p!r} is outside this {T}-token prompt (0 to {T - 1}, or -{T} to -1)")
        out.append(p % T)
    return out


def _run(model, tokens: Tensor, hooks, track: Optional[_Positions], k: int, max_new_tokens: int) -> Distribution:
    from models.generation import generate

    with model.hooks(fwd_hooks=hooks):
        if track is not None:
            track.reset()
        logits = model(tokens[None])[0, -1].float()
        if not bool(torch.isfinite(logits).all()):
            raise SteeringError("the logits overflow (inf / nan) under this intervention; use a smaller alpha")
        cont: list[int] = []
        if max_new_tokens > 0:
            if track is not None:
                track.reset()
            out = generate(model, tokens[None], max_new_tokens=max_new_tokens, greedy=True, return_output=True)
            cont = out.new_tokens[0]
    probs = logits.softmax(-1).cpu()
    top = probs.topk(min(k, probs.numel()))
    return Distribution(probs, [(int(i), float(p)) for i, p in zip(top.indices, top.values)], cont)


def _new_tokens(model, T: int, max_new_tokens: int) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise SteeringError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if getattr(model.cfg, "uses_learned_positions", False):
        if T > model.cfg.n_ctx:
            raise SteeringError(f"the prompt is {T} tokens, longer than this model's context (n_ctx={model.cfg.n_ctx})")
        return min(max_new_tokens, model.cfg.n_ctx - T)
    return max_new_tokens


def _kl(p: Tensor, q: Tensor) -> float:
    p, q = p.double(), q.double()
    return float((p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum())


@torch.no_grad()
def _mean_norm(model, sae: SparseDictionary, tokens: Tensor) -> float:
    name = sae.cfg.out_hook_name or sae.cfg.hook_name
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n == name)
    return float(_flat(cache[name], sae.cfg.d_out).float().norm(dim=-1).mean())


@torch.no_grad()
def steer(model, sae: SparseDictionary, latent: int, prompt: Union[str, Sequence[int], Tensor], alpha: float,
          positions: Optional[Sequence[int]] = None, max_new_tokens: int = 20, k: int = 10) -> Intervention:
    """Add `alpha * W_dec[latent] / scale_out` at the dictionary's output hook (module
    docstring) and compare the next-token distribution and a greedy continuation."""
    model.eval()
    tokens = _tokens(model, prompt)
    T = len(tokens)
    pos = _validate(model, sae, [latent], positions, T)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SteeringError(f"alpha must be a finite number, got {alpha!r}")
    n_new = _new_tokens(model, T, max_new_tokens)
    added = abs(float(alpha)) * float(direction(sae, latent).norm())
    act = _mean_norm(model, sae, tokens)
    if added > MAX_STEER * max(act, 1e-12):
        raise SteeringError(f"alpha={alpha:g} adds a vector of norm {added:.3g} at {sae.cfg.out_hook_name or sae.cfg.hook_name}, "
                            f"more than {MAX_STEER:g} times the activation's mean norm there ({act:.3g}) on this prompt; "
                            f"|alpha| up to {MAX_STEER * act / max(float(direction(sae, latent).norm()), 1e-12):.3g}")
    before = _run(model, tokens, [], None, k, n_new)
    hooks, track = steering_hooks(sae, latent, float(alpha), pos)
    after = _run(model, tokens, hooks, track, k, n_new)
    return Intervention([latent], float(alpha), pos, hooks[-1][0], before, after, _kl(before.probs, after.probs),
                        added, act)


@torch.no_grad()
def ablate(model, sae: SparseDictionary, latents: Union[int, Sequence[int]], prompt: Union[str, Sequence[int], Tensor],
           positions: Optional[Sequence[int]] = None, max_new_tokens: int = 20, k: int = 10) -> Intervention:
    """Zero `latents` (one or several): remove what they write at the dictionary's output
    hook, the rest of the model unchanged (module docstring); compare before / after."""
    model.eval()
    latents = [latents] if isinstance(latents, int) and not isinstance(latents, bool) else list(latents)
    if not latents:
        raise SteeringError("ablate: give at least one latent")
    tokens = _tokens(model, prompt)
    T = len(tokens)
    pos = _validate(model, sae, latents, positions, T)
    n_new = _new_tokens(model, T, max_new_tokens)
    before = _run(model, tokens, [], None, k, n_new)
    hooks, track = ablation_hooks(sae, latents, pos)
    after = _run(model, tokens, hooks, track, k, n_new)
    return Intervention(latents, None, pos, hooks[-1][0], before, after, _kl(before.probs, after.probs),
                        act_norm=_mean_norm(model, sae, tokens))
