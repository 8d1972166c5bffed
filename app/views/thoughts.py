"""Latent thoughts (Coconut checkpoints): one test or validation example's passes left to right:
what each continuous thought decodes to, how much the answer attends to it, and the answer's
probability as thoughts are added one at a time; the logit lens of every thought per layer, the
answer's attention per head, the graph nodes each thought holds (graph tasks: the search
frontier), and patching one thought with another example's.

What is tracked is the answer token the thoughts matter most for
(`interp.thoughts.deciding_answer_offset`: a leading carry or the root's name is settled by the
question alone), and the donor, unless chosen, is the example whose thought changes that token
most (`interp.thoughts.best_donor`); the page lists the examples where the thoughts matter most
(`interp.thoughts.showcase`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import data
from ..data import AppError
from .common import Ctx, chart, export

TITLE = "Latent thoughts"
SPLITS = ["test", "val"]
SCAN = 32  # examples scanned for the suggestions and the default donor


@st.cache_data(max_entries=32, show_spinner="Finding the examples where the thoughts matter…")
def _showcase(key: tuple, split: str) -> list[dict]:
    from interp import thoughts

    r, _, staged = data.reasoner(key)
    return thoughts.showcase(r, staged, split, n=SCAN)


@st.cache_data(max_entries=64, show_spinner=False)
def _offset(key: tuple, split: str, index: int) -> int:
    from interp import thoughts

    r, _, staged = data.reasoner(key)
    return thoughts.deciding_answer_offset(r, staged, split, index)


@st.cache_data(max_entries=64, show_spinner="Trying donors…")
def _best_donor(key: tuple, split: str, index: int, slot: int, offset: int) -> Optional[dict]:
    from interp import thoughts

    r, _, staged = data.reasoner(key)
    n = len(staged.parts(split))
    return thoughts.best_donor(r, staged, split, index, slot, [i for i in range(min(n, SCAN + 1)) if i != index],
                               answer_offset=offset)


@st.cache_data(max_entries=64, show_spinner=False)
def _patched(key: tuple, split: str, index: int, donor: int, slot: int, offset: int) -> dict:
    from interp import thoughts

    r, _, staged = data.reasoner(key)
    batch = thoughts.latent_batch(staged, split, 1, start=index, answer_offset=offset)
    source = thoughts.latent_batch(staged, split, 1, start=donor, answer_offset=_offset(key, split, donor))
    try:
        out = thoughts.patch_thought(r, batch, source, slot)
    except ValueError as e:
        raise AppError(f"Patching a thought: {e}") from None
    return {k: float(v[0]) for k, v in out.items()}


@st.cache_data(max_entries=64, show_spinner=False)
def _frontier_nodes(key: tuple, split: str, index: int) -> dict:
    from interp import superposition

    r, _, staged = data.reasoner(key)
    return superposition.thought_node_scores(r, staged, split, n=1, start=index)


def unavailable(ctx: Ctx):
    mode = data.coconut_mode(ctx.ck)
    if mode is None:
        return "it is for Coconut checkpoints (trained with train.trainer: coconut, mode coconut)"
    if mode != "coconut":
        return f"this checkpoint was trained with Coconut mode={mode!r}, which feeds no continuous thoughts back " \
               "(only mode coconut does)"
    return None


def render(ctx: Ctx) -> None:
    view, key = ctx.view, ctx.key
    _, tok, staged = data.reasoner(key)
    c1, c2, c3, c4 = st.columns([1.2, 1.4, 2, 3])
    split = view.choice("split", SPLITS)
    view.widget("radio", "split", "Split", value=split, options=SPLITS, horizontal=True, container=c1)
    n = data.thought_split_size(key, split)
    if n == 0:
        raise AppError(f"The {split} split of this checkpoint's task is empty; choose another split.")
    asked = view.get("index")
    if asked is None:  # no example chosen: the one (of the first SCAN) the thoughts matter most for
        asked = _showcase(key, split)[0]["index"]
    index = min(max(0, int(asked)), n - 1)
    if index != asked:  # past the split (e.g. a URL written for a larger one): say so, fix the URL
        view.problems.append(f"`index={asked}` is outside the {split} split (0–{n - 1}); showing {index}.")
        view.set("index", index)
    view.widget("number_input", "index", f"Example (0–{n - 1})", value=index, min_value=0, max_value=n - 1,
                container=c2)
    k = min(10, max(1, int(view.get("topk"))))
    view.widget("slider", "topk", "Top tokens per thought", value=k, min_value=1, max_value=10, container=c3)

    part = staged.parts(split)[index]
    verdict = data.thought_answer(key, split, index)
    prompt = tok.decode([i for i in part.prompt[0] if i != tok.bos_token_id])
    steps = " ".join(tok.decode(list(s[0])) for s in part.steps)
    short = len(prompt) <= 40
    with c4:
        mark = ":green[**correct**]" if verdict["correct"] else ":red[**wrong**]"
        st.markdown((f"**Question** `{prompt}` · " if short else "")
                    + f"**Answer** `{verdict['answer']}` · the model answers `{verdict['generated']}` {mark}")
        st.caption(f"Chain of thought the {part.n_steps} steps' thoughts replace: {steps}")
    if not short:
        st.code(prompt, language=None, wrap_lines=True)

    _suggestions(ctx, split, index)
    tl = data.thought_timeline(key, split, index, k)
    name = ctx.ck.name.replace("/", "_")
    which = "first answer token" if tl.get("answer_offset", 0) == 0 else f"answer token {tl['answer_offset'] + 1}"
    fig = plots.thought_timeline(tl, title=f"Example {index} ({split}): P({which} {tl['answer']!r}) "
                                           f"{tl['answer_prob'][0]:.2f} with no thought, "
                                           f"{tl['answer_prob'][-1]:.2f} with all {len(tl['answer_prob']) - 1}")
    chart(fig, "thought_timeline")
    st.caption(f"Tracked: the {which} {tl['answer']!r}, the one whose probability the thoughts raise most (the "
               "answer after it is given, teacher-forced). Top: the last layer's top tokens at the position that "
               "produces each thought (thought 0 is read at <bot>; the last column is the state after the last "
               "thought). Middle: attention from the position predicting the tracked token into each latent slot "
               "(mean over heads). Bottom: its probability when 0, 1, … thoughts are fed before <eot>.")
    export(f"{name}_thoughts_{split}_{index}", key="thought_timeline_export", charts=["thought_timeline"],
           table=lambda: pd.DataFrame({"thought": range(len(tl["top_tokens"])),
                                       "top_tokens": [" ".join(t) for t in tl["top_tokens"]],
                                       "top_probs": [" ".join(f"{p:.3f}" for p in ps) for ps in tl["top_probs"]]}),
           arrays=lambda: {"top_probs": np.array(tl["top_probs"]), "attention": np.array(tl["attention"]),
                           "answer_prob": np.array(tl["answer_prob"]), "top_tokens": np.array(tl["top_tokens"])})

    vocab = data.decode_list(ctx.ck)
    with st.expander("Logit lens of every thought, per layer", expanded=False):
        lens = data.thought_lens(key, split, index, 1, k)
        chart(plots.thought_lens_heatmap(lens, 0, vocab).update_layout(height=max(300, 120 + 45 * len(lens.layer_names))),
              "thought_lens")
        export(f"{name}_thought_lens_{split}_{index}", key="thought_lens_export", charts=["thought_lens"],
               arrays=lambda: {"top_ids": lens.top_ids[0].numpy(), "top_probs": lens.top_probs[0].numpy(),
                               "layer_names": np.array(lens.layer_names)})
    with st.expander("Attention from the answer into each thought, per head", expanded=False):
        att = data.thought_attention(key, split, index)
        chart(plots.thought_attention_heatmap(att), "thought_attention")
        L, H, S = att.shape
        export(f"{name}_thought_attention_{split}_{index}", key="thought_attention_export", charts=["thought_attention"],
               arrays=lambda: {"attention": att.numpy()},
               table=lambda: pd.DataFrame(att.reshape(L * H, S).numpy(), columns=[f"slot {s}" for s in range(S)],
                                          index=[f"L{l}H{h}" for l in range(L) for h in range(H)]))
    if "depth" in part.example.meta:
        with st.expander("Graph nodes in each thought: the search frontier (graph task)", expanded=True):
            nodes = _frontier_nodes(key, split, index)
            chart(plots.thought_frontier_nodes(nodes, index), "thought_frontier_nodes")
            st.caption("Each graph node's probability under each thought's logit lens (the model's own output at "
                       "the position producing the thought; thought k is fed into slot k - 1). A thought holding "
                       "the breadth-first frontier puts its mass on the nodes at depth k (•), the optimal ones (★) "
                       "first (Zhu et al. 2025, Reasoning by Superposition).")
            export(f"{name}_frontier_nodes_{split}_{index}", key="thought_frontier_nodes_export",
                   charts=["thought_frontier_nodes"],
                   table=lambda: pd.DataFrame([{k: (" ".join(v) if k == "groups" else v) for k, v in r.items()}
                                               for r in nodes["rows"]]))
        with st.expander("Search frontier: where each thought's decoded mass goes (graph task)", expanded=False):
            _frontier(ctx, split, n, name)
    with st.expander("Patch a thought with another example's", expanded=True):
        _patch(ctx, split, index, n, tok, staged)


def _frontier(ctx: Ctx, split: str, n: int, name: str) -> None:
    view, key = ctx.view, ctx.key
    hi = min(n, 128)
    n_ex = min(max(1, int(view.get("nex"))), hi)
    view.widget("slider", "nex", "Examples averaged", value=n_ex, min_value=1, max_value=hi)
    res = data.thought_frontier(key, split, n_ex)
    chart(plots.frontier_mass_bars(res, title=f"Where each thought's decoded mass goes, mean over {n_ex} {split} "
                                              "examples (thought j = BFS depth j)"), "thought_frontier")
    st.caption("The logit lens of the last layer at each thought, split into the path node at depth j, the other "
               "nodes at depth j (the rest of the search frontier), reachable nodes at other depths, unreachable "
               "nodes and non-nodes.")
    export(f"{name}_frontier_{split}_{n_ex}", key="thought_frontier_export", charts=["thought_frontier"],
           table=lambda: pd.DataFrame(res["mass"], columns=res["categories"]).rename_axis("thought"))


def _suggestions(ctx: Ctx, split: str, index: int) -> None:
    """Buttons to the examples (of the first SCAN) whose tracked answer token the thoughts move most."""
    best = [r for r in _showcase(ctx.key, split) if r["gain"] > 0.05][:6]
    if not best:
        st.caption(f"In the first {SCAN} {split} examples no answer token moves by more than 0.05 with the thoughts.")
        return
    cols = st.columns([2.2] + [1] * len(best))
    cols[0].markdown("**Where the thoughts matter most** (P of the tracked token: none → all thoughts)")
    for c, r in zip(cols[1:], best):
        if c.button(f"#{r['index']}: {r['p_none']:.2f}→{r['p_all']:.2f}", key=f"showcase_{r['index']}",
                    disabled=r["index"] == index, width="stretch"):
            ctx.view.set("index", r["index"])
            st.rerun()


def _patch(ctx: Ctx, split: str, index: int, n: int, tok, staged) -> None:
    view, key = ctx.view, ctx.key
    n_slots = data.thought_batch(key, split, index).n_latents
    if n < 2 or n_slots == 0:
        st.info("Patching needs a second example and at least one thought.")
        return
    c1, c2 = st.columns(2)
    offset = _offset(key, split, index)
    asked = view.get("slot")
    if asked is None:  # no slot chosen: the one whose best patch changes the tracked token most
        tried = [(_best_donor(key, split, index, s, offset), s) for s in range(n_slots)]
        scored = [(b["flipped"], b["p_answer"] - b["p_answer_patched"], -s) for b, s in tried if b is not None]
        slot = -max(scored)[2] if scored else 0
    else:
        slot = min(max(0, int(asked)), n_slots - 1)
        if slot != asked:
            view.set("slot", slot)
    suggested = _best_donor(key, split, index, slot, offset)
    fallback = suggested["donor"] if suggested else (index + 1) % n
    donor = view.get("donor")
    donor = donor if donor is not None and 0 <= donor < n and donor != index else fallback
    view.widget("number_input", "donor", "Donor example (its thought is patched in)", value=donor, min_value=0,
                max_value=n - 1, container=c1, to_url=lambda v: None if v == fallback else v,
                help=f"Default: of the first {SCAN} examples with as many thoughts, the one whose thought changes this "
                     "example's tracked answer token most.")
    view.widget("selectbox", "slot", "Thought (latent slot) replaced", value=slot, options=list(range(n_slots)),
                container=c2, format_func=lambda s: f"thought {s}")
    if data.thought_batch(key, split, donor).n_latents != n_slots:
        raise AppError(f"Example {donor} has {data.thought_batch(key, split, donor).n_latents} thoughts and example "
                       f"{index} has {n_slots}: choose a donor with the same number.")
    r = _patched(key, split, index, donor, slot, offset)
    own = tok.decode([int(staged.parts(split)[index].answer[0][offset])])
    other_offset = _offset(key, split, donor)
    other = tok.decode([int(staged.parts(split)[donor].answer[0][other_offset])])
    m1, m2 = st.columns(2)
    m1.metric(f"P({own}), this example's tracked answer token", f"{r['p_answer_patched']:.3f}",
              f"{r['p_answer_patched'] - r['p_answer']:+.3f} (was {r['p_answer']:.3f})")
    m2.metric(f"P({other}), the donor's", f"{r['p_source_answer_patched']:.3f}",
              f"{r['p_source_answer_patched'] - r['p_source_answer']:+.3f} (was {r['p_source_answer']:.3f})")
    flipped = int(r["top_patched"]) != int(r["top"])
    st.caption(f"Thought {slot} of example {index} replaced by thought {slot} of example {donor}; probabilities at the "
               f"position predicting the tracked token, before → after. The model's top token there "
               + (f"**flips** from `{tok.decode([int(r['top'])])}` to `{tok.decode([int(r['top_patched'])])}`."
                  if flipped else f"stays `{tok.decode([int(r['top'])])}`.")
               + ("" if suggested is None or suggested["flipped"] or donor != suggested["donor"] else
                  f" (No donor among the first {SCAN} flips it at this slot; this one changes it most.)"))
