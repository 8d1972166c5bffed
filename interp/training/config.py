"""Run configs: YAML + `--set` overrides -> a validated dict; building the task and model from it.

A config has four sections:

* `name`: the run's name (default: the YAML file's stem); `train.out_dir` defaults to `runs/<name>`.
* `model`: `preset` and `size` (see `models.presets`), any other key overrides a `ModelConfig`
  field. `d_vocab` and the special token ids come from the task's tokenizer; `n_ctx` grows to
  the task's `max_len` unless set.
* `task`: `name` plus the keyword arguments of `interp.tasks.make_task`.
* `train`: see `DEFAULT_TRAIN` below.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import re
from dataclasses import fields as dc_fields
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import yaml
from pathlib import Path

from interp.tasks import make_task
from interp.tasks.base import TASKS, task_class
from models import ModelConfig, presets
from models.config import ConfigError

PathLike = Union[str, os.PathLike]

DEFAULT_TRAIN: dict[str, Any] = dict(
    steps=1000,  # total optimizer steps (also the cosine schedule's length)
    epochs=None,  # instead of steps: passes over the train split (steps = ceil(epochs * n / global batch))
    stop_at=None,  # stop (and checkpoint) after this step, keeping the schedule of `steps`
    init_from=None,  # a checkpoint whose weights start this run (step 0, fresh optimizer); same model config
    batch_size=32,  # examples per micro-batch, or "full": the whole train split every step
    grad_accum=1,  # micro-batches per optimizer step
    lr=1e-3,
    warmup=100,  # linear warmup steps
    min_lr=None,  # cosine floor; None -> lr / 10
    weight_decay=0.1,
    decay_all=False,  # true: decay every parameter (Nanda et al.'s grokking setup), not only matrices
    betas=[0.9, 0.95],
    eps=1e-8,
    grad_clip=1.0,  # max global grad norm; 0 or None disables clipping
    eval_every=200,
    eval_batches=10,  # val batches for loss / per-segment loss (0: the whole split)
    eval_batch_size=None,  # None -> batch_size
    eval_generate=64,  # examples for greedy exact-match accuracy (0 disables)
    eval_split="val",
    save_every=500,
    keep_last=3,  # step checkpoints kept (plus best); "all" keeps the whole series, compactly
    save_best=True,  # also save whenever the eval loss improves (the `best` checkpoint)
    save_dtype=None,  # fp16 | bf16: store the weights of step checkpoints in half precision
    metrics=[],  # progress measures run at each eval (interp.training.progress.MEASURES)
    log_every=10,
    seed=0,
    device="auto",  # auto | cpu | cuda | cuda:N
    dtype="auto",  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 (CPU autocast on CPU too) | fp32
    compile=None,  # None -> on CUDA only
    cuda_graphs="auto",  # auto | true | false: capture the whole train step (CUDA, static shapes)
    gradient_checkpointing=False,  # true: every block; N: every Nth block (layers N-1, 2N-1, ...)
    seq_len_curriculum=None,  # [[step, max_len], ...]: from `step` on, truncate to `max_len`
    out_dir=None,  # None -> runs/<name>
    overwrite=False,  # a fresh run into an out_dir holding checkpoints: delete them (else refuse)
    progress=True,  # tqdm progress bar
    tensorboard=False,
    wandb=False,
    wandb_project="interp",
    deterministic=False,  # torch.use_deterministic_algorithms (CUDA)
    trainer="default",  # a name registered with interp.training.loop.register_trainer
    parallel="auto",  # auto | none | ddp | fsdp (interp.training.distributed; auto: ddp under torchrun)
    dist_backend="auto",  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    cpu_offload=False,  # fsdp on CUDA: keep sharded parameters and optimizer state on the CPU
    coconut=None,  # trainer: coconut options (interp.training.coconut.COCONUT_DEFAULTS fills the rest)
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


def _section(cfg: dict, name: str) -> dict:
    """A config section as a dict with string keys (YAML also allows `3:` or `[a]:` as keys)."""
    value = cfg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TrainConfigError(f"{name}: expected a mapping of keys to values, got {type(value).__name__} {value!r}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise TrainConfigError(f"{name}: keys must be strings, got {bad!r}")
    return dict(value)


def normalize_config(cfg: dict) -> dict:
    bad = [k for k in cfg if not isinstance(k, str)]
    if bad:
        raise TrainConfigError(f"top-level keys must be strings, got {bad!r}")
    unknown = sorted(set(cfg) - set(TOP_LEVEL))
    if unknown:
        raise TrainConfigError(f"unknown top-level config key(s) {unknown}; expected {list(TOP_LEVEL)}")
    for key in ("name", "description"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise TrainConfigError(f"{key} must be a string, got {cfg[key]!r}")
    model = _section(cfg, "model")
    model.setdefault("preset", "vanilla")
    model.setdefault("size", "tiny")
    bad = sorted(set(model) - MODEL_FIELDS - set(MODEL_META))
    if bad:
        raise TrainConfigError(f"model: unknown key(s) {bad}; use preset, size, or ModelConfig fields")
    if model["preset"] is not None and (not isinstance(model["preset"], str) or model["preset"] not in presets.ARCHITECTURES):
        raise TrainConfigError(f"model.preset={model['preset']!r}; choose from {list(presets.ARCHITECTURES)}")
    if model["preset"] is not None and (not isinstance(model["size"], str) or model["size"] not in presets.SIZES):
        raise TrainConfigError(f"model.size={model['size']!r}; choose from {list(presets.SIZES)}")
    overrides = model.get("overrides")
    if overrides is not None and (not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides)):
        raise TrainConfigError(f"model.overrides must be a mapping of ModelConfig fields, got {overrides!r}")
    task = _section(cfg, "task")
    if "name" not in task:
        raise TrainConfigError("task: needs a 'name' (arithmetic | modular | induction | text | a registered task)")
    if not isinstance(task["name"], str):
        raise TrainConfigError(f"task.name must be a string, got {task['name']!r}")
    train_cfg = dict(DEFAULT_TRAIN)
    given = _section(cfg, "train")
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# train key -> (accepts, what it must be): every key of DEFAULT_TRAIN is checked here, so a wrong
# type is refused by name at load time, not met as a TypeError deep inside a training step.
TRAIN_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "epochs": (lambda v: v is None or (_is_number(v) and v > 0), "a positive number or null"),
    "stop_at": (lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer or null"),
    "init_from": (lambda v: v is None or isinstance(v, str), "a checkpoint path or null"),
    "batch_size": (lambda v: v == "full" or (_is_int(v) and v >= 1), 'a positive integer or "full"'),
    "grad_accum": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "lr": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "warmup": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "min_lr": (lambda v: v is None or (_is_number(v) and v >= 0), "a non-negative number or null"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "decay_all": (lambda v: isinstance(v, bool), "true or false"),
    "betas": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
              "[beta1, beta2], each in [0, 1)"),
    "eps": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "grad_clip": (lambda v: v is None or (_is_number(v) and v >= 0), "a non-negative number or null (0: no clipping)"),
    "eval_every": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "eval_batches": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "eval_batch_size": (lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer or null"),
    "eval_generate": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "eval_split": (lambda v: v in ("train", "val", "test"), "train | val | test"),
    "save_every": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "keep_last": (lambda v: v == "all" or (_is_int(v) and v >= 1), 'a positive integer or "all"'),
    "save_best": (lambda v: isinstance(v, bool), "true or false"),
    "save_dtype": (lambda v: v in (None, "fp16", "bf16", "fp32"), "null | fp16 | bf16 | fp32"),
    "metrics": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(m, str) for m in v),
                "a list of progress-measure names"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "seed": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "device": (lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "auto | cpu | cuda | cuda:N | mps"),
    "dtype": (lambda v: isinstance(v, str) and v.lower() in ("auto", "bf16", "bfloat16", "fp32", "float32"),
              "auto | bf16 | fp32"),
    "compile": (lambda v: v is None or isinstance(v, bool), "true, false or null (CUDA only)"),
    "cuda_graphs": (lambda v: v in ("auto", True, False) and not (isinstance(v, int) and not isinstance(v, bool)),
                    "auto | true | false"),
    "gradient_checkpointing": (lambda v: isinstance(v, bool) or (_is_int(v) and v >= 1),
                               "true, false or a layer interval N >= 1"),
    "seq_len_curriculum": (lambda v: v is None or isinstance(v, (list, tuple)), "a list of [step, max_len] or null"),
    "out_dir": (lambda v: v is None or isinstance(v, str), "a directory path or null"),
    "overwrite": (lambda v: isinstance(v, bool), "true or false"),
    "progress": (lambda v: isinstance(v, bool), "true or false"),
    "tensorboard": (lambda v: isinstance(v, bool), "true or false"),
    "wandb": (lambda v: isinstance(v, bool), "true or false"),
    "wandb_project": (lambda v: isinstance(v, str) and bool(v), "a project name"),
    "deterministic": (lambda v: isinstance(v, bool), "true or false"),
    "trainer": (lambda v: isinstance(v, str) and bool(v), "a registered trainer name"),
    "parallel": (lambda v: v in ("auto", "none", "ddp", "fsdp"), "one of auto | none | ddp | fsdp"),
    "dist_backend": (lambda v: v in ("auto", "nccl", "gloo"), "one of auto | nccl | gloo"),
    "cpu_offload": (lambda v: isinstance(v, bool), "true or false"),
    "coconut": (lambda v: v is None or isinstance(v, dict), "a mapping of coconut options or null"),
}


def _validate_train(t: dict) -> None:
    for key, (accepts, what) in TRAIN_CHECKS.items():
        value = t[key]
        try:
            ok = accepts(value)
        except TypeError:  # e.g. a list compared with a string: not the kind of value wanted
            ok = False
        if not ok:
            raise TrainConfigError(f"train.{key} must be {what}, got {value!r}")
    from .progress import MEASURES

    unknown = [m for m in t["metrics"] if m not in MEASURES]
    if unknown:
        raise TrainConfigError(f"train.metrics: unknown progress measure(s) {unknown}; known: {sorted(MEASURES)}")
    Curriculum(t["seq_len_curriculum"])  # validates
    if t["coconut"] is not None or t["trainer"] == "coconut":
        if t["trainer"] != "coconut":
            raise TrainConfigError(f"train.coconut is set but train.trainer={t['trainer']!r}; set train.trainer: coconut")
        from .coconut import coconut_options  # importing it also registers the trainer

        t["coconut"] = coconut_options(t["coconut"])


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


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c == "["
        depth -= c == "]"
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i].strip())
            start = i + len(sep)
    return parts + [text[start:].strip()]


def _fits(value: Any, annotation: str) -> Optional[bool]:
    """Whether a YAML value fits a task option's annotation (`int`, `Optional[str]`,
    `Union[int, list[int]]`, `Sequence[float]`, ...); None when the annotation is not one of these."""
    a = annotation.strip()
    for wrapper in ("Optional[", "Union["):
        if a.startswith(wrapper) and a.endswith("]"):
            inner = _split_top(a[len(wrapper):-1], ",") + (["None"] if wrapper == "Optional[" else [])
            results = [_fits(value, alt) for alt in inner]
            return None if None in results else any(results)
    if "|" in a:
        results = [_fits(value, alt) for alt in _split_top(a, "|")]
        return None if None in results else any(results)
    for seq in ("list[", "Sequence[", "tuple["):
        if a.startswith(seq) and a.endswith("]"):
            if not isinstance(value, (list, tuple)):
                return False
            results = [_fits(v, a[len(seq):-1].split(",")[0]) for v in value]
            return None if None in results else all(results)
    simple = {"None": value is None, "bool": isinstance(value, bool), "int": _is_int(value),
              "float": _is_number(value), "str": isinstance(value, str), "dict": isinstance(value, dict)}
    return simple.get(a)


def _check_task_options(name: str, kwargs: dict) -> None:
    """Refuse an option of the wrong kind by name (YAML `eos: "false"` would be truthy, `ops: 3`
    a TypeError deep inside the task)."""
    if name not in TASKS:
        return  # make_task names the unknown task
    params = inspect.signature(task_class(name).__init__).parameters
    for key, value in kwargs.items():
        if key in params and _fits(value, str(params[key].annotation)) is False:
            raise TrainConfigError(f"task.{key} must be {params[key].annotation} (task {name!r}), got {value!r}")


def build_task(task_cfg: dict):
    kwargs = dict(task_cfg)
    name = kwargs.pop("name")
    if name in TASK_REGISTRY:
        return TASK_REGISTRY[name](**kwargs)
    _check_task_options(name, kwargs)
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
    try:
        cfg = ModelConfig(**fields) if preset is None else presets.config(preset, size, **fields)
    except (ConfigError, TypeError) as e:  # names the field; say which section it came from
        raise TrainConfigError(f"model: {e}") from None
    if tokenizer is not None and cfg.d_vocab < tokenizer.vocab_size:
        raise TrainConfigError(f"model.d_vocab={cfg.d_vocab} < the tokenizer's vocab_size {tokenizer.vocab_size}")
    return cfg


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Decay matrices; no decay for biases, norms, embeddings and other <2-D parameters
    (unless `decay_all`)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not decay_all and (p.ndim < 2 or id(p) in embeddings or name.endswith("W_pos")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def steps_for_epochs(epochs: float, n_rows: int, per_step: int) -> int:
    """Optimizer steps for `epochs` passes over `n_rows` rows at `per_step` rows per step (the
    global batch: batch_size x grad_accum x processes)."""
    return max(1, math.ceil(epochs * n_rows / per_step))


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
    """bf16 autocast: on CUDA for `auto` and `bf16`; on CPU only when asked (`bf16`), where
    torch's CPU autocast runs matmuls in bf16 (slower than fp32 on most CPUs, but honest)."""
    name = str(name).lower()
    if name in ("fp32", "float32"):
        return None
    if device.type == "cuda":
        if name == "auto" and not torch.cuda.is_bf16_supported():
            return None
        return torch.bfloat16
    return torch.bfloat16 if name in ("bf16", "bfloat16") else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
