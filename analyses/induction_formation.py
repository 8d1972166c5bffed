"""When do induction heads form, and does the loss drop at the same time? (Olsson et al. 2022)

    python -m analyses.induction_formation --ckpt data/runs/induction_formation --out out/induction_formation

`--ckpt` is a run directory trained with `train.metrics: [head_scores]` (per-head induction
and previous-token scores at every eval). The phase change is located twice, independently:
as the step where the (smoothed) eval loss falls fastest and as the step where the best
head's induction score rises fastest; the summary reports both and their distance. It also
re-measures the head scores of every checkpoint in the series with `interp.heads`, to check
the logged numbers against the saved weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import interp
from interp import plots
from interp.checkpoint import CheckpointManager, load_config, read_metrics, resolve
from interp.tasks import make_task
from interp.training.progress import head_scores

from .common import parser, write
from .grokking import run_dir_of


def steepest(steps: list[int], values: list[float], sign: int, window: int = 3) -> int:
    """The step where `values` (moving-averaged over `window` evals) changes fastest in the
    direction `sign` (-1: falls, +1: rises)."""
    v = np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="same")
    d = np.gradient(v, np.asarray(steps, dtype=float)) * sign
    d[: window // 2], d[len(d) - window // 2 :] = -np.inf, -np.inf  # edges of the moving average
    return int(steps[int(np.argmax(d))])


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    run = run_dir_of(args.ckpt)
    rows = read_metrics(run / "metrics.jsonl")
    evals = {r["step"]: r for r in rows if r["event"] == "eval"}
    progress = [r for r in rows if r["event"] == "progress"]
    if not progress or "induction_max" not in progress[0]:
        raise SystemExit(f"{run}: metrics.jsonl has no head_scores progress measure (train.metrics: [head_scores])")
    steps = [r["step"] for r in progress]
    loss = [evals[s]["loss"] for s in steps]
    ind = [r["induction_max"] for r in progress]
    prev = [r["prev_token_max"] for r in progress]
    loss_step = steepest(steps, loss, -1)
    score_step = steepest(steps, ind, +1)
    heads = sorted(k.split("/")[1] for k in progress[0] if k.startswith("induction/"))

    _, meta = load_config(resolve(run))
    task = make_task(**meta["task"])
    series = []
    for step, path in CheckpointManager(run, keep_last=None).checkpoints():
        model, _ = interp.load(path)
        with torch.no_grad():
            s = head_scores(model, task)
        logged = next((r for r in progress if r["step"] == step), None)
        series.append({"step": step, "induction_max": s["induction_max"], "prev_token_max": s["prev_token_max"],
                       "logged_induction_max": logged["induction_max"] if logged else None})

    final = progress[-1]
    top_ind = max(heads, key=lambda h: final[f"induction/{h}"])
    top_prev = max(heads, key=lambda h: final[f"prev_token/{h}"])
    plateau = [l for s, l in zip(steps, loss) if s < loss_step - 100]
    figures = {
        "phase_change": plots.metric_curves({"eval loss": (steps, loss)}, step=loss_step, log_y=True,
                                            title=f"Eval loss; steepest drop at step {loss_step}"),
        "scores": plots.metric_curves({"best induction score": (steps, ind), "best previous-token score": (steps, prev)},
                                      step=score_step, title=f"Head scores; steepest induction rise at step {score_step}"),
        "induction_per_head": plots.head_series_heatmap(steps, {h: [r[f"induction/{h}"] for r in progress] for h in heads},
                                                        title="Induction score of every head", mark_step=loss_step),
        "prev_token_per_head": plots.head_series_heatmap(steps, {h: [r[f"prev_token/{h}"] for r in progress]
                                                                 for h in heads},
                                                         title="Previous-token score of every head", mark_step=loss_step),
    }
    summary = {
        "run": str(run), "phase_change_step_by_loss": loss_step, "phase_change_step_by_induction_score": score_step,
        "distance_steps": abs(loss_step - score_step), "eval_every": steps[1] - steps[0],
        "plateau_loss": float(np.mean(plateau)) if plateau else None, "final_loss": loss[-1],
        "induction_max_before": ind[steps.index(min(steps, key=lambda s: abs(s - (loss_step - 150))))],
        "induction_max_after": ind[steps.index(min(steps, key=lambda s: abs(s - (loss_step + 150))))],
        "final_induction_max": ind[-1], "top_induction_head": top_ind, "top_prev_token_head": top_prev,
        "final_prev_token_max": prev[-1], "checkpoints": series,
    }
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
