"""Where checkpoints come from, and which directories the explorer may open at all.

Listed (the sidebar's picker): every `ROOT/NAME/config.json` (a checkpoint) and every
`ROOT/NAME/` holding `step_*/config.json` directories (a training run, see
`interp.checkpoint.CheckpointManager`) under the roots in `$INTERP_CHECKPOINT_ROOT`
(`os.pathsep`-separated; default `data/checkpoints` and `data/runs`) and under each
`--allow-root DIR` given after `streamlit run app/explorer.py --`.

Opened (a typed path, the `ckpt` / `cmp` URL parameters): only directories inside the
allowed roots: the repository's `data/` and `runs/`, the `runs/` of the directory the
server started in, the listed roots above, and the `--ckpt` the server was started with.
Symlinks and `..` are resolved before the check, and a path outside is refused with one
message whether or not it exists, so the app cannot be used to probe the server's disk. (A
name the sidebar lists opens whatever it links to: the roots' contents are the operator's.)
No torch here: the sidebar draws before the model code imports.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import AppError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_ROOT = "INTERP_CHECKPOINT_ROOT"
DEFAULT_ROOTS = ("data/checkpoints", "data/runs")
ALWAYS_ALLOWED = ("data", "runs")  # under the repository; plus `runs/` of the working directory
PREFERRED = "shakespeare_factored_alibi"
STEP_MASKING_TRIO = ("add3_none", "add3_mask_steps", "add3_mask_answer")
STEP_DIR = re.compile(r"^step_(\d+)$")


def _cli(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The explorer's own arguments, after `streamlit run app/explorer.py --`."""
    return _parse(tuple(sys.argv[1:] if argv is None else argv))


@functools.lru_cache(maxsize=8)
def _parse(argv: tuple[str, ...]) -> argparse.Namespace:  # every rerun asks: parse once
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--allow-root", action="append", default=[])
    args, _ = parser.parse_known_args(list(argv))
    return args


def cli_ckpt(argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """`--ckpt DIR_OR_NAME` from the arguments after `streamlit run app/explorer.py --`."""
    return _cli(argv).ckpt


def checkpoint_roots(argv: Optional[Sequence[str]] = None) -> list[Path]:
    """The roots whose checkpoints and runs the sidebar lists: `$INTERP_CHECKPOINT_ROOT`
    (default data/checkpoints and data/runs), then each `--allow-root`."""
    env = os.environ.get(ENV_ROOT)
    roots = [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else [REPO_ROOT / r for r in DEFAULT_ROOTS]
    return roots + [Path(p).expanduser() for p in _cli(argv).allow_root]


def allowed_roots(argv: Optional[Sequence[str]] = None) -> list[Path]:
    """Every directory a checkpoint may be opened from, symlinks resolved."""
    roots = [REPO_ROOT / r for r in ALWAYS_ALLOWED] + [Path.cwd() / "runs"] + checkpoint_roots(argv)
    ckpt = _cli(argv).ckpt
    if ckpt and (os.sep in ckpt or Path(ckpt).expanduser().is_absolute()):  # a directory the server was started on
        p = _absolute(Path(ckpt).expanduser())
        roots += [p.parent if STEP_DIR.match(p.name) else p]
    return list(dict.fromkeys(r.resolve() for r in roots))


def _absolute(p: Path) -> Path:
    return p if p.is_absolute() else Path.cwd() / p


def _inside(p: Path, roots: Sequence[Path]) -> bool:
    return any(p == r or r in p.parents for r in roots)


def refusal(text: str) -> AppError:
    """The one answer for a path outside the allowed roots, whether or not it exists."""
    return AppError(f"No such checkpoint directory among those this explorer may open: `{text}`. It opens "
                    f"checkpoints under the repository's data/ and runs/ and the roots it was started with; start it "
                    f"with `--allow-root DIR` (or set {ENV_ROOT}) to open another directory.")


def allowed(path_text: str, argv: Optional[Sequence[str]] = None) -> Path:
    """The directory `path_text` names, symlinks and `..` resolved, if it lies inside an
    allowed root (a relative path: against the working directory, then the repository);
    else the refusal. Nothing here touches the path before the check."""
    text = path_text.strip()
    p = Path(text).expanduser()
    roots = allowed_roots(argv)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        real = cand.resolve()
        if _inside(real, roots):
            return real
    raise refusal(text)


def check_dir(path_text: str, argv: Optional[Sequence[str]] = None) -> Path:
    """A user-typed checkpoint or run path -> a directory inside the allowed roots, or
    AppError saying what is wrong."""
    if not path_text.strip():
        raise AppError("The checkpoint path is empty.")
    p = allowed(path_text, argv)
    if not p.exists():
        raise AppError(f"No such checkpoint directory: `{path_text.strip()}`")
    if not p.is_dir():
        raise AppError(f"`{path_text.strip()}` is a file; give the checkpoint *directory* (with config.json, "
                       "model.safetensors).")
    if not (p / "config.json").exists() and not (p / "last").is_file() and not run_steps(p):
        raise AppError(f"`{path_text.strip()}` holds no config.json and no step_* checkpoints: not a checkpoint or run "
                       "directory.")
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
    (`ROOT/NAME/step_*/config.json`), sorted by name. A name found twice keeps the first. (A
    symlink in a root is the operator's listing: it opens by its name, not as a typed path.)"""
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
