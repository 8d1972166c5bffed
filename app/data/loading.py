"""Loading checkpoints: one cached model + tokenizer per directory (`st.cache_resource`,
keyed by path and the newest mtime of its files), and the facts the sidebar's model card
shows."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import streamlit as st
import torch

from interp.checkpoint import CheckpointError, load_config, read_metrics, resolve

from .discovery import STEP_DIR
from .errors import AppError

# One intra-op thread: the explorer runs small models on one sequence at a time, where OpenMP
# threads cost more than they give (measured: generation of 32 x 37 tokens 0.13 s with 1
# thread vs 1.2-2.9 s with 2 on this 2-core machine under load), and the browser needs a core.
torch.set_num_threads(int(os.environ.get("INTERP_APP_THREADS", "1")))


def stamp(path: Path) -> float:
    """Newest mtime of the files that define a checkpoint (cache key)."""
    files = [path / n for n in ("config.json", "model.safetensors", "tokenizer.json")]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


@dataclass
class Loaded:
    path: str
    model: object
    tokenizer: object
    meta: dict
    metrics: list = field(default_factory=list)
    card: str = ""

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def key(self) -> tuple[str, float]:
        return (self.path, stamp(Path(self.path)))

    @property
    def name(self) -> str:
        p = Path(self.path)
        return f"{p.parent.name}/{p.name}" if STEP_DIR.match(p.name) else p.name

    @property
    def task(self) -> Optional[dict]:
        t = self.meta.get("task")
        return t if isinstance(t, dict) and t.get("name") else None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@st.cache_resource(max_entries=12, show_spinner="Loading checkpoint...")
def _load(path: str, mtime: float) -> Loaded:
    import interp

    model, tok = interp.load(path, device="cpu")
    if tok is None:
        raise CheckpointError(f"{path}: no tokenizer.json; the explorer needs one to read prompts")
    _, meta = load_config(path)
    try:
        metrics = read_metrics(path)
    except CheckpointError:
        metrics = []
    card_file = Path(path) / "card.md"
    card = card_file.read_text() if card_file.exists() else ""
    return Loaded(path, model, tok, meta, metrics, card)


def load(path: Path) -> Loaded:
    """The (cached) checkpoint at `path`; AppError with the loader's message when unusable."""
    try:
        path = resolve(path)
        return _load(str(path), stamp(path))
    except (CheckpointError, ValueError, OSError, KeyError, TypeError) as e:
        raise AppError(f"Cannot load checkpoint `{path}`: {e}") from None


def get(key: tuple[str, float]) -> Loaded:
    """The checkpoint behind a `Loaded.key` (what the cached analyses take)."""
    return _load(*key)


def tokenizer_digest(path: Path) -> Optional[str]:
    """Hash of a checkpoint's tokenizer.json (None without one): equal digests = same tokenizer."""
    try:
        f = resolve(path) / "tokenizer.json"
        return hashlib.sha1(f.read_bytes()).hexdigest() if f.is_file() else None
    except (OSError, CheckpointError):
        return None


def summary(ck: Loaded) -> dict:
    """Model-card facts for the sidebar."""
    cfg = ck.cfg
    final = {}
    for row in ck.metrics:
        final.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    ev = (ck.meta.get("training") or {}).get("eval") or {}
    final.update({f"eval/{k}" if "/" not in k else k: v for k, v in ev.items() if isinstance(v, (int, float))})
    return dict(
        preset=cfg.name,
        shape=f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, n_ctx {cfg.n_ctx}",
        parts=f"{cfg.positional} positions, {cfg.norm}, {cfg.ffn}, {cfg.block} block, {cfg.stream} stream"
        + (", attention-only" if cfg.attn_only else ""),
        params=ck.n_params,
        vocab=cfg.d_vocab,
        task=ck.task,
        metrics=final,
    )
