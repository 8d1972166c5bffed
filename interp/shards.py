"""Token streams for text: memory-mapped token shards on disk and a split as windows over
a stream. Below both `interp.tasks` (the text task reads and writes shards, and hands the
trainer its windows) and `interp.training` (which batches them), so neither imports the other
for it.

Shard format (`write_shards` / `read_shards`, made by `interp data prepare` or a streamed text
task): a directory of `SPLIT_NNNN.bin` files of raw uint16 (vocabularies up to 2**16) or
uint32 token ids, `tokenizer.json`, and `meta.json` naming every split's files and token counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Int

from models.loss import IGNORE_INDEX


class MicroBatch(NamedTuple):
    """Rows of a split as the trainer steps on them (from `WindowTensors.rows` here, or
    `interp.training.data.ExampleTensors.rows`)."""

    input_ids: Int[torch.Tensor, "b pos"]
    labels: Int[torch.Tensor, "b pos"]
    n_tokens: torch.Tensor  # real (non-pad) tokens, a device scalar: read only at log time
    n_truncated: torch.Tensor  # examples cut by max_len

    def to(self, device, non_blocking: bool = True) -> "MicroBatch":
        return MicroBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


# ============================================================================ streams
class ShardStream:
    """Memory-mapped token shards read as one stream; windows never cross a shard boundary
    (`window_starts` only yields starts that fit inside their shard)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window_starts(self, window: int, stride: int) -> np.ndarray:
        parts = [np.arange(0, len(a) - window + 1, stride, dtype=np.int64) + off
                 for a, off in zip(self.arrays, self.offsets) if len(a) >= window]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def gather(self, starts: np.ndarray, window: int) -> torch.Tensor:
        shard = np.searchsorted(self.offsets, starts, side="right") - 1
        rows = np.empty((len(starts), window), dtype=np.int64)
        for r, (k, s) in enumerate(zip(shard, starts)):
            local = s - self.offsets[k]
            rows[r] = self.arrays[k][local : local + window]
        return torch.from_numpy(rows)


# ============================================================================ windows
@dataclass
class WindowTensors:
    """A text split as its token stream and window starts. Example `i` is
    `[<bos>] + stream[starts[i] : starts[i] + window]`; every stream token is a target."""

    stream: Union[torch.Tensor, "ShardStream"]  # (n_tokens,) long on the device, or shards on disk
    starts: Int[torch.Tensor, "n"]
    window: int
    bos_id: Optional[int]

    def __len__(self) -> int:
        return self.starts.shape[0]

    @property
    def width(self) -> int:
        return self.window + (self.bos_id is not None)

    def to(self, device) -> "WindowTensors":
        stream = self.stream if isinstance(self.stream, ShardStream) else self.stream.to(device)
        return WindowTensors(stream, self.starts.to(device), self.window, self.bos_id)

    def rows(self, idx: Int[torch.Tensor, "b"], max_len: Optional[int] = None) -> MicroBatch:
        starts = self.starts[idx]
        if isinstance(self.stream, ShardStream):
            body = self.stream.gather(starts.cpu().numpy(), self.window)
        else:
            body = self.stream[starts[:, None] + torch.arange(self.window, device=starts.device)]
        if self.bos_id is not None:
            body = torch.cat([torch.full_like(body[:, :1], self.bos_id), body], dim=1)
        labels = body.clone()
        labels[:, 0] = IGNORE_INDEX  # the first token has no prediction before it
        body, labels = body[:, :max_len], labels[:, :max_len]
        truncated = int(max_len is not None and max_len < self.width) * body.shape[0]
        return MicroBatch(body, labels, torch.tensor(body.numel()), torch.tensor(truncated))


# ============================================================================ token shards
SHARD_FORMAT = "interp-token-shards"
WRITE_PIECE = 1 << 20  # tokens written (and counted on the progress bar) at a time


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shards(out_dir: Path, split_ids: dict[str, Any], vocab_size: int, tokenizer: Any, task: dict,
                 shard_tokens: int = 100_000_000) -> Path:
    """Write each split's token ids (an iterable of id chunks) as `SPLIT_NNNN.bin` shards of at
    most `shard_tokens` tokens, plus `meta.json` and `tokenizer.json`. Returns `out_dir`."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = shard_dtype(vocab_size)
    meta = {"format": SHARD_FORMAT, "version": 1, "dtype": dtype.name, "vocab_size": int(vocab_size),
            "tokenizer": "tokenizer.json", "task": task, "splits": {}}
    for split, chunks in split_ids.items():
        files, total, k, fill, f = [], 0, 0, 0, None
        known = sum(len(c) for c in chunks) if isinstance(chunks, (list, tuple)) else None  # a stream: unknown
        bar = tqdm(desc=f"{split}", total=known, unit="tok", unit_scale=True, leave=True, mininterval=0.5)
        for chunk in chunks:
            arr = np.asarray(chunk, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ValueError(f"token id out of range [0, {vocab_size}) in split {split!r}")
            arr = arr.astype(dtype)
            while arr.size:
                if f is None or fill == shard_tokens:
                    if f is not None:
                        f.close()
                    name = f"{split}_{k:04d}.bin"
                    files.append({"file": name, "n_tokens": 0})
                    f, fill, k = open(out_dir / name, "wb"), 0, k + 1
                take = min(arr.size, shard_tokens - fill, WRITE_PIECE)  # pieces: the bar moves as it writes
                f.write(arr[:take].tobytes())
                files[-1]["n_tokens"] += int(take)
                fill += take
                total += take
                bar.update(int(take))
                arr = arr[take:]
        if f is not None:
            f.close()
        bar.close()
        meta["splits"][split] = {"files": files, "n_tokens": total}
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def read_shards(shard_dir: Union[str, Path]) -> dict:
    """meta.json of a shard directory, with every split's shards opened as read-only memmaps
    under `meta["splits"][split]["arrays"]`."""
    shard_dir = Path(shard_dir)
    meta_file = shard_dir / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{shard_dir}: no meta.json; write token shards with `interp data prepare`")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != SHARD_FORMAT:
        raise ValueError(f"{meta_file}: not an interp token-shard directory (format={meta.get('format')!r})")
    dtype = np.dtype(meta["dtype"])
    for split, info in meta["splits"].items():
        arrays = []
        for entry in info["files"]:
            path = shard_dir / entry["file"]
            expected = entry["n_tokens"] * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{path}: missing or truncated shard (expected {expected} bytes)")
            arrays.append(np.memmap(path, dtype=dtype, mode="r") if entry["n_tokens"] else np.zeros(0, dtype))
        info["arrays"] = arrays
    return meta
