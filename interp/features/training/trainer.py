"""The dictionary trainer: one model forward feeds every dictionary of a run.

Per step, for each dictionary: `training_forward` on its rows of the buffer batch (under the
run's autocast), backward, Adam (its own optimizer and learning rate; warm-up and cosine decay
from `interp.training.lr_at`), `after_step` (decoder-norm constraint, running thresholds), and
on-device bookkeeping: tokens since each latent last fired (the `fired` mask AuxK reads) and
the window's loss parts, L0, squared error and variance. Nothing in a step reads back to the
host; the window is read every `train.log_every` steps.

On CUDA the step of all dictionaries is compiled (`torch.compile` of each `training_forward`)
and captured as one CUDA graph, replayed every step (the model trainer's `StepRunner` recipe:
warm-up on a side stream, then every piece of state the warm-up touched is put back, so the
captured run trains exactly the steps an eager run would).

Run directory (`train.out_dir`, default `runs/features/<name>`):

```
metrics.jsonl           one "train" row per dictionary per log_every steps
run_config.json         the resolved config
NAME/                   each dictionary at the end, SAELens layout (cfg.json + sae_weights.safetensors)
step_000500/            checkpoints (interp.checkpoint.CheckpointManager): NAME/ for each dictionary,
    train_state.pt      exact state (weights, Adam, dead-latent counters, buffer position, RNG)
last                    pointer to the newest checkpoint (what --resume DIR follows)
```
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from interp import checkpoint as ckpt_lib
from interp.training.config import autocast, autocast_dtype, lr_at, resolve_device
from interp.training.loop import _StopSignal, info, rng_state, set_rng_state

from .activations import ActivationBuffer, ActivationProducer, TokenSource, check_hook, dictionary_seed
from .config import FeaturesConfigError, default_lr, load_config, schedule, steps_of
from .distributed import Group

RUN_CONFIG = "run_config.json"
STATE_FORMAT = 1


@dataclass
class Member:
    """One dictionary of the run and its training state (all on the device)."""

    name: str
    index: int
    sae: Any  # SparseDictionary
    lr: float
    schedule: dict
    optimizer: torch.optim.Optimizer
    since: torch.Tensor  # (d_sae,) tokens since each latent last fired
    acc: torch.Tensor  # (n_parts + 4,) window sums: loss, parts..., l0, squared error, variance
    parts: list[str] = field(default_factory=list)
    forward: Any = None  # training_forward, compiled or not
    lr_t: Optional[torch.Tensor] = None  # the learning rate a captured graph reads

    @property
    def cfg(self):
        return self.sae.cfg

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    name = str(name).lower()
    if name in ("fp32", "float32"):
        return torch.float32
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def model_identity(model, checkpoint: str) -> dict:
    """What a dictionary records about the model it was trained on (D1's helper when present)."""
    try:
        from interp.features import model_identity as identity

        return identity(model, checkpoint)
    except (ImportError, TypeError):
        c = model.cfg
        return {"checkpoint": str(checkpoint), "name": c.name, "n_layers": c.n_layers, "d_model": c.d_model,
                "d_vocab": c.d_vocab, "stream": c.stream}


class FeaturesTrainer:
    """Train the dictionaries of one config; `run()` returns {name: SparseDictionary}.

    `persist=False` writes nothing (no run directory, no checkpoints): what `features.train`
    does when given no `out_dir`."""

    def __init__(self, cfg: dict, resume: Optional[Path] = None, persist: bool = True, model=None):
        from interp.features.dictionary import DictionaryConfig, DictionaryError, make

        self.cfg = cfg
        t = self.t = cfg["train"]
        self.device = resolve_device(t["device"])
        self.amp = autocast_dtype(t["dtype"], self.device)
        self.buffer_dtype = resolve_dtype(t["buffer_dtype"], self.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 where autocast leaves fp32 matmuls
        self.group = Group(t, self.device, len(cfg["dictionaries"]))
        if self.device.type == "cuda" and self.device.index is None and self.group.distributed:
            import os

            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.persist = persist
        self.run_dir = Path(t["out_dir"] or Path("runs") / "features" / cfg["name"])
        self.steps = steps_of(t)

        # the model, and every hook checked against it before anything runs
        if model is None:
            try:
                model, _ = ckpt_lib.load(cfg["checkpoint"], device=self.device)
            except ckpt_lib.CheckpointError as e:
                raise FeaturesConfigError(f"checkpoint: {e}") from None
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        specs = cfg["dictionaries"]
        for name, spec in specs.items():
            check_hook(self.model, spec["hook_name"], f"dictionaries.{name}.hook_name", cfg["checkpoint"])
            if spec.get("out_hook_name"):
                check_hook(self.model, spec["out_hook_name"], f"dictionaries.{name}.out_hook_name", cfg["checkpoint"])
        hooks = sorted({h for s in specs.values() for h in (s["hook_name"], s.get("out_hook_name")) if h})

        # the data path: tokens -> forward -> buffer
        _, saved = ckpt_lib.load_config(cfg["checkpoint"]) if isinstance(cfg["checkpoint"], (str, Path)) else (None, {})
        task_cfg = dict(saved.get("task") or {})
        task_cfg.update(cfg["data"]["task"] or {})
        if not task_cfg.get("name"):
            raise FeaturesConfigError(f"{cfg['checkpoint']}: its config.json has no task; give data.task "
                                      "(e.g. {name: text, path: corpus.txt})")
        d = cfg["data"]
        g = self.group
        self.source = TokenSource(task_cfg, d["split"], d["batch_size"], d["seq_len"], d["exclude_bos"],
                                  self.model.cfg.bos_token_id, t["seed"], self.device, g.rank, g.world)
        cuda = self.device.type == "cuda"
        want_compile = cuda if t["compile"] is None else bool(t["compile"])
        self.graphs = self._want_graphs()
        self.producer = ActivationProducer(self.model, hooks, self.amp, compile=want_compile, graphs=self.graphs)
        self.buffer = ActivationBuffer(self.source, self.producer, t["buffer_tokens"], t["batch_tokens"], t["seed"],
                                       self.buffer_dtype, gather=g.gather if g.distributed else None)
        with torch.no_grad():  # the hooks' widths, from one sequence (eager: no compile for this shape)
            widths = {h: a.shape[-1] for h, a in self.producer._forward(self.source.batch(0)[0][:1]).items()}

        # the dictionaries (each initialised from its own seed: the same alone or in company)
        identity = model_identity(self.model, cfg["checkpoint"])
        self.members: list[Member] = []
        self.configs: dict[str, Any] = {}
        for index, (name, spec) in enumerate(specs.items()):
            fields = {k: v for k, v in spec.items() if k not in ("expansion", "lr")}
            fields["d_in"] = widths[spec["hook_name"]]
            if spec.get("out_hook_name"):
                fields["d_out"] = widths[spec["out_hook_name"]]
            if fields.get("d_sae") is None:
                fields["d_sae"] = int(round(spec["expansion"] * fields["d_in"]))
            fields["model"] = identity
            try:
                dcfg = DictionaryConfig.from_dict(fields, where=f"dictionaries.{name}")
            except DictionaryError as e:
                raise FeaturesConfigError(str(e)) from None
            self.configs[name] = dcfg
            if not g.owns(index):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(dictionary_seed(t["seed"], name))
                sae = make(dcfg)
            sae = sae.to(self.device).train()
            lr = float(spec.get("lr") or t["lr"] or default_lr(dcfg.d_sae))
            opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=tuple(t["betas"]), eps=float(t["eps"]),
                                   **({"fused": True} if cuda else {}), **({"capturable": True} if self.graphs else {}))
            since = torch.zeros(dcfg.d_sae, device=self.device)
            m = Member(name, index, sae, lr, schedule(t, lr, self.steps), opt, since, torch.zeros(0, device=self.device))
            m.forward = torch.compile(sae.training_forward) if want_compile else sae.training_forward
            self.members.append(m)

        self.start_step, self.tokens_seen, self.window_steps = 0, 0, 0
        self._window: dict[str, torch.Tensor] = {}  # a resumed run's partial log window
        self.manager = ckpt_lib.CheckpointManager(self.run_dir, keep_last=t["keep_last"]) if persist and g.is_main else None
        self.metrics_path = self.run_dir / ckpt_lib.METRICS_FILE
        if resume is not None:
            self._resume(resume)
        else:
            self._fresh_run_dir()
            first = self.buffer.peek(min(self.buffer.capacity, 16_384))
            for m in self.members:
                target = first[m.cfg.out_hook_name].float() if m.cfg.out_hook_name else None
                m.sae.init_from_data(first[m.cfg.hook_name].float(), target)
        self._probe_parts()
        for m in self.members:
            if m.name in self._window:
                m.acc.copy_(self._window[m.name])
        self._graph = None

    # ------------------------------------------------------------------ setup helpers
    def _want_graphs(self) -> bool:
        flag = self.t["cuda_graphs"]
        if self.device.type != "cuda":
            if flag is True:
                raise FeaturesConfigError("train.cuda_graphs=true needs a CUDA device")
            return False
        if self.group.mode == "ddp":  # collectives inside the step
            if flag is True:
                raise FeaturesConfigError("train.cuda_graphs=true: a ddp step's all-reduces are not captured; "
                                          "leave it auto or use train.parallel=dictionaries")
            return False
        return flag in ("auto", True)

    def _probe_parts(self) -> None:
        """The loss-part names each dictionary reports (from a forward on zeros; no update)."""
        for m in self.members:
            x = torch.zeros(2, m.cfg.d_in, device=self.device)
            y = torch.zeros(2, m.cfg.d_out, device=self.device)
            with torch.no_grad():
                out = m.sae.training_forward(x, y, None)
            m.parts = list(out.parts)
            m.acc = torch.zeros(len(m.parts) + 4, device=self.device)

    def _fresh_run_dir(self) -> None:
        if self.manager is None:
            self.group.barrier()
            return
        old = self.manager.checkpoints()
        if old and not self.t["overwrite"]:
            raise FeaturesConfigError(f"{self.run_dir} already holds checkpoints ({old[-1][1].name}, ...): continue "
                                      "it with --resume, pick another train.out_dir, or set train.overwrite=true")
        for _, path in old:
            shutil.rmtree(path)
        (self.run_dir / "last").unlink(missing_ok=True)
        self.metrics_path.write_text("")
        (self.run_dir / RUN_CONFIG).write_text(json.dumps(self.cfg, indent=2, default=str) + "\n")
        self.group.barrier()

    # ------------------------------------------------------------------ the step
    def _compute(self, batch: dict[str, torch.Tensor]) -> None:
        """One step of every dictionary this process trains (captured as one graph on CUDA)."""
        g = self.group
        for m in self.members:
            c = m.cfg
            x_in = g.rows(batch[c.hook_name]).float()
            x_out = g.rows(batch[c.out_hook_name]).float() if c.out_hook_name else x_in
            fired = m.since < c.dead_after_tokens
            with autocast(self.device, self.amp):
                out = m.forward(x_in, x_out, fired)
            out.loss.backward()
            if g.mode == "ddp":
                g.average_gradients(m.params())
            m.optimizer.step()
            if not self.graphs:
                m.optimizer.zero_grad(set_to_none=True)
            m.sae.after_step()
            with torch.no_grad():
                active = g.any(out.active)
                m.since.add_(self.t["batch_tokens"]).masked_fill_(active, 0)
                x_hat = out.x_hat.float()
                sse = (x_out - x_hat).pow(2).sum()
                if g.mode == "ddp":  # the global batch's variance, from the summed moments
                    moments = g.sum(torch.cat([x_out.sum(0), x_out.pow(2).sum().view(1)]))
                    var = moments[-1] - moments[:-1].pow(2).sum() / self.t["batch_tokens"]
                else:
                    var = (x_out - x_out.mean(0)).pow(2).sum()
                parts = [out.parts[k].float() for k in m.parts]
                m.acc.add_(torch.stack([out.loss.detach().float(), *parts, out.l0.float(), sse, var]))

    def step(self, step: int, batch: dict[str, torch.Tensor]) -> None:
        lrs = [lr_at(step, m.schedule) for m in self.members]
        if not self.graphs:
            for m, lr in zip(self.members, lrs):
                for group in m.optimizer.param_groups:
                    group["lr"] = lr
            self._compute(batch)
            return
        if self._graph is None:
            self._capture(batch)
        for name, static in self._static.items():
            static.copy_(batch[name])
        for m, lr in zip(self.members, lrs):
            m.lr_t.fill_(lr)
        self._graph.replay()

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step changes (what the capture's warm-up must leave as it found)."""
        out = []
        for m in self.members:
            out += list(m.sae.parameters()) + list(m.sae.buffers()) + [m.since, m.acc]
            for p in m.params():
                out += [v for v in m.optimizer.state.get(p, {}).values() if torch.is_tensor(v)]
        return out

    def _capture(self, batch: dict[str, torch.Tensor]) -> None:
        self._static = {name: t.clone() for name, t in batch.items()}
        for m in self.members:
            m.lr_t = torch.zeros((), device=self.device)
            for group in m.optimizer.param_groups:
                group["lr"] = m.lr_t
        targets = self._state_tensors()  # (optimizer state a fresh optimizer creates in the warm-up: zeroed below)
        before = [t.clone() for t in targets]
        fresh = {id(p) for m in self.members for p in m.params() if p not in m.optimizer.state}
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                for m in self.members:
                    m.optimizer.zero_grad(set_to_none=True)
                self._compute(self._static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for t, saved in zip(targets, before):
                t.copy_(saved)
            for m in self.members:  # state the warm-up created starts from zero, as in a first step
                for p in m.params():
                    if id(p) in fresh:
                        for v in m.optimizer.state[p].values():
                            if torch.is_tensor(v):
                                v.zero_()
        torch.cuda.set_rng_state(rng, self.device)
        for m in self.members:
            m.optimizer.zero_grad(set_to_none=True)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._compute(self._static)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        t, g = self.t, self.group
        end = self.steps if t["stop_at"] is None else min(self.steps, t["stop_at"])
        bar = tqdm(total=self.steps, initial=self.start_step, disable=not (t["progress"] and g.is_main),
                   dynamic_ncols=True, desc=self.cfg["name"], file=sys.stderr)
        deadline = time.monotonic() + t["max_seconds"] if t.get("max_seconds") else None
        window_steps, window_start = self.window_steps, time.perf_counter()  # a resumed window goes on
        done, saved_at = self.start_step, None
        try:
            with _StopSignal() as stop:
                for step in range(self.start_step, end):
                    batch = self.buffer.next()
                    self.step(step, batch)
                    done = step + 1
                    window_steps += 1
                    self.tokens_seen += t["batch_tokens"]
                    self.window_steps = window_steps
                    bar.update(1)
                    if done % t["log_every"] == 0 or done == self.steps:
                        self._log(done, window_steps, time.perf_counter() - window_start, batch, bar)
                        window_steps, window_start = 0, time.perf_counter()
                        self.window_steps = 0
                    out_of_time = deadline is not None and g.broadcast(time.monotonic() > deadline)
                    if stop.received is not None or out_of_time:
                        saved_at = self.save(done)
                        why = signal.Signals(stop.received).name if stop.received is not None else "max_seconds"
                        self._event({"event": "interrupted", "step": done, "reason": why})
                        if g.is_main:
                            info(f"stopped at step {done} ({why}); resume with: interp features train --resume "
                                 f"{self.run_dir}")
                        if stop.received == signal.SIGINT:
                            raise KeyboardInterrupt
                        if stop.received is not None:
                            raise SystemExit(128 + stop.received)
                        break
                    if (t["save_every"] and done % t["save_every"] == 0) or done == end:
                        saved_at = self.save(done)
                        window_start = time.perf_counter()
        finally:
            bar.close()
        if saved_at is None and self.persist and done == self.start_step:
            self.save(done)  # resumed at the end: nothing left to train
        finished = done >= self.steps
        dictionaries = self._gathered_dictionaries()
        if finished and self.persist and g.is_main:
            for name, sae in dictionaries.items():
                sae.save(self.run_dir / name)
        g.barrier()
        return dictionaries

    def _event(self, row: dict) -> None:
        if self.persist and self.group.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row, default=ckpt_lib._json_default) + "\n")

    @torch.no_grad()
    def _log(self, step: int, n_steps: int, seconds: float, batch: dict, bar) -> None:
        """The one host read of a window: every dictionary's sums, plus density on this batch."""
        g = self.group
        rows = []
        for m in self.members:
            acc = g.sum(m.acc)
            if g.mode == "ddp":  # means over processes; the squared-error sum stays a sum; the variance is global
                acc[: len(m.parts) + 2] /= g.world
                acc[-1] /= g.world
            values = acc.tolist()
            m.acc.zero_()
            x = batch[m.cfg.hook_name][:1024].float()
            with autocast(self.device, self.amp):
                z = m.sae.encode(x)
            density = (z > 0).float().mean(0)
            dead = (m.since >= m.cfg.dead_after_tokens).float().mean()
            dense = (density > 0.1).float().mean()
            rows.append({"event": "train", "step": step, "dictionary": m.name, "loss": values[0] / n_steps,
                         **{k: v / n_steps for k, v in zip(m.parts, values[1:])},
                         "l0": values[len(m.parts) + 1] / n_steps,
                         "fve": 1.0 - values[-2] / max(values[-1], 1e-30),
                         "dead_fraction": float(dead), "dense_fraction": float(dense),
                         "lr": lr_at(step - 1, m.schedule), "tokens_seen": self.tokens_seen,
                         "tokens_per_s": n_steps * self.t["batch_tokens"] / max(seconds, 1e-9)})
        gathered = g.collect(rows) if g.mode == "dictionaries" else [rows]  # (ddp: every process has them all)
        if not g.is_main:
            return
        rows = sorted((r for part in gathered for r in part), key=lambda r: list(self.configs).index(r["dictionary"]))
        for r in rows:
            self._event(r)
        head = rows[0]
        bar.set_postfix(fve=f"{head['fve']:.3f}", l0=f"{head['l0']:.1f}", tok_s=f"{head['tokens_per_s']:,.0f}")

    # ------------------------------------------------------------------ checkpoints
    def _member_state(self) -> dict:
        """This process's dictionaries' exact state, on the CPU."""
        out = {}
        for m in self.members:
            # ddp: the window's sums over processes, shared out again, so that the sum over
            # processes at the next log is what it would have been without the pause
            window = self.group.sum(m.acc) / self.group.world if self.group.mode == "ddp" else m.acc.clone()
            opt = m.optimizer.state_dict()
            for group in opt["param_groups"]:
                if torch.is_tensor(group.get("lr")):
                    group["lr"] = float(group["lr"])
            out[m.name] = {"weights": {k: v.detach().cpu().clone() for k, v in m.sae.state_dict().items()},
                           "optimizer": _to_cpu(opt), "since": m.since.cpu().clone(), "window": window.cpu()}
        return out

    def save(self, step: int) -> Optional[Path]:
        if not self.persist:
            return None
        states = self.group.collect(self._member_state()) if self.group.mode == "dictionaries" else [self._member_state()]
        path = None
        if self.persist and self.group.is_main:
            merged = {name: s for part in states for name, s in part.items()}
            state = {"format_version": STATE_FORMAT, "step": step, "tokens_seen": self.tokens_seen,
                     "window_steps": self.window_steps,
                     "buffer": self.buffer.state_dict(), "rng": rng_state(), "dictionaries": merged,
                     "config": json.loads(json.dumps(self.cfg, default=str))}
            from interp.features.dictionary import make

            def write(tmp: Path) -> None:
                for name, s in merged.items():
                    sae = make(self.configs[name])
                    sae.load_state_dict(s["weights"])
                    sae.save(tmp / name)
                torch.save(state, tmp / ckpt_lib.TRAIN_STATE_FILE)
                if self.metrics_path.exists():
                    shutil.copyfile(self.metrics_path, tmp / ckpt_lib.METRICS_FILE)
                (tmp / RUN_CONFIG).write_text(json.dumps(self.cfg, indent=2, default=str) + "\n")

            path = self.manager.save_with(step, write)
        self.group.barrier()
        return path

    def _resume(self, resume: Path) -> None:
        state = load_state(resume)
        self.start_step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.window_steps = int(state["window_steps"])
        missing = [m.name for m in self.members if m.name not in state["dictionaries"]]
        if missing:
            raise FeaturesConfigError(f"resume {resume}: no saved state for dictionaries {missing}; the checkpoint "
                                      f"has {sorted(state['dictionaries'])}")
        for m in self.members:
            s = state["dictionaries"][m.name]
            try:
                m.sae.load_state_dict(s["weights"])
            except RuntimeError as e:
                raise FeaturesConfigError(f"resume {resume}: dictionary {m.name!r} does not match this config: "
                                          f"{str(e).splitlines()[0]}") from None
            m.optimizer.load_state_dict(s["optimizer"])
            m.since.copy_(s["since"])
            self._window[m.name] = s["window"]
        self.buffer.load_state_dict(state["buffer"])
        set_rng_state(state["rng"])
        if self.t["stop_at"] is not None and self.t["stop_at"] <= self.start_step:
            self.t["stop_at"] = None  # the pause this run was saved at is behind us
        if self.persist and self.group.is_main:
            src = resolve_checkpoint(resume) / ckpt_lib.METRICS_FILE
            rows = ckpt_lib.read_metrics(src) if src.exists() else []
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows
                                                 if r.get("step", 0) <= self.start_step))
            (self.run_dir / RUN_CONFIG).write_text(json.dumps(self.cfg, indent=2, default=str) + "\n")
        self.group.barrier()
        if self.group.is_main:
            info(f"resumed from {resume} at step {self.start_step}")

    def _gathered_dictionaries(self) -> dict[str, Any]:
        """{name: SparseDictionary} of the whole run (from every process under `dictionaries`)."""
        from interp.features.dictionary import make

        if self.group.mode != "dictionaries":
            return {m.name: m.sae.eval() for m in self.members}
        states = self.group.collect({m.name: {k: v.cpu() for k, v in m.sae.state_dict().items()}
                                     for m in self.members})
        states = self.group.broadcast(states)
        merged = {name: s for part in states for name, s in part.items()}
        out = {}
        for name in self.configs:
            sae = make(self.configs[name])
            sae.load_state_dict(merged[name])
            out[name] = sae.to(self.device).eval()
        return out

    def close(self) -> None:
        self.producer.close()


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# ============================================================================ resume
def resolve_checkpoint(path) -> Path:
    """A run dir (its `last`) or a step dir -> the step dir holding train_state.pt."""
    p = Path(path)
    if (p / ckpt_lib.TRAIN_STATE_FILE).is_file():
        return p
    if (p / "last").is_file():
        return ckpt_lib.resolve(p / "last")
    raise FeaturesConfigError(f"--resume {path}: neither a features run directory (with a `last` pointer) nor a "
                              f"checkpoint (with {ckpt_lib.TRAIN_STATE_FILE})")


def load_state(path) -> dict:
    ckpt = resolve_checkpoint(path)
    try:
        state = ckpt_lib.load_train_state(ckpt)
    except ckpt_lib.CheckpointError as e:
        raise FeaturesConfigError(str(e)) from None
    if state.get("format_version") != STATE_FORMAT or "dictionaries" not in state:
        raise FeaturesConfigError(f"{ckpt / ckpt_lib.TRAIN_STATE_FILE}: not a features training state "
                                  f"(format_version {state.get('format_version')!r})")
    return state


def run(config=None, overrides=(), *, resume=None, persist: bool = True, model=None) -> tuple[dict, Optional[Path]]:
    """Train from a config (YAML path or dict) + overrides, or continue `resume` (a run dir or
    checkpoint; without `config`, with the run's saved config). Returns ({name: dictionary},
    the run directory or None)."""
    resume_dir = None
    if resume is not None:
        resume_dir = resolve_checkpoint(resume)
        if config is None:
            config = load_state(resume_dir)["config"]
            overrides = list(overrides)
            if not any(o.split("=")[0].strip() in ("train.out_dir", "out_dir") for o in overrides):
                overrides = [f"train.out_dir={resume_dir.parent}"] + overrides
    cfg = load_config(config, overrides)
    trainer = FeaturesTrainer(cfg, resume=resume_dir, persist=persist, model=model)
    try:
        dictionaries = trainer.run()
    finally:
        trainer.close()
    return dictionaries, (trainer.run_dir if persist else None)
