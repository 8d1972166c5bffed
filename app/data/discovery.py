"""Where checkpoints come from, and a typed checkpoint path checked.

Listed (the sidebar's picker): every `ROOT/NAME/config.json` (a checkpoint) and every
`ROOT/NAME/` holding `step_*/config.json` directories (a training run, see
`interp.checkpoint.CheckpointManager`) under the roots in `$INTERP_CHECKPOINT_ROOT`
(`os.pathsep`-separated; default `data/checkpoints` and `data/runs`).
No torch here: the sidebar draws before the model code imports.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import AppError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_ROOT = "INTERP_CHECKPOINT_ROOT"
DEFAULT_ROOTS = ("data/checkpoints", "data/runs")
PREFERRED = "shakespeare_factored_alibi"
STEP_MASKING_TRIO = ("add3_none", "add3_mask_steps", "add3_mask_answer")
STEP_DIR = re.compile(r"^step_(\d+)$")


def _cli(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The explorer's own arguments, after `streamlit run app/explorer.py --`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ckpt", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args


def cli_ckpt(argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """`--ckpt DIR_OR_NAME` from the arguments after `streamlit run app/explorer.py --`."""
    return _cli(argv).ckpt


def checkpoint_roots() -> list[Path]:
    env = os.environ.get(ENV_ROOT)
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [REPO_ROOT / r for r in DEFAULT_ROOTS]


def check_dir(path_text: str) -> Path:
    """A user-typed checkpoint or run path -> a directory, or AppError saying what is wrong."""
    if not path_text.strip():
        raise AppError("The checkpoint path is empty.")
    p = Path(path_text.strip()).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    if not p.exists():
        raise AppError(f"No such checkpoint directory: `{p}`")
    if not p.is_dir():
        raise AppError(f"`{p}` is a file; give the checkpoint *directory* (with config.json, model.safetensors).")
    if not (p / "config.json").exists() and not (p / "last").is_file() and not run_steps(p):
        raise AppError(f"`{p}` holds no config.json and no step_* checkpoints: not a checkpoint or run directory.")
    return p


def run_steps(run_dir: Path) -> dict[int, Path]:
    """step -> checkpoint dir for every `run_dir/step_NNNNNN/config.json`, by step."""
    if not run_dir.is_dir():
        return {}
    out = {}
    for p in run_dir.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / "config.json").is_file():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def discover(roots: Optional[Sequence[Path]] = None) -> dict[str, Path]:
    """name -> directory for every checkpoint (`ROOT/NAME/config.json`) and every run
    (`ROOT/NAME/step_*/config.json`), sorted by name. A name found twice keeps the first."""
    found: dict[str, Path] = {}
    for root in checkpoint_roots() if roots is None else roots:
        if not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            if p.name.startswith(".") or not p.is_dir() or p.name in found:
                continue
            if (p / "config.json").is_file() or run_steps(p):
                found[p.name] = p
    return dict(sorted(found.items()))


def default_name(names: Sequence[str], cli: Optional[str] = None) -> Optional[str]:
    if cli:
        return cli
    if PREFERRED in names:
        return PREFERRED
    return names[0] if names else None
