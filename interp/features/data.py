"""Token batches from a checkpoint's own task, for training and evaluating dictionaries.

```python
for batch in token_batches("data/checkpoints/shakespeare_vanilla", "test", n_tokens=50_000, batch_size=32):
    batch.tokens   # (b, t) long, on `device`
    batch.mask     # None for text windows (every position real), else (b, t) bool (padded tasks)
```

The task is rebuilt from the checkpoint's `config.json` (`task` section) through
`interp.training.build_task` and materialised with the trainer's own data path
(`interp.training.data.materialise`: text windows over the token stream, or padded example
tensors), so a dictionary sees exactly the inputs the model was trained and evaluated on.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NamedTuple, Optional, Union

import numpy as np
import torch
from jaxtyping import Bool, Int

from .dictionary import DictionaryError

PathLike = Union[str, os.PathLike]


class TokenBatch(NamedTuple):
    tokens: Int[torch.Tensor, "b t"]
    mask: Optional[Bool[torch.Tensor, "b t"]]  # True = real token; None = no padding

    def n_tokens(self) -> int:
        return self.tokens.numel() if self.mask is None else int(self.mask.sum())


def task_of(source: Any):
    """The task of a checkpoint dir / run dir, of its config.json dict, of a task config
    (`{"name": ...}`), or a task object itself."""
    from interp.training.config import TrainConfigError, build_task

    if hasattr(source, "split") and hasattr(source, "tokenizer"):
        return source
    where = "task config"
    if isinstance(source, (str, os.PathLike)):
        from interp.checkpoint import load_config, resolve

        where = f"{resolve(source)}/config.json"
        _, source = load_config(source)
    if not isinstance(source, dict):
        raise DictionaryError(f"token_batches: expected a checkpoint path, a config dict or a task, got {type(source).__name__}")
    task_cfg = source["task"] if "task" in source else source  # a config.json dict, or the task section itself
    if not isinstance(task_cfg, dict) or "name" not in task_cfg:
        raise DictionaryError(f"{where}: no 'task' section; the checkpoint does not say what data it was trained on")
    try:
        return build_task(task_cfg)
    except (TrainConfigError, ValueError, FileNotFoundError) as e:
        raise DictionaryError(f"{where}: cannot rebuild the task: {e}") from None


def token_batches(source: Any, split: str = "val", n_tokens: Optional[int] = None, batch_size: int = 32,
                  seq_len: Optional[int] = None, device: Union[str, torch.device] = "cpu", *,
                  shuffle_seed: Optional[int] = None, repeat: bool = False) -> Iterator[TokenBatch]:
    """Batches of `batch_size` rows of the task's `split` until `n_tokens` real tokens (None:
    the whole split once). Rows are cut to `seq_len` columns if given. In order, or in a fresh
    permutation per epoch seeded by `(shuffle_seed, epoch)`; `repeat` goes round the split
    again when it runs out (training), otherwise iteration stops at its end (evaluation).
    The last batch is cut so the total does not exceed `n_tokens` by more than one row."""
    from interp.training.data import ExampleTensors, materialise
    from interp.training.evaluate import pad_id_of

    if batch_size < 1:
        raise DictionaryError(f"token_batches: batch_size must be >= 1, got {batch_size}")
    if n_tokens is not None and n_tokens < 1:
        raise DictionaryError(f"token_batches: n_tokens must be >= 1 or None, got {n_tokens}")
    if seq_len is not None and seq_len < 2:
        raise DictionaryError(f"token_batches: seq_len must be >= 2 or None, got {seq_len}")
    task = task_of(source)
    if split not in ("train", "val", "test"):
        raise DictionaryError(f"token_batches: unknown split {split!r}; choose train, val or test")
    if len(task.split(split)) == 0:
        sizes = {s: len(task.split(s)) for s in ("train", "val", "test")}
        raise DictionaryError(f"token_batches: the {split!r} split of task {task.name!r} is empty (sizes {sizes}); "
                              "choose another split")
    tensors = materialise(task, split, pad_id_of(task.tokenizer), device)
    n = len(tensors)
    padded = isinstance(tensors, ExampleTensors)
    width = tensors.width if seq_len is None else min(seq_len, tensors.width)
    if padded:
        row_tokens = tensors.lengths.cpu().clamp(max=width).numpy()
    else:
        row_tokens = np.full(n, width, dtype=np.int64)
    seen, epoch = 0, 0
    while True:
        if shuffle_seed is None:
            order = np.arange(n)
        else:
            order = np.random.default_rng([shuffle_seed, epoch]).permutation(n)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            if n_tokens is not None:
                left = n_tokens - seen
                cum = np.cumsum(row_tokens[rows])
                rows = rows[: int(np.searchsorted(cum, left)) + 1]
            idx = torch.as_tensor(rows, device=tensors.input_ids.device if padded else tensors.starts.device)
            if padded:
                tokens = tensors.input_ids[idx, :width]
                mask = tensors.attention_mask[idx, :width]
            else:
                tokens, mask = tensors.rows(idx, width).input_ids, None
            seen += int(row_tokens[rows].sum())
            yield TokenBatch(tokens.to(device), None if mask is None else mask.to(device))
            if n_tokens is not None and seen >= n_tokens:
                return
        epoch += 1
        if not repeat:
            return
