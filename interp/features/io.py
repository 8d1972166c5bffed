"""Dictionaries on disk in SAELens's (6.x) layout, so `sae_lens.SAE.load_from_disk` opens ours
and `features.load` opens SAELens's.

A dictionary directory holds

* `cfg.json`: SAELens's config fields (`architecture`, `d_in`, `d_sae`, `dtype`, `device`,
  `apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`, `k` / `d_out` /
  `rescale_acts_by_decoder_norm` where the architecture has them) and `metadata`
  (`hook_name`, `hook_name_out`, `model_name`, `sae_lens_version`, and ours under
  `metadata.interp`: the whole `DictionaryConfig` and the normalisation scales);
* `sae_weights.safetensors`: exactly the tensors SAELens's class for that architecture has,
  under its names: `W_enc (d_in, d_sae)`, `b_enc (d_sae,)`, `W_dec (d_sae, d_out)`,
  `b_dec (d_out,)`, `threshold (d_sae,)` (JumpReLU family), `W_skip (d_out, d_in)`.

Architecture mapping (ours -> SAELens), as SAELens itself saves its training classes:

| ours | SAE | transcoder | transcoder + skip |
|---|---|---|---|
| relu | standard | transcoder | skip_transcoder |
| topk | topk | topk (d_out == d_in, `apply_b_dec_to_input` false) else topk_transcoder* | topk_skip_transcoder* |
| jumprelu, batchtopk, matryoshka | jumprelu | jumprelu_transcoder | jumprelu_skip_transcoder |

(*) SAELens 6.54 has no TopK transcoder class; these two names are ours and only
`features.load` reads them. BatchTopK and Matryoshka become JumpReLU with their learned
threshold on every latent, which is what they compute at inference.

Normalisation scales are folded into the weights on save (SAELens's `normalize_activations:
"none"` then computes the same function on raw activations) and unfolded by `features.load`,
which gets back the dictionary that was saved (to float rounding). Files are never unpickled:
a pickle, a truncated or corrupt file, unknown or missing tensors all raise one
`DictionaryError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from interp.checkpoint import CheckpointError, _atomic_dir, _load_safetensors, _prepare_state_dict, _save_safetensors

from .dictionary import DictionaryConfig, DictionaryError, SparseDictionary, make

PathLike = Union[str, os.PathLike]

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT_VERSION = 1
SAE_LENS_FORMAT = "6.0.0"  # the cfg.json layout written (SAELens reads files of >= 6.0 without conversion)
JUMPRELU_FAMILY = ("jumprelu", "batchtopk", "matryoshka")
TINY = torch.finfo(torch.float32).tiny  # smallest threshold representable as a log

# SAELens architecture -> (our arch, transcoder?, skip?)
FROM_SAE_LENS = {
    "standard": ("relu", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "transcoder": ("relu", True, False),
    "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
    "topk_transcoder": ("topk", True, False),
    "topk_skip_transcoder": ("topk", True, True),
}


def sae_lens_architecture(cfg: DictionaryConfig) -> str:
    """The `architecture` string `save` writes for `cfg` (table in the module docstring)."""
    family = "jumprelu" if cfg.arch in JUMPRELU_FAMILY else cfg.arch
    if not cfg.is_transcoder:
        return {"relu": "standard"}.get(family, family)
    if family == "topk" and not cfg.skip and cfg.d_out == cfg.d_in:
        return "topk"
    base = {"relu": "", "jumprelu": "jumprelu_", "topk": "topk_"}[family]
    return f"{base}{'skip_' if cfg.skip else ''}transcoder"


def expected_tensors(architecture: str, d_in: int, d_sae: int, d_out: Optional[int] = None) -> dict[str, tuple]:
    """Tensor name -> shape of SAELens's class for `architecture` (what `save` writes)."""
    d_out = d_in if d_out is None else d_out
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if "jumprelu" in architecture:
        shapes["threshold"] = (d_sae,)
    if "skip" in architecture:
        shapes["W_skip"] = (d_out, d_in)
    return shapes


# ============================================================================ save
@torch.no_grad()
def save(sae: SparseDictionary, path: PathLike, dtype: Optional[torch.dtype] = None) -> Path:
    """Write `path/cfg.json` + `path/sae_weights.safetensors` atomically; `dtype` (e.g.
    `torch.float16`) sets the stored tensors' dtype, `cfg.json`'s `dtype` stays the compute
    dtype (SAELens casts to it on load)."""
    from interp.checkpoint import unwrap

    sae = unwrap(sae)
    cfg = sae.cfg
    arch = sae_lens_architecture(cfg)
    s_in, s_out = float(sae.scale_in), float(sae.scale_out)
    W_enc, b_enc = sae.W_enc.float().cpu(), sae.b_enc.float().cpu()
    W_dec, b_dec = sae.W_dec.float().cpu(), sae.b_dec.float().cpu()
    tensors = {"W_enc": W_enc * s_in, "b_enc": b_enc, "W_dec": W_dec / s_out, "b_dec": b_dec / s_out}
    if cfg.skip:
        tensors["W_skip"] = (sae.W_skip.float().cpu() * (s_in / s_out)).T
    if cfg.arch in JUMPRELU_FAMILY:
        thr = sae.threshold.float().cpu()
        tensors["threshold"] = thr.expand(cfg.d_sae) if thr.ndim == 0 else thr
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    tensors, aliases = _prepare_state_dict(tensors)

    metadata: dict[str, Any] = {
        "sae_lens_version": SAE_LENS_FORMAT,
        "sae_lens_training_version": None,
        "hook_name": cfg.hook_name,
        "model_name": cfg.model.get("name"),
        "interp": {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "scale_in": s_in, "scale_out": s_out},
    }
    if cfg.is_transcoder:
        metadata["hook_name_out"] = cfg.out_hook_name
    config: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "metadata": metadata,
    }
    if cfg.arch == "topk":
        config.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if cfg.is_transcoder and arch != "topk":
        config["d_out"] = cfg.d_out
    text = json.dumps(config, indent=2, default=str)
    path = Path(path)
    with _atomic_dir(path) as tmp:
        (tmp / CFG_FILE).write_text(text + "\n")
        _save_safetensors(tensors, tmp / WEIGHTS_FILE, aliases)
    return path


# ============================================================================ load
def load(path: PathLike, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None
         ) -> SparseDictionary:
    """A dictionary from a directory in SAELens's layout (ours or SAELens's own), in float32
    unless `dtype` is given, in eval mode."""
    p = Path(path)
    if p.is_file() and p.name in (CFG_FILE, WEIGHTS_FILE):
        p = p.parent
    if p.is_file():
        raise DictionaryError(f"{p}: a dictionary is a directory with {CFG_FILE} and {WEIGHTS_FILE} "
                              f"(SAELens's layout), not a single file{_pickle_hint(p)}")
    if not p.is_dir():
        raise DictionaryError(f"{p}: no such dictionary directory")
    cfg_file, weights_file = p / CFG_FILE, p / WEIGHTS_FILE
    data = _read_cfg(cfg_file)
    if not weights_file.exists():
        raise DictionaryError(f"{weights_file}: missing file{_pickle_hint_dir(p)}")
    try:
        sd = _load_safetensors(weights_file)
    except CheckpointError as e:
        raise DictionaryError(str(e) + _pickle_hint(weights_file)) from None
    interp_meta = (data.get("metadata") or {}).get("interp") if isinstance(data.get("metadata"), dict) else None
    if interp_meta is not None:
        sae = _load_ours(data, interp_meta, sd, cfg_file, weights_file)
    else:
        sae = _load_sae_lens(data, sd, cfg_file, weights_file)
    sae.to(device)
    if dtype is not None:
        sae.to(dtype)
    return sae.eval()


def _read_cfg(file: Path) -> dict:
    if not file.exists():
        raise DictionaryError(f"{file}: missing file (a dictionary directory needs {CFG_FILE})")
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DictionaryError(f"{file}: not UTF-8 JSON text{_pickle_hint(file)}") from None
    except json.JSONDecodeError as e:
        raise DictionaryError(f"{file}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _pickle_hint(file: Path) -> str:
    try:
        with open(file, "rb") as f:
            head = f.read(4)
    except OSError:
        return ""
    if head[:1] == b"\x80" or head[:2] == b"PK":
        return (" (it looks like a pickle / torch.save file: those are never unpickled, since loading one "
                "can run arbitrary code; convert it to safetensors yourself if you trust it)")
    return ""


def _pickle_hint_dir(p: Path) -> str:
    legacy = sorted(f.name for f in p.iterdir() if f.suffix in (".pt", ".pth", ".bin", ".pkl"))
    return f"; found {legacy}, which are never unpickled (safetensors only)" if legacy else ""


def _check_tensors(sd: dict, expected: dict[str, tuple], weights_file: Path, against: str) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(sd[k].shape)} vs {expected[k]}" for k in expected
                       if k in sd and tuple(sd[k].shape) != tuple(expected[k]))
    not_float = sorted(k for k in expected if k in sd and not sd[k].is_floating_point())
    parts = []
    if missing:
        parts.append(f"missing tensors {missing}")
    if unexpected:
        parts.append(f"unexpected tensors {unexpected}")
    if misshaped:
        parts.append(f"mis-shaped tensors {misshaped}")
    if not_float:
        parts.append(f"non-float tensors {not_float}")
    if parts:
        raise DictionaryError(f"{weights_file}: tensors do not match {against}: " + "; ".join(parts))
    bad = [k for k in expected if not torch.isfinite(sd[k]).all()]
    if bad:
        raise DictionaryError(f"{weights_file}: non-finite values (NaN/inf) in {bad}")


def _scale(value: Any, name: str, file: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DictionaryError(f"{file}: metadata.interp.{name} must be a positive number, got {value!r}")
    return float(value)


@torch.no_grad()
def _load_ours(data: dict, meta: Any, sd: dict, cfg_file: Path, weights_file: Path) -> SparseDictionary:
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise DictionaryError(f"{cfg_file}: metadata.interp must hold a 'config' mapping")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DictionaryError(f"{cfg_file}: metadata.interp.format_version {version!r}; this interp reads {FORMAT_VERSION}")
    cfg = DictionaryConfig.from_dict(dict(meta["config"], dtype="float32"), where=f"{cfg_file}: metadata.interp.config")
    arch = sae_lens_architecture(cfg)
    if data.get("architecture") != arch:
        raise DictionaryError(f"{cfg_file}: architecture {data.get('architecture')!r} does not match the "
                              f"dictionary config (expected {arch!r})")
    for key, want in (("d_in", cfg.d_in), ("d_sae", cfg.d_sae)):
        if data.get(key) != want:
            raise DictionaryError(f"{cfg_file}: {key}={data.get(key)!r} but metadata.interp.config says {want}")
    _check_tensors(sd, expected_tensors(arch, cfg.d_in, cfg.d_sae, cfg.d_out), weights_file,
                   f"architecture {arch!r} (d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.d_out})")
    s_in = _scale(meta.get("scale_in"), "scale_in", cfg_file)
    s_out = _scale(meta.get("scale_out"), "scale_out", cfg_file)
    sae = make(cfg)
    sd = {k: v.float() for k, v in sd.items()}
    sae.scale_in.fill_(s_in)
    sae.scale_out.fill_(s_out)
    sae.W_enc.copy_(sd["W_enc"] / s_in)
    sae.b_enc.copy_(sd["b_enc"])
    sae.W_dec.copy_(sd["W_dec"] * s_out)
    sae.b_dec.copy_(sd["b_dec"] * s_out)
    if cfg.skip:
        sae.W_skip.copy_(sd["W_skip"].T * (s_out / s_in))
    if cfg.arch == "jumprelu":
        sae.log_threshold.copy_(sd["threshold"].clamp_min(TINY).log())
    elif cfg.arch in JUMPRELU_FAMILY:
        thr = sd["threshold"]
        if not torch.equal(thr, thr[:1].expand_as(thr)):
            raise DictionaryError(f"{weights_file}: a {cfg.arch} dictionary has one threshold for all latents, "
                                  "but 'threshold' differs between latents")
        sae.threshold.fill_(float(thr[0]))
    return sae


@torch.no_grad()
def _load_sae_lens(data: dict, sd: dict, cfg_file: Path, weights_file: Path) -> SparseDictionary:
    """A dictionary saved by SAELens (>= 6.0 layout; hook names also read from the top level as
    older files have them). Folds what SAELens computes at run time (no b_dec on the input,
    decoder-norm rescaling of TopK) into our parameterisation."""
    arch_name = data.get("architecture", "standard")
    if arch_name not in FROM_SAE_LENS:
        raise DictionaryError(f"{cfg_file}: architecture {arch_name!r} is not supported; supported: "
                              f"{sorted(FROM_SAE_LENS)}")
    arch, transcoder, skip = FROM_SAE_LENS[arch_name]
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}

    def field(name: str, *alternatives: str):
        for key in (name, *alternatives):
            if meta.get(key) is not None:
                return meta[key]
            if data.get(key) is not None:
                return data[key]
        return None

    hook = field("hook_name", "hook_point")
    if not isinstance(hook, str) or not hook:
        raise DictionaryError(f"{cfg_file}: no hook name (metadata.hook_name); a dictionary must say which hook it reads")
    out_hook = field("hook_name_out")
    if transcoder and (not isinstance(out_hook, str) or not out_hook):
        raise DictionaryError(f"{cfg_file}: a {arch_name!r} needs metadata.hook_name_out (the hook it writes)")
    norm = data.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in", None, False):  # the latter is identity at inference in SAELens
        raise DictionaryError(f"{cfg_file}: normalize_activations={norm!r} is not supported (only 'none' and "
                              "'expected_average_only_in', which SAELens applies only during training)")
    if data.get("finetuning_scaling_factor"):
        raise DictionaryError(f"{cfg_file}: finetuning_scaling_factor is not supported")
    for key in ("d_in", "d_sae"):
        if isinstance(data.get(key), bool) or not isinstance(data.get(key), int):
            raise DictionaryError(f"{cfg_file}: {key} must be an integer, got {data.get(key)!r}")
    d_in, d_sae = data["d_in"], data["d_sae"]
    d_out = data.get("d_out", d_in) if transcoder else d_in
    _check_tensors(sd, expected_tensors(arch_name, d_in, d_sae, d_out), weights_file,
                   f"SAELens architecture {arch_name!r} (d_in={d_in}, d_sae={d_sae}, d_out={d_out})")
    model_name = field("model_name")
    try:
        cfg = DictionaryConfig(arch=arch, d_in=d_in, d_sae=d_sae, d_out=d_out, hook_name=hook,
                               out_hook_name=out_hook if transcoder else None, skip=skip,
                               k=data.get("k") if arch == "topk" else None, normalize="none",
                               model={"name": model_name} if model_name else {})
    except DictionaryError as e:
        raise DictionaryError(f"{cfg_file}: {str(e).removeprefix('dictionary config: ')}") from None
    sd = {k: v.double() for k, v in sd.items()}  # fold in float64, store float32
    W_enc, b_enc, W_dec, b_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"], sd["b_dec"]
    if not transcoder and data.get("apply_b_dec_to_input") is False:
        b_enc = b_enc + b_dec @ W_enc  # ours always subtracts b_dec: (x - b) W + (c + b W) = x W + c
    if arch == "topk" and data.get("rescale_acts_by_decoder_norm"):
        n = W_dec.norm(dim=-1)  # select on pre * ||W_dec[i]||, decode acts / ||W_dec[i]||
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    sae = make(cfg)
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.W_dec.copy_(W_dec)
    sae.b_dec.copy_(b_dec)
    if skip:
        sae.W_skip.copy_(sd["W_skip"].T)
    if arch == "jumprelu":
        sae.log_threshold.copy_(sd["threshold"].clamp_min(TINY).log())
    return sae


__all__ = ["CFG_FILE", "WEIGHTS_FILE", "FROM_SAE_LENS", "expected_tensors", "load", "sae_lens_architecture", "save"]
