"""Attention: one layer's patterns drawn in the browser (switch heads without the server),
the token view, every head as a clickable thumbnail, and per-head scores."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import components, data
from ..state import set_param
from .common import Ctx, chart, export, grid_point, layer_picker, working

TITLE = "Attention"
MODES = ["head", "all", "mean"]
DIRS = ["from", "to"]
SCALES = ["auto", "shared"]


def apply_selection(sel: dict) -> None:
    """A click in the attention component -> the URL state."""
    for name in ("layer", "head", "mode", "dir", "scale"):
        if name in sel:
            set_param(name, sel[name])
    if "pos" in sel:
        set_param("pos", sel["pos"] if isinstance(sel["pos"], int) and sel["pos"] >= 0 else None)


def _select_head(layer: int, head: int) -> None:
    set_param("layer", layer)
    set_param("head", head)
    if st.query_params.get("mode") == "mean":
        set_param("mode", "head")


def render(ctx: Ctx) -> None:
    view, cfg = ctx.view, ctx.cfg
    c1, c2 = st.columns([4, 1.3])
    with c1:
        p = ctx.prompt()
    ids, T = p.ids, len(p)
    L, H = cfg.n_layers, cfg.n_heads
    layer = layer_picker(ctx, container=c2)
    c2.caption("Heads switch in the browser: the H buttons, a thumbnail, or a cell of the score map.")
    head = ctx.head()
    mode, direction, scale = (view.choice("mode", MODES), view.choice("dir", DIRS), view.choice("scale", SCALES))
    pos = ctx.pos(T, -1)
    prompt_key = hashlib.sha1(repr((ctx.key, ids)).encode()).hexdigest()[:16]
    components.attention_view("attn", dict(
        name=ctx.ck.name.replace("/", "_"), L=L, H=H, T=T, layer=layer, head=head, mode=mode, dir=direction,
        scale=scale, pos=pos, labels=p.labels, pieces=p.pieces,
        pat=data.layer_patterns(ctx.key, ids, layer), patKey=f"{prompt_key}|{layer}",
        thumbs=data.thumbnails(ctx.key, ids), thumbKey=prompt_key,
    ), on_select=apply_selection)
    export(f"{ctx.ck.name.replace('/', '_')}_attention", key="attn_patterns",
           arrays=lambda: {"patterns": data.attention(ctx.key, ids), "tokens": np.array(ids), "labels": np.array(p.labels)},
           table=lambda: _pattern_table(ctx, ids, p.labels, layer, head))

    st.markdown("#### Head scores")
    with working("Scoring every head on this prompt"):
        rows, induction_note = data.head_rows(ctx.key, ids)
    df = pd.DataFrame(rows).set_index("name").drop(columns=["layer", "head"])
    if df["alibi_slope"].isna().all():
        df = df.drop(columns=["alibi_slope"])
    names = list(df.columns)
    left, right = st.columns([2, 3])
    score = view.choice("score", names)
    view.widget("selectbox", "score", "Score map (click a cell to select that head)", value=score, options=names,
                container=left)
    grid = np.array([[r[score] for r in rows if r["layer"] == l] for l in range(L)])
    rc = grid_point(H)
    fig = plots.head_score_heatmap(grid, name=score, selected=(layer, head), clickable=True,
                                   title=f"{score} (selected L{layer}H{head})")
    chart(fig.update_layout(height=max(260, 70 + 42 * L), margin=dict(t=40, b=40)), "attn_scoremap",
          on_point=lambda pt: _select_head(*rc(pt)), container=left)
    with right:
        st.caption(f"Every head's scores on this prompt ({induction_note}); **L{layer}H{head}** highlighted.")
        sel_name = f"L{layer}H{head}"
        shown = df.copy()  # a marker column, not a pandas Styler: the Styler cost ~35 ms of every rerun
        shown.insert(0, "sel", ["◀" if n == sel_name else "" for n in df.index])
        st.dataframe(shown, height=min(38 + 35 * len(df), 560), width="stretch",
                     column_config={"sel": st.column_config.TextColumn("", width=28, help="the selected head")}
                     | {c: st.column_config.NumberColumn(format="%.3f") for c in df.columns})
        export(f"{ctx.ck.name.replace('/', '_')}_head_scores", key="head_scores", table=lambda: df,
               charts=["attn_scoremap"])


def _pattern_table(ctx: Ctx, ids, labels, layer: int, head: int) -> pd.DataFrame:
    from .common import labelled

    return labelled(data.attention(ctx.key, ids)[layer, head], labels, labels)
