"""Loss at a chosen context length, per position, and the in-context-learning score.

```python
from interp import eval as ev
ids = ev.split_tokens(task, "test")                                  # the test split's token stream
ev.loss_at_context(model, ids, 2048, bos=task.tokenizer.bos_token_id)  # mean next-token loss, 2048-token windows
per_pos = ev.loss_per_position(model, ids, 1024, bos=...)              # (1023,) mean loss at each position
ev.icl_score(per_pos)                                                  # loss@500 - loss@50 (Olsson et al. 2022)
```

Windows: `nonoverlapping` cuts the stream into back-to-back windows and scores every token
(early tokens see little context); `sliding` moves by `stride` and scores only the tokens a
window adds (after the first), so every scored token sees at least `context - stride` tokens.
With `bos`, each window starts with it (as the text task's examples do) and holds
`context - 1` corpus tokens. Models with learned positions cannot run past `n_ctx`:
`ContextTooLong` says so instead of returning numbers.

Extrapolating or ignoring far context? A model run past its training length L can have a
good loss either by *using* the tokens more than L back or by *ignoring* them (a loss as good
as a window of L, no better). `truncated_context_losses` re-scores every token of the same
windows with only its last `window` tokens visible, so the two losses compare token by token
(`far_context_gain` sums it up per position band); `attention_beyond` measures how much
attention each head puts more than a distance back.

```python
full, trunc = ev.truncated_context_losses(model, ids, 2048, [256], bos=1)  # (n, 2047), {256: (n, 2047)}
ev.far_context_gain(full, trunc[256], [(256, 512), (512, 2047)])  # trunc - full per band, +- s.e. over windows
ev.attention_beyond(model, ids, 2048, 256, bos=1)  # {"far": (layer, head), "bos": (layer, head)}
```
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int


class ContextTooLong(ValueError):
    """The model cannot run at this context length (learned positions past n_ctx)."""


def split_tokens(task: Any, split: str = "test") -> Int[torch.Tensor, "n"]:
    """The token stream of a text task's split (the corpus tokens, no <bos>)."""
    if not hasattr(task, "token_ids"):
        raise ValueError(f"task {getattr(task, 'name', task)!r} has no token stream; use a text task")
    import numpy as np

    ids = task.token_ids(split)
    if isinstance(ids, (list, np.ndarray)):
        return torch.as_tensor(np.asarray(ids, dtype=np.int64))
    return ids.gather(np.zeros(1, dtype=np.int64), len(ids))[0]  # shards on disk: read the whole split


def check_context(model, context: int) -> None:
    if model.cfg.positional in ("learned", "learned+rope") and context > model.cfg.n_ctx:
        raise ContextTooLong(f"context {context} > n_ctx={model.cfg.n_ctx}: {model.cfg.positional!r} positions are "
                             "a table of n_ctx rows and cannot extrapolate")


def _windows(ids: torch.Tensor, context: int, stride: int, bos: Optional[int]) -> tuple[torch.Tensor, int]:
    """(n, context) windows over `ids` moving by `stride`, and how many corpus tokens each holds."""
    body = context - (bos is not None)
    if len(ids) < body:
        raise ValueError(f"the token stream has {len(ids)} tokens, fewer than one window of {body}")
    starts = torch.arange(0, len(ids) - body + 1, stride)
    rows = ids[starts[:, None] + torch.arange(body)]
    if bos is not None:
        rows = torch.cat([torch.full((len(rows), 1), bos, dtype=rows.dtype), rows], dim=1)
    return rows, body


@torch.no_grad()
def _token_losses(model, rows: torch.Tensor, batch_size: int) -> Float[torch.Tensor, "n pos"]:
    out = []
    device = next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        x = rows[i : i + batch_size].to(device)
        logits = model(x).float()
        out.append(F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").cpu())
    return torch.cat(out)


def loss_at_context(model, ids: Int[torch.Tensor, "n"], context: int, *, mode: str = "nonoverlapping",
                    stride: Optional[int] = None, bos: Optional[int] = None, batch_size: int = 8,
                    max_windows: Optional[int] = None) -> float:
    """Mean next-token loss over `ids` read in windows of `context` tokens."""
    check_context(model, context)
    if mode not in ("nonoverlapping", "sliding"):
        raise ValueError(f"mode must be 'nonoverlapping' or 'sliding', got {mode!r}")
    was = model.training
    model.eval()
    try:
        body = context - (bos is not None)
        step = body if mode == "nonoverlapping" else (stride or max(1, context // 2))
        if step > body:
            raise ValueError(f"stride {step} is longer than a window's {body} corpus tokens")
        rows, _ = _windows(ids, context, step, bos)
        if max_windows is not None:
            rows = rows[:max_windows]
        losses = _token_losses(model, rows, batch_size)  # (n, context - 1): loss predicting position t + 1
        if mode == "nonoverlapping":
            return float(losses.mean())
        # sliding: the first window scores everything, later ones only the `step` tokens they add
        tail = losses[1:, -step:]
        return float(torch.cat([losses[0], tail.flatten()]).mean())
    finally:
        model.train(was)


def loss_per_position(model, ids: Int[torch.Tensor, "n"], context: int, *, bos: Optional[int] = None,
                      batch_size: int = 8, max_windows: Optional[int] = None) -> Float[torch.Tensor, "pos"]:
    """Mean loss at each position of back-to-back `context`-token windows: entry t is the loss
    of predicting token t + 1 from tokens 0..t."""
    check_context(model, context)
    was = model.training
    model.eval()
    try:
        rows, body = _windows(ids, context, context - (bos is not None), bos)
        if max_windows is not None:
            rows = rows[:max_windows]
        return _token_losses(model, rows, batch_size).mean(0)
    finally:
        model.train(was)


def icl_score(per_position: Float[torch.Tensor, "pos"], late: int = 500, early: int = 50, band: int = 10) -> float:
    """In-context-learning score (Olsson et al. 2022): loss at token `late` minus loss at token
    `early` (negative: later tokens are predicted better thanks to the context), each the mean
    over positions within `band` of it (one position's mean over a few windows is noisy).
    `late` is clipped to the last position available."""
    n = len(per_position)
    late = min(late, n - 1 - band)
    if early + band >= late - band:
        raise ValueError(f"need early ({early}) + band < late ({late}) - band ({band}); use a longer context")

    def around(t: int) -> float:
        return float(per_position[max(0, t - band) : t + band + 1].mean())

    return around(late) - around(early)


def _check_window(model, context: int, window: int, bos: Optional[int]) -> None:
    check_context(model, context)
    if not (1 + (bos is not None) < window <= context):
        raise ValueError(f"window {window} must be in ({1 + (bos is not None)}, context={context}]")


@torch.no_grad()
def truncated_context_losses(model, ids: Int[torch.Tensor, "n"], context: int, windows: Sequence[int], *,
                             bos: Optional[int] = None, stride: Union[None, int, dict[int, int]] = None,
                             batch_size: int = 8, max_windows: Optional[int] = None
                             ) -> tuple[Float[torch.Tensor, "win pos"], dict[int, Float[torch.Tensor, "win pos"]]]:
    """Each token of back-to-back `context`-token windows scored with its whole window before
    it (`full`, what `loss_per_position` averages) and again, for each W in `windows`, with only
    its last W tokens (`truncated[W]`): entry [i, t] is the loss of the token that position t
    of window i predicts.

    The truncated scores come from sub-windows of W tokens (with `bos` first, as the training
    examples) moving by `stride` (one for every W, or {W: stride}; default W // 4) along each
    window; a token is scored by the first sub-window that reaches it, so it sees between
    W - stride and W - 1 tokens, <bos> included (tokens near the start see what they have, as
    in `full`). Each W costs about W / stride passes over the windows; stride=1 gives exactly
    W - 1 tokens at W times the cost."""
    for W in windows:
        _check_window(model, context, W, bos)
    was = model.training
    model.eval()
    try:
        rows, body = _windows(ids, context, context - (bos is not None), bos)
        if max_windows is not None:
            rows = rows[:max_windows]
        full = _token_losses(model, rows, batch_size)  # (n, context - 1)
        corpus = rows[:, 1:] if bos is not None else rows
        truncated = {}
        for W in windows:
            step = (stride.get(W) if isinstance(stride, dict) else stride) or max(1, W // 4)
            sub = W - (bos is not None)  # corpus tokens per sub-window
            if not 0 < step <= sub - 1:
                raise ValueError(f"stride {step} must be in [1, {sub - 1}] for a window of {W}")
            # sub-window starts along the corpus tokens of a row; the last one ends at the row's end
            starts = list(range(0, body - sub + 1, step))
            if starts[-1] != body - sub:
                starts.append(body - sub)
            subs = corpus[:, torch.tensor(starts)[:, None] + torch.arange(sub)]  # (n, n_sub, sub)
            if bos is not None:
                subs = torch.cat([torch.full((*subs.shape[:2], 1), bos, dtype=subs.dtype), subs], dim=-1)
            losses = _token_losses(model, subs.flatten(0, 1), batch_size * max(1, context // W))
            losses = losses.view(len(rows), len(starts), -1)  # (n, n_sub, W - 1)
            out = torch.full_like(full, float("nan"))
            done = 0  # full-row loss columns filled so far
            for j, start in enumerate(starts):
                # sub-window column c predicts the token that full column start + c predicts
                end = start + losses.shape[-1]
                out[:, done:end] = losses[:, j, done - start :]
                done = end
            truncated[W] = out
        return full, truncated
    finally:
        model.train(was)


def far_context_gain(full: Float[torch.Tensor, "win pos"], truncated: Float[torch.Tensor, "win pos"],
                     bands: Sequence[tuple[int, int]]) -> list[dict]:
    """Per band of positions [lo, hi): mean loss with the full context, with the truncated one,
    and their difference `gain` = truncated - full (positive: the far context helps), with its
    standard error over windows (tokens of one window are not independent)."""
    out = []
    for lo, hi in bands:
        f, t = full[:, lo:hi], truncated[:, lo:hi]
        per_window = (t - f).mean(1)
        n = len(per_window)
        se = float(per_window.std(unbiased=True) / n**0.5) if n > 1 else float("nan")
        out.append({"positions": [lo, hi], "full": float(f.mean()), "truncated": float(t.mean()),
                    "gain": float(per_window.mean()), "gain_se": se, "n_windows": n,
                    "per_window": per_window.tolist()})
    return out


@torch.no_grad()
def attention_beyond(model, ids: Int[torch.Tensor, "n"], context: int, distance: int, *,
                     bos: Optional[int] = None, batch_size: int = 1, max_windows: Optional[int] = None
                     ) -> dict[str, Float[torch.Tensor, "layer head"]]:
    """Attention each head puts `distance` or more tokens back, over back-to-back `context`-token
    windows, averaged over the queries at positions >= `distance` (the only ones that have such
    keys): `far` on corpus tokens, `bos` on the <bos> key (position 0, an attention sink, kept
    apart so a head parking its attention there does not count as reading far text)."""
    check_context(model, context)
    if not 0 < distance < context:
        raise ValueError(f"distance {distance} must be in (0, context={context})")
    was = model.training
    model.eval()
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    far = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    sink = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    count = 0
    q = torch.arange(context)
    is_far = (q[:, None] - q[None, :]) >= distance  # (q, k)
    if bos is not None:
        is_far[:, 0] = False

    def reduce(pattern, hook):  # (b, head, q, k) -> sums over the queries >= distance
        layer = int(hook.name.split(".")[1])
        p = pattern[:, :, distance:].float()  # (b, head, q >= distance, k)
        far[layer] += (p * is_far[distance:].to(p.device)).sum(-1).double().sum((0, 2)).cpu()
        if bos is not None:
            sink[layer] += p[..., 0].double().sum((0, 2)).cpu()

    try:
        rows, _ = _windows(ids, context, context - (bos is not None), bos)
        if max_windows is not None:
            rows = rows[:max_windows]
        device = next(model.parameters()).device
        for i in range(0, len(rows), batch_size):
            x = rows[i : i + batch_size].to(device)
            model.run_with_hooks(x, fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), reduce)])
            count += len(x) * (context - distance)
        out = {"far": (far / count).float()}
        if bos is not None:
            out["bos"] = (sink / count).float()
        return out
    finally:
        model.train(was)
