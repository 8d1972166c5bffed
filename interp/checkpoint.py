"""Self-describing checkpoints: one directory, atomic writes, strict and explicit loading.

```python
import interp
interp.save(model, "runs/x/ckpt", tokenizer)              # atomic: temp dir + rename
model, tokenizer = interp.load("runs/x/ckpt")             # or a run dir (its `last`), or `.../best`
```

A checkpoint directory holds

* `config.json`      the model's `ModelConfig.to_dict()`, plus `format_version`, and optionally
                     `task` (the `make_task` kwargs) and `training` (step, run config, metrics);
* `model.safetensors` the weights (never pickle);
* `tokenizer.json`   the tokenizer (`interp.tokenizers`), when there is one;
* `train_state.pt`   optimizer state, step and RNG states, read with `torch.load(weights_only=True)`;
* `metrics.jsonl`    the run's log up to this checkpoint;
* `card.md`          a human-readable model card.

Loading accepts what GPU runs leave behind (CUDA or bf16 tensors, `_orig_mod.` prefixes from
`torch.compile`, `module.` prefixes from DDP) and refuses anything else with a `CheckpointError`
that names the file and the fault.

Integrity: `config.json` records the sha256 of `model.safetensors` (`weights_sha256`), and the
safetensors header records the rest of `config.json` and the sha256 of the tokenizer files, so
a flipped bit or a truncated copy anywhere is refused instead of loading as another model.
Checkpoints written before (or by other tools) carry no record and get the structural checks
only; deleting `weights_sha256` from config.json loads a deliberately edited one. Legacy `.pt`/`.bin` state dicts are read only through
`torch.load(weights_only=True)`, so a crafted pickle cannot run code.

`CheckpointManager(run_dir, keep_last=K)` writes `run_dir/step_000100/`, keeps the last K plus
the best, and maintains `run_dir/last` and `run_dir/best`: small pointer files holding the
name of a step directory (no symlinks), which `load` follows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch
from torch import nn

from .paths import looked_in, shipped
from models import HookedTransformer, ModelConfig
from models.config import ConfigError

PathLike = Union[str, os.PathLike]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
CARD_FILE = "card.md"
LEGACY_WEIGHT_FILES = ("model.pt", "pytorch_model.bin", "model.pth")
LEGACY_SUFFIXES = (".pt", ".pth", ".bin")
POINTER_NAMES = ("last", "best")
# config.json keys that are not ModelConfig fields
META_KEYS = ("format_version", "task", "training", "tokenizer", "weights_sha256")
WEIGHTS_SHA_KEY = "weights_sha256"
RECORDED_CONFIG_KEY = "interp_config"  # safetensors metadata: config.json as saved (less the weights hash)
RECORDED_TOKENIZER_KEY = "interp_tokenizer_sha256"  # safetensors metadata: {file: sha256} of the tokenizer files
TOKENIZER_SIDECARS = (TOKENIZER_FILE, "tokenizer_config.json", "chat_template.jinja")

__all__ = [
    "CheckpointError", "CheckpointManager", "FORMAT_VERSION", "save", "load", "load_config",
    "load_state_dict", "load_train_state", "read_metrics", "resolve",
]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match its config; the message names the file."""


# ============================================================================ saving
def save(
    model: nn.Module,
    path: PathLike,
    tokenizer: Any = None,
    *,
    task: Optional[dict] = None,
    training: Optional[dict] = None,
    train_state: Optional[dict] = None,
    metrics: Union[None, PathLike, Iterable[dict]] = None,
    card: Optional[str] = None,
    weights_dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically and return its path.

    Everything is written into a temporary directory beside `path` and renamed into place
    only once complete, so a crash mid-save leaves any previous checkpoint at `path` intact.

    Args:
        model: a `HookedTransformer` (a `torch.compile`d or DDP-wrapped one is unwrapped).
        tokenizer: saved as `tokenizer.json` via its `save(path)` method.
        task: the task's config (`make_task` kwargs), stored in config.json under "task".
        training: JSON-serialisable training info, stored under "training" (step, run config...).
        train_state: optimizer/RNG/step state for resuming, saved with `torch.save`; it must be
            loadable with `weights_only=True` (tensors and plain containers only).
        metrics: a metrics.jsonl file to copy, or an iterable of dicts to write one per line.
        card: markdown for card.md (a default card is written otherwise).
        weights_dtype: store floating-point weights in this dtype (e.g. `torch.float16` for a
            compact checkpoint series); `load` returns float32 whatever was stored.
    """
    model = unwrap(model)
    cfg: ModelConfig = model.cfg
    path = Path(path)
    tensors, aliases = _prepare_state_dict(model.state_dict())
    if weights_dtype is not None:
        tensors = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in tensors.items()}

    config = cfg.to_dict()
    clash = sorted(set(config) & set(META_KEYS))
    if clash:
        raise CheckpointError(f"ModelConfig fields {clash} clash with checkpoint metadata keys")
    config["format_version"] = FORMAT_VERSION
    config["tokenizer"] = TOKENIZER_FILE if tokenizer is not None else None
    if task is not None:
        config["task"] = task
    if training is not None:
        config["training"] = training
    config = json.loads(json.dumps(config, default=_json_default))  # exactly what config.json will say

    with _atomic_dir(path) as tmp:
        if tokenizer is not None:
            if not hasattr(tokenizer, "save"):
                raise TypeError(f"tokenizer {type(tokenizer).__name__} has no save(path) method")
            tokenizer.save(str(tmp / TOKENIZER_FILE))
        # the weights file records the config and the tokenizer files; config.json records the weights
        record = {RECORDED_CONFIG_KEY: json.dumps(config, sort_keys=True),
                  RECORDED_TOKENIZER_KEY: json.dumps(_tokenizer_hashes(tmp), sort_keys=True)}
        _save_safetensors(tensors, tmp / WEIGHTS_FILE, aliases, record)
        config[WEIGHTS_SHA_KEY] = _sha256(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
        _write_metrics(metrics, tmp / METRICS_FILE)
        (tmp / CARD_FILE).write_text(card if card is not None else default_card(model, config))
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _write_metrics(metrics: Union[None, PathLike, Iterable[dict]], dest: Path) -> None:
    if metrics is None:
        dest.write_text("")
    elif isinstance(metrics, (str, os.PathLike)):
        src = Path(metrics)
        if src.exists():
            shutil.copyfile(src, dest)
        else:
            dest.write_text("")
    else:
        with open(dest, "w") as f:
            for row in metrics:
                f.write(json.dumps(row, default=_json_default) + "\n")


def _prepare_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, non-overlapping tensors for safetensors, plus aliases for names that
    are the very same tensor (shared parameters); partially overlapping views are copied."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    same: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in sd.items():
        name = _strip_prefixes(name)
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.to("cpu").contiguous().clone()
            continue
        storage = (t.device, t.untyped_storage().data_ptr())
        key = storage + (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in same:  # the very same tensor under two names: store once, alias the other
            aliases[name] = same[key]
            continue
        same[key] = name
        shared = storage in storages
        storages.add(storage)
        if t.device.type != "cpu":
            t = t.to("cpu").contiguous()  # a fresh CPU copy shares nothing
        elif shared or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()  # overlaps another tensor, or a view of a larger buffer
        tensors[name] = t
    return tensors, aliases


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, aliases: dict[str, str],
                      extra_metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    metadata = {"format": "pt", "interp_format_version": str(FORMAT_VERSION)}
    if aliases:
        metadata["aliases"] = json.dumps(aliases)
    metadata.update(extra_metadata or {})
    save_file(tensors, str(path), metadata=metadata)


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _tokenizer_hashes(ckpt_dir: Path) -> dict[str, str]:
    return {name: _sha256(ckpt_dir / name) for name in TOKENIZER_SIDECARS if (ckpt_dir / name).is_file()}


def _verify_weights_hash(data: dict, weights_file: Path) -> None:
    """config.json's `weights_sha256` against the weights file, before anything parses it."""
    want = data.get(WEIGHTS_SHA_KEY)
    if want is None:
        return
    if not isinstance(want, str):
        raise CheckpointError(f"{weights_file.parent / CONFIG_FILE}: {WEIGHTS_SHA_KEY} must be a hex string, got {want!r}")
    if not weights_file.is_file():
        raise CheckpointError(f"{weights_file}: missing file (config.json records its sha256)")
    got = _sha256(weights_file)
    if got != want:
        raise CheckpointError(
            f"{weights_file}: contents differ from the sha256 recorded in {CONFIG_FILE} when it was saved "
            f"({got[:12]}... vs {want[:12]}...): a corrupt or truncated copy, or an edited file. Copy it again; "
            f"to load a file you changed on purpose, delete {WEIGHTS_SHA_KEY} from {CONFIG_FILE}"
        )


def _verify_record(ckpt_dir: Path, data: dict, weights_file: Path, metadata: dict) -> None:
    """config.json and the tokenizer files against what the weights file recorded at save time."""
    config_file = ckpt_dir / CONFIG_FILE
    if RECORDED_CONFIG_KEY in metadata:
        try:
            recorded = json.loads(metadata[RECORDED_CONFIG_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(f"{weights_file}: malformed {RECORDED_CONFIG_KEY!r} metadata") from None
        current = {k: v for k, v in data.items() if k != WEIGHTS_SHA_KEY}
        canon = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731  (NaN metrics compare equal as text)
        if not isinstance(recorded, dict) or canon(recorded) != canon(current):
            recorded = recorded if isinstance(recorded, dict) else {}
            changed = sorted(k for k in set(recorded) | set(current)
                             if k not in recorded or k not in current or canon(recorded[k]) != canon(current[k]))
            shown = ", ".join(f"{k}: saved {recorded.get(k, '(absent)')!r}, now {current.get(k, '(absent)')!r}"
                              for k in changed[:5])
            raise CheckpointError(f"{config_file}: differs from the config recorded in {weights_file} at save time "
                                  f"({shown}): a corrupt copy or an edited file")
    if RECORDED_TOKENIZER_KEY in metadata:
        try:
            recorded = json.loads(metadata[RECORDED_TOKENIZER_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(f"{weights_file}: malformed {RECORDED_TOKENIZER_KEY!r} metadata") from None
        current = _tokenizer_hashes(ckpt_dir)
        if not isinstance(recorded, dict) or recorded != current:
            recorded = recorded if isinstance(recorded, dict) else {}
            changed = sorted(n for n in set(recorded) | set(current) if recorded.get(n) != current.get(n))
            first = ckpt_dir / changed[0]
            what = ("missing file" if changed[0] not in current else
                    "not there at save time" if changed[0] not in recorded else "contents changed")
            raise CheckpointError(f"{first}: {what} (the tokenizer files recorded in {weights_file} when it was "
                                  f"saved: {sorted(recorded)}; differing: {changed})")


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temp dir beside `target`; on success it replaces `target` by renames.

    The old directory is moved aside and deleted only after the new one is in place.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under `torch.compile` (`_orig_mod`) and DDP/DataParallel (`module`)."""
    for _ in range(8):
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            model = model.module
        else:
            break
    return model


def default_card(model: nn.Module, config: dict) -> str:
    cfg: ModelConfig = model.cfg
    training = config.get("training") or {}
    lines = [
        f"# {cfg.name}",
        "",
        f"- architecture: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads "
        f"({cfg.n_kv_heads} kv), d_head {cfg.d_head}, d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab}, n_ctx {cfg.n_ctx}",
        f"- parts: positional={cfg.positional}, norm={cfg.norm}, ffn={cfg.ffn}, block={cfg.block}, "
        f"stream={cfg.stream}, attn_only={cfg.attn_only}, tie_embeddings={cfg.tie_embeddings}",
        f"- parameters: {sum(p.numel() for p in model.parameters()):,}",
    ]
    if config.get("task"):
        lines.append(f"- task: `{json.dumps(config['task'], default=_json_default)}`")
    if "step" in training:
        lines.append(f"- trained steps: {training['step']}" + (
            f", tokens seen: {training['tokens_seen']:,}" if "tokens_seen" in training else ""))
    ev = training.get("eval")
    if ev:
        lines += ["", "## Evaluation", "", "| metric | value |", "| --- | --- |"]
        for k, v in ev.items():
            if isinstance(v, float):
                v = f"{v:.4g}"
            lines.append(f"| {k} | {v} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import interp",
        "model, tokenizer = interp.load('THIS_DIR')",
        "logits, cache = model.run_with_cache(tokens)",
        "```",
        "",
        f"Format version {FORMAT_VERSION}: config.json, model.safetensors, tokenizer.json, "
        "train_state.pt (weights_only), metrics.jsonl, card.md.",
        "",
    ]
    return "\n".join(lines)


# ============================================================================ loading
def resolve(path: PathLike) -> Path:
    """Follow run dirs (their `last` pointer) and `last`/`best` pointer files to a checkpoint dir.
    A relative path missing from the working directory is looked up in the repository
    (`interp.paths.shipped`), so the shipped `data/checkpoints/...` load from anywhere."""
    p = shipped(path)
    for _ in range(8):
        if p.is_dir():
            if (p / CONFIG_FILE).exists():
                return p
            if (p / "last").is_file():
                p = _read_pointer(p / "last")
                continue
            return p
        if p.is_file() and p.name in POINTER_NAMES:
            p = _read_pointer(p)
            continue
        return p
    raise CheckpointError(f"{path}: too many pointer indirections")


def _read_pointer(ptr: Path) -> Path:
    text = ptr.read_text().strip()
    if not text or "\n" in text or len(text) > 255 or "/" in text or text.startswith("."):
        raise CheckpointError(f"{ptr}: not a checkpoint pointer file (expected one step directory name)")
    return ptr.parent / text


def _read_config_json(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.exists():
        raise CheckpointError(f"{file}: missing file (a checkpoint directory needs {CONFIG_FILE})")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file}: not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_version(data: dict, file: Path) -> None:
    if "format_version" not in data:
        raise CheckpointError(f"{file}: no 'format_version' key; not an interp checkpoint config")
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{file}: format_version must be an integer, got {version!r}")
    if version < 1 or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: unknown format_version {version}; this interp reads format versions 1..{FORMAT_VERSION}"
            + (" (written by a newer interp? upgrade)" if version > FORMAT_VERSION else "")
        )


def _model_config(data: dict, file: Path) -> ModelConfig:
    fields = {k: v for k, v in data.items() if k not in META_KEYS}
    try:
        return ModelConfig.from_dict(fields)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{file}: invalid model config: {e}") from None


def load_config(path: PathLike) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole config.json dict) of a checkpoint, without reading weights."""
    ckpt = resolve(path)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint directory")
    data = _read_config_json(ckpt)
    _check_version(data, ckpt / CONFIG_FILE)
    return _model_config(data, ckpt / CONFIG_FILE), data


def load_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The raw weights of a checkpoint dir, a `.safetensors` file or a legacy `.pt`/`.bin` file,
    on CPU, with `_orig_mod.` / `module.` prefixes stripped."""
    p = resolve(path)
    if p.is_dir():
        file = p / WEIGHTS_FILE
        if not file.exists():
            legacy = [p / n for n in LEGACY_WEIGHT_FILES if (p / n).exists()]
            if legacy:
                return _load_legacy_state_dict(legacy[0])[0]
            raise CheckpointError(f"{file}: missing file (no weights in {p})")
        if (p / CONFIG_FILE).exists():
            _verify_weights_hash(_read_config_json(p), file)
        p = file
    if p.suffix in LEGACY_SUFFIXES:
        return _load_legacy_state_dict(p)[0]
    return _load_safetensors(p)


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    return _read_safetensors(file)[0]


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors with aliases resolved and prefixes stripped, header metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not file.exists():
        raise CheckpointError(f"{file}: missing file")
    try:
        sd = load_file(str(file), device="cpu")
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # SafetensorError, OSError
        size = file.stat().st_size
        raise CheckpointError(
            f"{file}: corrupt or truncated safetensors file ({size} bytes): {e}"
        ) from None
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{file}: malformed 'aliases' metadata") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{file}: malformed 'aliases' metadata (expected {{name: name}})")
    for alias, target in aliases.items():
        if target not in sd:
            raise CheckpointError(f"{file}: alias {alias!r} points at missing tensor {target!r}")
        sd[alias] = sd[target]
    return {_strip_prefixes(k): v for k, v in sd.items()}, metadata


_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)+")


def _strip_prefixes(name: str) -> str:
    """Drop DDP `module.` / compile `_orig_mod.` prefixes (and `_orig_mod.` of compiled submodules)."""
    name = _PREFIX.sub("", name)
    return name.replace("._orig_mod.", ".")


def _torch_load_safely(file: Path) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only, never arbitrary code."""
    if not file.exists():
        raise CheckpointError(f"{file}: missing file")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        reason = next((ln for ln in detail if "GLOBAL" in ln or "Unsupported" in ln), detail[-1] if detail else type(e).__name__)
        raise CheckpointError(
            f"{file}: refusing to load: torch.load(weights_only=True) rejected it ({type(e).__name__}: {reason}). "
            "Only tensors and plain containers are accepted; a full unpickle could run arbitrary code, so it is "
            "never attempted. If you trust the file, convert it to safetensors yourself."
        ) from None


def _load_legacy_state_dict(file: Path) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    obj = _torch_load_safely(file)
    config = None
    if isinstance(obj, dict):
        if isinstance(obj.get("config"), dict):
            config = obj["config"]
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file}: not a state dict (expected a mapping of names to tensors)")
    return {_strip_prefixes(str(k)): v for k, v in obj.items()}, config


def load(
    path: PathLike,
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    *,
    config: Union[None, ModelConfig, dict] = None,
    load_tokenizer: bool = True,
) -> tuple[HookedTransformer, Any]:
    """Load `(model, tokenizer)` from a checkpoint directory, a run directory (its `last`), a
    `last`/`best` pointer, or a legacy `.pt`/`.bin` state dict (with `config=` or a config.json
    beside it, or a "config" entry inside it).

    Weights land in float32 unless `dtype` is given, whatever dtype (bf16...) or device they
    were saved from. The model is returned in eval mode with the tokenizer attached.
    """
    p = resolve(path)
    tokenizer = None
    meta: dict = {}
    if p.is_file() and p.suffix in LEGACY_SUFFIXES:
        sd, inner_cfg = _load_legacy_state_dict(p)
        cfg = _legacy_config(config, inner_cfg, p)
        weights_file = p
        ckpt_dir = p.parent if (p.parent / CONFIG_FILE).exists() else None
    else:
        if p.is_file() and p.suffix == ".safetensors":
            p = p.parent
        if not p.exists():
            raise CheckpointError(f"{p}: no such checkpoint directory or file ({looked_in()})")
        if not p.is_dir():
            raise CheckpointError(f"{p}: not a checkpoint directory, .safetensors, .pt or .bin file")
        ckpt_dir = p
        if config is not None:
            cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(dict(config))
            meta = _read_config_json(p) if (p / CONFIG_FILE).exists() else {}
        else:
            data = _read_config_json(p)
            _check_version(data, p / CONFIG_FILE)
            _verify_weights_hash(data, p / WEIGHTS_FILE)  # before a flipped bit can pose as a config fault
            cfg, meta = _model_config(data, p / CONFIG_FILE), data
        weights_file = p / WEIGHTS_FILE
        if weights_file.exists():
            _verify_weights_hash(meta, weights_file)
            sd, metadata = _read_safetensors(weights_file)
            _verify_record(p, meta, weights_file, metadata)
        else:
            legacy = [p / n for n in LEGACY_WEIGHT_FILES if (p / n).exists()]
            if not legacy:
                raise CheckpointError(f"{weights_file}: missing file (no weights in {p})")
            weights_file = legacy[0]
            sd, _ = _load_legacy_state_dict(weights_file)

    model = HookedTransformer(cfg)
    _check_keys(model, sd, weights_file, ckpt_dir)
    model.load_state_dict(sd, strict=False)  # copy_ casts bf16 -> the model's fp32
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    model.eval()

    if load_tokenizer and ckpt_dir is not None:
        tok_name = meta.get("tokenizer", TOKENIZER_FILE) if meta else TOKENIZER_FILE
        tok_file = ckpt_dir / (tok_name or TOKENIZER_FILE)
        if tok_name and (tok_file.exists() or "tokenizer" in meta):
            tokenizer = _load_tokenizer(tok_file)
            model.set_tokenizer(tokenizer)
    return model, tokenizer


def _legacy_config(config, inner_cfg: Optional[dict], file: Path) -> ModelConfig:
    try:
        if isinstance(config, ModelConfig):
            return config
        if config is not None:
            return ModelConfig.from_dict(dict(config))
        if inner_cfg is not None:
            return ModelConfig.from_dict({k: v for k, v in inner_cfg.items() if k not in META_KEYS})
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{file}: invalid model config: {e}") from None
    beside = file.parent / CONFIG_FILE
    if beside.exists():
        data = _read_config_json(file.parent)
        if "format_version" in data:
            _check_version(data, beside)
        return _model_config(data, beside)
    raise CheckpointError(
        f"{file}: a legacy state dict needs a model config: pass config=..., or put {CONFIG_FILE} beside it"
    )


def _load_tokenizer(file: Path):
    if not file.exists():
        raise CheckpointError(f"{file}: missing file (config.json names a tokenizer)")
    try:
        from interp.tokenizers import load_tokenizer
    except ImportError as e:
        raise CheckpointError(f"{file}: cannot load the tokenizer, interp.tokenizers is unavailable ({e})") from None
    try:
        return load_tokenizer(file)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot load tokenizer: {type(e).__name__}: {e}") from None


def _fmt_names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def _check_keys(model: nn.Module, sd: dict[str, torch.Tensor], weights_file: Path, ckpt_dir: Optional[Path]) -> None:
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(k for k in expected if k not in sd and k not in buffers)  # buffers derive from config
    unexpected = sorted(k for k in sd if k not in expected)
    misshaped = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    bad_dtype = sorted(k for k, v in sd.items() if k in expected and v.is_floating_point() != expected[k].is_floating_point())
    if not (missing or unexpected or misshaped or bad_dtype):
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_fmt_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_fmt_names(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped keys ({len(misshaped)}): {_fmt_names(misshaped)}")
    if bad_dtype:
        parts.append(f"keys with non-float/float mismatch: {_fmt_names(bad_dtype)}")
    against = f"the config in {ckpt_dir / CONFIG_FILE}" if ckpt_dir is not None else "the given config"
    raise CheckpointError(f"{weights_file}: weights do not match {against}: " + "; ".join(parts))


def load_train_state(path: PathLike) -> dict:
    """The `train_state.pt` of a checkpoint, read with `torch.load(weights_only=True)`."""
    p = resolve(path)
    file = p / TRAIN_STATE_FILE if p.is_dir() else p
    state = _torch_load_safely(file)
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a dict, got {type(state).__name__}")
    return state


def read_metrics(path: PathLike) -> list[dict]:
    """The events of a `metrics.jsonl` (a file, a checkpoint dir or a run dir)."""
    p = Path(path)
    if p.is_file() and p.name in POINTER_NAMES:
        p = resolve(p)
    file = p / METRICS_FILE if p.is_dir() else p
    if not file.exists():
        raise CheckpointError(f"{file}: missing file")
    rows = []
    for i, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{file}: malformed JSON on line {i}: {e.msg}") from None
    return rows


# ============================================================================ manager
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointManager:
    """Step checkpoints under `run_dir`, keeping the last `keep_last` plus the best.

    `run_dir/last` and `run_dir/best` are pointer files naming a step directory; `load(run_dir)`
    follows `last`. "Best" means the lowest `metric` passed to `save` (pass `mode="max"` for
    accuracy-like metrics).

    `keep_last=None` keeps every checkpoint (a series to replay a run), compactly: only the
    newest keeps its `train_state.pt` (what resume needs) and its copy of `metrics.jsonl` (the
    run directory holds the whole log); older ones keep weights, config, tokenizer and card.
    """

    def __init__(self, run_dir: PathLike, keep_last: Optional[int] = 3, mode: str = "min"):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.mode = mode
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.best_metric: Optional[float] = None
        best = self.best
        if best is not None and (best / CONFIG_FILE).exists():
            try:
                self.best_metric = (_read_config_json(best).get("training") or {}).get("metric")
            except CheckpointError:
                self.best_metric = None
        self._clean_temp()

    def step_dir(self, step: int) -> Path:
        return self.run_dir / f"step_{step:06d}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.run_dir.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def _pointer(self, name: str) -> Optional[Path]:
        ptr = self.run_dir / name
        if not ptr.is_file():
            return None
        target = _read_pointer(ptr)
        return target if target.is_dir() else None

    @property
    def last(self) -> Optional[Path]:
        return self._pointer("last")

    @property
    def best(self) -> Optional[Path]:
        return self._pointer("best")

    def is_better(self, metric: Optional[float]) -> bool:
        if metric is None or (isinstance(metric, float) and math.isnan(metric)):
            return False
        if self.best_metric is None:
            return True
        return metric < self.best_metric if self.mode == "min" else metric > self.best_metric

    def save(self, model: nn.Module, step: int, tokenizer: Any = None, *, metric: Optional[float] = None,
             training: Optional[dict] = None, **kwargs) -> Path:
        """Save `step_{step:06d}`, update `last` (and `best` if `metric` improves), prune."""
        training = dict(training or {})
        training.setdefault("step", step)
        better = self.is_better(metric)
        if metric is not None:
            training["metric"] = metric
        path = save(model, self.step_dir(step), tokenizer, training=training, **kwargs)
        return self._commit(path, metric, better)

    def save_with(self, step: int, write: Callable[[Path], None], *, metric: Optional[float] = None) -> Path:
        """Like `save`, for a checkpoint that is not one model (e.g. the dictionaries of a
        features run): `write(tmp)` fills a temporary directory that then replaces
        `step_{step:06d}` atomically; `last` / `best` and pruning as in `save`."""
        better = self.is_better(metric)
        path = self.step_dir(step)
        with _atomic_dir(path) as tmp:
            write(tmp)
        return self._commit(path, metric, better)

    def _commit(self, path: Path, metric: Optional[float], better: bool) -> Path:
        _write_atomic_text(self.run_dir / "last", path.name + "\n")
        if better:
            self.best_metric = metric
            _write_atomic_text(self.run_dir / "best", path.name + "\n")
        self.prune()
        return path

    def prune(self) -> None:
        ckpts = self.checkpoints()
        if self.keep_last is None:
            for _, p in ckpts[:-1]:
                for name in (TRAIN_STATE_FILE, METRICS_FILE):
                    (p / name).unlink(missing_ok=True)
            return
        keep = {p for _, p in ckpts[-self.keep_last:]}
        for ptr in (self.last, self.best):
            if ptr is not None:
                keep.add(ptr)
        for _, p in ckpts:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def _clean_temp(self) -> None:
        """Remove leftovers of saves that crashed (temp dirs older than a minute)."""
        now = time.time()
        for p in self.run_dir.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                try:
                    if now - p.stat().st_mtime > 60:
                        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                except OSError:
                    pass
