"""Logit lens: every layer read through the unembedding; each cell shows its top-1 token and
is coloured by the probability of the target (the next token, or one token tracked
everywhere); click a cell to see that position's top-k per layer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import data
from ..data import AppError
from ..state import set_param
from .common import Ctx, chart, export, grid_point, working

TITLE = "Logit lens"


def render(ctx: Ctx) -> None:
    view, cfg, ck = ctx.view, ctx.cfg, ctx.ck
    p = ctx.prompt()
    ids, T = p.ids, len(p)
    streams = ["resid", "xt", "xe"] if cfg.stream == "factored" else ["resid"]
    c1, c2, c3 = st.columns([2, 1, 2])
    stream = view.choice("lens", streams, what="this model")
    view.widget("radio", "lens", "Stream", value=stream, options=streams, horizontal=True, container=c1,
                help="Factored models: read the attention stream (xt) or the MLP stream (xe) alone.")
    k = view.clamp("topk", 1, 10, what="the logit lens")
    view.widget("slider", "topk", "top k", value=k, min_value=1, max_value=10, container=c2)
    target = view.get("target") or ""
    view.widget("text_input", "target", "Track a token (empty: the next token)", value=target, container=c3,
                placeholder="e.g. 0 or ␣", help="Colour every cell by the probability of this one token instead of "
                "the next token. It must be exactly one token of this tokenizer; ␣ stands for a space.")
    target_id = _token_id(ck, target) if target else None
    with working("Reading every layer through the unembedding"):
        res = data.lens(ctx.key, ids, stream, k, target_id)
    vocab = data.decode_list(ck)
    # default position: the last one that has a target (the last position has no next token)
    default = T - 1 if target_id is not None else max(0, T - 2)
    pos = ctx.pos(T, default)
    fig = plots.logit_lens_heatmap(res, decode=vocab, labels=p.labels, cell_text=True, selected_pos=pos, clickable=True,
                                   title=f"Logit lens ({stream})" + (f", tracking {vocab[target_id]!r}" if target_id is not None else ""))
    rc = grid_point(T)
    chart(fig.update_layout(height=max(300, 120 + 40 * res.n_layers)), "lens_heatmap",
          on_point=lambda pt: set_param("pos", rc(pt)[1]))
    name = ck.name.replace("/", "_")
    export(f"{name}_logit_lens_{stream}", key="lens_export", charts=["lens_heatmap"],
           arrays=lambda: {"target_prob": res.target_prob[:, 0].numpy(), "target_rank": res.target_rank[:, 0].numpy(),
                           "top_tokens": res.top_tokens[:, 0].numpy(), "top_probs": res.top_probs[:, 0].numpy(),
                           "tokens": np.array(ids), "layer_names": np.array(res.layer_names)},
           table=lambda: pd.DataFrame(res.target_prob[:, 0].numpy(), index=res.layer_names,
                                      columns=[f"{i}:{l}" for i, l in enumerate(p.labels)]))

    view.widget("selectbox", "pos", "Position (or click a cell)", value=pos, options=list(range(T)),
                format_func=lambda i: f"{i}: {p.labels[i]}")
    rows = []
    for l, lname in enumerate(res.layer_names):
        row = {"layer": lname}
        row.update({f"#{j + 1}": f"{vocab[t]} ({pr:.2f})"
                    for j, (t, pr) in enumerate(zip(res.top_tokens[l, 0, pos].tolist(), res.top_probs[l, 0, pos].tolist()))})
        tp = float(res.target_prob[l, 0, pos])
        row["p(target)"] = None if math.isnan(tp) else round(tp, 4)
        rows.append(row)
    tgt = int(res.targets[0, pos])
    st.caption(f"Top {k} predictions at position {pos} ({p.labels[pos]}); target: "
               + (vocab[tgt] if tgt != -100 else "none (the last position has no next token)"))
    st.dataframe(pd.DataFrame(rows).set_index("layer"), width="stretch")


def _token_id(ck, text: str) -> int:
    raw = text.replace("␣", " ").replace("⏎", "\n")
    try:
        ids = ck.tokenizer.encode(raw)
    except ValueError as e:
        raise AppError(f"Cannot track {text!r}: {e}") from None
    if len(ids) != 1:
        raise AppError(f"Track one token: {text!r} is {len(ids)} tokens for this tokenizer "
                       f"({', '.join(data.show_token(ck.tokenizer.decode([i])) for i in ids) or 'none'}).")
    return int(ids[0])
