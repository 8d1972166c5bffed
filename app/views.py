"""The explorer's pages. Each `page_*(ck)` draws one page for a loaded checkpoint.

Numbers come from `app.state` (cached calls into `interp`), figures from `interp.plots`.
Bad input raises `state.AppError`, which the entry point shows with `st.error`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from interp import plots

from . import state
from .state import AppError, Loaded

PAGES = ("Attention", "Streams", "Logit lens", "Step-by-step", "Compare")


def _height(n_rows: int, per_row: int = 18, lo: int = 380, hi: int = 900) -> int:
    return int(min(hi, max(lo, 120 + per_row * n_rows)))


def _prompt(ck: Loaded, page: str, part: str = "full") -> tuple[list[int], list[str]]:
    text = st.text_area(
        "Prompt", value=state.default_prompt(ck, part), key=f"prompt::{page}::{ck.path}", height=90,
        help="Special tokens such as <bos>, <bot>, <eot>, <eos> may be typed out. "
        "The model's <bos> is put in front when it has one.",
    )
    ids = state.encode(ck, text)
    cfg = ck.cfg
    if cfg.positional != "learned" and len(ids) > cfg.n_ctx:
        st.warning(f"{len(ids)} tokens is past the n_ctx={cfg.n_ctx} this model was trained on "
                   f"({cfg.positional} positions still run; expect drift).")
    return ids, state.labels(ck, ids)


def _layer_head(ck: Loaded, page: str, cols=None) -> tuple[int, int]:
    cfg = ck.cfg
    c1, c2 = cols if cols is not None else st.columns(2)
    layer = c1.selectbox("Layer", list(range(cfg.n_layers)), key=f"{page}_layer::{ck.path}")
    head = c2.selectbox("Head", list(range(cfg.n_heads)), key=f"{page}_head::{ck.path}")
    return layer, head


# ------------------------------------------------------------------ Attention
def page_attention(ck: Loaded) -> None:
    st.subheader("Attention patterns")
    ids, labels = _prompt(ck, "attention")
    pats = state.attention(ck.key, tuple(ids))  # (L, H, T, T)
    L, H, T, _ = pats.shape
    left, right = st.columns([3, 2])
    with left:
        layer, head = _layer_head(ck, "attention")
        fig = plots.attention_heatmap(pats[layer, head], labels, labels, title=f"L{layer}H{head} ({T} tokens)")
        fig.update_layout(height=_height(T))
        st.plotly_chart(fig, key="attn_heatmap")
    with right:
        rows = state.head_rows(ck.key, tuple(ids))
        df = pd.DataFrame(rows).set_index("name").drop(columns=["layer", "head"])
        if df["alibi_slope"].isna().all():
            df = df.drop(columns=["alibi_slope"])
        score = st.selectbox("Score map", [c for c in df.columns], key="attn_score")
        import numpy as np

        grid = np.array([[r[score] for r in rows if r["layer"] == l] for l in range(L)])
        st.plotly_chart(plots.head_score_heatmap(grid, name=score).update_layout(height=260), key="attn_scoremap")
        st.caption(f"Head scores on this prompt (induction on repeated random tokens). Selected: **L{layer}H{head}**")
        st.dataframe(df.style.format("{:.3f}").highlight_max(axis=0, color="#d7e9f7"), height=260)
    st.plotly_chart(state.attention_grid_figure(ck.key, tuple(ids)), key="attn_grid")


# ------------------------------------------------------------------ Streams
def page_streams(ck: Loaded) -> None:
    st.subheader("Residual streams")
    ids, labels = _prompt(ck, "streams")
    n = state.norms(ck.key, tuple(ids))
    T = len(ids)
    if n.xt is not None:
        c1, c2 = st.columns(2)
        c1.plotly_chart(plots.resid_norms(n.resid, labels, n.layer_names, title="||resid|| = ||xt + xe||"),
                        key="streams_resid")
        c2.plotly_chart(plots.stream_norms_factored(n.xt, n.xe, n.layer_names,
                                                    title="Factored stream: mean ||xt|| vs ||xe|| per layer"),
                        key="streams_factored")
        stream = st.radio("Per-position map of", ["xt", "xe"], horizontal=True, key="streams_which")
        arr = n.xt if stream == "xt" else n.xe
        st.plotly_chart(plots.resid_norms(arr, labels, n.layer_names, title=f"||{stream}|| per layer and position"),
                        key="streams_xtxe")
    else:
        st.plotly_chart(plots.resid_norms(n.resid, labels, n.layer_names), key="streams_resid")

    st.markdown("#### Top MLP neurons")
    if ck.cfg.attn_only:
        st.info("This model is attention-only: it has no MLP neurons.")
        return
    c1, c2, c3 = st.columns([1, 2, 1])
    layer = c1.selectbox("Layer", list(range(ck.cfg.n_layers)), key=f"streams_layer::{ck.path}")
    pos = c2.selectbox("Position", list(range(T)), index=T - 1, format_func=lambda i: f"{i}: {labels[i]}",
                       key=f"streams_pos::{ck.path}::{T}")
    k = c3.slider("k", 5, min(50, ck.cfg.d_mlp), min(20, ck.cfg.d_mlp), key="streams_k")
    idx, val = state.neurons(ck.key, tuple(ids), layer, pos, k)
    st.plotly_chart(plots.top_neurons_bar(val, indices=idx, title=f"Largest |activation| in block {layer}'s MLP "
                                          f"at position {pos} ({labels[pos]})"), key="streams_neurons")


# ------------------------------------------------------------------ Logit lens
def page_lens(ck: Loaded) -> None:
    st.subheader("Logit lens")
    ids, labels = _prompt(ck, "lens")
    streams = ["resid", "xt", "xe"] if ck.cfg.stream == "factored" else ["resid"]
    c1, c2 = st.columns([3, 1])
    stream = c1.radio("Stream", streams, horizontal=True, key="lens_stream",
                      help="Factored models: read the attention stream (xt) or the MLP stream (xe) alone.")
    k = c2.slider("top k", 1, 10, 5, key="lens_k")
    res = state.lens(ck.key, tuple(ids), stream, k)
    vocab = state.decode_list(ck)
    fig = plots.logit_lens_heatmap(res, decode=vocab, labels=labels)
    st.plotly_chart(fig.update_layout(height=_height(res.n_layers, 40, 300, 700)), key="lens_heatmap")
    pos = st.selectbox("Position", list(range(len(ids))), index=len(ids) - 1,
                       format_func=lambda i: f"{i}: {labels[i]}", key=f"lens_pos::{ck.path}::{len(ids)}")
    rows = []
    for l, name in enumerate(res.layer_names):
        tops = res.top_tokens[l, 0, pos].tolist()
        ps = res.top_probs[l, 0, pos].tolist()
        row = {"layer": name}
        row.update({f"#{j + 1}": f"{vocab[t]} ({p:.2f})" for j, (t, p) in enumerate(zip(tops, ps))})
        tp = float(res.target_prob[l, 0, pos])
        row["p(next)"] = None if math.isnan(tp) else round(tp, 4)
        rows.append(row)
    st.caption(f"Top {k} predictions at position {pos} ({labels[pos]}); next token: "
               + (labels[pos + 1] if pos + 1 < len(labels) else "none (last position)"))
    st.dataframe(pd.DataFrame(rows).set_index("layer"))


# ------------------------------------------------------------------ Step-by-step
def page_steps(ck: Loaded) -> None:
    st.subheader("Step-by-step generation")
    ids, labels = _prompt(ck, "steps", part="prompt")
    cfg = ck.cfg
    room = cfg.n_ctx - len(ids) if cfg.positional == "learned" else 64
    if room <= 0:
        raise AppError(f"The prompt fills the whole context (n_ctx={cfg.n_ctx}, learned positions): "
                       "nothing can be generated; shorten it.")
    c1, c2, c3, c4 = st.columns(4)
    n_steps = c1.slider("Tokens to generate", 1, max(1, min(64, room)), min(16, room), key="steps_n")
    greedy = c2.toggle("Greedy", value=True, key="steps_greedy")
    temperature = c3.slider("Temperature", 0.1, 2.0, 1.0, 0.1, key="steps_temp", disabled=greedy)
    seed = int(c4.number_input("Seed", 0, 10_000, 0, key="steps_seed", disabled=greedy))
    k = 10
    trace = state.steps_trace(ck.key, tuple(ids), n_steps, k, greedy, float(temperature), seed)
    vocab = state.decode_list(ck)
    new = [vocab[s.token] for s in trace]
    st.markdown("**Prompt →** `" + "".join(labels) + "` **+** " + " ".join(f"`{t}`" for t in new))
    table = pd.DataFrame([{
        "step": i, "position": s.position, "token": vocab[s.token], "p": float(s.probs[s.token]),
        "top": ", ".join(f"{vocab[t]}:{p:.2f}" for t, p in zip(s.top_ids.tolist()[:5], s.top_probs.tolist()[:5])),
    } for i, s in enumerate(trace)]).set_index("step")
    i = st.select_slider("Step", options=list(range(len(trace))), value=0,
                         format_func=lambda j: f"{j}: {new[j]}", key="steps_pick") if len(trace) > 1 else 0
    s = trace[i]
    keys = labels + new[:i]  # the sequence the step's query attended over
    c1, c2 = st.columns(2)
    c1.plotly_chart(plots.generation_steps(s.probs, k=k, decode=vocab, chosen=s.token,
                                           title=f"Step {i}: next-token probabilities (chosen: {new[i]})"),
                    key="steps_probs")
    att = s.attention.reshape(-1, s.attention.shape[-1])  # (layer*head, keys)
    heads = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    fig = plots.attention_heatmap(att, heads, keys, title=f"Step {i}: attention of the predicting query "
                                  f"(position {s.position}) in every head")
    c2.plotly_chart(fig.update_layout(yaxis_title="head", height=_height(len(heads), 22)), key="steps_attn")
    st.dataframe(table, column_config={"p": st.column_config.ProgressColumn("p", min_value=0.0, max_value=1.0,
                                                                             format="%.3f")})


# ------------------------------------------------------------------ Compare
def page_compare(ck: Loaded) -> None:
    st.subheader("Step masking: none vs mask_steps vs mask_answer")
    found = state.discover()
    missing = [n for n in state.COMPARE_NAMES if n not in found]
    if missing:
        st.warning(
            f"Compare needs the three step-masking checkpoints {', '.join(state.COMPARE_NAMES)} under "
            f"`{state.checkpoint_root()}`; missing: {', '.join(missing)}. Train them (see README) or point "
            f"{state.ENV_ROOT} at a directory that holds them."
        )
        return
    cks = [state.load(found[n]) for n in state.COMPARE_NAMES]
    examples = state.compare_examples(cks[0].key)
    c1, c2 = st.columns([2, 1])
    n_ex = c1.slider("Test examples", 1, len(examples), min(32, len(examples)), key="compare_n")
    gen = c2.toggle("Greedy accuracy (slower)", value=True, key="compare_gen")
    rows = state.compare(tuple(c.key for c in cks), state.COMPARE_NAMES, n_ex, gen)
    if gen:
        m = st.columns(3)
        for col, r in zip(m, rows):
            col.metric(r["name"], f"{r['answer_match']:.1%}", help="greedy answer accuracy; exact match "
                       f"(steps + answer) {r['exact_match']:.1%}")
    c1, c2 = st.columns(2)
    c1.plotly_chart(plots.segment_bars(rows, "loss", segments=("step", "answer"),
                                      title="Teacher-forced loss per segment"), key="compare_loss")
    c2.plotly_chart(plots.segment_bars(rows, "accuracy", segments=("step", "answer"),
                                      title="Next-token accuracy per segment"), key="compare_acc")
    st.caption("Loss and accuracy are teacher-forced on every step and answer token, whatever each model "
               "was trained on (the prompt is never a target).")
    show = ["name", "loss/step", "loss/answer", "accuracy/step", "accuracy/answer",
            "answer_to_step_attn/mean", "answer_to_step_attn/max", "answer_to_step_attn/argmax"]
    show += ["exact_match", "answer_match"] if gen else []
    st.dataframe(pd.DataFrame(rows)[[c for c in show if c in rows[0]]].set_index("name"))

    st.markdown("#### One prompt, side by side")
    j = st.selectbox("Test example", list(range(min(len(examples), 200))),
                     format_func=lambda i: examples[i].text.replace("<bos>", "").replace("<eos>", ""),
                     key="compare_example")
    ex = examples[j]
    ids, seg = tuple(ex.input_ids), tuple(ex.segments)
    n_prompt = seg.index(1) if 1 in seg else seg.index(2)
    labels = state.labels(cks[0], ids)
    layer, head = _layer_head(cks[0], "compare")
    cols = st.columns(3)
    for col, c in zip(cols, cks):
        name = Path(c.path).name
        with col:
            st.markdown(f"**{name}**")
            out = state.greedy_completion(c.key, ids[:n_prompt], len(ids) - n_prompt)
            target = list(ids[n_prompt:])
            text = c.tokenizer.decode(out)
            ok = "✅" if out == target else "❌"
            st.code(f"{ok} {text}", language=None)
            pats = state.attention(c.key, ids)
            st.plotly_chart(plots.attention_heatmap(pats[layer, head], labels, labels, title=f"{name} L{layer}H{head}")
                            .update_layout(height=_height(len(ids), 10, 360, 560)), key=f"compare_attn_{name}")
            a2s = state.answer_step_attention(c.key, ids, seg)
            st.plotly_chart(plots.head_score_heatmap(a2s, name="answer→step", title="answer → step attention")
                            .update_layout(height=240), key=f"compare_a2s_{name}")
