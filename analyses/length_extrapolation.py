"""Does the model use context longer than it was trained on? Held-out loss at L, 2L, 4L, 8L,
and whether the far context is used or ignored.

    python -m analyses.length_extrapolation --ckpt data/checkpoints/shakespeare_factored_alibi \
        data/checkpoints/shakespeare_vanilla --out out/length

L is the training length (the text task's `seq_len`). For each checkpoint and context the
test split is read in non-overlapping windows and in sliding windows (stride = context / 2,
so every scored token sees at least half a window); each window starts with <bos> as the
training examples did. Models with learned positions are marked "refused" past n_ctx (their
position table has no rows there). Also the loss per position over the longest context the
model accepts and the in-context-learning score loss@500 - loss@50 (Olsson et al. 2022).

A lower loss at 8L than at L does not by itself mean the model *uses* tokens more than L
back: in back-to-back windows of 8L fewer tokens sit near a window's start with little
context. `far_context` separates the two: every token of the longest windows is scored with
its whole window before it and again with only its last W tokens (`--far-windows`, multiples
of L; `interp.eval.truncated_context_losses`), and `gain` = truncated - full loss, with its
standard error over windows, per band of positions and on `common_positions` (from 2L on:
tokens that every W truncates, so the gains compare on the same tokens). A truncated token
sees 3W/4 .. W - 1 tokens for W <= L and L .. W - 1 for W > L. The defaults bracket L:
W = L (3L/4 .. L - 1 tokens seen) and W = 5L/4 (L .. 5L/4 - 1 seen: at least a training
window, so its gain is what the context beyond L buys); `uses_context_beyond_L` is that gain
above 3 standard errors. W = L/8 shows what nearer context buys, for scale (and that the
measurement sees context use where there is some). `attention_beyond_L` is the attention each
head puts at distance >= L (corpus tokens; <bos> apart), over queries at positions >= L,
averaged over the first `--attention-windows` windows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from interp import eval as ev
from interp import plots

from .common import load_with_task, write

SIGNIFICANT = 3.0  # a gain counts as use of the far context above this many standard errors


def moving_average(v: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool1d(v[None, None].float(), width, 1, width // 2, count_include_pad=False)[0, 0]


def doubling_bands(start: int, stop: int) -> list[tuple[int, int]]:
    """[start, 2 start), [2 start, 4 start), ... up to `stop`, then [start, stop) as a whole."""
    bands, lo = [], start
    while lo < stop:
        bands.append((lo, min(2 * lo, stop)))
        lo *= 2
    return bands + [(start, stop)] if len(bands) > 1 else bands


def far_context(model, ids, context: int, L: int, windows: list[int], bos, attention_windows: int) -> dict:
    """The far-context measurement at one context length (see the module docstring)."""
    # W > L moves by W - L, so its tokens see L .. W - 1 tokens; the others by W // 4
    strides = {W: W - L if W > L else max(1, W // 4) for W in windows}
    full, truncated = ev.truncated_context_losses(model, ids, context, windows, bos=bos, stride=strides)
    n = full.shape[1]
    # one band of positions that every W truncates, so the gains compare on the same tokens: from
    # 2L in windows of 4L or more, else from half the window
    start = 2 * L if context >= 4 * L else context // 2
    common = (min(max(max(windows), start), n - 1), n)
    out = {"context": context, "common_positions": list(common), "windows": [],
           "per_position": {"full context": full.mean(0)}}
    for W, trunc in truncated.items():
        stride = strides[W]
        bands = ev.far_context_gain(full, trunc, doubling_bands(W, n))
        (at_common,) = ev.far_context_gain(full, trunc, [common])
        out["windows"].append({"window": W, "stride": stride, "sees_tokens": [W - stride, W - 1],
                               "common": at_common, "from_window": bands[-1],
                               "bands": bands[:-1] if len(bands) > 1 else bands})
        out["per_position"][f"last {W} tokens"] = trunc.mean(0)
    # the smallest W whose tokens all see >= L tokens: its gain is what context beyond that buys
    beyond = next((w for w in out["windows"] if w["sees_tokens"][0] >= L), None)
    nearest = out["windows"][0]  # the smallest W: what all but the nearest context buys, for scale
    if beyond is not None:
        g, se = beyond["common"]["gain"], beyond["common"]["gain_se"]
        a, b = beyond["sees_tokens"]
        out["uses_context_beyond_L"] = bool(g > SIGNIFICANT * se)
        out["beyond_L_gain"], out["beyond_L_gain_se"] = g, se
        out["beyond_L_share_of_nearest_gain"] = g / nearest["common"]["gain"] if nearest is not beyond else None
        out["verdict"] = (("uses" if out["uses_context_beyond_L"] else "shows no use of") + " context beyond L: at "
                          f"positions {common[0]}-{common[1] - 1} the whole window beats its last {a}-{b} tokens by "
                          f"{g:+.4f} +- {se:.4f} nats ({g / se:.1f} s.e.)")
        if nearest is not beyond:
            c, d = nearest["sees_tokens"]
            out["verdict"] += f", its last {c}-{d} by {nearest['common']['gain']:+.4f}"
    if context > L:
        att = ev.attention_beyond(model, ids, context, L, bos=bos, max_windows=attention_windows)
        n_windows = min(attention_windows, len(ids) // (context - (bos is not None)))
        far = att["far"]
        top = divmod(int(far.argmax()), far.shape[1])
        out["attention_beyond_L"] = {
            "distance": L, "n_windows": n_windows, "far": far.tolist(),
            "bos": att["bos"].tolist() if "bos" in att else None,
            "max_head": f"L{top[0]}H{top[1]}", "max": float(far.max()), "mean": float(far.mean())}
    return out


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, type=Path, help="checkpoints of text tasks")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--multiples", default="1,2,4,8", help="context lengths as multiples of L")
    p.add_argument("--max-tokens", type=int, default=None, help="read at most this many tokens of the split")
    p.add_argument("--far-windows", default="0.125,1,1.25",
                   help="truncated contexts W for the far-context measurement, as multiples of L ('' skips it)")
    p.add_argument("--attention-windows", type=int, default=8,
                   help="windows of the longest context over which attention beyond L is averaged")
    args = p.parse_args(argv)
    multiples = [int(m) for m in args.multiples.split(",")]
    far_multiples = [float(m) for m in args.far_windows.split(",") if m.strip()]
    results, per_position, lines, far_figs = {}, {}, {}, {}
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
        if not longest:
            continue
        results[name]["per_position_context"] = longest
        windows = sorted({int(f * L) for f in far_multiples if 2 < int(f * L) < longest})
        if windows:
            far = far_context(model, ids, longest, L, windows, bos, args.attention_windows)
            pp = far.pop("per_position")
            per_position[name] = pp["full context"]  # = ev.loss_per_position(model, ids, longest, bos=bos)
            results[name]["far_context"] = far
            far_figs[name] = (far, pp)
        else:
            per_position[name] = ev.loss_per_position(model, ids, longest, bos=bos)
        if len(per_position[name]) > 60:
            results[name]["icl_score"] = ev.icl_score(per_position[name])
        ok = [r for r in rows if "nonoverlapping" in r]
        lines[f"{name} (non-overlapping)"] = ([r["context"] for r in ok], [r["nonoverlapping"] for r in ok])
        lines[f"{name} (sliding)"] = ([r["context"] for r in ok], [r["sliding"] for r in ok])

    figures = {"loss_vs_context": plots.metric_curves(lines, title="Held-out loss vs context length "
                                                      "(learned positions stop at n_ctx)", yaxis_title="loss")}
    figures["loss_vs_context"].update_layout(xaxis_title="context (tokens)")
    figures["loss_vs_context"].update_xaxes(type="log")
    if per_position:
        smooth = {k: moving_average(v, 9) for k, v in per_position.items()}
        n = max(len(v) for v in smooth.values())
        figures["loss_per_position"] = plots.per_token_lines(
            smooth, [str(i) for i in range(n)], title="Loss per position (9-token moving average)",
            yaxis_title="loss")
    for name, (far, pp) in far_figs.items():
        L = results[name]["L"]
        full = pp["full context"]
        xs = list(range(len(full)))
        gains = {k: (xs, moving_average(v - full, 33).tolist()) for k, v in pp.items() if k != "full context"}
        fig = plots.metric_curves(gains, step=L, yaxis_title="loss(truncated) - loss(full context), nats",
                                  title=f"{name}: what the far context buys, per position of {far['context']}-token "
                                        f"windows (33-position moving average; line at L = {L}). "
                                        f"{far.get('verdict', '')}")
        fig.update_layout(xaxis_title="position in the window")
        fig.add_hline(y=0, line=dict(color="#7f7f7f", width=1))
        figures[f"far_context_{name}"] = fig
        if "attention_beyond_L" in far:
            a = far["attention_beyond_L"]
            figures[f"attention_beyond_L_{name}"] = plots.head_score_heatmap(
                a["far"], name=f"attention at distance >= {L}",
                title=f"{name}: attention each head puts {L} or more tokens back (queries at positions >= {L}, "
                      f"{a['n_windows']} windows of {far['context']})")
    return write(args.out, {"split": args.split, "models": results}, figures)


if __name__ == "__main__":
    main()
