"""Attribution: direct logit attribution of a target token (or a logit difference against a
contrast token) at a chosen position: stacked contributions per layer with every head, MLP and
bias as a segment and the largest named (the LLM Transparency Tool's contribution view), the
top components, the xt / xe streams of factored models, and every component at every position
(click a column to choose the position)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from interp import plots

from .. import data
from ..data import AppError
from ..state import set_param
from .common import Ctx, chart, export, grid_point, working
from .lens import _token_id

TITLE = "Attribution"
MODES = {"next": "the next token", "top1": "the model's top-1", "token": "a token I type"}
N_NAMED = 5  # components named inside the stacked bars
TOP_K = 15


def default_position(ctx: Ctx, ids, mode: str) -> int:
    """Task checkpoints: the position predicting the first answer token (`<eot>`, else the
    task's prompt end); else the last position that has a target."""
    T = len(ids)
    if data.is_task(ctx.ck):
        start = data.answer_start(ctx.ck, ids)
        if 1 <= start < T:
            return start - 1
    return max(0, T - 2) if mode == "next" else T - 1


def _pick_cell(dla, n_cols: int, pt: dict) -> None:
    row, col = grid_point(n_cols)(pt)
    set_param("pos", dla.positions[col])
    if 0 <= row < len(dla.labels) and dla.heads[row] is not None:  # a head's row also selects that head
        set_param("layer", dla.layers[row])
        set_param("head", dla.heads[row])
    elif 0 <= row < len(dla.labels) and dla.layers[row] >= 0:
        set_param("layer", dla.layers[row])


def render(ctx: Ctx) -> None:
    view, ck = ctx.view, ctx.ck
    c1, c2 = st.columns([3, 2])
    with c1:
        p = ctx.prompt()
    ids, T = p.ids, len(p)
    mode = view.choice("tmode", list(MODES))
    with c2:
        view.widget("radio", "tmode", "Target", value=mode, options=list(MODES), format_func=MODES.get, horizontal=True,
                    help="Attribute the logit of the next token in the prompt, of the model's own top-1 prediction, "
                         "or of one token you type (shared with the logit lens' tracked token).")
        t1, t2 = st.columns(2)
        typed = view.get("target") or ""
        view.widget("text_input", "target", "Target token", value=typed, container=t1, disabled=mode != "token",
                    placeholder="e.g. e or ␣", help="Exactly one token of this tokenizer; ␣ stands for a space.")
        wrong_text = view.get("wrong") or ""
        view.widget("text_input", "wrong", "Contrast token (optional)", value=wrong_text, container=t2,
                    placeholder="logit difference", help="Attribute logit(target) - logit(this token) instead.")
        pos = ctx.pos(T, default_position(ctx, ids, mode))
        view.widget("selectbox", "pos", "Position (or click a column of the map below)", value=pos,
                    options=list(range(T)), format_func=lambda i: f"{i}: {p.labels[i]}")
    if mode == "token" and not typed:
        raise AppError("Type the target token (one token of this tokenizer), or choose another target.")
    target = None if mode == "next" else data.top1(ctx.key, ids) if mode == "top1" else _token_id(ck, typed)
    wrong = _token_id(ck, wrong_text) if wrong_text else None
    try:
        with working("Attributing the logit to every head and MLP at every position"):
            dla = data.logit_attribution(ctx.key, ids, target, wrong)
    except data.Unsupported as e:
        st.warning(str(e))
        return
    vocab = data.decode_list(ck)
    tgt = int(dla.target[0, pos])
    if tgt == -100:
        st.info(f"Position {pos} ({p.labels[pos]}) is the last: it has no next token. Choose another position, or "
                "target the model's top-1 or a typed token.")
    else:
        _position_view(ctx, dla, p, pos, vocab)
    _map(ctx, dla, p, pos, vocab)


def _what(dla, pos: int, vocab) -> str:
    tgt = int(dla.target[0, pos])
    w = None if dla.wrong is None else int(dla.wrong[0, pos])
    return f"logit({vocab[tgt]})" + (f" − logit({vocab[w]})" if w is not None else "")


def _position_view(ctx: Ctx, dla, p, pos: int, vocab) -> None:
    values = dla.values[:, 0, pos]
    total, logit, const = float(np.nansum(values.numpy())), float(dla.logit[0, pos]), float(dla.constant[0, pos])
    what = _what(dla, pos, vocab)
    top = dla.top(N_NAMED, 0, pos)
    st.markdown(f"**{what}** at position {pos} (`{p.labels[pos]}`) = **{logit:.3f}**: the components add up to "
                f"{total:.3f}, plus {const:.3f} that no component owns (the final norm's bias and the unembedding bias).")
    st.caption("Largest: " + ", ".join(f"{name} {v:+.3f}" for name, v in top))
    c1, c2 = st.columns([3, 2])
    fig = plots.logit_attribution_stacked(dla, 0, pos, n_named=N_NAMED,
                                          title=f"{what} at position {pos} ({p.labels[pos]}): sum {total:.2f}")
    chart(fig.update_layout(height=440, legend=dict(font=dict(size=10))), "attr_stacked", container=c1)
    bars = plots.logit_attribution_bars(dla, 0, pos, k=TOP_K, title=f"Top {TOP_K} components at position {pos}")
    chart(bars.update_layout(height=440), "attr_top", container=c2)
    charts = ["attr_stacked", "attr_top"]
    if ctx.cfg.stream == "factored":
        streams = dla.per_stream()
        xt, xe = float(streams["xt"][0, pos]), float(streams["xe"][0, pos])
        st.caption(f"Per stream at position {pos}: xt (embeddings, heads, attention biases) {xt:+.3f}, "
                   f"xe (MLPs) {xe:+.3f}.")
        lines = {"xt": streams["xt"][0], "xe": streams["xe"][0], "logit": dla.logit[0]}
        fig = plots.per_token_lines(lines, p.labels, title="Direct contribution of each stream at every position",
                                    yaxis_title="logit")
        chart(fig.update_layout(height=320), "attr_streams")
        charts.append("attr_streams")
    name = ctx.ck.name.replace("/", "_")
    export(f"{name}_attribution_pos{pos}", key="attr_export", charts=charts,
           table=lambda: _at(dla.to_frame(), pos),
           arrays=lambda: {"values": dla.values[:, 0, pos].numpy(), "components": np.array(dla.labels),
                           "logit": np.array(logit), "constant": np.array(const), "target": np.array(int(dla.target[0, pos]))})


def _at(frame, pos: int):
    return frame[frame["pos"] == pos].set_index("component")


def _map(ctx: Ctx, dla, p, pos: int, vocab) -> None:
    T = len(dla.positions)
    st.markdown("#### Every component at every position")
    what = "the next token's logit" if ctx.view.get("tmode") == "next" else "the target's logit"
    if dla.wrong is not None:
        what += " minus the contrast token's"
    st.caption(f"Colour: each component's direct contribution to {what} (blue positive, red negative). Click a cell "
               "to inspect that position (a head's row also selects that head for the other pages).")
    clickable = T * len(dla.labels) <= 40_000
    fig = plots.logit_attribution_heatmap(dla, 0, labels=p.labels, selected_pos=pos, clickable=clickable,
                                          title="Direct logit attribution per component and position")
    plots.token_axis(fig, "x", T)
    plots.token_axis(fig, "y", len(dla.labels))
    fig.update_layout(height=min(2200, max(360, 170 + 17 * len(dla.labels))))
    chart(fig, "attr_map", on_point=(lambda pt: _pick_cell(dla, T, pt)) if clickable else None)
    name = ctx.ck.name.replace("/", "_")
    export(f"{name}_attribution", key="attr_map_export", charts=["attr_map"], table=dla.to_frame,
           arrays=lambda: {"values": dla.values[:, 0].numpy(), "components": np.array(dla.labels),
                           "logit": dla.logit[0].numpy(), "constant": dla.constant[0].numpy(),
                           "target": dla.target[0].numpy(), "tokens": np.array(p.ids)})
