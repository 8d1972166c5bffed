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
"""

from __future__ import annotations

from typing import Any, Optional

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
