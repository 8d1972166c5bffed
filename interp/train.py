"""Training from a YAML config: task -> tokenizer -> model -> AdamW loop -> checkpoints.

```bash
interp train --config configs/vanilla_induction.yaml --set train.steps=500 --set model.d_model=128
interp train --resume runs/vanilla_induction            # continue from its `last` checkpoint
```
```python
from interp.train import train, evaluate
ckpt = train("configs/vanilla_induction.yaml", ["train.steps=200"])   # -> final checkpoint dir
```

A config has four sections:

* `name`: the run's name (default: the YAML file's stem); `train.out_dir` defaults to `runs/<name>`.
* `model`: `preset` and `size` (see `models.presets`), any other key overrides a `ModelConfig`
  field. `d_vocab` and the special token ids come from the task's tokenizer; `n_ctx` grows to
  the task's `max_len` unless set.
* `task`: `name` plus the keyword arguments of `interp.tasks.make_task`.
* `train`: see `DEFAULT_TRAIN` below.

The loop: AdamW with decay/no-decay groups (no decay for biases, norms, embeddings and other
1-D parameters), linear warmup then cosine to `min_lr`, gradient clipping, accumulation
(normalised by the step's token count, so `grad_accum=2, batch_size=b` equals `batch_size=2b`),
bf16 autocast and `torch.compile` on CUDA, gradient checkpointing, a sequence-length curriculum,
periodic evaluation, `metrics.jsonl`, optional TensorBoard / W&B, and exact resume: the batch
order is a pure function of (seed, step), and optimizer, step and RNG states are checkpointed,
so 10 steps + resume + 10 steps reproduce a 20-step run.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import yaml

from models import HookedTransformer, ModelConfig, presets

from . import checkpoint as ckpt_lib

PathLike = Union[str, os.PathLike]

DEFAULT_TRAIN: dict[str, Any] = dict(
    steps=1000,  # total optimizer steps (also the cosine schedule's length)
    stop_at=None,  # stop (and checkpoint) after this step, keeping the schedule of `steps`
    batch_size=32,  # examples per micro-batch
    grad_accum=1,  # micro-batches per optimizer step
    lr=1e-3,
    warmup=100,  # linear warmup steps
    min_lr=None,  # cosine floor; None -> lr / 10
    weight_decay=0.1,
    betas=[0.9, 0.95],
    eps=1e-8,
    grad_clip=1.0,  # max global grad norm; 0 or None disables clipping
    eval_every=200,
    eval_batches=10,  # val batches for loss / per-segment loss (0: the whole split)
    eval_batch_size=None,  # None -> batch_size
    eval_generate=64,  # examples for greedy exact-match accuracy (0 disables)
    eval_split="val",
    save_every=500,
    keep_last=3,
    log_every=10,
    seed=0,
    device="auto",  # auto | cpu | cuda | cuda:N
    dtype="auto",  # auto (bf16 autocast on CUDA) | bf16 | fp32
    compile=None,  # None -> on CUDA only
    gradient_checkpointing=False,
    seq_len_curriculum=None,  # [[step, max_len], ...]: from `step` on, truncate to `max_len`
    out_dir=None,  # None -> runs/<name>
    overwrite=False,  # a fresh run into an out_dir holding checkpoints: delete them (else refuse)
    progress=True,  # tqdm progress bar
    tensorboard=False,
    wandb=False,
    wandb_project="interp",
    deterministic=False,  # torch.use_deterministic_algorithms (CUDA)
)
TOP_LEVEL = ("name", "description", "model", "task", "train")
MODEL_FIELDS = {f.name for f in dc_fields(ModelConfig) if not f.metadata.get("runtime")}
MODEL_META = ("preset", "size", "overrides")
SEGMENT_FALLBACK = ("prompt", "step", "answer")


class TrainConfigError(ValueError):
    """The run config cannot be used; the message names the key."""


# ============================================================================ config
class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` / `1e5` as floats (YAML 1.2), not strings."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A `--set` value: YAML scalar/list syntax (`3e-4`, `true`, `[[0, 32], [500, 64]]`, `null`)."""
    return yaml.load(text, Loader=_YamlLoader) if text.strip() else ""


def read_yaml(path: PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise TrainConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(), Loader=_YamlLoader) or {}
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply `section.key=value` strings in place. A bare `key=value` goes to the section
    that knows the key (`train` first, then `model`), e.g. `steps=10`, `d_model=128`."""
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise TrainConfigError(f"--set {item!r}: expected key=value (e.g. train.lr=3e-4)")
        parts = key.split(".")
        if len(parts) == 1 and parts[0] not in TOP_LEVEL:
            if parts[0] in DEFAULT_TRAIN:
                parts = ["train", parts[0]]
            elif parts[0] in MODEL_FIELDS or parts[0] in MODEL_META:
                parts = ["model", parts[0]]
            else:
                raise TrainConfigError(
                    f"--set {item!r}: unknown key {parts[0]!r}; write section.key (train., model., task.)"
                )
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = parse_value(raw)
    return cfg


def load_run_config(config: Union[None, dict, PathLike], overrides: Iterable[str] = ()) -> dict:
    """Read (YAML path or dict), apply overrides, fill defaults and validate."""
    if config is None:
        cfg: dict = {}
    elif isinstance(config, dict):
        cfg = copy.deepcopy(config)
    else:
        cfg = read_yaml(config)
    apply_overrides(cfg, overrides)
    return normalize_config(cfg)


def normalize_config(cfg: dict) -> dict:
    unknown = sorted(set(cfg) - set(TOP_LEVEL))
    if unknown:
        raise TrainConfigError(f"unknown top-level config key(s) {unknown}; expected {list(TOP_LEVEL)}")
    model = dict(cfg.get("model") or {})
    model.setdefault("preset", "vanilla")
    model.setdefault("size", "tiny")
    bad = sorted(set(model) - MODEL_FIELDS - set(MODEL_META))
    if bad:
        raise TrainConfigError(f"model: unknown key(s) {bad}; use preset, size, or ModelConfig fields")
    if model["preset"] is not None and model["preset"] not in presets.ARCHITECTURES:
        raise TrainConfigError(f"model.preset={model['preset']!r}; choose from {list(presets.ARCHITECTURES)}")
    if model["preset"] is not None and model["size"] not in presets.SIZES:
        raise TrainConfigError(f"model.size={model['size']!r}; choose from {list(presets.SIZES)}")
    task = dict(cfg.get("task") or {})
    if "name" not in task:
        raise TrainConfigError("task: needs a 'name' (arithmetic | modular | induction | text | a registered task)")
    train_cfg = dict(DEFAULT_TRAIN)
    given = dict(cfg.get("train") or {})
    bad = sorted(set(given) - set(DEFAULT_TRAIN))
    if bad:
        raise TrainConfigError(f"train: unknown key(s) {bad}; known: {sorted(DEFAULT_TRAIN)}")
    train_cfg.update(given)
    _validate_train(train_cfg)
    name = cfg.get("name") or f"{model['preset']}-{model['size']}_{task['name']}"
    out = {"name": str(name), "model": model, "task": task, "train": train_cfg}
    if cfg.get("description"):
        out["description"] = cfg["description"]
    return out


def _validate_train(t: dict) -> None:
    for key in ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "keep_last", "log_every"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise TrainConfigError(f"train.{key} must be a positive integer, got {t[key]!r}")
    for key in ("warmup", "eval_batches", "eval_generate", "seed"):
        if not isinstance(t[key], int) or t[key] < 0:
            raise TrainConfigError(f"train.{key} must be a non-negative integer, got {t[key]!r}")
    for key in ("lr", "weight_decay", "eps"):
        if not isinstance(t[key], (int, float)) or t[key] < 0:
            raise TrainConfigError(f"train.{key} must be a non-negative number, got {t[key]!r}")
    if t["min_lr"] is not None and not isinstance(t["min_lr"], (int, float)):
        raise TrainConfigError(f"train.min_lr must be a number or null, got {t['min_lr']!r}")
    if not (isinstance(t["betas"], (list, tuple)) and len(t["betas"]) == 2):
        raise TrainConfigError(f"train.betas must be [beta1, beta2], got {t['betas']!r}")
    if t["stop_at"] is not None and (not isinstance(t["stop_at"], int) or t["stop_at"] < 1):
        raise TrainConfigError(f"train.stop_at must be a positive integer or null, got {t['stop_at']!r}")
    if str(t["dtype"]).lower() not in ("auto", "bf16", "bfloat16", "fp32", "float32"):
        raise TrainConfigError(f"train.dtype must be auto | bf16 | fp32, got {t['dtype']!r}")
    Curriculum(t["seq_len_curriculum"])  # validates


class Curriculum:
    """`[[step, max_len], ...]`: from optimizer step `step` (0-based) on, truncate to `max_len`."""

    def __init__(self, spec: Optional[Sequence[Sequence[int]]]):
        self.points: list[tuple[int, int]] = []
        for item in spec or []:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item)):
                raise TrainConfigError(f"train.seq_len_curriculum entries must be [step, max_len] integers, got {item!r}")
            if item[0] < 0 or item[1] < 2:
                raise TrainConfigError(f"train.seq_len_curriculum entry {list(item)}: need step >= 0 and max_len >= 2")
            self.points.append((int(item[0]), int(item[1])))
        self.points.sort()

    def at(self, step: int) -> Optional[int]:
        current = None
        for start, max_len in self.points:
            if start <= step:
                current = max_len
        return current

    @property
    def max(self) -> Optional[int]:
        return max((m for _, m in self.points), default=None)


# ============================================================================ building
TASK_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_task(name: str, factory: Callable[..., Any]) -> None:
    """Make `task: {name: NAME, ...}` build `factory(**kwargs)` instead of `interp.tasks.make_task`."""
    TASK_REGISTRY[name] = factory


def build_task(task_cfg: dict):
    kwargs = dict(task_cfg)
    name = kwargs.pop("name")
    if name in TASK_REGISTRY:
        return TASK_REGISTRY[name](**kwargs)
    from interp.tasks import make_task

    try:
        return make_task(name, **kwargs)
    except TypeError as e:
        raise TrainConfigError(f"task {name!r}: bad arguments {sorted(kwargs)}: {e}") from None


def build_model_config(model_cfg: dict, tokenizer: Any = None, max_len: Optional[int] = None) -> ModelConfig:
    """The `model` section + the tokenizer's vocabulary and special ids -> `ModelConfig`."""
    section = dict(model_cfg)
    preset, size = section.pop("preset", "vanilla"), section.pop("size", "tiny")
    overrides = dict(section.pop("overrides", None) or {})
    overrides.update(section)
    fields: dict[str, Any] = {}
    if tokenizer is not None:
        fields["d_vocab"] = int(tokenizer.vocab_size)
        specials = tokenizer.special_token_ids() if hasattr(tokenizer, "special_token_ids") else {}
        for key, value in (specials or {}).items():
            if key in MODEL_FIELDS and value is not None:
                fields[key] = int(value)
    if max_len and "n_ctx" not in overrides:
        base = presets.SIZES[size][3] if preset is not None else ModelConfig.n_ctx
        fields["n_ctx"] = max(base, int(max_len))
    fields.update(overrides)
    if tokenizer is not None and fields["d_vocab"] < tokenizer.vocab_size:
        raise TrainConfigError(f"model.d_vocab={fields['d_vocab']} < the tokenizer's vocab_size {tokenizer.vocab_size}")
    if preset is None:
        return ModelConfig(**fields)
    return presets.config(preset, size, **fields)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; no decay for biases, norms, embeddings and other <2-D parameters."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embeddings or name.endswith("W_pos"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, t: dict) -> float:
    """Linear warmup over `warmup` steps, then cosine from `lr` to `min_lr` at `steps`."""
    lr, steps, warmup = float(t["lr"]), int(t["steps"]), int(t["warmup"])
    min_lr = float(t["min_lr"]) if t["min_lr"] is not None else lr / 10
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError(f"train.device={name!r} but CUDA is not available")
    return device


def autocast_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    name = str(name).lower()
    if device.type != "cuda" or name in ("fp32", "float32"):
        return None
    if name == "auto" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ============================================================================ data
def _collate():
    from interp.tasks import collate

    return collate


def segment_names() -> tuple[str, ...]:
    try:
        from interp.tasks import SEGMENT_NAMES

        return tuple(SEGMENT_NAMES)
    except ImportError:
        return SEGMENT_FALLBACK


class StepBatches:
    """Deterministic, resumable batches: step `s` takes the examples at stream positions
    [s * B, (s + 1) * B) (B = batch_size * grad_accum) of an endless stream that visits the
    split in a fresh permutation per epoch, seeded by (seed, epoch). No iterator state: any
    step's batch can be rebuilt, which makes resume exact and accumulation a pure split."""

    def __init__(self, examples: Sequence, batch_size: int, grad_accum: int, seed: int, pad_id: int):
        if len(examples) == 0:
            raise TrainConfigError("the training split is empty")
        self.examples, self.batch_size, self.grad_accum = examples, batch_size, grad_accum
        self.seed, self.pad_id = seed, pad_id
        self._perms: dict[int, torch.Tensor] = {}
        self.collate = _collate()
        # truncation is counted per step in metrics.jsonl (`n_truncated`); no warning per batch
        self._quiet = {"warn": False} if "warn" in inspect.signature(self.collate).parameters else {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(len(self.examples), generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        n, per_step = len(self.examples), self.batch_size * self.grad_accum
        out = []
        for pos in range(step * per_step, (step + 1) * per_step):
            epoch, i = divmod(pos, n)
            out.append(int(self._perm(epoch)[i]))
        return out

    def micro_batches(self, step: int, max_len: Optional[int] = None) -> list:
        idx = self.indices(step)
        chunks = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        return [self.collate([self.examples[i] for i in chunk], self.pad_id, max_len=max_len, **self._quiet)
                for chunk in chunks]


def _targets(batch) -> torch.Tensor:
    """(B, T-1) bool: which next-token targets the loss scores."""
    labels = batch.labels.masked_fill(~batch.attention_mask.bool(), -100)
    return labels[:, 1:] != -100


def _pad_id(tokenizer: Any, model: Optional[HookedTransformer] = None) -> int:
    for source in (tokenizer, getattr(model, "cfg", None)):
        pad = getattr(source, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0


# ============================================================================ evaluation
@torch.no_grad()
def evaluate(
    model: HookedTransformer,
    tokenizer: Any,
    task: Any,
    split: str = "val",
    *,
    batch_size: int = 32,
    max_batches: Optional[int] = None,
    n_generate: int = 64,
    max_len: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    autocast: Optional[torch.dtype] = None,
) -> dict:
    """Loss / perplexity / token accuracy on `split` (the task's labels), loss and token
    accuracy per segment (prompt / step / answer: every real next token of that segment,
    whatever the training mask), and greedy exact-match accuracy of the answers
    (`task.answer_spans` + `models.generation.generate(greedy=True)`) on `n_generate` examples.

    Metrics a task cannot give (no answer spans, an absent segment) are None.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = task.split(split)
    n_examples = len(examples) if max_batches is None else min(len(examples), batch_size * max_batches)
    pad = _pad_id(tokenizer, model)
    collate = _collate()
    names = segment_names()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_tok = torch.zeros((), dtype=torch.long, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seg_loss = torch.zeros(len(names), dtype=torch.float64, device=device)
    seg_correct = torch.zeros(len(names), dtype=torch.long, device=device)
    seg_n = torch.zeros(len(names), dtype=torch.long, device=device)
    n_real = 0
    try:
        for start in range(0, n_examples, batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, n_examples))], pad, max_len=max_len)
            batch = batch.to(device)
            mask = batch.attention_mask.bool()
            with _autocast(device, autocast):
                out = model(batch.input_ids, return_type="both", labels=batch.labels, attention_mask=mask,
                            loss_per_token=True)
            logits = out.logits
            full = model.loss_fn(logits, batch.input_ids, mask, per_token=True)  # every real next token
            pred = logits[:, :-1].argmax(-1)
            tgt = _targets(batch)
            loss_sum += out.loss.double()[tgt].sum()
            n_tok += tgt.sum()
            correct += ((pred == batch.labels[:, 1:]) & tgt).sum()
            seg = batch.segments[:, 1:]
            real = mask[:, 1:]
            hit = pred == batch.input_ids[:, 1:]
            for s in range(len(names)):
                sel = (seg == s) & real
                seg_loss[s] += full.double()[sel].sum()
                seg_correct[s] += (hit & sel).sum()
                seg_n[s] += sel.sum()
            n_real += int(batch.n_tokens)
        n = int(n_tok)
        loss = float(loss_sum) / n if n else float("nan")
        metrics: dict[str, Any] = {
            "split": split,
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)) if n else float("nan"),
            "token_acc": int(correct) / n if n else None,
            "n_examples": n_examples,
            "n_tokens": n_real,
        }
        for s, name in enumerate(names):
            k = int(seg_n[s])
            metrics[f"loss_{name}"] = float(seg_loss[s]) / k if k else None
            metrics[f"token_acc_{name}"] = int(seg_correct[s]) / k if k else None
        metrics.update(exact_match(model, task, examples, min(n_generate, len(examples)), batch_size, device, autocast))
    finally:
        model.train(was_training)
    return metrics


@torch.no_grad()
def exact_match(model: HookedTransformer, task: Any, examples: Sequence, n: int, batch_size: int,
                device: torch.device, autocast: Optional[torch.dtype] = None) -> dict:
    """Greedy generation from each prompt; an example is right when the first len(target)
    generated tokens equal the target exactly."""
    from models.generation import generate

    if n <= 0:
        return {"exact_match": None, "n_generated": 0}
    pairs = []
    for i in range(n):
        try:
            spans = task.answer_spans(examples[i])
        except NotImplementedError:
            return {"exact_match": None, "n_generated": 0}
        if spans is None:
            return {"exact_match": None, "n_generated": 0}
        prompt, target = [int(t) for t in spans[0]], [int(t) for t in spans[1]]
        if prompt and target:
            pairs.append((prompt, target))
    if not pairs:
        return {"exact_match": None, "n_generated": 0}
    learned = model.cfg.positional == "learned"
    right = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        max_new = max(len(t) for _, t in chunk)
        if learned and max(len(p) for p, _ in chunk) + max_new > model.cfg.n_ctx:
            groups = [[pair] for pair in chunk]  # keep each row within the learned positions
        else:
            groups = [chunk]
        for group in groups:
            new = max(len(t) for _, t in group)
            with _autocast(device, autocast):
                gen = generate(model, [p for p, _ in group], max_new_tokens=new, greedy=True, stop_tokens=[],
                               return_output=True)
            right += sum(g[: len(t)] == t for g, (_, t) in zip(gen.new_tokens, group))
    return {"exact_match": right / len(pairs), "n_generated": len(pairs)}


# ============================================================================ state
def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    if "numpy" in state:
        try:
            import numpy as np

            s = state["numpy"]
            np.random.set_state((s["name"], s["keys"].numpy().astype("uint32"), s["pos"], s["has_gauss"], s["cached"]))
        except ImportError:
            pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


# ============================================================================ logging
class _Sinks:
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
                _info("tensorboard=true but tensorboard is not installed; skipping it")
        if t["wandb"]:
            try:
                import wandb

                self.wandb = wandb.init(project=t["wandb_project"], name=cfg["name"], config=cfg, dir=str(run_dir),
                                        resume="allow")
            except ImportError:
                _info("wandb=true but wandb is not installed; skipping it")

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


def _info(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[interp.train] {msg}", file=sys.stderr)


# ============================================================================ training
def train(
    config: Union[None, dict, PathLike] = None,
    overrides: Iterable[str] = (),
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
    return Trainer(cfg, resume=ckpt_dir, task=task).run()


_STEP_NAME = re.compile(r"^step_\d+$")


class Trainer:
    def __init__(self, cfg: dict, resume: Optional[Path] = None, task: Any = None):
        self.cfg = cfg
        t = self.t = cfg["train"]
        self.device = resolve_device(t["device"])
        self.amp = autocast_dtype(t["dtype"], self.device)
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
        self.pad_id = _pad_id(self.tokenizer)
        max_len = max(filter(None, [getattr(self.task, "max_len", None), self.curriculum.max]), default=None)
        model_cfg = build_model_config(cfg["model"], self.tokenizer, max_len)
        model_cfg.gradient_checkpointing = bool(t["gradient_checkpointing"])
        self.model = HookedTransformer(model_cfg)
        self.model.set_tokenizer(self.tokenizer)

        self.start_step, self.tokens_seen = 0, 0
        state = None
        if resume is not None:
            loaded, _ = ckpt_lib.load(resume, device="cpu", load_tokenizer=False)
            diff = {k: (v, getattr(loaded.cfg, k)) for k, v in model_cfg.to_dict().items()
                    if k != "gradient_checkpointing" and getattr(loaded.cfg, k) != v}
            if diff:
                raise TrainConfigError(f"{resume}: model config differs from this run's, as (run, checkpoint): {diff}")
            self.model.load_state_dict(loaded.state_dict())
            state = ckpt_lib.load_train_state(resume)
            self.start_step, self.tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        self.model.to(self.device)
        self.model.train()

        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, float(t["weight_decay"])), lr=float(t["lr"]), betas=tuple(t["betas"]),
            eps=float(t["eps"]), **({"fused": True} if self.device.type == "cuda" else {}),
        )
        self.data = StepBatches(self.task.split("train"), t["batch_size"], t["grad_accum"], t["seed"], self.pad_id)
        self.manager = ckpt_lib.CheckpointManager(self.run_dir, keep_last=t["keep_last"])
        self.metrics_path = self.run_dir / ckpt_lib.METRICS_FILE
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            src = resume / ckpt_lib.METRICS_FILE
            rows = ckpt_lib.read_metrics(src) if src.exists() else []
            self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= self.start_step))
            _set_rng_state(state["rng"])
            if t["stop_at"] is not None and t["stop_at"] <= self.start_step:
                t["stop_at"] = None  # the pause this run was saved at is behind us
            _info(f"resumed from {resume} at step {self.start_step}")
        else:
            self._fresh_run_dir()
        self.forward = torch.compile(self.model) if self._want_compile() else self.model
        self.last_eval: Optional[dict] = None

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

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> tuple[torch.Tensor, Optional[torch.Tensor], dict]:
        max_len = self.curriculum.at(step)
        micro = self.data.micro_batches(step, max_len)
        n_target = sum(int(_targets(b).sum()) for b in micro)
        info = {"max_len": max_len, "seq_len": max(b.input_ids.shape[1] for b in micro),
                "n_tokens": sum(int(b.n_tokens) for b in micro), "n_truncated": sum(int(b.n_truncated) for b in micro)}
        lr = lr_at(step, self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        info["lr"] = lr
        total = torch.zeros((), device=self.device)
        for batch in micro:
            full = bool(batch.attention_mask.all())  # no padding: the unmasked (fused) path
            batch = batch.to(self.device)
            with _autocast(self.device, self.amp):
                per_token = self.forward(batch.input_ids, return_type="loss", labels=batch.labels,
                                         attention_mask=None if full else batch.attention_mask, loss_per_token=True)
            loss = per_token.sum() / max(n_target, 1)
            if n_target:
                loss.backward()
            total += loss.detach()
        grad_norm = None
        if self.t["grad_clip"]:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.t["grad_clip"]))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm, info

    # ------------------------------------------------------------------ loop
    def run(self) -> Path:
        from tqdm import tqdm

        t = self.t
        end = t["steps"] if t["stop_at"] is None else min(t["steps"], t["stop_at"])
        sinks = _Sinks(self.run_dir, self.cfg, self.start_step)
        bar = tqdm(total=t["steps"], initial=self.start_step, disable=not t["progress"], dynamic_ncols=True,
                   desc=self.cfg["name"], file=sys.stderr)
        window: list[torch.Tensor] = []
        window_tokens, window_start = 0, time.perf_counter()
        last_ckpt: Optional[Path] = None
        try:
            for step in range(self.start_step, end):
                loss, grad_norm, info = self.train_step(step)
                done = step + 1
                self.tokens_seen += info["n_tokens"]
                window.append(loss)
                window_tokens += info["n_tokens"]
                bar.update(1)
                if done % t["log_every"] == 0 or done == end:
                    now = time.perf_counter()
                    mean_loss = float(torch.stack(window).mean())
                    tok_s = window_tokens / max(now - window_start, 1e-9)
                    event = {"event": "train", "step": done, "loss": mean_loss, "lr": info["lr"],
                             "grad_norm": None if grad_norm is None else float(grad_norm), "tokens_per_s": tok_s,
                             "tokens_seen": self.tokens_seen, "max_len": info["max_len"], "seq_len": info["seq_len"],
                             "n_truncated": info["n_truncated"]}
                    sinks.log(event)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tok_s:,.0f}")
                    window, window_tokens, window_start = [], 0, time.perf_counter()
                metric = None
                if done % t["eval_every"] == 0 or done == end:
                    self.last_eval = self.evaluate(t["eval_split"])
                    sinks.log({"event": "eval", "step": done, **self.last_eval})
                    metric = self.last_eval["loss"]
                    bar.set_postfix(loss=f"{float(loss):.4f}", val=f"{metric:.4f}")
                    window_start = time.perf_counter()  # eval time is not training throughput
                if done % t["save_every"] == 0 or done == end or self.manager.is_better(metric):
                    last_ckpt = self.save(done, metric)
                    window_start = time.perf_counter()
        finally:
            bar.close()
            sinks.close()
        if last_ckpt is None:  # nothing left to train (resumed at the end)
            last_ckpt = self.manager.last or self.save(self.start_step, None)
        return last_ckpt

    def evaluate(self, split: str = "val") -> dict:
        t = self.t
        return evaluate(self.model, self.tokenizer, self.task, split, batch_size=t["eval_batch_size"] or t["batch_size"],
                        max_batches=t["eval_batches"] or None, n_generate=t["eval_generate"], device=self.device,
                        autocast=self.amp)

    def save(self, step: int, metric: Optional[float]) -> Path:
        task_cfg = self.task_config
        training = {"step": step, "tokens_seen": self.tokens_seen, "run_config": self.cfg,
                    "eval": self.last_eval, "torch": torch.__version__, "device": str(self.device)}
        state = {"format_version": ckpt_lib.FORMAT_VERSION, "step": step, "tokens_seen": self.tokens_seen,
                 "optimizer": self.optimizer.state_dict(), "rng": _rng_state()}
        return self.manager.save(self.model, step, self.tokenizer, metric=metric, task=task_cfg, training=training,
                                 train_state=state, metrics=self.metrics_path)


def evaluate_checkpoint(path: PathLike, split: str = "val", *, device: str = "auto", batch_size: int = 32,
                        max_batches: Optional[int] = None, n_generate: int = 64) -> dict:
    """Load a checkpoint, rebuild its task from config.json and evaluate it."""
    dev = resolve_device(device)
    model, tokenizer = ckpt_lib.load(path, device=dev)
    _, data = ckpt_lib.load_config(path)
    if not data.get("task"):
        raise TrainConfigError(f"{ckpt_lib.resolve(path)}: config.json has no 'task'; cannot evaluate without one")
    task = build_task(data["task"])
    if tokenizer is None:
        tokenizer = task.tokenizer
    metrics = evaluate(model, tokenizer, task, split, batch_size=batch_size, max_batches=max_batches,
                       n_generate=n_generate, device=dev, autocast=autocast_dtype("auto", dev))
    metrics["checkpoint"] = str(ckpt_lib.resolve(path))
    metrics["step"] = (data.get("training") or {}).get("step")
    return metrics
