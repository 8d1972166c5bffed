"""Shipped files from any working directory: a relative path that does not exist from here is
looked up under the repository root (the checkout `interp/` lives in), so
`interp.load("data/checkpoints/induction_attn_only")` and a task's `path:
data/tinyshakespeare.txt` work wherever Python was started."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

REPO_ROOT = Path(__file__).resolve().parent.parent


def shipped(path: Union[str, os.PathLike]) -> Path:
    """`path` if it exists from the working directory, else `REPO_ROOT / path` if that exists,
    else `path` as given (the caller's error then names it; `looked_in` says where we looked)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def looked_in() -> str:
    return f"looked in {Path.cwd()} and {REPO_ROOT}"
