"""What a metric is: a function of the logits, one number per prompt; the built-ins are
batched over stacked patch sites and say which positions they read, and can be asked for by
name (`from_name`: tokens read off the unpatched clean and corrupted runs)."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from jaxtyping import Int


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


def metric_end(metrics: dict, T: int) -> int:
    """1 + the last position any metric reads (T when one does not say)."""
    return 1 + max((m.last_read(T) if getattr(m, "last_read", None) else T - 1) for m in metrics.values())


def metric_name(m) -> str:
    return getattr(m, "name", None) or getattr(m, "__name__", None) or "metric"


def evaluate(metrics: dict, logits: torch.Tensor, n_sites: int, per_example: bool) -> torch.Tensor:
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


def as_metrics(metric) -> tuple[dict, bool]:
    if isinstance(metric, Mapping):
        if not metric:
            raise ValueError("metric mapping is empty")
        return dict(metric), True
    return {metric_name(metric): metric}, False


# ============================================================================ metrics by name
NAMES = ("logit_diff", "logprob", "prob", "loss")
HOW = ("build one: interp.patching.logit_diff(answer=ids, wrong=ids, pos=-1), "
       "interp.patching.logprob(target=ids, pos=-1), interp.patching.prob(target=ids, pos=-1), "
       "interp.patching.loss(tokens, attention_mask), or any callable logits (batch, pos, d_vocab) -> (batch,)")


def last_positions(attention_mask: Optional[torch.Tensor], T: int):
    """The last real position of every prompt: -1 unpadded, else (batch,) from the mask."""
    if attention_mask is None:
        return -1
    return (attention_mask.long() * torch.arange(T, device=attention_mask.device)).amax(-1).cpu()


@torch.no_grad()
def from_name(name: str, model, clean: torch.Tensor, corrupted: torch.Tensor,
              attention_mask: Optional[torch.Tensor] = None) -> Metric:
    """The built-in metric `name`, its tokens read off the unpatched runs at each prompt's
    last real position:

    * `"loss"`: `loss(clean, attention_mask)`, the clean prompts' next-token loss;
    * `"logprob"` / `"prob"`: of the token the clean run predicts (its top-1);
    * `"logit_diff"`: the clean run's top-1 minus the corrupted run's top-1 (refused for a
      prompt where both runs predict the same token: give `answer`/`wrong` yourself).
    """
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}: the names are {list(NAMES)}; or {HOW}")
    if name == "loss":
        return loss(clean, attention_mask)
    T = clean.shape[-1]
    pos = last_positions(attention_mask, T)
    rows = torch.arange(clean.shape[0])
    at = pos if isinstance(pos, int) else pos.to(clean.device)

    def top1(tokens):
        return model(tokens, attention_mask=attention_mask)[rows.to(tokens.device), at].argmax(-1).cpu()

    answer = top1(clean)
    if name == "logprob":
        return logprob(answer, pos)
    if name == "prob":
        return prob(answer, pos)
    wrong = top1(corrupted)
    same = (answer == wrong).nonzero().flatten().tolist()
    if same:
        raise ValueError(f"metric 'logit_diff' by name compares the clean and the corrupted run's top-1 token, but "
                         f"both runs predict the same token for prompt(s) {same}; say which tokens to compare: "
                         "interp.patching.logit_diff(answer=ids, wrong=ids, pos=-1)")
    return logit_diff(answer, wrong, pos)


def resolve(metric, model, clean: torch.Tensor, corrupted: torch.Tensor, attention_mask: Optional[torch.Tensor]):
    """`metric` with names (alone or as a mapping's values) built by `from_name`; anything
    else that is not callable is refused with how to build a metric."""
    if isinstance(metric, Mapping):
        return {k: resolve(m, model, clean, corrupted, attention_mask) for k, m in metric.items()}
    if isinstance(metric, str):
        return from_name(metric, model, clean, corrupted, attention_mask)
    if not callable(metric):
        raise ValueError(f"metric must be a name {list(NAMES)}, a callable or a mapping of them, got "
                         f"{type(metric).__name__} {metric!r}; {HOW}")
    return metric
