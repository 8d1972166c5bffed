"""Training on several processes with PyTorch's own engine: DDP or FSDP2 over torch.distributed.

```bash
torchrun --nproc-per-node 8 -m interp.cli train --config configs/llama-like_shakespeare.yaml   # DDP
torchrun --nproc-per-node 8 -m interp.cli train --config ... --set train.parallel=fsdp
interp train --nproc 8 --config ...        # the same, relaunched through torchrun
```

`train.parallel`: `auto` (DDP when launched by torchrun with WORLD_SIZE > 1, else a plain
single-process run), `none`, `ddp` or `fsdp` (FSDP2 `fully_shard` on every block and the root,
a `MixedPrecisionPolicy` computing in the run's autocast dtype with fp32 gradient reduction,
`train.cpu_offload` for a `CPUOffloadPolicy` on CUDA). `train.dist_backend`: `auto` (NCCL on
CUDA, gloo on CPU), `nccl` or `gloo`. Any registered trainer becomes distributed
(`for_config` mixes `DistributedMixin` into it), so a curriculum trainer scales out as it is.

What one process does, and why the numbers match a single process:

* **Data.** `train.batch_size` is per process; the global batch of a step is
  `batch_size x grad_accum x world_size` rows of the same `StepSampler` a single process
  uses. Global micro-batch j (`world_size x batch_size` rows) is cut into `world_size`
  consecutive slices and rank r trains on slice r (`RankSlice`), so 2 ranks x b rows see
  exactly the rows 1 rank x 2b rows does, step for step; resume stays exact because the
  batch of any step is a function of the step number alone.
* **Step** (`DistributedStepRunner`). The step's target count is summed over ranks first
  (one all-reduce of a device scalar), and each rank's loss is `sum / global_count x
  world_size`: after DDP / FSDP average the gradients over ranks this is exactly the
  single-process gradient, whatever padding each rank holds. Gradients synchronise only on
  the last micro-batch (DDP `no_sync`, FSDP `set_requires_gradient_sync(False)`). The
  logged loss and token counts are all-reduced, so rank 0 logs global numbers.
* **Rank 0** logs (metrics.jsonl, TensorBoard, W&B), shows the progress bar, evaluates
  (on a gathered copy under FSDP; the metric is broadcast so every rank saves at the same
  steps) and writes checkpoints. Checkpoints hold the *full* state: the weights gathered
  into an ordinary `model.safetensors` (what `interp.load` reads; no conversion step) and
  the optimizer state in the single-process layout, so a run resumes exactly on any number
  of processes, with DDP, FSDP or none. (`torch.distributed.checkpoint` shards are not used:
  their metadata file is read with `pickle.load`, and checkpoints here are never unpickled.)
* **Interrupts.** A signal is seen by each rank between steps; all ranks should get it (as a
  terminal's Ctrl-C or torchrun's SIGTERM do), else the ranks part ways at the next save.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from models import HookedTransformer, ModelConfig

from .config import TrainConfigError, autocast, build_task, resolve_device
from .data import StepSampler, TrainData
from .loop import StepRunner, Trainer, seed_everything

PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")

__all__ = ["DistributedMixin", "DistributedTrainer", "DistributedStepRunner", "RankSlice", "for_config",
           "resolve_parallel", "PARALLEL_MODES"]


# ============================================================================ selection
def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_parallel(t: dict) -> str:
    """`train.parallel` -> "none" | "ddp" | "fsdp" (auto: ddp under torchrun with WORLD_SIZE > 1)."""
    mode = t.get("parallel", "auto")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_world_size()
    if mode == "auto":
        return "ddp" if world > 1 else "none"
    if mode == "none" and world > 1:
        raise TrainConfigError(
            f"train.parallel=none but this process is one of WORLD_SIZE={world}: every process would train "
            "alone into the same run directory; use train.parallel=ddp or fsdp (or auto)")
    return mode


def for_config(trainer_cls: type, cfg: dict) -> type:
    """`trainer_cls` itself for a single-process run, else it with `DistributedMixin` mixed in."""
    if resolve_parallel(cfg["train"]) == "none" or issubclass(trainer_cls, DistributedMixin):
        return trainer_cls
    return type(f"Distributed{trainer_cls.__name__}", (DistributedMixin, trainer_cls), {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(t: dict, device: torch.device) -> bool:
    """Join (or, alone, create) the default process group; True when this call created it.
    The group lives until the process exits (later runs in the same process reuse it:
    re-creating a group on torchrun's store is not reliable)."""
    if dist.is_initialized():
        return False
    backend = t.get("dist_backend", "auto")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise TrainConfigError("train.dist_backend=nccl needs CUDA devices; use gloo on CPU")
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group(backend)
    else:  # a one-process group, e.g. to try train.parallel=fsdp without torchrun
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return True


# ============================================================================ data
class RankSlice:
    """This rank's rows of a global `StepSampler` step: global micro-batch j (`world x batch`
    rows) is cut into `world` consecutive slices of `batch` and rank r takes slice r. With
    `full=True` (train.batch_size: full) the whole split is cut into `world` near-equal parts."""

    def __init__(self, sampler: StepSampler, rank: int, world: int, batch: int, full: bool = False):
        self.sampler, self.rank, self.world, self.batch, self.full = sampler, rank, world, batch, full
        self.n, self.per_step, self.seed = sampler.n, sampler.per_step, sampler.seed  # per_step: global

    def indices(self, step: int) -> torch.Tensor:
        idx = self.sampler.indices(step)
        if self.full:
            return torch.tensor_split(idx, self.world)[self.rank]
        return idx.view(-1, self.world, self.batch)[:, self.rank].reshape(-1)


class _GlobalCounts:
    """Wraps `TrainData`: each step's token / truncation counts are summed over ranks (one
    all-reduce of two device scalars), so the trainer's log and `tokens_seen` are global."""

    def __init__(self, data: TrainData):
        self.data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def micro_batches(self, step: int, max_len: Optional[int] = None):
        micro = self.data.micro_batches(step, max_len)
        counts = torch.stack([sum(m.n_tokens for m in micro), sum(m.n_truncated for m in micro)]).to(
            micro[0].input_ids.device, torch.float64)
        dist.all_reduce(counts)
        zero = torch.zeros_like(counts[0])
        return [m._replace(n_tokens=counts[0] if i == 0 else zero, n_truncated=counts[1] if i == 0 else zero)
                for i, m in enumerate(micro)]


# ============================================================================ one step
class DistributedStepRunner(StepRunner):
    """`StepRunner` for DDP / FSDP: gradients synchronise on the last micro-batch only, the
    loss is normalised by the global target count (see the module docstring), the returned
    loss is the global mean. Never captured as a CUDA graph."""

    def __init__(self, model, forward, optimizer, grad_clip, device, amp, parallel: str, world: int,
                 ddp: Optional[torch.nn.Module] = None):
        super().__init__(model, forward, optimizer, grad_clip, device, amp, graphs=False)
        self.parallel, self.world, self.ddp = parallel, world, ddp

    def _sync(self, on: bool):
        if self.parallel == "ddp":
            return contextlib.nullcontext() if on else self.ddp.no_sync()
        self.model.set_requires_gradient_sync(on)  # FSDP2: reduce-scatter only on the last micro-batch
        return contextlib.nullcontext()

    def _compute(self, micro):
        n_target = sum((y[:, 1:] != -100).sum() for _, y in micro).to(torch.float32)
        dist.all_reduce(n_target)
        scale = self.world / n_target.clamp(min=1)  # DDP / FSDP average over ranks: undo it
        total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro):
            with self._sync(i == len(micro) - 1):
                with autocast(self.device, self.amp):
                    per_token = self.forward(x, return_type="loss", labels=y, loss_per_token=True)
                loss = per_token.float().sum() * scale
                loss.backward()
            total = total + loss.detach()
        dist.all_reduce(total)
        grad_norm = None
        if self.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.grad_clip))
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        return total / self.world, grad_norm


class _NullSinks:
    """What ranks other than 0 log to."""

    def log(self, event: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _SavedOptimizer:
    """Stands in for the optimizer while the base `save` reads its (gathered) state."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


# ============================================================================ trainer
class DistributedMixin:
    """Mixed in before a `Trainer` (sub)class: process group, device, rank-sliced data, DDP
    or FSDP2, rank-0 logging / evaluation / checkpoints, exact resume from full checkpoints."""

    def __init__(self, cfg: dict, resume: Optional[Path] = None, task: Any = None):
        t = cfg["train"]
        self.parallel = resolve_parallel(t)
        device = resolve_device(t["device"])
        if device.type == "cuda" and device.index is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
        if t["cuda_graphs"] is True:
            raise TrainConfigError("train.cuda_graphs=true: a distributed step's collectives cannot be captured; "
                                   "leave it auto (off under DDP / FSDP) or false")
        if t.get("cpu_offload") and (self.parallel != "fsdp" or device.type != "cuda"):
            raise TrainConfigError("train.cpu_offload=true needs train.parallel=fsdp on CUDA "
                                   f"(got parallel={self.parallel}, device={device.type})")
        init_process_group(t, device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.mesh = None
        if self.parallel == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(device.type, (self.world,))
        if not self.is_main:
            t["progress"] = False
        if task is None:
            # rank 0 builds the task first (it may write caches, e.g. streamed text shards), then
            # the others, which read them. Tasks draw from their own seeded generators, so the
            # global RNG the model is initialised from is the same as in a single process.
            seed_everything(t["seed"])
            if not self.is_main:
                dist.barrier()
            task = build_task(cfg["task"])
            if self.is_main:
                dist.barrier()
        self._replica: Optional[HookedTransformer] = None
        self._ddp = None
        super().__init__(cfg, resume=resume, task=task)
        base = self.step_runner
        self.step_runner = DistributedStepRunner(self.model, base.forward, self.optimizer, base.grad_clip,
                                                 self.device, self.amp, self.parallel, self.world, ddp=self._ddp)

    # ------------------------------------------------------------------ extension points
    def prepare_model(self) -> None:
        super().prepare_model()
        if self.parallel != "fsdp":
            return
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        # the per-token loss the step reads is a view; nothing edits it in place (FSDP warns regardless)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        mp = MixedPrecisionPolicy(param_dtype=self.amp, reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy() if self.t.get("cpu_offload") else OffloadPolicy()
        for block in self.model.blocks:
            fully_shard(block, mesh=self.mesh, mp_policy=mp, offload_policy=offload)
        fully_shard(self.model, mesh=self.mesh, mp_policy=mp, offload_policy=offload)

    def make_data(self) -> TrainData:
        data = super().make_data()
        full = self.t["batch_size"] == "full"
        n = len(data.tensors)
        if n < self.world:
            raise TrainConfigError(f"the training split has {n} rows, fewer than the {self.world} processes")
        b = data.batch_size
        sampler = data.sampler if full else StepSampler(n, self.world * b * data.grad_accum, self.t["seed"],
                                                        data.sampler.device)
        data.sampler = RankSlice(sampler, self.rank, self.world, b, full=full)
        return _GlobalCounts(data)

    def make_forward(self):
        if self.parallel != "ddp":
            return super().make_forward()  # FSDP: the sharded model is its own forward
        from torch.nn.parallel import DistributedDataParallel

        self._ddp = DistributedDataParallel(
            self.model, device_ids=[self.device.index if self.device.index is not None else torch.cuda.current_device()]
            if self.device.type == "cuda" else None)
        return torch.compile(self._ddp) if self._want_compile() else self._ddp

    def make_sinks(self):
        return super().make_sinks() if self.is_main else _NullSinks()

    def _want_graphs(self) -> bool:
        return False

    def _fresh_run_dir(self) -> None:
        if self.is_main:
            super()._fresh_run_dir()
        dist.barrier()

    def load_optimizer_state(self, state: dict) -> None:
        if self.parallel != "fsdp":
            return super().load_optimizer_state(state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        order = self._param_order()
        named = {"state": {order[i]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, named, options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ full state
    def _param_order(self) -> list[str]:
        """Parameter names in the optimizer's order (what the single-process state indexes)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]]

    def _gathered(self) -> tuple[Optional[HookedTransformer], Optional[dict]]:
        """(a plain model with the full weights, the optimizer state in the single-process
        layout) on rank 0; (None, None) elsewhere. A collective under FSDP."""
        if self.parallel != "fsdp":
            return (self.model, self.optimizer.state_dict()) if self.is_main else (None, None)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        if not self.is_main:
            return None, None
        if self._replica is None:
            cfg = ModelConfig.from_dict(self.model.cfg.to_dict())
            self._replica = HookedTransformer(cfg).to(self.device)
            self._replica.set_tokenizer(self.tokenizer)
        self._replica.load_state_dict(weights)
        self._replica.train(self.model.training)
        index = {name: i for i, name in enumerate(self._param_order())}
        optim = {"state": {index[k]: v for k, v in optim["state"].items()},
                 "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]}
        return self._replica, optim

    @contextlib.contextmanager
    def _as(self, model, optimizer):
        """Let the base class's evaluate / save run on the gathered model and state."""
        saved = self.model, self.optimizer
        self.model, self.optimizer = model, optimizer
        try:
            yield
        finally:
            self.model, self.optimizer = saved

    def _evaluate(self, step: int, sinks, bar) -> float:
        model, _ = self._gathered() if self.parallel == "fsdp" else (self.model, None)
        metric = [None]
        if self.is_main:
            with self._as(model, self.optimizer):
                metric[0] = super()._evaluate(step, sinks, bar)
        dist.broadcast_object_list(metric, src=0)  # every rank decides "best" (and saves) alike
        return metric[0]

    def save(self, step: int, metric: Optional[float]) -> Path:
        model, optim = self._gathered()
        path = self.manager.step_dir(step)
        if self.is_main:
            with self._as(model, _SavedOptimizer(optim)):
                path = super().save(step, metric)
        elif self.manager.is_better(metric):
            self.manager.best_metric = metric  # rank 0's manager did the same: stay in step
        dist.barrier()  # the checkpoint is complete for everyone before anyone goes on
        return path



class DistributedTrainer(DistributedMixin, Trainer):
    """The default trainer on several processes (what `train.parallel: ddp | fsdp` selects)."""
