"""What does step supervision change? Compare checkpoints trained with different step masks.

    python -m analyses.step_masking --ckpt data/checkpoints/add3_none data/checkpoints/add3_mask_steps \
        data/checkpoints/add3_mask_answer --out out/step_masking

Every checkpoint is scored on the same test problems, with every step and answer token as a
target (whatever it was trained on): per-segment loss and accuracy, attention from answer to
step tokens, greedy exact match of the whole completion. Writes `summary.json` and bar charts.
"""

from __future__ import annotations

from interp import plots
from interp.steps import compare_checkpoints
from interp.tasks import make_task

from .common import load_with_task, parser, write


def main(argv=None):
    args = parser(__doc__.splitlines()[0], many=True).parse_args(argv)
    models, task = {}, None
    for path in args.ckpt:
        model, tokenizer, t = load_with_task(path)
        if t is None or t.name != "arithmetic":
            raise SystemExit(f"{path}: step_masking compares arithmetic checkpoints; this one's task is {t and t.name}")
        models[path.name] = (model, tokenizer)
        task = task or t
    scoring = make_task(**{**task.config(), "step_masking_mode": "none"})  # score steps and answer alike
    examples = list(scoring.split(args.split))[: args.n]
    rows = compare_checkpoints(models, examples)
    figures = {f"segments_{m}": plots.segment_bars(rows, metric=m) for m in ("loss", "accuracy")}
    return write(args.out, {"checkpoints": [str(p) for p in args.ckpt], "n_examples": len(examples), "rows": rows}, figures)


if __name__ == "__main__":
    main()
