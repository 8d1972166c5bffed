"""The training data path: tasks materialised once into tensors on the training device.

No per-step Python collation. A split becomes either

* `ExampleTensors`: every example right-padded to the split's longest, as (n, pos) tensors
  (input_ids, labels with the task's masking already applied, attention_mask, segments), or
* `interp.shards.WindowTensors`: for text, the split's token stream plus the start offset of
  every window; a batch is a gather `stream[start + arange(window)]`, or, for corpora on disk, a
  read from memory-mapped token shards (`interp data prepare`) into pinned memory by a
  background thread.

`StepSampler` says which examples step `s` trains on: positions `[s * B, (s + 1) * B)` of an
endless stream that visits the split in a fresh permutation per epoch, seeded by
`(seed, epoch)` (the permutation is drawn on the CPU, so runs are reproducible across
devices, and moved to the device once per epoch). Any step's batch can be rebuilt from the
step number alone, which makes resume exact and accumulation a pure split of the step.

Right padding needs no attention mask in a causal model (a real query never sees a later
pad key) and pads are never targets (labels -100), so training batches run the unmasked,
fused attention path at a fixed width: static shapes, which CUDA graphs need.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Bool, Int

from ..shards import MicroBatch, ShardStream, WindowTensors, write_shards

IGNORE_INDEX = -100
PAD_SEGMENT = -1


# ============================================================================ examples
@dataclass
class ExampleTensors:
    """One split, materialised. Rows are right-padded with `pad_id` to the longest example."""

    input_ids: Int[torch.Tensor, "n pos"]
    labels: Int[torch.Tensor, "n pos"]  # unshifted (HF style), -100 on pads and non-targets
    attention_mask: Bool[torch.Tensor, "n pos"]
    segments: Int[torch.Tensor, "n pos"]  # 0 prompt / 1 step / 2 answer, -1 on pads
    lengths: Int[torch.Tensor, "n"]

    @classmethod
    def from_examples(cls, examples: Sequence, pad_id: int, device: Union[str, torch.device] = "cpu") -> "ExampleTensors":
        if len(examples) == 0:
            raise ValueError("cannot materialise an empty split")
        n = len(examples)
        lengths = np.fromiter((len(examples[i].input_ids) for i in range(n)), dtype=np.int64, count=n)
        width = int(lengths.max())
        ids = np.full((n, width), int(pad_id), dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        segments = np.full((n, width), PAD_SEGMENT, dtype=np.int64)
        for i in range(n):
            ex, k = examples[i], lengths[i]
            ids[i, :k] = ex.input_ids
            labels[i, :k] = ex.labels
            segments[i, :k] = ex.segments
        lengths_t = torch.from_numpy(lengths)
        mask = torch.arange(width)[None, :] < lengths_t[:, None]
        out = cls(torch.from_numpy(ids), torch.from_numpy(labels), mask, torch.from_numpy(segments), lengths_t)
        return out.to(device)

    def to(self, device: Union[str, torch.device]) -> "ExampleTensors":
        return ExampleTensors(*(getattr(self, f).to(device) for f in
                                ("input_ids", "labels", "attention_mask", "segments", "lengths")))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def rows(self, idx: Int[torch.Tensor, "b"], max_len: Optional[int] = None) -> MicroBatch:
        """Rows `idx`, cut to `max_len` columns."""
        cols = slice(None, max_len)
        lengths = self.lengths[idx]
        if max_len is None:
            return MicroBatch(self.input_ids[idx], self.labels[idx], lengths.sum(), torch.zeros_like(lengths[0]))
        return MicroBatch(self.input_ids[idx, cols], self.labels[idx, cols], lengths.clamp(max=max_len).sum(),
                          (lengths > max_len).sum())


SplitTensors = Union[ExampleTensors, WindowTensors]


def materialise(task: Any, split: str, pad_id: int, device: Union[str, torch.device]) -> SplitTensors:
    """A task split as tensors on `device` (text tasks as windows over their token stream)."""
    if hasattr(task, "token_windows"):
        return task.token_windows(split).to(device)
    return ExampleTensors.from_examples(task.split(split), pad_id, device)


# ============================================================================ sampling
class StepSampler:
    """Which rows step `s` trains on: deterministic in (seed, step), no iterator state."""

    def __init__(self, n: int, per_step: int, seed: int, device: Union[str, torch.device], full: bool = False):
        """`full`: every step is the whole split in order (`batch_size: full`)."""
        if n == 0:
            raise ValueError("the training split is empty")
        self.n, self.per_step, self.seed, self.device = n, per_step, seed, torch.device(device)
        self._perms: dict[int, torch.Tensor] = {}
        self._all = torch.arange(n, device=self.device) if full else None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g).to(self.device)
        return self._perms[epoch]

    def indices(self, step: int) -> Int[torch.Tensor, "per_step"]:
        """Row indices of step `step` (device tensor; slicing only: no sync, no host copy)."""
        if self._all is not None:
            return self._all
        parts, pos, end = [], step * self.per_step, (step + 1) * self.per_step
        while pos < end:
            epoch, i = divmod(pos, self.n)
            take = min(self.n - i, end - pos)
            parts.append(self.permutation(epoch)[i : i + take])
            pos += take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class Prefetcher:
    """Builds the next steps' batches on a background thread (memmap reads into pinned
    memory) and copies them to the device asynchronously. For shards on disk only; data
    already on the device needs no help."""

    def __init__(self, build, device: torch.device, depth: int = 4):
        self.build, self.device, self.depth = build, device, depth
        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._next = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def start(self, first_step: int) -> None:
        self.close()
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        self._next = first_step
        self._thread = threading.Thread(target=self._work, args=(first_step,), daemon=True)
        self._thread.start()

    def _work(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (step, self.build(step))
            except Exception as e:  # surfaced in get()
                item = (step, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    def get(self, step: int):
        if self._thread is None or step != self._next:
            self.start(step)
        got, batch = self._queue.get()
        self._next = step + 1
        if isinstance(batch, Exception):
            raise batch
        pin = self.device.type == "cuda"
        return [MicroBatch(*(t.pin_memory() if pin else t for t in mb)).to(self.device) for mb in batch]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._thread = None


class TrainData:
    """Step `s` -> its `MicroBatch`es as device tensors of a fixed width."""

    def __init__(self, tensors: SplitTensors, batch_size: Union[int, str], grad_accum: int, seed: int,
                 device: Union[str, torch.device]):
        self.tensors = tensors
        self.device = torch.device(device)
        n = len(tensors)
        on_disk = isinstance(tensors, WindowTensors) and isinstance(tensors.stream, ShardStream)
        index_device = torch.device("cpu") if on_disk else self.device  # shards are gathered on the host
        if batch_size == "full":
            if grad_accum != 1:
                raise ValueError("batch_size: full trains on the whole split each step; grad_accum must be 1")
            self.batch_size = n
            self.sampler = StepSampler(n, n, 0, index_device, full=True)
        else:
            self.batch_size = int(batch_size)
            self.sampler = StepSampler(n, self.batch_size * grad_accum, seed, index_device)
        self.grad_accum = grad_accum
        self._prefetch = Prefetcher(self._build, self.device) if on_disk else None

    @property
    def width(self) -> int:
        return self.tensors.width

    def _build(self, step: int, max_len: Optional[int] = None) -> list[MicroBatch]:
        idx = self.sampler.indices(step)
        b = self.batch_size
        return [self.tensors.rows(idx[i : i + b], max_len) for i in range(0, idx.shape[0], b)]

    def micro_batches(self, step: int, max_len: Optional[int] = None) -> list[MicroBatch]:
        if self._prefetch is not None and max_len is None:
            return self._prefetch.get(step)
        return [mb.to(self.device) for mb in self._build(step, max_len)]

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()


def prepare_shards(config, out_dir: Union[str, Path], overrides: Sequence[str] = (),
                   shard_tokens: int = 100_000_000) -> Path:
    """`interp data prepare`: tokenize a text task's three splits (from a run config's `task`
    section) once into memory-mapped token shards + its tokenizer. Train on them with
    `task.shards: OUT_DIR` (same windows, same batches as the in-memory text task)."""
    from .config import TrainConfigError, build_task, load_run_config

    cfg = load_run_config(config, overrides)
    task = build_task(cfg["task"])
    if not hasattr(task, "token_windows") or not hasattr(task, "token_ids"):
        raise TrainConfigError(f"task {cfg['task']['name']!r} is not a text task; `data prepare` writes text shards")
    if getattr(task, "_shards", None) is not None:
        raise TrainConfigError("this task already reads shards (task.shards is set)")
    splits = {s: [task.token_ids(s)] for s in ("train", "val", "test")}
    task_cfg = {k: v for k, v in task.config().items() if k not in ("shards",)}
    return write_shards(Path(out_dir), splits, task.tokenizer.vocab_size, task.tokenizer, task_cfg, shard_tokens)
