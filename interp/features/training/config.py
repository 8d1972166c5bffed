"""Dictionary-training configs: YAML + `--set` overrides -> one validated dict.

```yaml
name: shakespeare_vanilla_resid          # default: the YAML file's stem
checkpoint: data/checkpoints/shakespeare_vanilla
data: {batch_size: 64}                   # sequences per model forward (see DEFAULT_DATA)
train: {tokens: 20_000_000, batch_tokens: 4096}   # see DEFAULT_TRAIN
defaults: {arch: topk, expansion: 8, k: 32}       # fields every dictionary gets unless it sets its own
dictionaries:                            # name -> a DictionaryConfig (minus d_in / model) + lr
  resid_0: {hook_name: blocks.0.hook_resid_post}
  mlp_0: {hook_name: blocks.0.ln2.hook_normalized, out_hook_name: blocks.0.hook_mlp_out}
```

Every key is checked: unknown or mistyped keys, wrong types and values name the field. A
dictionary's fields are `interp.features.DictionaryConfig`'s (D1 validates those: `k >= d_sae`,
...), plus `expansion` (d_sae = expansion x d_in when d_sae is not given) and `lr`. `d_in`,
`d_out` and `model` are filled from the checkpoint. Hooks are checked against the model in
`resolve_dictionaries` (the model is needed to list the valid ones).

`--set` takes `section.key=value` (`train.lr=3e-4`, `dictionaries.resid_0.k=64`,
`defaults.k=16`, `checkpoint=PATH`); a bare key goes to the section that knows it: `train`,
then `data`, then `defaults` (`--set tokens=1e6 --set k=16`). Values use YAML syntax.
"""

from __future__ import annotations

import copy
import math
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from interp.training.config import PathLike, TrainConfigError, apply_overrides, parse_value, read_yaml

TOP_LEVEL = ("name", "description", "checkpoint", "data", "train", "defaults", "dictionaries")

DEFAULT_DATA: dict[str, Any] = dict(
    split="train",  # the checkpoint task's split the activations come from (evaluation uses held-out ones)
    batch_size=64,  # sequences per model forward (per process)
    seq_len=None,  # cut sequences to this many tokens (None: the task's own length)
    exclude_bos=True,  # leave the BOS position out of the buffer (its activations are outliers)
    task=None,  # a mapping merged over the checkpoint's saved task config (e.g. another text file)
)

DEFAULT_TRAIN: dict[str, Any] = dict(
    tokens=10_000_000,  # training tokens (activation rows) every dictionary sees
    batch_tokens=4096,  # rows per dictionary step (global, over all processes)
    buffer_tokens=262_144,  # rows held in the shuffled on-device buffer (rounded down to batch_tokens)
    lr=None,  # None: 2e-4 / sqrt(d_sae / 2^14) per dictionary (Gao et al.'s scaling, as sparsify)
    warmup=0.01,  # linear warm-up: steps (int) or a fraction of the steps (float < 1)
    min_lr=None,  # cosine floor (interp.training.lr_at); None -> lr / 10
    betas=[0.9, 0.999],
    eps=1e-8,
    log_every=50,  # steps between metrics.jsonl rows (the only host reads of the step's values)
    save_every=None,  # steps between checkpoints (None: only at the end and on interrupt)
    keep_last=2,  # step checkpoints kept
    stop_at=None,  # pause (and checkpoint) after this step, keeping the schedule of `tokens`
    max_seconds=None,  # checkpoint and stop after this much wall time (resume continues): for time-boxed jobs
    seed=0,
    device="auto",  # auto | cpu | cuda | cuda:N
    dtype="auto",  # autocast of the model forward and the dictionary step: auto (bf16 on CUDA) | bf16 | fp32
    buffer_dtype="auto",  # activations in the buffer: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile=None,  # torch.compile the dictionary step and the model forward (None: on CUDA)
    cuda_graphs="auto",  # auto | true | false: capture the step of all dictionaries as one CUDA graph
    out_dir=None,  # None -> runs/features/<name>
    overwrite=False,  # a fresh run into an out_dir holding checkpoints: delete them (else refuse)
    progress=True,  # tqdm progress bar
    parallel="auto",  # auto | none | ddp | dictionaries (interp.features.training.distributed)
    dist_backend="auto",  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
)

# per-dictionary keys that are not DictionaryConfig fields
DICT_EXTRA = ("expansion", "lr")
# DictionaryConfig fields the trainer fills in from the model
DICT_FILLED = ("d_in", "model")


class FeaturesConfigError(TrainConfigError):
    """The dictionary-training config cannot be used; the message names the key."""


def dictionary_fields() -> set[str]:
    from interp.features.dictionary import DictionaryConfig

    return {f.name for f in dc_fields(DictionaryConfig)}


# ============================================================================ reading
def load_config(config: Union[None, dict, PathLike], overrides: Iterable[str] = ()) -> dict:
    """Read (YAML path or dict), apply `--set` overrides, fill defaults and validate."""
    if config is None:
        cfg: dict = {}
    elif isinstance(config, dict):
        cfg = copy.deepcopy(config)
    else:
        try:
            cfg = read_yaml(config)
        except TrainConfigError as e:
            raise FeaturesConfigError(str(e)) from None
    for item in overrides:
        _override(cfg, str(item))
    return normalize(cfg)


def _override(cfg: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise FeaturesConfigError(f"--set {item!r}: expected key=value (e.g. train.lr=3e-4 or k=32)")
    parts = key.split(".")
    if len(parts) == 1:
        name = parts[0]
        if name in ("name", "description", "checkpoint"):
            cfg[name] = parse_value(raw)
            return
        if name in DEFAULT_TRAIN:
            parts = ["train", name]
        elif name in DEFAULT_DATA:
            parts = ["data", name]
        elif name in dictionary_fields() | set(DICT_EXTRA):
            parts = ["defaults", name]
        else:
            raise FeaturesConfigError(
                f"--set {item!r}: unknown key {name!r}; write section.key ({', '.join(TOP_LEVEL)})")
    if parts[0] not in TOP_LEVEL:
        raise FeaturesConfigError(f"--set {item!r}: unknown section {parts[0]!r}; expected one of {list(TOP_LEVEL)}")
    try:
        apply_overrides(cfg, [f"{'.'.join(parts)}={raw}"])
    except TrainConfigError as e:
        raise FeaturesConfigError(str(e)) from None


# ============================================================================ validation
def normalize(cfg: dict) -> dict:
    unknown = sorted(set(cfg) - set(TOP_LEVEL))
    if unknown:
        raise FeaturesConfigError(f"unknown top-level key(s) {unknown}; expected {list(TOP_LEVEL)}")
    if not cfg.get("checkpoint"):
        raise FeaturesConfigError("checkpoint: give the model checkpoint the dictionaries read (a directory)")
    if not isinstance(cfg["checkpoint"], (str, Path)):
        raise FeaturesConfigError(f"checkpoint must be a path, got {cfg['checkpoint']!r}")
    data = _section(cfg, "data", DEFAULT_DATA)
    train = _section(cfg, "train", DEFAULT_TRAIN)
    _validate_data(data)
    _validate_train(train)
    defaults = cfg.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise FeaturesConfigError(f"defaults must be a mapping of dictionary fields, got {defaults!r}")
    dicts = cfg.get("dictionaries")
    if not isinstance(dicts, dict) or not dicts:
        raise FeaturesConfigError("dictionaries: give at least one, as a mapping name -> {hook_name: ..., d_sae: ...}")
    known = dictionary_fields() - set(DICT_FILLED) | set(DICT_EXTRA)
    for where, spec in [("defaults", defaults)] + [(f"dictionaries.{n}", s) for n, s in dicts.items()]:
        if not isinstance(spec, dict):
            raise FeaturesConfigError(f"{where} must be a mapping of dictionary fields, got {spec!r}")
        bad = sorted(set(spec) - known)
        if bad:
            hint = f" ({', '.join(sorted(f for f in bad if f in DICT_FILLED))} come from the model)" if set(bad) & set(DICT_FILLED) else ""
            raise FeaturesConfigError(f"{where}: unknown key(s) {bad}{hint}; known: {sorted(known)}")
    out_dicts = {}
    for name, spec in dicts.items():
        name = str(name)
        if not name or "/" in name or name.startswith(".") or name in ("last", "checkpoints") or name.startswith("step_"):
            raise FeaturesConfigError(f"dictionaries: {name!r} cannot be a directory name here (no '/', not "
                                      "'last', 'checkpoints' or 'step_*')")
        merged = {**defaults, **spec}
        where = f"dictionaries.{name}"
        if not merged.get("hook_name"):
            raise FeaturesConfigError(f"{where}: needs a hook_name (e.g. blocks.0.hook_resid_post)")
        exp = merged.get("expansion")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float)) or exp <= 0):
            raise FeaturesConfigError(f"{where}.expansion must be a positive number, got {exp!r}")
        if merged.get("d_sae") is None and exp is None:
            raise FeaturesConfigError(f"{where}: give d_sae (latents) or expansion (d_sae = expansion x d_in)")
        lr = merged.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise FeaturesConfigError(f"{where}.lr must be a positive number, got {lr!r}")
        out_dicts[name] = merged
    out = {"name": str(cfg.get("name") or Path(str(cfg["checkpoint"])).name + "_features"),
           "checkpoint": str(cfg["checkpoint"]), "data": data, "train": train, "dictionaries": out_dicts}
    if cfg.get("description"):
        out["description"] = str(cfg["description"])
    return out


def _section(cfg: dict, name: str, defaults: dict) -> dict:
    given = cfg.get(name) or {}
    if not isinstance(given, dict):
        raise FeaturesConfigError(f"{name} must be a mapping, got {given!r}")
    bad = sorted(set(given) - set(defaults))
    if bad:
        raise FeaturesConfigError(f"{name}: unknown key(s) {bad}; known: {sorted(defaults)}")
    return {**copy.deepcopy(defaults), **given}


def _int(value: Any) -> Optional[int]:
    """`value` as an int when it is one (YAML reads 1e6 as a float: accept integral floats)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _positive_int(section: dict, key: str, where: str, allow_none: bool = False) -> None:
    value = section[key]
    if value is None and allow_none:
        return
    as_int = _int(value)
    if as_int is None or as_int < 1:
        raise FeaturesConfigError(f"{where}.{key} must be a positive integer{' or null' if allow_none else ''}, "
                                  f"got {value!r}")
    section[key] = as_int


def _choice(section: dict, key: str, where: str, choices: tuple) -> None:
    if section[key] not in choices:
        raise FeaturesConfigError(f"{where}.{key} must be one of {' | '.join(map(str, choices))}, got {section[key]!r}")


def _validate_data(d: dict) -> None:
    if not isinstance(d["split"], str):
        raise FeaturesConfigError(f"data.split must be a split name (train | val | test), got {d['split']!r}")
    _positive_int(d, "batch_size", "data")
    _positive_int(d, "seq_len", "data", allow_none=True)
    if d["seq_len"] is not None and d["seq_len"] < 2:
        raise FeaturesConfigError(f"data.seq_len must be at least 2, got {d['seq_len']}")
    if not isinstance(d["exclude_bos"], bool):
        raise FeaturesConfigError(f"data.exclude_bos must be true or false, got {d['exclude_bos']!r}")
    if d["task"] is not None and not isinstance(d["task"], dict):
        raise FeaturesConfigError(f"data.task must be a mapping merged over the checkpoint's task config, got {d['task']!r}")


def _validate_train(t: dict) -> None:
    for key in ("tokens", "batch_tokens", "buffer_tokens", "log_every", "keep_last"):
        _positive_int(t, key, "train")
    for key in ("save_every", "stop_at"):
        _positive_int(t, key, "train", allow_none=True)
    ms = t["max_seconds"]
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms <= 0):
        raise FeaturesConfigError(f"train.max_seconds must be a positive number or null, got {ms!r}")
    seed = _int(t["seed"])
    if seed is None or seed < 0:
        raise FeaturesConfigError(f"train.seed must be a non-negative integer, got {t['seed']!r}")
    t["seed"] = seed
    if t["buffer_tokens"] < t["batch_tokens"]:
        raise FeaturesConfigError(f"train.buffer_tokens={t['buffer_tokens']} must be at least train.batch_tokens="
                                  f"{t['batch_tokens']} (the buffer serves whole batches)")
    if t["tokens"] < t["batch_tokens"]:
        raise FeaturesConfigError(f"train.tokens={t['tokens']} is less than one batch (train.batch_tokens="
                                  f"{t['batch_tokens']})")
    for key in ("lr", "min_lr"):
        v = t[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "lr" and v == 0)):
            raise FeaturesConfigError(f"train.{key} must be a positive number or null, got {v!r}")
    w = t["warmup"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or (isinstance(w, float) and not w.is_integer() and w >= 1):
        raise FeaturesConfigError(f"train.warmup must be a step count (int >= 0) or a fraction of the steps "
                                  f"(0 <= float < 1), got {w!r}")
    b = t["betas"]
    if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(isinstance(x, (int, float)) and 0 <= x < 1 for x in b)):
        raise FeaturesConfigError(f"train.betas must be [beta1, beta2] in [0, 1), got {b!r}")
    if isinstance(t["eps"], bool) or not isinstance(t["eps"], (int, float)) or t["eps"] <= 0:
        raise FeaturesConfigError(f"train.eps must be a positive number, got {t['eps']!r}")
    for key in ("dtype", "buffer_dtype"):
        if str(t[key]).lower() not in ("auto", "bf16", "bfloat16", "fp32", "float32"):
            raise FeaturesConfigError(f"train.{key} must be auto | bf16 | fp32, got {t[key]!r}")
    if t["compile"] is not None and not isinstance(t["compile"], bool):
        raise FeaturesConfigError(f"train.compile must be true, false or null (CUDA only), got {t['compile']!r}")
    _choice(t, "cuda_graphs", "train", ("auto", True, False))
    _choice(t, "parallel", "train", ("auto", "none", "ddp", "dictionaries"))
    _choice(t, "dist_backend", "train", ("auto", "nccl", "gloo"))
    for key in ("overwrite", "progress"):
        if not isinstance(t[key], bool):
            raise FeaturesConfigError(f"train.{key} must be true or false, got {t[key]!r}")
    if t["out_dir"] is not None and not isinstance(t["out_dir"], (str, Path)):
        raise FeaturesConfigError(f"train.out_dir must be a path or null, got {t['out_dir']!r}")
    if not isinstance(t["device"], str):
        raise FeaturesConfigError(f"train.device must be auto | cpu | cuda | cuda:N, got {t['device']!r}")


def steps_of(t: dict) -> int:
    """Optimizer steps of a run: `tokens / batch_tokens`, rounded down."""
    return t["tokens"] // t["batch_tokens"]


def warmup_steps(t: dict, steps: int) -> int:
    w = t["warmup"]
    return int(round(w * steps)) if isinstance(w, float) and w < 1 else int(w)


def schedule(t: dict, lr: float, steps: int) -> dict:
    """The keys `interp.training.lr_at` reads, for one dictionary's learning rate."""
    return {"lr": lr, "steps": steps, "warmup": warmup_steps(t, steps),
            "min_lr": t["min_lr"] if t["min_lr"] is not None else None}


def default_lr(d_sae: int) -> float:
    """2e-4 / sqrt(d_sae / 2^14): the learning-rate scaling with width from Gao et al. (2024), the
    default of EleutherAI's sparsify; 1.1e-3 at 512 latents, 2.3e-4 at 12,288."""
    return 2e-4 / math.sqrt(d_sae / 2**14)
