"""Activations for dictionary training: tokens -> model forward (stopped after the last layer
needed) -> the hooks' activations, masked -> a shuffled buffer on the device.

* `TokenSource`: batch `i` of the token stream, `(input_ids, mask)` on the device, a function
  of `i` alone (the model trainer's `StepSampler` over the checkpoint task's split, so a
  resumed run re-reads exactly the batches it needs). Under torchrun each process takes its
  consecutive slice of every global batch (`interp.training.distributed.RankSlice`).
* `ActivationProducer`: one forward under `torch.no_grad()` (bf16 autocast on CUDA) with
  hooks that keep the requested activations; nothing is observed on attention patterns, so
  attention stays fused. `stop_at_layer` stops it after the deepest block a hook needs.
* `ActivationBuffer`: `capacity` rows per hook on the device. A fill scatters the valid rows
  of consecutive forwards to the positions of a seeded random permutation (the rows arrive
  shuffled; nothing passes through host memory); the buffer then serves `capacity / batch`
  batches in order and fills again. Padded positions (and, optionally, BOS) never enter it.
  Its state is (fill number, the stream position the fill started at, batches served): a
  resumed run refills the current fill from the same tokens and continues bit for bit.

All hooks of a run share one buffer and one permutation, so every dictionary of a run sees
the same token positions in the same order as it would alone.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Callable, Optional

import torch
from jaxtyping import Bool, Float, Int

from interp.training.config import autocast, build_task
from interp.training.data import ExampleTensors, StepSampler, WindowTensors, materialise
from interp.training.distributed import RankSlice
from interp.training.evaluate import pad_id_of

from .config import FeaturesConfigError

# activations that are not one vector per token position
NOT_PER_POSITION = ("hook_attn_scores", "hook_pattern")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


# ============================================================================ hooks
def per_position_hooks(model) -> list[str]:
    """The model's hook names a dictionary can read (one vector per token position)."""
    return [n for n in model.hook_dict if not n.endswith(NOT_PER_POSITION)]


def check_hook(model, name: str, where: str, checkpoint: str = "the model") -> None:
    """A clear error unless `name` is a hook of `model` a dictionary can read."""
    valid = per_position_hooks(model)
    if name in valid:
        return
    if name in model.hook_dict:
        raise FeaturesConfigError(f"{where}={name!r}: attention scores / patterns are (batch, head, query, key), not "
                                  "one vector per position; a dictionary cannot read them (try attn.hook_z)")
    blocks = sorted({_BLOCK.sub("blocks.{i}.", n) for n in valid})
    raise FeaturesConfigError(
        f"{where}={name!r} is not a hook of {checkpoint} ({model.cfg.n_layers} layers, {model.cfg.name}); valid: "
        f"{', '.join(blocks)} with i in 0..{model.cfg.n_layers - 1}")


def blocks_needed(hooks: list[str], n_layers: int) -> Optional[int]:
    """How many blocks the forward must run for `hooks` (`stop_at_layer`), or None for a full
    forward (`ln_final.*`)."""
    need = 0
    for name in hooks:
        m = _BLOCK.match(name)
        if m:
            need = max(need, int(m.group(1)) + 1)
        elif name.startswith(("hook_embed", "hook_pos_embed")):
            continue
        else:
            return None
    return need if need < n_layers else None


# ============================================================================ tokens
_TASKS: dict[str, Any] = {}


def cached_task(task_cfg: dict):
    """`build_task` once per process per task config (a text task tokenises its corpus)."""
    key = json.dumps(task_cfg, sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS[key] = build_task(task_cfg)
    return _TASKS[key]


class TokenSource:
    """Batch `i`: `batch_size` sequences of the checkpoint task's `split` (this process's slice
    of them under torchrun), as device tensors `(input_ids, mask)`; `mask` is False on padding
    and, with `exclude_bos`, on a leading BOS."""

    def __init__(self, task_cfg: dict, split: str, batch_size: int, seq_len: Optional[int], exclude_bos: bool,
                 bos_id: Optional[int], seed: int, device: torch.device, rank: int = 0, world: int = 1):
        task = cached_task(task_cfg)
        try:
            self.tensors = materialise(task, split, pad_id_of(task.tokenizer), device)
        except (KeyError, ValueError) as e:
            raise FeaturesConfigError(f"data.split={split!r}: the task {task_cfg.get('name')!r} has no such split "
                                      f"or it is empty ({e})") from None
        if batch_size % world:
            raise FeaturesConfigError(f"data.batch_size={batch_size} must divide among the {world} processes")
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        self.bos_id = bos_id if exclude_bos else None
        self.n_sequences = len(self.tensors)
        sampler = StepSampler(self.n_sequences, batch_size, seed, device)
        self.sampler = RankSlice(sampler, rank, world, batch_size // world) if world > 1 else sampler

    def batch(self, i: int) -> tuple[Int[torch.Tensor, "b t"], Bool[torch.Tensor, "b t"]]:
        idx = self.sampler.indices(i)
        t = self.tensors
        if isinstance(t, ExampleTensors):
            ids, mask = t.input_ids[idx], t.attention_mask[idx]
        elif isinstance(t, WindowTensors):
            ids = t.rows(idx).input_ids.to(self.device, non_blocking=True)
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:  # pragma: no cover - materialise returns one of the two
            raise TypeError(f"unexpected split tensors {type(t).__name__}")
        if self.seq_len is not None:
            ids, mask = ids[:, : self.seq_len], mask[:, : self.seq_len]
        if self.bos_id is not None:
            mask = mask.clone()
            mask[:, 0] &= ids[:, 0] != self.bos_id
        return ids, mask


# ============================================================================ forward
class ActivationProducer:
    """`producer(input_ids)` -> {hook: (batch, pos, d) activations} from one forward that
    stops after the deepest block the hooks need (under no_grad and the run's autocast).

    `compile=True` compiles the forward (hooks included; dynamo traces them); `graphs=True`
    (CUDA, static shapes) replays it as a captured CUDA graph whose outputs are static tensors,
    valid until the next call."""

    def __init__(self, model, hooks: list[str], amp: Optional[torch.dtype], compile: bool = False,
                 graphs: bool = False):
        self.model, self.hooks, self.amp = model, list(hooks), amp
        self.device = next(model.parameters()).device
        self.stop = blocks_needed(self.hooks, model.cfg.n_layers)
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in self.hooks:  # persistent hooks: compile and capture see them
            self._handles.append(model.hook_dict[name].register_forward_hook(self._keeper(name)))
        self._run = torch.compile(self._forward) if compile else self._forward
        self.graphs = graphs
        self._graph = None

    def _keeper(self, name: str):
        def keep(module, inputs, output):
            self._store[name] = output

        return keep

    def _forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.amp):
            if self.stop is None:
                self.model(ids, return_type=None)
            else:
                self.model(ids, stop_at_layer=self.stop)
        out = {name: self._store[name].flatten(2) for name in self.hooks}  # attn.hook_z: (b, t, h * d_head)
        self._store.clear()
        return out

    @torch.no_grad()
    def __call__(self, ids: Int[torch.Tensor, "b t"]) -> dict[str, Float[torch.Tensor, "b t d"]]:
        if not self.graphs:
            return self._run(ids)
        if self._graph is None or self._static_ids.shape != ids.shape:
            self._capture(ids)
        self._static_ids.copy_(ids)
        self._graph.replay()
        return self._static_out

    def _capture(self, ids: torch.Tensor) -> None:
        self._static_ids = ids.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up (and compile) outside the capture
                self._run(self._static_ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._run(self._static_ids)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._graph = None


# ============================================================================ buffer
class ActivationBuffer:
    """`capacity` activation rows per hook on the device, served `batch_rows` at a time in a
    seeded random order; see the module docstring.

    `gather`, under torchrun, turns this process's `(acts, mask)` of a forward into those of
    the global batch (all processes' slices in rank order), so every process holds the same
    buffer as a single process would."""

    def __init__(self, source: TokenSource, producer: ActivationProducer, capacity: int, batch_rows: int, seed: int,
                 dtype: torch.dtype, gather: Optional[Callable] = None):
        self.source, self.producer = source, producer
        self.hooks = producer.hooks
        self.batch_rows = batch_rows
        self.capacity = capacity - capacity % batch_rows
        self.seed, self.dtype, self.gather = seed, dtype, gather
        self.device = source.device
        self.store: dict[str, torch.Tensor] = {}
        self.fill_index, self.cursor, self.served = -1, (0, 0), self.capacity // batch_rows  # empty: fill first
        self.next_cursor = (0, 0)
        self.tokens_read = 0  # rows taken into the buffer so far (this fill included)

    @property
    def batches_per_fill(self) -> int:
        return self.capacity // self.batch_rows

    def next(self) -> dict[str, Float[torch.Tensor, "b d"]]:
        """The next batch: {hook: (batch_rows, d)} views into the buffer (valid until the next fill)."""
        if self.served >= self.batches_per_fill:
            self._fill(self.fill_index + 1, self.next_cursor)
        j, b = self.served, self.batch_rows
        self.served += 1
        return {h: s[j * b: (j + 1) * b] for h, s in self.store.items()}

    def peek(self, n: int) -> dict[str, torch.Tensor]:
        """The first `n` rows of the current fill (filling it if needed), e.g. to initialise
        dictionaries from data; does not advance."""
        if self.served >= self.batches_per_fill:
            self._fill(self.fill_index + 1, self.next_cursor)
            self.served = 0
        return {h: s[:n] for h, s in self.store.items()}

    def _permutation(self, fill: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + fill)
        return torch.randperm(self.capacity, generator=g, device=self.device)

    @torch.no_grad()
    def _fill(self, fill: int, cursor: tuple[int, int]) -> None:
        perm = self._permutation(fill)
        i, skip = cursor
        n, empty = 0, 0
        while n < self.capacity:
            ids, mask = self.source.batch(i)
            acts = self.producer(ids)
            if self.gather is not None:
                acts, mask = self.gather(acts, mask)
            flat = mask.reshape(-1)
            rows = {h: a.reshape(-1, a.shape[-1])[flat] for h, a in acts.items()}  # valid positions, in order
            have = next(iter(rows.values())).shape[0]  # (one host read per forward, outside the step)
            take = min(have - skip, self.capacity - n)
            if take <= 0:
                empty += 1
                if empty > 100:
                    raise FeaturesConfigError("100 model forwards in a row gave no unmasked positions: is every "
                                              "position padding or BOS? (data.exclude_bos, data.seq_len)")
            else:
                empty = 0
                dest = perm[n: n + take]
                for h, r in rows.items():
                    if h not in self.store:
                        self.store[h] = torch.empty(self.capacity, r.shape[-1], dtype=self.dtype, device=self.device)
                    self.store[h].index_copy_(0, dest, r[skip: skip + take].to(self.dtype))
                n += take
            if skip + max(take, 0) < have:
                skip += max(take, 0)
            else:
                i, skip = i + 1, 0
        self.fill_index, self.cursor, self.next_cursor, self.served = fill, cursor, (i, skip), 0
        self.tokens_read = (fill + 1) * self.capacity

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"fill_index": self.fill_index, "cursor": list(self.cursor), "next_cursor": list(self.next_cursor),
                "served": self.served, "capacity": self.capacity, "batch_rows": self.batch_rows, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("capacity", "batch_rows", "seed"):
            if state[key] != getattr(self, key):
                raise FeaturesConfigError(f"resume: the buffer's {key} was {state[key]}, this run's is "
                                          f"{getattr(self, key)}; resume with the run's own config")
        if state["fill_index"] >= 0:
            self._fill(state["fill_index"], tuple(state["cursor"]))  # the same tokens -> the same rows
        self.next_cursor = tuple(state["next_cursor"])
        self.served = state["served"]


def dictionary_seed(seed: int, name: str) -> int:
    """The seed a dictionary is initialised from: a function of the run seed and its name, so
    it starts the same whichever other dictionaries share the run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
