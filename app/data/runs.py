"""Training runs: a directory of `step_NNNNNN/` checkpoints with `last` / `best` pointers and
a `metrics.jsonl` (what `interp.checkpoint.CheckpointManager` writes), and the numeric
series of that log for the Training page."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .discovery import STEP_DIR, run_steps
from .errors import AppError


@dataclass
class Run:
    """A training run: `dir/step_NNNNNN/` checkpoints, `last`/`best` pointers, `metrics.jsonl`."""

    dir: Path
    steps: dict[int, Path]
    last: Optional[int] = None
    best: Optional[int] = None

    @property
    def metrics_file(self) -> Optional[Path]:
        """The run's log: `dir/metrics.jsonl`, else the newest step's copy."""
        if (self.dir / "metrics.jsonl").is_file():
            return self.dir / "metrics.jsonl"
        for step in sorted(self.steps, reverse=True):
            f = self.steps[step] / "metrics.jsonl"
            if f.is_file() and f.stat().st_size:
                return f
        return None

    @property
    def has_training_view(self) -> bool:
        return len(self.steps) >= 2 and self.metrics_file is not None


def _pointer_step(run_dir: Path, name: str) -> Optional[int]:
    f = run_dir / name
    if not f.is_file():
        return None
    m = STEP_DIR.match(f.read_text().strip())
    return int(m.group(1)) if m else None


def _run(run_dir: Path, steps: dict[int, Path]) -> Run:
    return Run(run_dir, steps, _pointer_step(run_dir, "last"), _pointer_step(run_dir, "best"))


def run_of(path: Path) -> Optional[tuple[Run, Optional[int]]]:
    """(the run `path` belongs to, the step `path` is) when `path` is a run directory (step
    None) or a `step_*` checkpoint beside other `step_*` checkpoints; else None."""
    path = Path(path)
    m = STEP_DIR.match(path.name)
    if m and (path / "config.json").is_file():
        steps = run_steps(path.parent)
        if len(steps) >= 2:
            return _run(path.parent, steps), int(m.group(1))
        return None
    steps = run_steps(path)
    if steps:
        return _run(path, steps), None
    return None


def metric_series(file: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric scalar series of a metrics.jsonl: "event/key" -> (steps, values).

    Nested dicts become "key/sub", lists of numbers "key[i]" (lists of lists "key[i][j]");
    rows without a step, strings and booleans are skipped."""
    from interp.checkpoint import CheckpointError, read_metrics

    try:
        rows = read_metrics(file)
    except CheckpointError as e:
        raise AppError(f"Cannot read the run's metrics: {e}") from None
    out: dict[str, tuple[list[int], list[float]]] = {}

    def add(name: str, step: int, v) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            if math.isfinite(float(v)):
                s = out.setdefault(name, ([], []))
                s[0].append(step)
                s[1].append(float(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                add(f"{name}/{k}", step, x)
        elif isinstance(v, (list, tuple)) and len(v) <= 256:
            for i, x in enumerate(v):
                add(f"{name}[{i}]", step, x)

    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        event = str(row.get("event") or "log")
        if "split" in row and isinstance(row["split"], str):
            event = f"{event}:{row['split']}"
        for k, v in row.items():
            if k not in ("step", "event", "split"):
                add(f"{event}/{k}", int(step), v)
    return out
