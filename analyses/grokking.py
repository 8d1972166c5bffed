"""How and when did a modular-addition model grok? (Nanda et al. 2023)

    python -m analyses.grokking --ckpt data/runs/grokking --out out/grokking

`--ckpt` is a run directory written by the trainer with `train.metrics: [weight_norms,
fourier]` (or a checkpoint inside one). Figures: train and test accuracy and loss over
steps; the final number embeddings' Fourier spectrum with its key frequencies; the progress
measures as logged (restricted / excluded loss, weight norm, top-8 share); and restricted /
excluded loss recomputed over the checkpoint series with the *final* key frequencies, as in
the paper. `summary.json` has the steps test accuracy first passes 5%, 10%, 50% and 99%, the
key frequencies and the per-checkpoint series.

Fourier "share" (`interp.training.progress.embedding_spectrum`): the p number rows of W_E
(p, d_model) are written in the orthonormal Fourier basis of Z_p; frequency k's energy is
the squared norm of its cos k and sin k coefficients summed over d_model; a share is that
energy over the energy of all p // 2 frequencies, i.e. of the squared Frobenius norm of W_E's
number rows minus its constant (mean-over-numbers) component, which `constant_share` gives.
`top_k_share` is the share of the k frequencies with the most energy; `key_frequencies` the
fewest frequencies holding 80%.
"""

from __future__ import annotations

from pathlib import Path

import torch

import interp
from interp import plots
from interp.checkpoint import CheckpointManager, load_config, read_metrics, resolve
from interp.tasks import make_task
from interp.training.progress import (
    all_pair_logits,
    embedding_spectrum,
    key_frequencies,
    restricted_and_excluded,
    modular_tables,
)

from .common import parser, write


def run_dir_of(path: Path) -> Path:
    path = Path(path)
    if (path / "metrics.jsonl").exists() and any(path.glob("step_*")):
        return path
    ckpt = resolve(path)
    return ckpt.parent if any(ckpt.parent.glob("step_*")) else ckpt


def first_step(steps, values, threshold: float):
    return next((s for s, v in zip(steps, values) if v is not None and v > threshold), None)


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    run = run_dir_of(args.ckpt)
    rows = read_metrics(run / "metrics.jsonl")
    evals = [r for r in rows if r["event"] == "eval"]
    progress = [r for r in rows if r["event"] == "progress"]
    steps = [r["step"] for r in evals]
    test_acc, train_acc = [r["token_acc"] for r in evals], [r["train_token_acc"] for r in evals]

    final_path = resolve(run)
    model, _ = interp.load(final_path)
    _, meta = load_config(final_path)
    task = make_task(**meta["task"])
    if task.name != "modular":
        raise SystemExit(f"{final_path}: task {task.name!r}; this analysis is for modular arithmetic")
    p = task.p
    spectrum = embedding_spectrum(model.W_E[:p].detach())
    shares = (spectrum / spectrum.sum()).tolist()
    keys = key_frequencies(spectrum)
    ranked = torch.sort(spectrum, descending=True)
    top_k_share = {k: float(ranked.values[:k].sum() / spectrum.sum()) for k in (1, 2, 4, 8, 16)}
    top_frequencies = [{"frequency": int(i) + 1, "share": shares[int(i)]} for i in ranked.indices[:8]]
    numbers = model.W_E[:p].detach().double()
    constant_share = float(numbers.mean(0).pow(2).sum() * p / numbers.pow(2).sum())  # the k = 0 row's energy

    # restricted / excluded loss over the series, with the final model's key frequencies
    answers, train_mask = modular_tables(task, "cpu")
    series = []
    for step, path in CheckpointManager(run, keep_last=None).checkpoints() if (run / "last").exists() else []:
        m, _ = interp.load(path)
        with torch.no_grad():
            logits = all_pair_logits(m, task)
        r, e = restricted_and_excluded(logits, keys, answers, train_mask)
        acc = float((logits.argmax(-1) == answers).float()[~train_mask].mean())
        series.append({"step": step, "restricted_loss": r, "excluded_loss": e, "test_acc": acc})

    figures = {
        "accuracy": plots.metric_curves({"train accuracy": (steps, train_acc), "test accuracy": (steps, test_acc)},
                                        title="Accuracy (full batch of 30% of pairs; test = the other 70%)"),
        "loss": plots.metric_curves({"train loss": (steps, [r["train_loss"] for r in evals]),
                                     "test loss": (steps, [r["loss"] for r in evals])}, title="Loss", log_y=True),
        "fourier_spectrum": plots.fourier_spectrum(shares, keys, title=f"Final W_E: key frequencies {keys}; top 4 hold "
                                                        f"{top_k_share[4]:.1%}, top 8 {top_k_share[8]:.1%} of the energy"),
    }
    if progress:
        ps = [r["step"] for r in progress]
        figures["progress_measures"] = plots.metric_curves(
            {k: (ps, [r.get(k) for r in progress]) for k in ("restricted_loss", "excluded_loss")},
            title="Progress measures as logged (key frequencies of the model at each step)", log_y=True)
        figures["weight_norm"] = plots.metric_curves(
            {"total weight norm": (ps, [r.get("weight_norm") for r in progress])}, title="Weight norm")
        figures["top8_share"] = plots.metric_curves(
            {"share of W_E in its top 8 frequencies": (ps, [r.get("fourier/top8_share") for r in progress])},
            title="Sparsity of the embedding in the Fourier basis")
    if series:
        ss = [s["step"] for s in series]
        figures["series_restricted_excluded"] = plots.metric_curves(
            {k: (ss, [s[k] for s in series]) for k in ("restricted_loss", "excluded_loss")},
            title=f"Over the checkpoint series, final key frequencies {keys}", log_y=True)

    later = [a for s, a in zip(steps, train_acc) if s >= steps[-1] / 2]
    summary = {
        "run": str(run), "p": p, "n_train": len(task.split("train")), "steps": steps[-1],
        "test_acc_first_above_0.5": first_step(steps, test_acc, 0.5),
        "test_acc_first_above_0.99": first_step(steps, test_acc, 0.99),
        "train_acc_first_above_0.99": first_step(steps, train_acc, 0.99),
        "min_train_acc_later_half": min(later), "final_test_acc": test_acc[-1], "final_train_acc": train_acc[-1],
        "test_acc_first_above_0.05": first_step(steps, test_acc, 0.05),
        "test_acc_first_above_0.1": first_step(steps, test_acc, 0.1),
        "max_test_acc_until_15000": max((a for s, a in zip(steps, test_acc) if s <= 15_000), default=None),
        "test_acc_at_10pct": test_acc[max(0, len(steps) // 10 - 1)],
        "key_frequencies": keys, "top_k_share": top_k_share, "top8_share": top_k_share[8],
        "top_frequencies": top_frequencies, "constant_share": constant_share,
        "spectrum_shares": shares, "series": series,
    }
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
