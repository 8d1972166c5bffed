"""What every analysis script shares: arguments, loading a checkpoint with its task, test
inputs, and writing figures + a JSON summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import interp
from interp.checkpoint import load_config
from interp.tasks import Batch, collate, make_task


def parser(description: str, many: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    if many:
        p.add_argument("--ckpt", nargs="+", required=True, type=Path, help="checkpoint directories")
    else:
        p.add_argument("--ckpt", required=True, type=Path, help="checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument("--n", type=int, default=32, help="test examples to analyse")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    return p


def load_with_task(path: Path):
    """(model, tokenizer, task or None) for a checkpoint; the task is rebuilt from config.json."""
    model, tokenizer = interp.load(path)
    _, meta = load_config(path)
    task = make_task(**meta["task"]) if meta.get("task") else None
    return model, tokenizer, task


def inputs(task, tokenizer, n: int, split: str = "test") -> Batch:
    """The first `n` examples of the task's split, padded into a batch."""
    if task is None:
        raise SystemExit("this checkpoint records no task in config.json; analyses need one to draw inputs")
    examples = list(task.split(split))[:n]
    return collate(examples, tokenizer.pad_token_id)


def write(out: Path, summary: dict, figures: Optional[dict[str, Any]] = None) -> Path:
    """Write `summary.json` and one self-contained-but-light HTML per figure into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in (figures or {}).items():
        fig.write_html(out / f"{name}.html", include_plotlyjs="directory")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"wrote {out / 'summary.json'} and {len(figures or {})} figure(s)")
    return out / "summary.json"
