"""Does the model use context longer than it was trained on? Held-out loss at L, 2L, 4L, 8L.

    python -m analyses.length_extrapolation --ckpt data/checkpoints/shakespeare_factored_alibi \
        data/checkpoints/shakespeare_vanilla --out out/length

L is the training length (the text task's `seq_len`). For each checkpoint and context the
test split is read in non-overlapping windows and in sliding windows (stride = context / 2,
so every scored token sees at least half a window); each window starts with <bos> as the
training examples did. Models with learned positions are marked "refused" past n_ctx (their
position table has no rows there). Also the loss per position over the longest context the
model accepts and the in-context-learning score loss@500 - loss@50 (Olsson et al. 2022).
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp import eval as ev
from interp import plots

from .common import load_with_task, write


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, type=Path, help="checkpoints of text tasks")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--multiples", default="1,2,4,8", help="context lengths as multiples of L")
    p.add_argument("--max-tokens", type=int, default=None, help="read at most this many tokens of the split")
    args = p.parse_args(argv)
    multiples = [int(m) for m in args.multiples.split(",")]
    results, per_position, lines = {}, {}, {}
    for path in args.ckpt:
        model, tokenizer, task = load_with_task(path)
        if task is None or task.name != "text":
            raise SystemExit(f"{path}: not a text-task checkpoint")
        ids = ev.split_tokens(task, args.split)
        if args.max_tokens:
            ids = ids[: args.max_tokens]
        bos = tokenizer.bos_token_id if task.bos else None
        L = task.seq_len
        name = path.name
        rows = []
        for m in multiples:
            context = m * L
            row = {"multiple": m, "context": context}
            try:
                row["nonoverlapping"] = ev.loss_at_context(model, ids, context, bos=bos)
                row["sliding"] = ev.loss_at_context(model, ids, context, mode="sliding", bos=bos)
            except ev.ContextTooLong as e:
                row["refused"] = str(e)
            except ValueError as e:  # the split is shorter than one window
                row["skipped"] = str(e)
            rows.append(row)
        results[name] = {"L": L, "positional": model.cfg.positional, "n_ctx": model.cfg.n_ctx,
                         "n_tokens": int(len(ids)), "contexts": rows}
        longest = max((r["context"] for r in rows if "nonoverlapping" in r), default=None)
        if longest:
            pp = ev.loss_per_position(model, ids, longest, bos=bos)
            per_position[name] = pp
            results[name]["per_position_context"] = longest
            if len(pp) > 60:
                results[name]["icl_score"] = ev.icl_score(pp)
        ok = [r for r in rows if "nonoverlapping" in r]
        lines[f"{name} (non-overlapping)"] = ([r["context"] for r in ok], [r["nonoverlapping"] for r in ok])
        lines[f"{name} (sliding)"] = ([r["context"] for r in ok], [r["sliding"] for r in ok])
    figures = {"loss_vs_context": plots.metric_curves(lines, title="Held-out loss vs context length "
                                                      "(learned positions stop at n_ctx)", yaxis_title="loss")}
    figures["loss_vs_context"].update_layout(xaxis_title="context (tokens)")
    figures["loss_vs_context"].update_xaxes(type="log")
    if per_position:
        smooth = {k: torch.nn.functional.avg_pool1d(v[None, None], 9, 1, 4, count_include_pad=False)[0, 0]
                  for k, v in per_position.items()}
        n = max(len(v) for v in smooth.values())
        figures["loss_per_position"] = plots.per_token_lines(
            smooth, [str(i) for i in range(n)], title="Loss per position (9-token moving average)",
            yaxis_title="loss")
    return write(args.out, {"split": args.split, "models": results}, figures)


if __name__ == "__main__":
    main()
