"""Compare: two or three checkpoints that share a tokenizer, side by side: test-split
metrics per segment (task checkpoints) or per-token loss (text), each model's full greedy
completion of the prompt against the target, and attention on one colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import components, data
from ..data import AppError
from .common import Ctx, chart, export, head_picker, layer_picker, prompt_head, titled_below_modebar
from .steps import MATCH, MISMATCH

TITLE = "Compare"
GREY = "#e8e8e8"


def candidates(ctx: Ctx) -> dict[str, Path]:
    """Discovered checkpoints (runs: their last checkpoint) with this checkpoint's tokenizer."""
    digest = data.tokenizer_digest(Path(ctx.ck.path))
    return {n: p for n, p in data.discover().items() if digest is not None and data.tokenizer_digest(p) == digest}


def _current(ctx: Ctx, found: dict[str, Path]) -> str:
    name = ctx.view.get("ckpt") or ""
    return name if name in found else ctx.ck.path


def default_selection(ctx: Ctx, found: dict[str, Path]) -> list[str]:
    if ctx.run is not None and len(ctx.run.steps) >= 2:  # a run: its first checkpoint against the one on show
        first = min(ctx.run.steps)
        other = first if first != ctx.step else max(ctx.run.steps)
        return [str(ctx.run.steps[other]), str(ctx.run.steps[ctx.step])]
    cur = _current(ctx, found)
    if cur in data.STEP_MASKING_TRIO and all(n in found for n in data.STEP_MASKING_TRIO):
        return list(data.STEP_MASKING_TRIO)
    others = [n for n in found if n != cur and Path(found[n]).resolve() != Path(ctx.ck.path).resolve()]
    return [cur] + others[:1]


def _short(entry: str) -> str:
    """A run's step directory as "run/step_000100"; names as they are."""
    p = Path(entry)
    return f"{p.parent.name}/{p.name}" if data.STEP_DIR.match(p.name) else entry


def _resolve(entry: str, found: dict[str, Path]) -> Path:
    if entry in found:
        return found[entry]
    try:
        return data.check_dir(entry)
    except AppError as e:
        raise AppError(f"Compare: `{entry}` is neither a checkpoint name under "
                       f"{', '.join(str(r) for r in data.checkpoint_roots())} nor a directory ({e})") from None


def render(ctx: Ctx) -> None:
    view = ctx.view
    found = candidates(ctx)
    default = default_selection(ctx, found)
    if len(default) < 2 and not view.get("cmp"):
        st.warning(f"Compare needs a second checkpoint with the same tokenizer as `{ctx.ck.name}`; none was found "
                   f"under {', '.join(f'`{r}`' for r in data.checkpoint_roots())}. Train one (see README), or "
                   f"point {data.ENV_ROOT} at a directory that holds more.")
        return
    chosen = view.get("cmp") or default
    steps = [str(p) for p in ctx.run.steps.values()] if ctx.run is not None else []  # this run's checkpoints
    options = list(dict.fromkeys(list(found) + steps + list(chosen)))
    view.widget("multiselect", "cmp", "Checkpoints (two or three that share a tokenizer; type a directory to add one)",
                value=chosen, options=options, max_selections=3, accept_new_options=True, format_func=_short,
                to_url=lambda v: None if list(v) == default else list(v))
    if not 2 <= len(chosen) <= 3:
        st.info("Pick two or three checkpoints to compare.")
        return
    everything = data.discover()
    paths = [_resolve(c, everything) for c in chosen]
    digests = [data.tokenizer_digest(p) for p in paths]
    if len(set(digests)) != 1:
        odd = [c for c, d in zip(chosen, digests) if d != digests[0]]
        raise AppError(f"Compare needs checkpoints that share a tokenizer: {', '.join(odd)} tokenize differently "
                       f"from {chosen[0]}. Pick others.")
    progress = st.progress(0.0, text="Loading checkpoints…")
    cks = []
    for i, (c, path) in enumerate(zip(chosen, paths)):
        progress.progress(i / (2 * len(chosen)), text=f"Loading {c} ({i + 1}/{len(chosen)})…")
        cks.append(data.load(path))
    names = [c if c in found else _short(c) if data.STEP_DIR.match(Path(c).name) else Path(c).name for c in chosen]

    if all(data.is_task(c) for c in cks) and len({c.task["name"] for c in cks}) == 1:
        _task_metrics(ctx, cks, names, progress)
    else:
        _text_metrics(ctx, cks, names, progress)
    progress.empty()
    _side_by_side(ctx, cks, names)


def _task_metrics(ctx: Ctx, cks, names, progress) -> None:
    view = ctx.view
    examples = data.compare_examples(cks[0].key)
    c1, c2 = st.columns([3, 1])
    n_max = min(len(examples), 500)
    n_ex = view.clamp("nex", 1, n_max, what=f"the {n_max} test examples")
    view.widget("slider", "nex", f"Test examples of {cks[0].name}'s task", value=n_ex, min_value=1, max_value=n_max,
                container=c1)
    gen = bool(view.get("acc"))
    view.widget("toggle", "acc", "Greedy accuracy", value=gen, container=c2,
                help="Also decode each example greedily and check its answer (slower).")
    rows = []
    for i, (c, name) in enumerate(zip(cks, names)):
        progress.progress(0.5 + i / (2 * len(cks)), text=f"Scoring {name} on {n_ex} test examples ({i + 1}/{len(cks)})…")
        row = dict(data.compare_one(c.key, cks[0].key, n_ex, gen))
        row["name"] = name
        rows.append(row)
    if gen:
        for col, r in zip(st.columns(len(rows)), rows):
            col.metric(r["name"], f"{r['answer_match']:.1%} answers right",
                       help=f"greedy decoding of {n_ex} test examples; whole completion (steps + answer) exact: "
                            f"{r['exact_match']:.1%}")
    segs = [s for s in ("step", "answer") if any(r.get(f"n_tokens/{s}", 0) for r in rows)]
    c1, c2 = st.columns(2)
    for col, metric, title, key in ((c1, "loss", "Teacher-forced loss per segment", "compare_loss"),
                                    (c2, "accuracy", "Next-token accuracy per segment", "compare_acc")):
        fig = plots.segment_bars(rows, metric, segments=segs)
        chart(titled_below_modebar(fig.update_layout(margin=dict(t=70)), title, 420), key, container=col)
    st.caption("Loss and accuracy are teacher-forced on every step and answer token, whatever each model was trained "
               "on (the prompt is never a target).")
    show = ["name"] + [f"{m}/{s}" for m in ("loss", "accuracy") for s in segs]
    show += ["answer_to_step_attn/mean", "answer_to_step_attn/max", "answer_to_step_attn/argmax"]
    show += ["exact_match", "answer_match"] if gen else []
    table = pd.DataFrame(rows)[[c for c in show if c in rows[0]]].set_index("name")
    st.dataframe(table.style.format(lambda v: f"{v:.4g}" if isinstance(v, float) else v), width="stretch")
    export("compare_metrics", key="compare_metrics_export", table=lambda: pd.DataFrame(rows).set_index("name"),
           charts=["compare_loss", "compare_acc"])


def _prompt_for_all(ctx: Ctx, cks, names):
    """The shared prompt, checked against every compared checkpoint (context, tokenizer)."""
    p = ctx.prompt()
    for c, name in zip(cks, names):
        try:
            data.encode(c, p.text)
        except AppError as e:
            raise AppError(f"The prompt does not suit {name}: {e}") from None
    return p


def _text_metrics(ctx: Ctx, cks, names, progress) -> None:
    p = _prompt_for_all(ctx, cks, names)
    losses = {}
    for i, (c, name) in enumerate(zip(cks, names)):
        progress.progress(0.5 + i / (2 * len(cks)), text=f"Scoring {name} on the prompt ({i + 1}/{len(cks)})…")
        losses[name] = data.token_losses(c.key, p.ids)
    for col, (name, v) in zip(st.columns(len(losses)), losses.items()):
        col.metric(name, f"{np.mean(v):.3f} nats/token", help="mean next-token loss on the prompt")
    fig = plots.per_token_lines(losses, p.labels[1:], yaxis_title="loss (nats)").update_layout(margin=dict(t=70))
    chart(titled_below_modebar(fig, "Next-token loss on the prompt (x = the predicted token)", 340), "compare_token_loss")
    export("compare_token_loss", key="compare_loss_export", charts=["compare_token_loss"],
           table=lambda: pd.DataFrame(losses, index=[f"{i + 1}:{l}" for i, l in enumerate(p.labels[1:])]))


def _segments(ck, ids, cut: int) -> tuple[int, ...]:
    """0 before `cut`; after it, <bot>..<eot> are steps (1) and the rest is the answer (2)."""
    seg = [0] * cut + [2] * (len(ids) - cut)
    bot, eot = ck.cfg.bot_token_id, ck.cfg.eot_token_id
    rest = list(ids[cut:])
    if bot is not None and bot in rest:
        start = cut + rest.index(bot)
        end = cut + rest.index(eot) if eot is not None and eot in rest else len(ids) - 1
        for i in range(start, end + 1):
            seg[i] = 1
    return tuple(seg)


def _side_by_side(ctx: Ctx, cks, names) -> None:
    st.markdown("#### One prompt, side by side")
    p = _prompt_for_all(ctx, cks, names)
    ids = p.ids
    cut = data.prompt_end(cks[0], ids)
    target = list(ids[cut:])
    stop = data.is_task(cks[0]) and cks[0].cfg.eos_token_id is not None
    room = min((c.cfg.n_ctx - cut if c.cfg.uses_learned_positions else 256) for c in cks)
    max_new = max(1, min(room, len(target) + 16 if target else 48))
    c1, c2 = st.columns(2)
    layer, head = layer_picker(ctx, container=c1), head_picker(ctx, container=c2)
    vocab = data.decode_list(cks[0])
    pats = [data.attention(c.key, ids)[min(layer, c.cfg.n_layers - 1), min(head, c.cfg.n_heads - 1)] for c in cks]
    top = max(float(data.auto_scale(a)) for a in pats)  # as the Attention page: off the first token's row and column
    seg = _segments(cks[0], ids, cut) if target else None
    a2s = [data.answer_step_attention(c.key, ids, seg) for c in cks] if seg and 1 in seg and 2 in seg else None
    a_lo = min(float(np.nanmin(a)) for a in a2s) if a2s else None
    a_hi = max(float(np.nanmax(a)) for a in a2s) if a2s else None
    st.caption(f"Greedy completion after the {cut} prompt tokens {prompt_head(p.labels, cut)}, "
               + (f"checked against the target (the prompt's remaining {len(target)} tokens)" if target else
                  "no target (the prompt ends there)")
               + f"; below, L{layer}H{head}'s attention on the whole prompt, one colour scale for all panels "
               f"(white 0 to dark blue {top:.3f}, the largest weight off the first token's row and column; brighter "
               "cells saturate).")
    n = len(cks)
    for col, c, name, i in zip(st.columns(n), cks, names, range(n)):  # row 1: completions
        with col:
            st.markdown(f"**{name}**")
            out = data.completion(c.key, ids[:cut], max_new, stop)
            if target:
                ok = [j < len(target) and t == target[j] for j, t in enumerate(out)]
                first_bad = next((j for j, good in enumerate(ok[: len(target)]) if not good), None)
                done = out[: len(target)] == target
                st.markdown(":green[**matches the target**]" if done else
                            f":red[**differs at token {first_bad if first_bad is not None else len(out)}**]")
                colors = [MATCH if good else (MISMATCH if j < len(target) else GREY) for j, good in enumerate(ok)]
            else:
                colors = None
            components.token_strip(f"compare_out_{i}", [vocab[t] for t in out], colors=colors,
                                   titles=[f"{j}: {vocab[t]}" + (f" (target {vocab[target[j]]})" if j < len(target) else "")
                                           for j, t in enumerate(out)])
    for col, name, pat, i in zip(st.columns(n), names, pats, range(n)):  # row 2: attention, one scale
        fig = plots.attention_heatmap(pat, p.labels, p.labels, zmax=top)
        fig.update_traces(showscale=False)  # one scale for all panels (in the caption): equal panel sizes
        fig.update_layout(margin=dict(l=10, r=10, t=70, b=10))
        titled_below_modebar(fig, f"{name} L{layer}H{head}", min(700, max(400, 200 + 10 * len(ids))))
        chart(fig, f"compare_attn_{i}", container=col)
    if a2s is not None:  # row 3: answer -> step attention, one scale
        st.caption(f"Mean attention from answer tokens to step tokens per head (Viridis, one scale for all panels: "
                   f"{a_lo:.3f} to {a_hi:.3f}); L{layer}H{head} outlined.")
        for col, a, i in zip(st.columns(n), a2s, range(n)):
            fig = plots.head_score_heatmap(a, name="answer→step", selected=(layer, head), zmin=a_lo, zmax=a_hi)
            fig.update_traces(showscale=False, selector=dict(type="heatmap"))
            fig.update_layout(margin=dict(l=10, r=10, t=70, b=10))
            chart(titled_below_modebar(fig, "answer → step attention", 290), f"compare_a2s_{i}", container=col)
    export("compare_attention", key="compare_attn_export",
           charts=[f"compare_attn_{i}" for i in range(n)] + ([f"compare_a2s_{i}" for i in range(n)] if a2s else []),
           arrays=lambda: {f"attention_{n}": data.attention(c.key, ids) for n, c in zip(names, cks)}
           | ({f"answer_to_step_{n}": a for n, a in zip(names, a2s)} if a2s else {}) | {"tokens": np.array(ids)})
