"""`interp features ...`: sparse dictionaries on the command line.

```bash
interp features eval out/sae --ckpt data/checkpoints/shakespeare_vanilla --tokens 50000 --out out/sae_eval
interp features dashboard out/sae --ckpt data/checkpoints/shakespeare_vanilla --tokens 200000 --out out/sae/dashboard
```
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Sparse dictionaries (SAEs, transcoders) on a model's hooks.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


@app.command("eval")
def eval_(
    dictionary: Path = typer.Argument(..., help="Dictionary directory (cfg.json + sae_weights.safetensors)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Model checkpoint (default: the one the dictionary "
                                        "records in cfg.json metadata.interp.config.model.checkpoint)."),
    tokens: int = typer.Option(50_000, "--tokens", min=1, help="Held-out tokens to evaluate on."),
    split: str = typer.Option("test", "--split", help="Task split the tokens come from: train | val | test."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Cut rows to this many tokens."),
    device: str = typer.Option("auto", "--device"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write eval.json, density.html and losses.html here."),
) -> None:
    """L0, FVE, MSE, cosine, CE loss recovered (zero / mean ablation), KL, dead and dense
    latents, l2 ratio, latent-density histogram; prints the JSON summary."""
    from interp import plots
    from interp.checkpoint import CheckpointError
    from interp.training.config import resolve_device

    from .dictionary import DictionaryError
    from .evaluation import evaluate, summary
    from .io import load

    try:
        sae = load(dictionary)
        source = ckpt if ckpt is not None else sae.cfg.model.get("checkpoint")
        if source is None:
            _fail(f"{dictionary}: the dictionary records no checkpoint; pass --ckpt MODEL")
        stats = evaluate(sae, str(source), tokens=tokens, batch_size=batch_size, device=resolve_device(device),
                         split=split, seq_len=seq_len)
    except (DictionaryError, CheckpointError) as e:
        _fail(str(e))
    stats = _finite(stats)
    stats.update(dictionary=str(dictionary), checkpoint=str(source), split=split)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(stats, indent=2) + "\n")
        name = f"{sae.cfg.arch} on {sae.cfg.hook_name}"
        plots.latent_density_histogram(stats["latent_density"], title=name).write_html(
            out / "density.html", include_plotlyjs="directory")
        plots.dictionary_eval_losses(stats, title=name).write_html(out / "losses.html", include_plotlyjs="directory")
    typer.echo(json.dumps(summary(stats), indent=2))


@app.command("train")
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (configs/features/*.yaml)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override, e.g. train.tokens=2e6, k=32 or "
                                   "dictionaries.resid_0.d_sae=1024 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Features run dir (its last checkpoint) or a "
                                          "checkpoint to continue from."),
) -> None:
    """Train the config's dictionaries from one model forward (interp.features.training); prints
    the run directory. Under torchrun the token stream splits across processes."""
    import os

    from interp.checkpoint import CheckpointError
    from interp.training.config import TrainConfigError

    from .dictionary import DictionaryError
    from .training import run

    if config is None and resume is None:
        _fail("give --config PATH (or --resume RUN_DIR)")
    try:
        _, run_dir = run(config, list(set_), resume=resume)
    except (TrainConfigError, CheckpointError, DictionaryError) as e:
        _fail(str(e))
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(run_dir))


@app.command("dashboard")
def dashboard_(
    dictionary: Path = typer.Argument(..., help="Dictionary directory (cfg.json + sae_weights.safetensors)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Model checkpoint (default: the one the dictionary "
                                        "records)."),
    tokens: int = typer.Option(200_000, "--tokens", min=1, help="Held-out tokens the dashboards are computed over."),
    out: Optional[Path] = typer.Option(None, "--out", help="Store directory (default: DICT/dashboard)."),
    split: str = typer.Option("test", "--split", help="Task split the tokens come from: train | val | test."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Cut rows to this many tokens."),
    device: str = typer.Option("auto", "--device"),
    context: str = typer.Option("24,8", "--context", help="Tokens shown before,after each activation."),
    show: int = typer.Option(5, "--show", min=0, help="Print the summaries of this many densest latents."),
) -> None:
    """Per-latent dashboards (top contexts, activation bins, histogram, density, logit effect,
    decoder neighbours) into a store a page opens from disk; prints a JSON summary."""
    from interp.checkpoint import CheckpointError

    from .dashboards import dashboard
    from .dictionary import DictionaryError

    try:
        before, after = (int(x) for x in context.split(","))
    except ValueError:
        _fail(f"--context {context!r}: give two integers, before,after (e.g. 24,8)")
    try:
        store = dashboard(dictionary, None if ckpt is None else str(ckpt), tokens=tokens, out=out, split=split,
                          batch_size=batch_size, seq_len=seq_len, device=device, context=(before, after))
    except (DictionaryError, CheckpointError) as e:
        _fail(str(e))
    table = store.table()
    density = table["density"]
    order = sorted(range(len(density)), key=lambda i: -density[i])[:show]
    m = store.manifest
    typer.echo(json.dumps({
        "store": str(store.dir), "d_sae": store.d_sae, "n_tokens": m["tokens"]["n_scored"],
        "dead": int((density == 0).sum()), "elapsed_s": m["elapsed_s"], "device": m["device"],
        "logit_effect": m["logit_effect"],
        "densest": [{"latent": i, "density": round(float(density[i]), 5), "summary": table["summary"][i]} for i in order],
    }, indent=2, ensure_ascii=False))


@app.command("steer")
def steer_(
    dictionary: Path = typer.Argument(..., help="Dictionary directory."),
    latent: list[int] = typer.Option(..., "--latent", help="Latent to steer with (or, with --ablate, to zero; repeatable)."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt text."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Model checkpoint (default: the dictionary's)."),
    alpha: float = typer.Option(0.0, "--alpha", help="Added alpha x the latent's decoder direction (latent units)."),
    ablate: bool = typer.Option(False, "--ablate", help="Zero the latent(s) instead of steering."),
    pos: Optional[list[int]] = typer.Option(None, "--pos", help="Prompt positions only (repeatable; default all)."),
    new: int = typer.Option(20, "--new", min=0, help="Greedy tokens generated before / after."),
    k: int = typer.Option(10, "--k", min=1, help="Next tokens listed."),
) -> None:
    """Steer with a feature (add alpha x its decoder direction at its hook) or ablate features,
    and print the next-token distribution and greedy continuation before / after (JSON)."""
    import interp
    from interp.checkpoint import CheckpointError

    from .dictionary import DictionaryError
    from .io import load
    from .steering import ablate as ablate_fn, steer

    try:
        sae = load(dictionary)
        source = ckpt if ckpt is not None else sae.cfg.model.get("checkpoint")
        if source is None:
            _fail(f"{dictionary}: the dictionary records no checkpoint; pass --ckpt MODEL")
        model, tok = interp.load(str(source))
        if ablate:
            r = ablate_fn(model, sae, list(latent), prompt, positions=pos, max_new_tokens=new, k=k)
        else:
            if len(latent) != 1:
                _fail("steering takes one --latent (several are for --ablate)")
            r = steer(model, sae, latent[0], prompt, alpha=alpha, positions=pos, max_new_tokens=new, k=k)
    except (DictionaryError, CheckpointError) as e:
        _fail(str(e))

    def side(d):
        return {"top": [{"token": tok.decode([i]), "id": i, "prob": round(p, 5)} for i, p in d.top],
                "continuation": tok.decode(d.continuation)}

    typer.echo(json.dumps({"latents": r.latents, "alpha": r.alpha, "positions": r.positions, "hook": r.hook,
                           "kl": round(r.kl, 6), "before": side(r.before), "after": side(r.after)},
                          indent=2, ensure_ascii=False))
