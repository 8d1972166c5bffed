"""The training loop: AdamW steps on device-resident batches, evaluation, progress measures,
checkpoints, exact resume.

One step is forward + backward over its micro-batches (accumulation normalised by the step's
target count, so `grad_accum=2, batch_size=b` equals `batch_size=2b`), clipping and a fused
AdamW update. Nothing in a step reads a value back to the host: the loss, gradient norm and
token counts accumulate on the device and are read once per `log_every` steps.

On CUDA with static shapes the whole step (forward, backward, clip, optimizer) is captured
once as a CUDA graph and replayed (`train.cuda_graphs`): for the small models this toolkit is
for, a step is otherwise dominated by kernel-launch and Python overhead. Warm-up for the
capture runs with a zero learning rate and the optimizer state is restored afterwards, so
the captured run trains exactly the steps an eager run would.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch

from models import HookedTransformer

from .. import checkpoint as ckpt_lib
from .config import (
    Curriculum,
    PathLike,
    TrainConfigError,
    autocast,
    autocast_dtype,
    build_model_config,
    build_task,
    load_run_config,
    lr_at,
    param_groups,
    steps_for_epochs,
    read_yaml,
    resolve_device,
)
from .data import TrainData, materialise
from .evaluate import EvalData, evaluate, pad_id_of
from .progress import run_measures

SAVE_DTYPES = {None: None, "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


# ============================================================================ entry point
def train(
    config: Union[None, dict, PathLike] = None,
    overrides=(),
    *,
    resume: Optional[PathLike] = None,
    task: Any = None,
) -> Path:
    """Train from a config (YAML path or dict) with `section.key=value` overrides; returns the
    final checkpoint directory. `resume` (a run dir or checkpoint) continues a run: without a
    `config` the run's own saved config is used. `task` passes a ready task object instead of
    building one from the config's `task` section."""
    ckpt_dir = None
    if resume is not None:
        ckpt_dir = ckpt_lib.resolve(resume)
        _, saved = ckpt_lib.load_config(ckpt_dir)
        run_config = (saved.get("training") or {}).get("run_config")
        if config is None:
            if run_config is None:
                raise TrainConfigError(f"{ckpt_dir}: has no saved run config; pass --config")
            config = run_config
            overrides = list(overrides)
            if _STEP_NAME.match(ckpt_dir.name) and not any(o.split("=")[0].strip() in ("train.out_dir", "out_dir")
                                                           for o in overrides):
                overrides = [f"train.out_dir={ckpt_dir.parent}"] + overrides
    if task is not None:
        config = read_yaml(config) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(config or {})
        if not (config.get("task") or {}).get("name"):
            given = task.config() if hasattr(task, "config") else {}
            config["task"] = {"name": getattr(task, "name", "custom"), **given}
    cfg = load_run_config(config, overrides)
    trainer = TRAINERS.get(cfg["train"]["trainer"])
    if trainer is None:
        raise TrainConfigError(f"train.trainer={cfg['train']['trainer']!r}; registered: {sorted(TRAINERS)}")
    from .distributed import for_config

    trainer = for_config(trainer, cfg)  # train.parallel / torchrun: the same trainer on every process
    return trainer(cfg, resume=ckpt_dir, task=task).run()


_STEP_NAME = re.compile(r"^step_\d+$")
TRAINERS: dict[str, type] = {}


def register_trainer(name: str, cls: type) -> None:
    """Make `train.trainer: NAME` run `cls` (a `Trainer` subclass) instead of `Trainer`."""
    TRAINERS[name] = cls


# ============================================================================ one step
class StepRunner:
    """Runs one optimizer step on a list of (input_ids, labels) micro-batches; returns device
    tensors (summed loss, grad norm or None). Eager, or replaying a captured CUDA graph."""

    def __init__(self, model: HookedTransformer, forward, optimizer: torch.optim.Optimizer, grad_clip: float,
                 device: torch.device, amp: Optional[torch.dtype], graphs: bool):
        self.model, self.forward, self.optimizer = model, forward, optimizer
        self.grad_clip, self.device, self.amp, self.graphs = grad_clip, device, amp, graphs
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._graphs: dict[tuple, tuple] = {}
        if graphs:
            self.lr = torch.zeros((), device=device)
            for group in optimizer.param_groups:
                group["lr"] = self.lr

    def reset(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Forget captured graphs (and optionally switch to a new optimizer)."""
        self._graphs.clear()
        if optimizer is not None:
            self.optimizer = optimizer
            self.params = [p for g in optimizer.param_groups for p in g["params"]]
            if self.graphs:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr

    def _compute(self, micro: list[tuple[torch.Tensor, torch.Tensor]]):
        n_target = sum((y[:, 1:] != -100).sum() for _, y in micro).clamp(min=1)
        total = torch.zeros((), device=self.device)
        for x, y in micro:
            with autocast(self.device, self.amp):
                per_token = self.forward(x, return_type="loss", labels=y, loss_per_token=True)
            loss = per_token.float().sum() / n_target
            loss.backward()
            total = total + loss.detach()
        grad_norm = None
        if self.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.grad_clip))
        self.optimizer.step()
        return total, grad_norm

    def __call__(self, micro, lr: float):
        if not self.graphs:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            out = self._compute(micro)
            self.optimizer.zero_grad(set_to_none=True)
            return out
        key = tuple(tuple(x.shape) for x, _ in micro)
        if key not in self._graphs:
            self._graphs[key] = self._capture(micro)
        graph, static_in, static_out = self._graphs[key]
        for (x, y), (sx, sy) in zip(micro, static_in):
            sx.copy_(x, non_blocking=True)
            sy.copy_(y, non_blocking=True)
        self.lr.fill_(lr)
        graph.replay()
        return static_out

    def _capture(self, micro):
        """Capture the whole step as a CUDA graph. Warm-up steps run at lr = 0 (parameters
        unchanged) and the optimizer state is put back afterwards."""
        static_in = [(x.clone(), y.clone()) for x, y in micro]
        saved = {p: {k: v.clone() for k, v in self.optimizer.state[p].items()} for p in self.params
                 if p in self.optimizer.state}
        rng = torch.cuda.get_rng_state(self.device)
        self.lr.fill_(0.0)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._compute(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for p in self.params:
                for k, v in self.optimizer.state[p].items():
                    if torch.is_tensor(v):
                        v.copy_(saved[p][k]) if p in saved else v.zero_()
        torch.cuda.set_rng_state(rng, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._compute(static_in)
        return graph, static_in, static_out


# ============================================================================ logging
class Sinks:
    """metrics.jsonl plus optional TensorBoard / W&B (used only when installed)."""

    def __init__(self, run_dir: Path, cfg: dict, resume_step: int = 0):
        self.path = run_dir / ckpt_lib.METRICS_FILE
        self.tb = self.wandb = None
        t = cfg["train"]
        if t["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step or None)
            except ImportError:
                info("tensorboard=true but tensorboard is not installed; skipping it")
        if t["wandb"]:
            try:
                import wandb
            except ImportError:
                info("wandb=true but wandb is not installed; skipping it")
            else:
                try:
                    self.wandb = wandb.init(project=t["wandb_project"], name=cfg["name"], config=cfg,
                                            dir=str(run_dir), resume="allow")
                except Exception as e:  # no login, no network, bad project...
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise TrainConfigError(
                        f"train.wandb=true but W&B could not start ({first}); run `wandb login`, set "
                        "WANDB_MODE=offline, or set train.wandb=false") from None

    def log(self, event: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=ckpt_lib._json_default) + "\n")
        scalars = {f"{event['event']}/{k}": v for k, v in event.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, event["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=event["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def info(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[interp.train] {msg}", file=sys.stderr)


class _StopSignal:
    """SIGINT / SIGTERM set a flag the loop checks between steps, so the run saves a
    checkpoint before it exits (a second Ctrl-C exits at once)."""

    def __init__(self):
        self.received: Optional[int] = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.received = signum
        info(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then exiting "
             "(again to exit at once)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ============================================================================ RNG state
def rng_state() -> dict:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype("uint32"), s["pos"], s["has_gauss"], s["cached"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


# ============================================================================ trainer
class Trainer:
    def __init__(self, cfg: dict, resume: Optional[Path] = None, task: Any = None):
        self.cfg = cfg
        t = self.t = cfg["train"]
        self.device = resolve_device(t["device"])
        self.amp = autocast_dtype(t["dtype"], self.device)
        if self.device.type == "cpu" and self.amp is not None:
            info("train.dtype=bf16 on CPU: using torch's CPU autocast (matmuls in bf16)")
        self.run_dir = Path(t["out_dir"] or Path("runs") / cfg["name"])
        self.curriculum = Curriculum(t["seq_len_curriculum"])
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        if t["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)

        seed_everything(t["seed"])
        self.task = task if task is not None else build_task(cfg["task"])
        # the checkpoint stores the task's full config (defaults included) when it gives one
        self.task_config = ({"name": getattr(self.task, "name", cfg["task"]["name"]), **self.task.config()}
                            if hasattr(self.task, "config") else dict(cfg["task"]))
        if task is not None:
            cfg["task"] = dict(self.task_config)
        self.tokenizer = self.task.tokenizer
        self.pad_id = pad_id_of(self.tokenizer)
        max_len = max(filter(None, [getattr(self.task, "max_len", None), self.curriculum.max]), default=None)
        model_cfg = build_model_config(cfg["model"], self.tokenizer, max_len)
        model_cfg.gradient_checkpointing = t["gradient_checkpointing"]  # true, false or every Nth layer
        self.model = HookedTransformer(model_cfg)
        self.model.set_tokenizer(self.tokenizer)

        self.start_step, self.tokens_seen = 0, 0
        state = None
        if resume is None and t["init_from"] is not None:  # weights only: the run itself starts at step 0
            self._load_weights(Path(t["init_from"]), model_cfg, "train.init_from")
        if resume is not None:
            self._load_weights(Path(resume), model_cfg, str(resume))
            state = ckpt_lib.load_train_state(resume)
            self.start_step, self.tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        self.model.to(self.device)
        self.model.train()
        self.prepare_model()

        self.graphs = self._want_graphs()
        cuda = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, float(t["weight_decay"]), bool(t["decay_all"])), lr=float(t["lr"]),
            betas=tuple(t["betas"]), eps=float(t["eps"]),
            **({"fused": True} if cuda else {}), **({"capturable": True} if self.graphs else {}),
        )
        self.data = self.make_data()
        if t["epochs"] is not None:  # steps from epochs: the sampler's per_step is the global batch
            t["steps"] = steps_for_epochs(t["epochs"], self.data.sampler.n, self.data.sampler.per_step)
        self.eval_data = EvalData(self.task, self.pad_id, self.device)
        keep = None if t["keep_last"] == "all" else t["keep_last"]
        self.manager = ckpt_lib.CheckpointManager(self.run_dir, keep_last=keep)
        self.metrics_path = self.run_dir / ckpt_lib.METRICS_FILE
        if state is not None:
            self.load_optimizer_state(state["optimizer"])
            src = resume / ckpt_lib.METRICS_FILE
            rows = ckpt_lib.read_metrics(src) if src.exists() else (
                ckpt_lib.read_metrics(self.metrics_path) if self.metrics_path.exists() else [])
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= self.start_step))
            set_rng_state(state["rng"])
            if t["stop_at"] is not None and t["stop_at"] <= self.start_step:
                t["stop_at"] = None  # the pause this run was saved at is behind us
            info(f"resumed from {resume} at step {self.start_step}")
        else:
            self._fresh_run_dir()
        self.step_runner = StepRunner(self.model, self.make_forward(), self.optimizer, float(t["grad_clip"] or 0),
                                      self.device, self.amp, self.graphs)
        self.last_eval: Optional[dict] = None

    def _load_weights(self, path: Path, model_cfg, what: str) -> None:
        """Load a checkpoint's weights into the (still CPU) model; its config must be this run's."""
        try:
            loaded, _ = ckpt_lib.load(path, device="cpu", load_tokenizer=False)
        except ckpt_lib.CheckpointError as e:
            raise TrainConfigError(f"{what}: {e}") from None
        diff = {k: (v, getattr(loaded.cfg, k)) for k, v in model_cfg.to_dict().items()
                if k != "gradient_checkpointing" and getattr(loaded.cfg, k) != v}
        if diff:
            raise TrainConfigError(f"{what} ({path}): model config differs from this run's, as (run, checkpoint): {diff}")
        self.model.load_state_dict({k: v.float() for k, v in loaded.state_dict().items()})

    # ------------------------------------------------------------------ extension points
    def prepare_model(self) -> None:
        """Called once the model is on its device, before the optimizer sees its parameters
        (the distributed trainer shards it with FSDP here)."""

    def load_optimizer_state(self, state: dict) -> None:
        """Resume: load a saved optimizer state (as `optimizer.state_dict()` wrote it)."""
        self.optimizer.load_state_dict(state)

    def make_sinks(self) -> "Sinks":
        """Where `run` logs (the distributed trainer logs on rank 0 only)."""
        return Sinks(self.run_dir, self.cfg, self.start_step)

    def make_data(self) -> TrainData:
        """The training data (subclasses: e.g. a curriculum stage's examples)."""
        t = self.t
        return TrainData(materialise(self.task, "train", self.pad_id, self.device), t["batch_size"], t["grad_accum"],
                         t["seed"], self.device)

    def make_forward(self):
        """`forward(input_ids, return_type="loss", labels=..., loss_per_token=True)` for the step."""
        return torch.compile(self.model) if self._want_compile() else self.model

    def before_step(self, step: int, sinks: "Sinks") -> None:
        """Called before every step (subclasses switch curriculum stages here; after changing
        data shapes or the optimizer, call `self.step_runner.reset()`)."""

    def _fresh_run_dir(self) -> None:
        old = self.manager.checkpoints()
        if old and not self.t["overwrite"]:
            raise TrainConfigError(
                f"{self.run_dir} already holds checkpoints ({old[-1][1].name}, ...): continue it with "
                "--resume, pick another train.out_dir, or set train.overwrite=true"
            )
        for _, path in old:
            shutil.rmtree(path)
        for name in ("last", "best"):
            (self.run_dir / name).unlink(missing_ok=True)
        self.manager.best_metric = None
        self.metrics_path.write_text("")

    def _want_compile(self) -> bool:
        flag = self.t["compile"]
        return self.device.type == "cuda" if flag is None else bool(flag)

    def _want_graphs(self) -> bool:
        flag = self.t["cuda_graphs"]
        if self.device.type != "cuda":
            if flag is True:
                raise TrainConfigError("train.cuda_graphs=true needs a CUDA device")
            return False
        if flag == "auto":  # dropout is fine: the CUDA generator advances its offset on every replay
            return not self.t["gradient_checkpointing"]
        return bool(flag)

    # ------------------------------------------------------------------ loop
    def run(self) -> Path:
        from tqdm import tqdm

        t = self.t
        end = t["steps"] if t["stop_at"] is None else min(t["steps"], t["stop_at"])
        sinks = self.make_sinks()
        bar = tqdm(total=t["steps"], initial=self.start_step, disable=not t["progress"], dynamic_ncols=True,
                   desc=self.cfg["name"], file=sys.stderr)
        zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
        window = {"loss": zero(), "tokens": zero(), "truncated": zero(), "grad_norm": zero()}
        window_steps, window_start = 0, time.perf_counter()
        last_ckpt: Optional[Path] = None
        done = self.start_step
        try:
            with _StopSignal() as stop:
                for step in range(self.start_step, end):
                    self.before_step(step, sinks)
                    max_len = self.curriculum.at(step)
                    micro = self.data.micro_batches(step, max_len)
                    lr = lr_at(step, t)
                    loss, grad_norm = self.step_runner([(m.input_ids, m.labels) for m in micro], lr)
                    done = step + 1
                    window["loss"] += loss
                    window["tokens"] += sum(m.n_tokens for m in micro)
                    window["truncated"] += sum(m.n_truncated for m in micro)
                    if grad_norm is not None:
                        window["grad_norm"] = grad_norm.detach().float() + 0.0
                    window_steps += 1
                    bar.update(1)
                    if done % t["log_every"] == 0 or done == end:
                        values = torch.stack(list(window.values())).tolist()  # the one host read per window
                        now = time.perf_counter()
                        mean_loss = values[0] / window_steps
                        tok_s = values[1] / max(now - window_start, 1e-9)
                        self.tokens_seen += int(values[1])
                        sinks.log({"event": "train", "step": done, "loss": mean_loss, "lr": lr,
                                   "grad_norm": values[3] if grad_norm is not None else None,
                                   "tokens_per_s": tok_s, "steps_per_s": window_steps / max(now - window_start, 1e-9),
                                   "tokens_seen": self.tokens_seen, "max_len": max_len,
                                   "seq_len": int(micro[0].input_ids.shape[1]), "n_truncated": int(values[2])})
                        bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tok_s:,.0f}")
                        window = {k: zero() for k in window}
                        window_steps, window_start = 0, time.perf_counter()
                    metric = None
                    if done % t["eval_every"] == 0 or done == end:
                        metric = self._evaluate(done, sinks, bar)
                        window_start = time.perf_counter()  # eval time is not training throughput
                    if stop.received is not None:
                        last_ckpt = self.save(done, metric)
                        sinks.log({"event": "interrupted", "step": done, "signal": signal.Signals(stop.received).name})
                        info(f"saved {last_ckpt}; resume with: interp train --resume {self.run_dir}")
                        if stop.received == signal.SIGINT:
                            raise KeyboardInterrupt
                        raise SystemExit(128 + stop.received)
                    better = t["save_best"] and self.manager.is_better(metric)
                    if done % t["save_every"] == 0 or done == end or better:
                        last_ckpt = self.save(done, metric)
                        window_start = time.perf_counter()
        finally:
            bar.close()
            sinks.close()
            self.data.close()
        if last_ckpt is None:  # nothing left to train (resumed at the end)
            last_ckpt = self.manager.last or self.save(self.start_step, None)
        return last_ckpt

    def _evaluate(self, step: int, sinks: Sinks, bar) -> float:
        t = self.t
        kwargs = dict(batch_size=t["eval_batch_size"] or (t["batch_size"] if t["batch_size"] != "full" else None),
                      max_batches=t["eval_batches"] or None, n_generate=t["eval_generate"], device=self.device,
                      autocast=self.amp)
        self.last_eval = evaluate(self.model, self.tokenizer, self.task, t["eval_split"], data=self.eval_data, **kwargs)
        on_train = evaluate(self.model, self.tokenizer, self.task, "train", data=self.eval_data, **kwargs)
        for key in ("loss", "token_acc", "exact_match", "n_examples"):
            self.last_eval[f"train_{key}"] = on_train.get(key)
        sinks.log({"event": "eval", "step": step, **self.last_eval})
        if t["metrics"]:
            sinks.log({"event": "progress", "step": step, **run_measures(t["metrics"], self.model, self.task)})
        metric = self.last_eval["loss"]
        bar.set_postfix(val=f"{metric:.4f}", train=f"{on_train['loss']:.4f}")
        return metric

    def save(self, step: int, metric: Optional[float]) -> Path:
        training = {"step": step, "tokens_seen": self.tokens_seen, "run_config": self.cfg,
                    "eval": self.last_eval, "torch": torch.__version__, "device": str(self.device)}
        opt_state = self.optimizer.state_dict()
        for group in opt_state["param_groups"]:
            if torch.is_tensor(group.get("lr")):
                group["lr"] = float(group["lr"])
        state = {"format_version": ckpt_lib.FORMAT_VERSION, "step": step, "tokens_seen": self.tokens_seen,
                 "optimizer": opt_state, "rng": rng_state()}
        return self.manager.save(self.model, step, self.tokenizer, metric=metric, task=self.task_config,
                                 training=training, train_state=state, metrics=self.metrics_path,
                                 weights_dtype=SAVE_DTYPES[self.t["save_dtype"]])


register_trainer("default", Trainer)
