"""Streams: residual norms per layer and position (per-layer, log or linear colours), the
factored model's xt / xe streams, and the top MLP neurons at a chosen layer and position."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import data
from ..state import set_param
from .common import Ctx, chart, export, grid_point, labelled, layer_picker, working

TITLE = "Streams"
NORMS = {"layer": "per layer (each row its own scale)", "log": "log scale", "linear": "one linear scale"}


def _pick_cell(n_cols: int, pt: dict) -> None:
    row, col = grid_point(n_cols)(pt)
    set_param("pos", col)
    if row >= 1:  # row 0 is the embedding; row i + 1 is after block i
        set_param("layer", row - 1)


def render(ctx: Ctx) -> None:
    view, cfg = ctx.view, ctx.cfg
    p = ctx.prompt()
    ids, T = p.ids, len(p)
    with working("Measuring the streams"):
        n = data.norms(ctx.key, ids)
    pos = ctx.pos(T, T - 1)
    norm = view.choice("norm", list(NORMS))
    view.widget("radio", "norm", "Colours", value=norm, options=list(NORMS), format_func=NORMS.get, horizontal=True)
    name = ctx.ck.name.replace("/", "_")
    h = max(300, 110 + 34 * len(n.layer_names))
    title = "||resid||" + (" = ||xt + xe||" if n.xt is not None else "") + " per layer and position (click: position)"
    fig = plots.resid_norms(n.resid, p.labels, n.layer_names, title=title, scale=norm, selected_pos=pos, clickable=True)
    chart(fig.update_layout(height=h), "streams_resid", on_point=lambda pt: _pick_cell(T, pt))
    tables, figs = {"resid": n.resid}, {"streams_resid"}
    if n.xt is not None:
        c1, c2 = st.columns([1, 2])
        stream = view.choice("stream", ["xt", "xe"])
        with c1:
            st.plotly_chart(plots.stream_norms_factored(n.xt, n.xe, n.layer_names,
                                                        title="Mean ||xt|| vs ||xe|| per layer").update_layout(height=h),
                            key="streams_factored")
            view.widget("radio", "stream", "Per-position map of", value=stream, options=["xt", "xe"], horizontal=True)
        arr = n.xt if stream == "xt" else n.xe
        fig = plots.resid_norms(arr, p.labels, n.layer_names, title=f"||{stream}|| per layer and position", scale=norm,
                                selected_pos=pos, clickable=True)
        chart(fig.update_layout(height=h), "streams_xtxe", on_point=lambda pt: _pick_cell(T, pt), container=c2)
        tables.update(xt=n.xt, xe=n.xe)
        figs.update({"streams_factored", "streams_xtxe"})
    export(f"{name}_stream_norms", key="streams_norms", charts=[k for k in ("streams_resid", "streams_factored", "streams_xtxe") if k in figs],
           arrays=lambda: {k: np.asarray(v) for k, v in tables.items()} | {"tokens": np.array(ids)},
           table=lambda: pd.concat({k: labelled(np.asarray(v), n.layer_names, p.labels) for k, v in tables.items()}))

    st.markdown("#### Top MLP neurons")
    if cfg.attn_only:
        st.info("This model is attention-only: it has no MLP neurons.")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    layer = layer_picker(ctx, container=c1)
    view.widget("selectbox", "pos", "Position", value=pos, options=list(range(T)),
                format_func=lambda i: f"{i}: {p.labels[i]}", container=c2)
    hi = min(50, cfg.d_mlp)
    k = view.clamp("k", 1, hi, what=f"the neuron list of this {cfg.d_mlp}-neuron MLP")
    view.widget("slider", "k", "Neurons", value=k, min_value=1, max_value=hi, container=c3)
    idx, val = data.neurons(ctx.key, ids, layer, pos, k)
    chart(plots.top_neurons_bar(val, indices=idx, title=f"Largest |activation| in block {layer}'s MLP at position {pos} "
                                f"({p.labels[pos]})").update_layout(height=max(300, 60 + 18 * len(idx))),
          "streams_neurons")
    export(f"{name}_neurons_L{layer}_pos{pos}", key="streams_neurons_export",
           table=lambda: pd.DataFrame({"neuron": idx, "activation": val}), charts=["streams_neurons"])
