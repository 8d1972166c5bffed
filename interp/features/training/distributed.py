"""Dictionary training on several processes (torchrun), on the model trainer's process group.

```bash
torchrun --nproc-per-node 4 -m interp.cli features train --config configs/features/shakespeare_vanilla.yaml
```

`train.parallel`:

* `ddp`: every dictionary on every process; each step's `batch_tokens` rows are cut into
  `world` consecutive slices, process r trains on slice r, and the gradients are averaged over
  processes before the optimizer step (what DDP does; done explicitly, one all-reduce of the
  flattened gradients per dictionary, since the step calls `training_forward`, not `forward`).
  The latents that fired are OR-ed over processes so the dead-latent counters agree. For
  losses that are means over rows (ReLU, TopK, JumpReLU) this is the single-process step up
  to float summation order. BatchTopK and Matryoshka pick their top k x batch per process
  (their batch is the process's slice), like any data-parallel BatchTopK.
* `dictionaries`: dictionary i trains on process i mod world, on the whole batch: exactly the
  single-process computation, for every architecture. What `auto` picks when a run has at
  least as many dictionaries as processes (else `ddp`).

Either way the token stream is split: each process runs the model on its consecutive slice of
every `data.batch_size` sequences and the activations are all-gathered, so every process
holds the same buffer a single process would. Rank 0 logs, shows the bar and writes the
checkpoints (the dictionaries' state gathered to it), which resume on any number of processes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from interp.training.distributed import env_world_size, init_process_group

from .config import FeaturesConfigError

MODES = ("none", "ddp", "dictionaries")


def resolve_mode(t: dict, n_dictionaries: int) -> str:
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_world_size()
    mode = t["parallel"]
    if mode == "auto":
        if world == 1:
            return "none"
        return "dictionaries" if n_dictionaries >= world else "ddp"
    if mode == "none" and world > 1:
        raise FeaturesConfigError(f"train.parallel=none but this process is one of WORLD_SIZE={world}; use "
                                  "ddp, dictionaries or auto")
    return mode


class Group:
    """This process's place in the run: rank, world size and mode (world 1 for mode none)."""

    def __init__(self, t: dict, device: torch.device, n_dictionaries: int):
        self.mode = resolve_mode(t, n_dictionaries)
        if self.mode == "none":
            self.rank, self.world = 0, 1
            return
        init_process_group(t, device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.mode == "dictionaries" and n_dictionaries < self.world:
            raise FeaturesConfigError(f"train.parallel=dictionaries with {n_dictionaries} dictionaries on {self.world} "
                                      "processes would leave some idle; use ddp (or auto)")
        if t["batch_tokens"] % self.world:
            raise FeaturesConfigError(f"train.batch_tokens={t['batch_tokens']} must divide among the "
                                      f"{self.world} processes")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    def owns(self, index: int) -> bool:
        """Whether this process trains dictionary number `index` of the run."""
        return self.mode != "dictionaries" or index % self.world == self.rank

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global step batch (ddp: slice `rank` of `world`)."""
        if self.mode != "ddp":
            return batch
        b = batch.shape[0] // self.world
        return batch[self.rank * b: (self.rank + 1) * b]

    # ------------------------------------------------------------------ collectives
    def gather(self, acts: dict[str, torch.Tensor], mask: torch.Tensor):
        """This process's forward slice -> the global batch's (acts, mask), slices in rank order."""
        out = {}
        for name, a in acts.items():
            parts = [torch.empty_like(a) for _ in range(self.world)]
            dist.all_gather(parts, a.contiguous())
            out[name] = torch.cat(parts)
        m = mask.to(torch.uint8).contiguous()  # (gloo has no bool collectives)
        parts = [torch.empty_like(m) for _ in range(self.world)]
        dist.all_gather(parts, m)
        return out, torch.cat(parts).bool()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """ddp: gradients averaged over processes, in one all-reduce."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """ddp: OR over processes (the latents that fired anywhere this step)."""
        if self.mode != "ddp":
            return flags
        out = flags.to(torch.int32)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out.to(flags.dtype) if flags.dtype != torch.bool else out.bool()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """ddp: the sum over processes (metrics)."""
        if self.mode != "ddp":
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def collect(self, obj) -> Optional[list]:
        """Every process's `obj` on rank 0 (None elsewhere); `[obj]` without a group."""
        if self.mode == "none":
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        if self.mode == "none":
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.mode != "none":
            dist.barrier()
