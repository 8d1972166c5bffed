"""The Features page: which dictionaries a checkpoint has, their dashboard stores (opened from
disk; computed once, with a progress bar, where missing), one latent's dashboard, the
latents on the prompt, and steering / ablation, each a cached call into `interp.features`.

Where dictionaries are found (a dictionary = a directory with cfg.json +
sae_weights.safetensors, `interp.features` / SAELens layout), for the checkpoint directory C
(a run's step directory also looks in its run directory R):

1. next to it: `C/dictionaries/NAME/` (and `R/dictionaries/NAME/`);
2. shipped: `data/dictionaries/<C's name>/NAME/` (R's name for a run), and any
   `data/dictionaries/*/NAME/` whose cfg.json records C as its checkpoint.

A dictionary is listed only if the model identity it records (`cfg.model`: n_layers,
d_model, ...) matches the checkpoint's config, and only if its directory, symlinks
resolved, lies inside the roots the explorer may open (`discovery.allowed`): a link out of
them is left out. The page's `dict` URL value must be one of the names listed, never a path.

A dictionary's dashboards live in `DICT/dashboard/` (what `interp features dashboard DICT`
writes by default); the page opens that store when it was made from these very weights
(fingerprint), else computes it over `PAGE_TOKENS` test tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import streamlit as st

from .discovery import REPO_ROOT, STEP_DIR, allowed
from .errors import AppError
from .loading import Loaded, get

SHIPPED = REPO_ROOT / "data" / "dictionaries"
PAGE_TOKENS = 50_000  # tokens the page computes missing dashboards over (the CLI takes --tokens)
IDENTITY = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "positional", "norm", "stream", "attn_only")


@dataclass(frozen=True)
class Found:
    name: str  # unique on the page: NAME, or DIR/NAME where two share a name
    path: str
    hook: str
    out_hook: Optional[str]
    arch: str
    d_sae: int
    k: Optional[int]

    @property
    def what(self) -> str:
        kind = f"transcoder {self.hook} → {self.out_hook}" if self.out_hook else f"SAE on {self.hook}"
        return f"{self.arch} {kind}, {self.d_sae:,} latents" + (f", k={self.k}" if self.k else "")


def _read_cfg(d: Path) -> Optional[dict]:
    try:
        data = json.loads((d / "cfg.json").read_text())
        return (data.get("metadata") or {}).get("interp", {}).get("config") or None
    except (OSError, ValueError, AttributeError):
        return None


def _fits(cfg: dict, model_cfg) -> bool:
    ident = cfg.get("model") or {}
    return all(ident[f] == getattr(model_cfg, f) for f in IDENTITY if f in ident and hasattr(model_cfg, f))


def _records(cfg: dict, ckpt: Path) -> bool:
    rec = (cfg.get("model") or {}).get("checkpoint")
    if not rec:
        return False
    p = Path(rec)
    for cand in ([p] if p.is_absolute() else [REPO_ROOT / p, Path.cwd() / p]):
        try:
            if cand.resolve() == ckpt.resolve():
                return True
        except OSError:
            pass
    return False


def dictionaries(ck: Loaded) -> list[Found]:
    """Every dictionary of `ck`'s checkpoint, by the rule in the module docstring."""
    return list(_dictionaries(ck.path, ck.key[1]))


@st.cache_data(max_entries=32, show_spinner=False, ttl=30)
def _dictionaries(path: str, mtime: float) -> tuple[Found, ...]:
    ckpt = Path(path)
    names = [ckpt] + ([ckpt.parent] if STEP_DIR.match(ckpt.name) else [])
    candidates: list[Path] = []
    for c in names:
        candidates += sorted((c / "dictionaries").glob("*/cfg.json"))
        candidates += sorted((SHIPPED / c.name).glob("*/cfg.json"))
    recorded = [f for f in sorted(SHIPPED.glob("*/*/cfg.json")) if f not in candidates]
    model_cfg = get((path, mtime)).cfg
    found: dict[str, Found] = {}
    for f in candidates + recorded:
        d = f.parent
        try:
            real = allowed(str(d))
        except AppError:
            continue  # a link out of the allowed roots
        cfg = _read_cfg(real)
        if cfg is None or not _fits(cfg, model_cfg) or (f in recorded and not _records(cfg, ckpt)):
            continue
        if any(x.path == str(real) for x in found.values()):
            continue
        name = d.name if d.name not in found else f"{d.parent.name}/{d.name}"
        found[name] = Found(name, str(real), cfg["hook_name"], cfg.get("out_hook_name"), cfg["arch"], int(cfg["d_sae"]),
                            cfg.get("k"))
    return tuple(found.values())


def dict_stamp(path: Path) -> float:
    files = [path / "cfg.json", path / "sae_weights.safetensors"]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


@st.cache_resource(max_entries=16, show_spinner="Loading dictionary...")
def _load(path: str, mtime: float):
    from interp import features

    return features.load(path)


def dictionary(found: Found):
    """The (cached) dictionary; AppError with the loader's message when unusable."""
    from interp.features import DictionaryError

    try:
        return _load(found.path, dict_stamp(Path(found.path)))
    except (DictionaryError, OSError) as e:
        raise AppError(f"Cannot load the dictionary `{found.path}`: {e}") from None


def store_dir(found: Found) -> Path:
    from interp.features.dashboards import DEFAULT_DIR

    return Path(found.path) / DEFAULT_DIR


def store_stamp(d: Path) -> float:
    f = d / "manifest.json"
    return f.stat().st_mtime if f.exists() else 0.0


@st.cache_resource(max_entries=16, show_spinner=False)
def _open(path: str, mtime: float, dict_mtime: float):
    from interp.features import open_dashboards

    return open_dashboards(path)


def feature_store(ck: Loaded, found: Found):
    """The store of `found` if one exists that was made from these weights, else None."""
    from interp.features import DictionaryError

    d = store_dir(found)
    if not (d / "manifest.json").is_file():
        return None
    try:
        store = _open(str(d), store_stamp(d), dict_stamp(Path(found.path)))
    except DictionaryError:
        return None
    return store if _matches(str(d), store_stamp(d), found.path, dict_stamp(Path(found.path))) else None


@st.cache_data(max_entries=32, show_spinner=False)
def _matches(store: str, mtime: float, path: str, dict_mtime: float) -> bool:
    from interp.features import open_dashboards

    return open_dashboards(store).matches(_load(path, dict_mtime))


def compute_feature_store(ck: Loaded, found: Found, progress: Callable[[float, str], None], tokens: int = PAGE_TOKENS):
    """Compute the dashboards of `found` into DICT/dashboard (over `tokens` held-out tokens of
    the checkpoint's task), reporting through `progress(fraction, message)`."""
    from interp.features import DictionaryError, dashboard

    d = store_dir(found)
    try:
        dashboard(dictionary(found), ck.path, tokens=tokens, out=d, progress=progress, batch_size=16)
    except DictionaryError as e:
        raise AppError(f"Cannot compute the dashboards of `{found.name}`: {e}") from None
    except PermissionError:
        raise AppError(f"`{d.parent}` is not writable: compute the dashboards elsewhere with "
                       f"`interp features dashboard {found.path} --ckpt {ck.path} --out DIR` and copy DIR to `{d}`.") from None
    return feature_store(ck, found)  # the manifest's mtime in the cache keys picks up the new store


# ------------------------------------------------------------------ reading the store
@st.cache_data(max_entries=16, show_spinner=False)
def latent_table(store_path: str, mtime: float) -> dict:
    from interp.features import open_dashboards

    t = open_dashboards(store_path).table()
    return {k: (np.asarray(v) if not isinstance(v, list) else v) for k, v in t.items()}


@st.cache_data(max_entries=256, show_spinner=False)
def latent_dashboard(store_path: str, mtime: float, i: int):
    """One latent's dashboard (`features.LatentDashboard`), read from disk."""
    from interp.features import DictionaryError, open_dashboards

    try:
        return open_dashboards(store_path).latent(i)
    except DictionaryError as e:
        raise AppError(str(e)) from None


# ------------------------------------------------------------------ the prompt
@st.cache_data(max_entries=64, show_spinner=False)
def prompt_latents(key: tuple, dict_path: str, dict_mtime: float, ids: tuple[int, ...]) -> np.ndarray:
    """(T, d_sae) latents of the dictionary on the prompt."""
    import torch

    from interp.features import DictionaryError, prompt_latents as run

    try:
        return run(get(key).model, _load(dict_path, dict_mtime), torch.tensor(ids)).numpy()
    except DictionaryError as e:
        raise AppError(str(e)) from None


def active_latents(acts: np.ndarray, pos: int, k: int = 12) -> list[tuple[int, float]]:
    """The `k` most active latents at position `pos`: [(latent, activation)], active ones only."""
    row = acts[pos]
    order = np.argsort(-row, kind="stable")[:k]
    return [(int(i), float(row[i])) for i in order if row[i] > 0]


@st.cache_data(max_entries=64, show_spinner=False)
def intervene(key: tuple, dict_path: str, dict_mtime: float, ids: tuple[int, ...], latent_: int, mode: str,
              alpha: float, positions: Optional[tuple[int, ...]], n_new: int):
    """Steer (`mode="steer"`, add alpha x the decoder direction) or ablate: the
    `features.Intervention` (before / after next-token distributions and continuations)."""
    import torch

    from interp import features

    model, sae = get(key).model, _load(dict_path, dict_mtime)
    pos = None if positions is None else list(positions)
    try:
        if mode == "ablate":
            r = features.ablate(model, sae, [latent_], torch.tensor(ids), positions=pos, max_new_tokens=n_new)
        else:
            r = features.steer(model, sae, latent_, torch.tensor(ids), alpha=alpha, positions=pos, max_new_tokens=n_new)
    except features.DictionaryError as e:
        raise AppError(str(e)) from None
    return r
