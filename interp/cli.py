"""`interp` command line: train, eval, presets, explore, export.

```bash
interp train --config configs/vanilla_induction.yaml --set train.steps=500 --set model.d_model=128
interp train --resume runs/vanilla_induction --set train.steps=2000
interp eval runs/vanilla_induction --split test
interp presets
interp explore runs/vanilla_induction
interp export runs/llama-like_shakespeare --format hf --out hf_model/
```
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, evaluate, inspect and export small transformers for interpretability.",
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (configs/*.yaml)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override, e.g. train.lr=3e-4 or model.d_model=128 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run dir or checkpoint to continue from."),
) -> None:
    """Train a model; prints the final checkpoint directory."""
    from interp.checkpoint import CheckpointError
    from interp.training import TrainConfigError, train as run_train
    from models.config import ConfigError

    if config is None and resume is None:
        _fail("give --config PATH (or --resume RUN_DIR)")
    try:
        out = run_train(config, list(set_), resume=resume)
    except (TrainConfigError, CheckpointError, ConfigError) as e:
        _fail(str(e))
    typer.echo(str(out))


@app.command("eval")
def eval_(
    ckpt: Path = typer.Argument(..., help="Checkpoint dir, run dir (its last) or run_dir/best."),
    split: str = typer.Option("val", "--split", help="train | val | test"),
    batch_size: int = typer.Option(32, "--batch-size"),
    batches: Optional[int] = typer.Option(None, "--batches", help="Evaluate at most this many batches (default: all)."),
    generate: int = typer.Option(64, "--generate", help="Examples for greedy exact-match accuracy (0: skip)."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Evaluate a checkpoint on its own task; prints JSON metrics."""
    from interp.checkpoint import CheckpointError
    from interp.training import TrainConfigError, evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(ckpt, split, device=device, batch_size=batch_size, max_batches=batches,
                                      n_generate=generate)
    except (TrainConfigError, CheckpointError) as e:
        _fail(str(e))
    typer.echo(json.dumps(_json_safe(metrics), indent=2))


@app.command()
def presets(as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table.")) -> None:
    """Every preset x size with parameter counts."""
    from models import presets as model_presets

    rows = model_presets.table()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = ["preset", "size", "n_layers", "d_model", "n_heads", "n_kv_heads", "n_ctx", "params", "non_embedding_params"]
    cells = [[f"{r[c]:,}" if isinstance(r[c], int) and c.endswith("params") else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [isinstance(rows[0][c], int) for c in columns]

    def fmt(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))

    typer.echo(fmt(columns))
    typer.echo("  ".join("-" * w for w in widths))
    for row in cells:
        typer.echo(fmt(row))


@app.command()
def explore(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint to open (default: the app's shipped one)."),
    port: Optional[int] = typer.Option(None, "--port"),
) -> None:
    """Open the Streamlit explorer (app/explorer.py)."""
    app_file = REPO_ROOT / "app" / "explorer.py"
    if not app_file.exists():
        _fail(f"{app_file} not found: the explorer app is not installed in this checkout")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file)]
    if port is not None:
        cmd += ["--server.port", str(port)]
    if ckpt is not None:
        cmd += ["--", "--ckpt", str(ckpt)]
    try:
        code = subprocess.run(cmd).returncode
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="Checkpoint dir or run dir."),
    format: str = typer.Option("hf", "--format", help="Export format (hf: Hugging Face transformers)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    wrapper: bool = typer.Option(False, "--wrapper", help="Always use our InterpForCausalLM wrapper, even where "
                                 "transformers has a native class (GPT-2 / Llama / GPT-J / MPT)."),
) -> None:
    """Export a checkpoint (model and tokenizer) to a Hugging Face transformers directory: the
    native transformers class where one exists, else our InterpForCausalLM wrapper (load it
    with AutoModelForCausalLM.from_pretrained after `import models`)."""
    if format != "hf":
        _fail(f"unknown --format {format!r}; supported: hf")
    try:
        from models.hf import export_hf
    except ImportError as e:
        _fail(f"HF export needs models.hf, which is not available in this install ({e})")
    from interp.checkpoint import CheckpointError, load

    try:
        model, tokenizer = load(ckpt)
    except CheckpointError as e:
        _fail(str(e))
    try:
        hf_model = export_hf(model, out, tokenizer, arch="wrapper" if wrapper else "auto")
    except (NotImplementedError, ValueError) as e:
        _fail(f"cannot export {model.cfg.name} to HF transformers: {e}")
    typer.echo(f"{out} ({type(hf_model).__name__})")


def main() -> None:  # pragma: no cover - `python -m interp.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
