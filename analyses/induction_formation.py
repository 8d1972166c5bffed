"""When do induction heads form, and does the loss drop at the same time? (Olsson et al. 2022)

    python -m analyses.induction_formation --ckpt data/runs/induction_formation --out out/induction_formation

`--ckpt` is a run directory trained with `train.metrics: [head_scores]` (per-head induction
and previous-token scores at every eval). From metrics.jsonl the phase change is located twice,
independently: as the step where the (3-eval moving-averaged) eval loss falls fastest and as
the step where the best head's induction score rises fastest; the summary reports both, their
distance, and the raw eval-to-eval intervals of the steepest fall and rise.

It also says what shape the loss curve has around the score rise (`loss_shape`), by these
definitions: the *onset* is the first eval where the best induction score has gone 5% of the
way from its first to its final value; a *bump* is a rise of the moving-averaged loss by more
than 0.01 nats anywhere before the steepest fall; a *plateau* is a 100-step stretch before the
onset over which the loss falls by less than 5% of the run's total fall (first eval - last).
Without either the shape is "single fall". The flattest 100-step stretch is reported either
way. Finally it re-measures the head scores of every checkpoint in the series with
`interp.training.progress.head_scores`, to check the logged numbers against the saved weights.
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


BUMP_NATS = 0.01  # a rise of the smoothed eval loss above this is a bump (eval noise is far smaller)
PLATEAU_SHARE = 0.05  # a 100-step stretch falling less than this share of the total fall is a plateau
ONSET_SHARE = 0.05  # the onset: the induction score has gone this share of the way to its final value


def steepest_interval(steps: list[int], values: list[float], sign: int) -> dict:
    """The consecutive pair of evals between which `values` changes most in direction `sign`."""
    d = np.diff(np.asarray(values, dtype=float)) * sign
    i = int(np.argmax(d))
    return {"from_step": int(steps[i]), "to_step": int(steps[i + 1]), "from": float(values[i]),
            "to": float(values[i + 1]), "rate_per_step": float(d[i] / (steps[i + 1] - steps[i]))}


def loss_shape(steps: list[int], loss: list[float], score: list[float], stretch: int = 100, window: int = 3) -> dict:
    """Plateau? bump? or one fall? The shape of the eval loss around the induction score's rise,
    by the definitions in the module docstring (`stretch` in steps, `window` evals of smoothing)."""
    steps_a, loss_a, score_a = np.asarray(steps), np.asarray(loss, dtype=float), np.asarray(score, dtype=float)
    fall_i = int(np.searchsorted(steps_a, steepest(steps, loss, -1, window)))
    onset_i = int(np.argmax(score_a >= score_a[0] + ONSET_SHARE * (score_a[-1] - score_a[0])))
    total_fall = float(loss_a[0] - loss_a[-1])
    # bump: how far the moving-averaged loss climbs above its running minimum before the fall
    smooth = np.convolve(loss_a, np.ones(window) / window, mode="valid")[: max(1, fall_i - window // 2)]
    bump = float(np.max(smooth - np.minimum.accumulate(smooth)))
    # plateau: the flattest `stretch` steps before the onset, against the run's whole fall
    n = max(1, int(round(stretch / (steps[1] - steps[0]))))
    falls = [(float(loss_a[i] - loss_a[i + n]), i) for i in range(onset_i - n + 1)]
    steep = steepest_interval(steps, loss, -1)
    flattest = None
    if falls:
        fall, i = min(falls)
        flattest = {"from_step": int(steps_a[i]), "to_step": int(steps_a[i + n]), "fall": fall,
                    "share_of_total_fall": fall / total_fall,
                    "rate_per_step": fall / float(steps_a[i + n] - steps_a[i]),
                    "rate_vs_steepest": fall / float(steps_a[i + n] - steps_a[i]) / steep["rate_per_step"]}
    plateau = flattest is not None and flattest["share_of_total_fall"] < PLATEAU_SHARE
    has_bump = bump > BUMP_NATS
    shape = {(False, False): "single fall", (True, False): "plateau, then fall", (False, True): "bump, then fall",
             (True, True): "plateau, bump, then fall"}[(plateau, has_bump)]
    return {
        "loss_shape": shape, "onset_step": int(steps_a[onset_i]), "loss_at_first_eval": float(loss_a[0]),
        "loss_at_onset": float(loss_a[onset_i]), "total_fall": total_fall,
        "largest_rise_before_fall": bump, "bump_threshold_nats": BUMP_NATS,
        "evals_with_higher_loss_than_the_last_before_fall": int(np.sum(np.diff(loss_a[: fall_i + 1]) > 0)),
        "flattest_stretch_before_onset": flattest, "plateau_threshold_share": PLATEAU_SHARE,
    }


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
    shape = loss_shape(steps, loss, ind)
    fall, rise = steepest_interval(steps, loss, -1), steepest_interval(steps, ind, +1)
    figures = {
        "phase_change": plots.loss_and_score(
            steps, loss, ind, marks={"onset": shape["onset_step"], "steepest loss fall": loss_step},
            title=f"{shape['loss_shape']}: eval loss falls fastest at step {loss_step} "
                  f"({fall['from_step']}->{fall['to_step']}: {fall['from']:.2f}->{fall['to']:.2f}), the induction "
                  f"score rises fastest at step {score_step}"),
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
        "steepest_loss_fall": fall, "steepest_induction_rise": rise, **shape, "final_loss": loss[-1],
        "induction_max_before": ind[steps.index(min(steps, key=lambda s: abs(s - (loss_step - 150))))],
        "induction_max_after": ind[steps.index(min(steps, key=lambda s: abs(s - (loss_step + 150))))],
        "final_induction_max": ind[-1], "top_induction_head": top_ind, "top_prev_token_head": top_prev,
        "final_prev_token_max": prev[-1], "checkpoints": series,
    }
    return write(args.out, summary, figures)


if __name__ == "__main__":
    main()
