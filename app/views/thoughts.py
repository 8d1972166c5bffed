"""Latent thoughts (Coconut checkpoints): one test or validation example's passes left to right:
what each continuous thought decodes to, how much the answer attends to it, and the answer's
probability as thoughts are added one at a time; the logit lens of every thought per layer, the
answer's attention per head, the search frontier's share of each thought (graph task) and
patching one thought with another example's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import data
from ..data import AppError
from .common import Ctx, chart, export

TITLE = "Latent thoughts"
SPLITS = ["test", "val"]


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
    index = min(max(0, int(view.get("index"))), n - 1)
    if index != view.get("index"):  # past the split (e.g. a URL written for a larger one): say so, fix the URL
        view.problems.append(f"`index={view.get('index')}` is outside the {split} split (0–{n - 1}); showing {index}.")
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

    tl = data.thought_timeline(key, split, index, k)
    name = ctx.ck.name.replace("/", "_")
    fig = plots.thought_timeline(tl, title=f"Example {index} ({split}): P(first answer token {tl['answer']!r}) "
                                           f"{tl['answer_prob'][0]:.2f} with no thought, "
                                           f"{tl['answer_prob'][-1]:.2f} with all {len(tl['answer_prob']) - 1}")
    chart(fig, "thought_timeline")
    st.caption("Top: the last layer's top tokens at the position that produces each thought (thought 0 is read at "
               "<bot>; the last column is the state after the last thought). Middle: attention from <eot>, whose "
               "logits give the answer, into each latent slot (mean over heads). Bottom: P(first answer token) when "
               "0, 1, … thoughts are fed before <eot>.")
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


def _patch(ctx: Ctx, split: str, index: int, n: int, tok, staged) -> None:
    view, key = ctx.view, ctx.key
    n_slots = data.thought_batch(key, split, index).n_latents
    if n < 2 or n_slots == 0:
        st.info("Patching needs a second example and at least one thought.")
        return
    c1, c2 = st.columns(2)
    donor = view.get("donor")
    donor = donor if donor is not None and 0 <= donor < n and donor != index else (index + 1) % n
    view.widget("number_input", "donor", "Donor example (its thought is patched in)", value=donor, min_value=0,
                max_value=n - 1, container=c1, to_url=lambda v: None if v == (index + 1) % n else v)
    slot = min(max(0, int(view.get("slot"))), n_slots - 1)
    if slot != view.get("slot"):
        view.set("slot", slot)
    view.widget("selectbox", "slot", "Thought (latent slot) replaced", value=slot, options=list(range(n_slots)),
                container=c2, format_func=lambda s: f"thought {s}")
    if data.thought_batch(key, split, donor).n_latents != n_slots:
        raise AppError(f"Example {donor} has {data.thought_batch(key, split, donor).n_latents} thoughts and example "
                       f"{index} has {n_slots}: choose a donor with the same number.")
    r = data.thought_patch(key, split, index, donor, slot)
    own = tok.decode([int(staged.parts(split)[index].answer[0][0])])
    other = tok.decode([int(staged.parts(split)[donor].answer[0][0])])
    m1, m2 = st.columns(2)
    m1.metric(f"P({own}), this example's answer", f"{r['p_answer_patched']:.3f}",
              f"{r['p_answer_patched'] - r['p_answer']:+.3f} (was {r['p_answer']:.3f})")
    m2.metric(f"P({other}), the donor's answer", f"{r['p_source_answer_patched']:.3f}",
              f"{r['p_source_answer_patched'] - r['p_source_answer']:+.3f} (was {r['p_source_answer']:.3f})")
    st.caption(f"Thought {slot} of example {index} replaced by thought {slot} of example {donor}; probabilities of the "
               "first answer token at <eot>, before → after.")
