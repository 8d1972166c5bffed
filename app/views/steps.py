"""Step-by-step: generate after the prompt (until <eos> for task checkpoints), show the
output as one strip coloured by probability, check it against the rest of the prompt, and
inspect any step's top-k and the predicting query's attention in every head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import components, data
from ..data import AppError
from ..state import set_param
from .common import Ctx, chart, export, prompt_head, working

TITLE = "Step-by-step"
TOP_K = 10
MATCH, MISMATCH = "#c7e9c0", "#fcbba1"  # light green / light red: readable without any emoji font


def is_task(ctx: Ctx) -> bool:
    return data.is_task(ctx.ck)


def generation_settings(ctx: Ctx, n_prompt_tokens: int) -> tuple[int, bool]:
    """(max new tokens, stop at eos): the URL's, else 128 + stop for task checkpoints and 32
    without stopping for text; never past the context of a learned-position model."""
    cfg = ctx.cfg
    room = cfg.n_ctx - n_prompt_tokens if cfg.uses_learned_positions else 256
    if room <= 0:
        raise AppError(f"The prompt fills the whole context (n_ctx={cfg.n_ctx}, learned positions): nothing can "
                       "be generated; shorten it or generate after fewer tokens.")
    task = is_task(ctx)
    n = ctx.view.get("n") or (128 if task else 32)
    if ctx.view.get("n") is not None:
        n = ctx.view.clamp("n", 1, room, what=f"new tokens here ({cfg.positional} positions, n_ctx={cfg.n_ctx})"
                           if cfg.uses_learned_positions else "new tokens")
    eos = ctx.view.get("eos")
    return max(1, min(int(n), room)), (task if eos is None else bool(eos)) and cfg.eos_token_id is not None


def render(ctx: Ctx) -> None:
    view, cfg, ck = ctx.view, ctx.cfg, ctx.ck
    p = ctx.prompt()
    ids, T = p.ids, len(p)
    default_cut = data.prompt_end(ck, ids)
    cut = view.get("cut")
    cut = cut if cut is not None and 1 <= cut <= T else default_cut
    c0, c1, c2, c3, c4, c5 = st.columns([3, 1.2, 1.3, 1, 1.2, 1])
    view.widget("select_slider", "cut", "Generate after", value=cut, options=list(range(1, T + 1)), container=c0,
                format_func=lambda c: f"{c} tokens {prompt_head(p.labels, c, most=8)}",
                to_url=lambda c: None if c == default_cut else c,
                help="Tokens after this point are the target the generation is checked against. "
                     "Default: the task's prompt (e.g. up to '='), else the whole prompt.")
    n_new, stop = generation_settings(ctx, cut)
    room = cfg.n_ctx - cut if cfg.uses_learned_positions else 256
    view.widget("number_input", "n", "Max new tokens", value=n_new, min_value=1, max_value=max(1, room), container=c1)
    view.widget("toggle", "eos", "Stop at <eos>", value=stop, container=c2, disabled=cfg.eos_token_id is None,
                help="Stop at the end-of-sequence token (default for task checkpoints).")
    greedy = bool(view.get("greedy"))
    view.widget("toggle", "greedy", "Greedy", value=greedy, container=c3)
    temp = view.clamp("temp", 0.1, 2.0, what="sampling")
    view.widget("slider", "temp", "Temperature", value=temp, min_value=0.1, max_value=2.0, step=0.1, container=c4,
                disabled=greedy)
    seed = int(view.get("seed"))
    view.widget("number_input", "seed", "Seed", value=seed, min_value=0, max_value=1_000_000, container=c5,
                disabled=greedy)

    prompt_ids, target = ids[:cut], list(ids[cut:])
    with working(f"Generating up to {n_new} tokens"):
        trace = data.steps_trace(ctx.key, prompt_ids, n_new, TOP_K, greedy, temp, seed, stop)
    if not trace:
        st.info("Nothing was generated.")
        return
    vocab = data.decode_list(ck)
    new = [s.token for s in trace]
    probs = [float(s.probs[s.token]) for s in trace]
    gi = min(max(0, int(view.get("gstep"))), len(trace) - 1)
    shown_prompt = "".join(p.pieces[:cut]).replace("\n", "⏎")
    st.markdown(f"**Output** ({len(new)} tokens{', stopped at <eos>' if stop and new[-1] == cfg.eos_token_id else ''}; "
                "colour = the model's probability of each token; click a token to inspect that step)")
    components.token_strip(
        "steps_strip", [vocab[t] for t in new], values=probs, selected=gi,
        prefix=("…" + shown_prompt[-60:]) if len(shown_prompt) > 60 else shown_prompt,
        titles=[f"step {i}: {vocab[t]}  p={pr:.3f}" for i, (t, pr) in enumerate(zip(new, probs))],
        on_pick=lambda i: set_param("gstep", i))
    if target:
        got = new[: len(target)]
        same = [i < len(got) and got[i] == t for i, t in enumerate(target)]
        first_bad = next((i for i, ok in enumerate(same) if not ok), None)
        verdict = (":green[**matches the target**]" if first_bad is None and len(new) >= len(target)
                   else f":red[**differs from the target at token {first_bad}**]")
        st.markdown(f"**Target** (the prompt after token {cut}): {verdict}")
        components.token_strip("steps_target", [vocab[t] for t in target],
                               colors=[MATCH if ok else MISMATCH for ok in same],
                               titles=[f"target {i}: {vocab[t]}; generated: {vocab[got[i]] if i < len(got) else 'nothing'}"
                                       for i, t in enumerate(target)])

    s = trace[gi]
    keys = list(p.labels[:cut]) + [vocab[t] for t in new[:gi]]  # what the step's query attended over
    layer, head = ctx.layer(), ctx.head()
    c1, c2 = st.columns(2)
    chart(plots.generation_steps(s.probs, k=TOP_K, decode=vocab, chosen=s.token,
                                 title=f"Step {gi}: next-token probabilities (chosen: {vocab[s.token]})"),
          "steps_probs", container=c1)
    att = s.attention.reshape(-1, s.attention.shape[-1]).numpy()  # (layer * head, keys)
    names = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    fig = plots.attention_heatmap(att, names, keys, zmax=None, highlight_row=layer * cfg.n_heads + head,
                                  title=f"Step {gi}: attention of the predicting query (position {s.position})"
                                        f"<br><sup>every head; L{layer}H{head} outlined</sup>")
    chart(fig.update_layout(yaxis_title="head", height=max(360, 140 + 22 * len(names))), "steps_attn", container=c2)
    table = pd.DataFrame([{
        "step": i, "position": st_.position, "token": vocab[st_.token], "p": float(st_.probs[st_.token]),
        "top": ", ".join(f"{vocab[t]}:{q:.2f}" for t, q in zip(st_.top_ids.tolist()[:5], st_.top_probs.tolist()[:5])),
    } for i, st_ in enumerate(trace)]).set_index("step")
    st.dataframe(table, width="stretch", column_config={
        "p": st.column_config.ProgressColumn("p", min_value=0.0, max_value=1.0, format="%.3f")})
    export(f"{ck.name.replace('/', '_')}_generation", key="steps_export", table=lambda: table,
           charts=["steps_probs", "steps_attn"],
           arrays=lambda: {"prompt": np.array(prompt_ids), "generated": np.array(new),
                           "probs": np.stack([x.probs.numpy() for x in trace]),
                           "attention": _padded([x.attention.numpy() for x in trace])})


def _padded(arrays: list) -> np.ndarray:
    """(layer, head, keys_i) per step -> (step, layer, head, max keys), zero-padded."""
    width = max(a.shape[-1] for a in arrays)
    return np.stack([np.pad(a, ((0, 0), (0, 0), (0, width - a.shape[-1]))) for a in arrays])
