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
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine: relaunch through torchrun "
                              "(train.parallel auto -> DDP; --set train.parallel=fsdp for FSDP)."),
) -> None:
    """Train a model; prints the final checkpoint directory."""
    import os

    from interp.checkpoint import CheckpointError
    from interp.training import TrainConfigError, train as run_train
    from models.config import ConfigError

    if config is None and resume is None:
        _fail("give --config PATH (or --resume RUN_DIR)")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "interp.cli", "train"]
        cmd += ["--config", str(config)] if config is not None else []
        cmd += ["--resume", str(resume)] if resume is not None else []
        for item in set_:
            cmd += ["--set", item]
        raise typer.Exit(subprocess.run(cmd).returncode)
    try:
        out = run_train(config, list(set_), resume=resume)
    except (TrainConfigError, CheckpointError, ConfigError) as e:
        _fail(str(e))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, from rank 0
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
    """Evaluate a checkpoint on its own task; prints JSON metrics. Coconut-trainer checkpoints
    (coconut, pause, cot, no_cot) answer the way they were trained, and say so."""
    from interp.checkpoint import CheckpointError
    from interp.training import TrainConfigError, evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(ckpt, split, device=device, batch_size=batch_size, max_batches=batches,
                                      n_generate=generate)
    except (TrainConfigError, CheckpointError) as e:
        _fail(str(e))
    if "evaluated_as" in metrics:  # a Coconut-trainer checkpoint: say how it was run
        typer.echo(f"evaluated as trained: {metrics['evaluated_as']}", err=True)
    typer.echo(json.dumps(_json_safe(metrics), indent=2))


def _config_summary(path: Path) -> dict:
    """Parameter counts and shape of the model a run config (YAML: its task supplies the
    vocabulary), a checkpoint or a ModelConfig JSON file describes."""
    from interp.checkpoint import CheckpointError, load_config
    from interp.training import TrainConfigError, build_model_config, build_task, load_run_config
    from models import ModelConfig, presets as model_presets
    from models.config import ConfigError

    try:
        if path.suffix in (".yaml", ".yml"):
            cfg = load_run_config(path)
            task = build_task(cfg["task"])
            model_cfg = build_model_config(cfg["model"], task.tokenizer, getattr(task, "max_len", None))
        elif path.is_dir() or path.name == "config.json" and (path.parent / "model.safetensors").exists():
            model_cfg, _ = load_config(path if path.is_dir() else path.parent)
        elif path.suffix == ".json":
            model_cfg = ModelConfig.from_json(path.read_text())
        else:
            _fail(f"{path}: expected a run config (.yaml), a checkpoint directory or a ModelConfig .json")
    except (TrainConfigError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    return model_presets.summary(model_cfg)


@app.command()
def presets(
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Summarise this run config (YAML), "
                                          "checkpoint or ModelConfig JSON instead: parameter count and shape."),
) -> None:
    """Every preset x size with parameter counts (or one config's, with --config)."""
    from models import presets as model_presets

    if config is not None:
        row = _config_summary(config)
        if as_json:
            typer.echo(json.dumps(row, indent=2))
            return
        width = max(map(len, row))
        for key, value in row.items():
            typer.echo(f"{key.ljust(width)}  {value:,}" if key.endswith("params") else f"{key.ljust(width)}  {value}")
        return
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
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. The default serves this machine "
                             "only; 0.0.0.0 shares the explorer with everyone who can reach the port."),
    allow_root: List[Path] = typer.Option([], "--allow-root", help="Also list and open checkpoints under DIR "
                                          "(repeatable; by default only data/ and runs/)."),
) -> None:
    """Open the Streamlit explorer (app/explorer.py), on 127.0.0.1 unless --host says otherwise."""
    app_file = REPO_ROOT / "app" / "explorer.py"
    if not app_file.exists():
        _fail(f"{app_file} not found: the explorer app is not installed in this checkout")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file), "--server.address", host,
           "--browser.gatherUsageStats", "false"]
    if port is not None:
        cmd += ["--server.port", str(port)]
    args = (["--ckpt", str(ckpt)] if ckpt is not None else []) + [a for r in allow_root for a in ("--allow-root", str(r))]
    if args:
        cmd += ["--", *args]
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


data_app = typer.Typer(no_args_is_help=True, help="Prepare training data.")
app.add_typer(data_app, name="data")

from interp.features.cli import app as features_app  # noqa: E402  (imports typer only; torch loads per command)
app.add_typer(features_app, name="features")


@data_app.command("prepare")
def data_prepare(
    config: Path = typer.Option(..., "--config", "-c", help="Run config whose task section is a text task."),
    out: Path = typer.Option(..., "--out", help="Directory for the shards (created)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override, e.g. task.seq_len=512 (repeatable)."),
    shard_tokens: int = typer.Option(100_000_000, "--shard-tokens", min=1, help="Tokens per shard file."),
) -> None:
    """Tokenize a text corpus once into memory-mapped uint16/uint32 token shards; train on them
    with `--set task.shards=OUT`. Prints the token count of each split and the rate."""
    import time

    from interp.shards import read_shards
    from interp.training import TrainConfigError
    from interp.training.data import prepare_shards

    start = time.perf_counter()
    try:
        path = prepare_shards(config, out, list(set_), shard_tokens)
    except (TrainConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    seconds = time.perf_counter() - start
    counts = {split: info["n_tokens"] for split, info in read_shards(path)["splits"].items()}
    total = sum(counts.values())
    typer.echo(" · ".join(f"{split} {n:,}" for split, n in counts.items())
               + f" tokens; read, tokenized and written in {seconds:.1f} s ({total / max(seconds, 1e-9) / 1e6:.2f} M tokens/s)",
               err=True)
    typer.echo(str(path))


from interp.graphs.cli import graph as _graph  # noqa: E402 - typer and pathlib only; the body imports torch

app.command("graph")(_graph)


def main() -> None:  # pragma: no cover - `python -m interp.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
