"""Patching: the prompt (clean) and a corrupted twin of the same length side by side, a metric
(logit difference of the two runs' answers, probability, log-probability or loss), denoising
or noising, and activation patching of every site as layer x position maps (resid_pre,
attn_out, mlp_out; xt / xe for factored models) and a layer x head map (z). Clicking a cell
selects that layer and position (or head) for every page."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import components, data
from ..data import AppError
from ..state import set_param
from .common import Ctx, chart, export, grid_point, working
from .steps import MISMATCH

TITLE = "Patching"
METRICS = {"logit_diff": "logit difference (clean − corrupted answer)", "prob": "probability of the clean answer",
           "logprob": "log-probability of the clean answer", "loss": "loss on the clean prompt"}
DIRECTIONS = {"denoise": "denoise: clean into corrupted", "noise": "noise: corrupted into clean"}
ACT_HELP = {"resid_pre": "residual stream entering each block", "resid_mid": "residual between attention and MLP",
            "resid_post": "residual leaving each block", "attn_out": "attention output", "mlp_out": "MLP output",
            "z": "each head's output (every position)", "xt_pre": "xt stream entering each block",
            "xe_pre": "xe stream entering each block", "xt_post": "xt leaving each block", "xe_post": "xe leaving each block"}
WIDE = 24  # layer x position maps of longer prompts get the page's whole width
AUTO = -1  # the metric position chosen from the prompts (see data.metric_positions)


def site_options(cfg) -> tuple[list[str], list[str]]:
    """(activation kinds this model has, the default selection)."""
    acts = ["resid_pre"]
    if not cfg.attn_only and cfg.block == "sequential":
        acts.append("resid_mid")
    acts += ["resid_post", "attn_out"] + ([] if cfg.attn_only else ["mlp_out"]) + ["z"]
    if cfg.stream == "factored":
        acts += ["xt_pre", "xe_pre", "xt_post", "xe_post"]
    default = [a for a in ("resid_pre", "attn_out", "mlp_out", "z") if a in acts]
    default += ["xt_pre", "xe_pre"] if cfg.stream == "factored" else []
    return acts, default


def _text(ck, ids) -> str:
    """Prompt text of `ids` as the prompt box shows it (the model's <bos> is implied)."""
    ids = list(ids)
    if ids and ids[0] == ck.cfg.bos_token_id and data.uses_bos(ck):
        ids = ids[1:]
    return ck.tokenizer.decode(ids)


def _corrupted(ctx: Ctx, p) -> tuple[tuple[int, ...], str, Optional[list[int]]]:
    """(corrupted ids, what was changed, metric positions the default corruption was chosen for)."""
    ck, view = ctx.ck, ctx.view
    with working("Finding a corrupted twin of the prompt (one change that moves the model's answer)"):
        made, how, reads = data.default_corruption(ck, p.ids)
    default = _text(ck, made) if made is not None else ""
    text = view.get("corrupt") or default
    view.widget("text_area", "corrupt", "Corrupted prompt (same number of tokens)", value=text, height=90,
                to_url=lambda t: None if t == default else t,
                help="The run patched from (denoise) or into (noise). Default: the prompt with one change: for "
                     "arithmetic the first operand's last digit (same carries), for induction another repeated block, "
                     "otherwise the single token whose change moves the model's prediction. Ctrl+Enter applies.")
    if text != default and default:
        st.button("Use the default corruption", on_click=set_param, args=("corrupt", None), key="reset_corrupt")
    if not text.strip():
        raise AppError("Type a corrupted prompt: the prompt with a change that should alter the answer, of the same "
                       "number of tokens.")
    try:
        ids = tuple(data.encode(ck, text))
    except AppError as e:
        raise AppError(f"Corrupted prompt: {e}") from None
    if len(ids) != len(p.ids):
        raise AppError(f"The clean and corrupted prompts must tokenize to the same length: the prompt is {len(p.ids)} "
                       f"tokens, the corrupted prompt {len(ids)}. Change tokens one for one (e.g. a digit for a digit).")
    return (ids, how, reads) if text == default else (ids, "typed", None)


def _select(res, pt: dict) -> None:
    """A click on a map cell -> layer and position (stream maps) or layer and head (z)."""
    row, col = grid_point(len(res.labels[res.dims[1]]))(pt)
    set_param("layer", res.index["layer"][row])
    set_param(res.dims[1], res.index[res.dims[1]][col])


def render(ctx: Ctx) -> None:
    view, ck, cfg = ctx.view, ctx.ck, ctx.cfg
    c1, c2 = st.columns(2)
    with c1:
        p = ctx.prompt()
        st.caption("The **clean** run: the prompt every page shares.")
    with c2:
        cor, how, reads = _corrupted(ctx, p)
        if how:
            st.caption(f"Corruption: {how}.")
    ids, T = p.ids, len(p)
    vocab = data.decode_list(ck)
    differ = [a != b for a, b in zip(ids, cor)]
    cor_labels = data.labels(ck, cor)
    if not any(differ):
        raise AppError("The clean and corrupted prompts are the same: patching one into the other changes nothing. "
                       "Change a token of the corrupted prompt.")
    show = [f"{a}→{b}" if d else a for a, b, d in zip(p.labels, cor_labels, differ)]

    c1, c2, c3, c5 = st.columns([2.2, 2.2, 2.2, 1.4])
    metric = view.choice("metric", list(METRICS))
    view.widget("selectbox", "metric", "Metric", value=metric, options=list(METRICS), format_func=METRICS.get,
                container=c1)
    direction = view.choice("pdir", list(DIRECTIONS))
    view.widget("radio", "pdir", "Direction", value=direction, options=list(DIRECTIONS), format_func=DIRECTIONS.get,
                container=c2, help="Denoise: run the corrupted prompt and patch in clean activations (which sites "
                "restore the answer?). Noise: run the clean prompt and patch in corrupted ones (which sites break it?).")
    auto = reads or data.metric_positions(ck, ids, cor)
    mpos = view.position("mpos", T, AUTO, what="tokens")
    auto_text = ", ".join(map(str, auto)) if len(auto) <= 3 else f"{auto[0]}…{auto[-1]} (mean)"
    view.widget("selectbox", "mpos", "Metric position", value=mpos, options=[AUTO] + list(range(T)), container=c3,
                format_func=lambda i: f"auto: {auto_text}" if i == AUTO else f"{i}: {show[i]}",
                to_url=lambda i: None if i == AUTO else i,
                disabled=metric == "loss", help="Where the metric reads the logits. Auto: for task prompts, the "
                "position predicting the first answer token where the prompts differ (induction: every repeated "
                "token, averaged); for text with the default corruption, the position whose prediction it alters; "
                "else the last position.")
    positions = [mpos] if mpos != AUTO else auto
    acts_all, acts_default = site_options(cfg)
    asked = view.get("acts") or acts_default
    acts = [a for a in asked if a in acts_all] or acts_default  # none: the defaults
    if any(a not in acts_all for a in asked):
        view.problems.append(f"`acts`: {', '.join(f'`{a}`' for a in asked if a not in acts_all)} is not a site of this "
                             f"model (sites: {', '.join(acts_all)}); left out.")
        view.set("acts", None if acts == acts_default else acts)
    view.widget("pills", "acts", "Sites patched", value=acts, options=acts_all, selection_mode="multi",
                to_url=lambda v: None if list(v) == acts_default else list(v),
                help="; ".join(f"{a}: {ACT_HELP[a]}" for a in acts_all))
    normalized = bool(view.get("pnorm"))
    view.widget("toggle", "pnorm", "Normalized", value=normalized, container=c5,
                help="On: (patched − base) / (source − base), so 1 = the patch moves the metric all the way to the "
                     "source run's value. Off: patched − base, in the metric's units.")

    with working("Reading both runs' answers"):
        good, bad, source = data.answers(ctx.key, ids, cor, positions)
    strip_colors = [MISMATCH if d else None for d in differ]
    components.token_strip("patch_clean", p.labels, colors=strip_colors, prefix="clean: ",
                           titles=[f"{i}: {t}" for i, t in enumerate(p.labels)], selected=positions[-1])
    components.token_strip("patch_corrupt", cor_labels, colors=strip_colors, prefix="corrupted: ",
                           titles=[f"{i}: {t}" for i, t in enumerate(cor_labels)], selected=positions[-1])
    if metric == "loss":
        what = "mean next-token loss on the clean prompt"
    else:
        where = ", ".join(f"{q} ({vocab[g]}" + (f" vs {vocab[b]})" if metric == "logit_diff" else ")")
                          for q, g, b in zip(positions[:4], good, bad)) + ("…" if len(positions) > 4 else "")
        what = {"logit_diff": "logit(clean answer) − logit(corrupted answer)", "prob": "p(clean answer)",
                "logprob": "log p(clean answer)"}[metric] + f" at position {where}; answers: {source}"
    if metric == "logit_diff" and good == bad:
        st.warning(f"Both runs' answers are the same token ({', '.join(vocab[g] for g in good[:4])}) where the metric "
                   "reads, so the logit difference is 0 for every patch. Choose a metric position where the prompts' "
                   "next tokens differ, change the corrupted prompt so the model answers differently, or use another "
                   "metric.")
        return

    chosen = list(acts)
    header = st.container()  # the metric's values and the colour legend, once the first sweep is in
    bar = st.progress(0.0, text="Patching…")
    slots = _slots(ctx, chosen, T)
    results = {}
    for i, act in enumerate(chosen):  # each map is drawn as soon as its sweep is done
        def report(done: int, total: int, i=i, act=act) -> None:
            bar.progress(min(1.0, (i + done / max(total, 1)) / len(chosen)),
                         text=f"Patching {act}: {done}/{total} sites (sweep {i + 1} of {len(chosen)})")
        results[act] = data.patch_sweep(ctx.key, ids, cor, act, metric, tuple(positions), good, bad, direction,
                                        tuple(show), progress=report)
        if i == 0:
            normalized = _header(header, results[act], what, direction, normalized)
        _map(ctx, results[act], act, normalized, slots[act])
    bar.empty()
    _table(ctx, results, chosen, normalized, slots["table"])


def _slots(ctx: Ctx, chosen: list[str], T: int) -> dict:
    """Where each map goes (the layer x position maps in rows, the layer x head map beside the
    table of largest effects), laid out before the sweeps run."""
    stream_acts = [a for a in chosen if a != "z"]
    slots = {}
    n_cols = 1 if T > WIDE else 2
    for j in range(0, len(stream_acts), n_cols):
        for col, act in zip(st.columns(n_cols), stream_acts[j:j + n_cols]):
            slots[act] = col.empty()
    left, right = st.columns([2, 3]) if "z" in chosen else (None, st.container())
    if "z" in chosen:
        slots["z"] = left.empty()
    slots["table"] = right.empty()
    return slots


def _header(box, first, what: str, direction: str, normalized: bool) -> bool:
    """The metric line and colour legend; returns whether colours can be normalized."""
    clean_v, cor_v = (first.source, first.baseline) if direction == "denoise" else (first.baseline, first.source)
    box.markdown(f"**Metric**: {what}. Clean run **{float(clean_v):.3f}**, corrupted run **{float(cor_v):.3f}**.")
    if abs(float(first.source - first.baseline)) < 1e-6 and normalized:
        box.warning("The clean and corrupted runs score the same on this metric, so normalized effects are undefined; "
                    "colours show the raw change instead.")
        normalized = False
    shown = "normalized effect" if normalized else "change of the metric"
    box.caption(f"Colour: the {shown} of patching each site ({first.direction}); blue raises the metric, "
                "red lowers it. Click a cell to select that layer and position (or head) on every page. Positions "
                "after the last one the metric reads cannot change it and are left out.")
    return normalized


def _map(ctx: Ctx, res, act: str, normalized: bool, slot) -> None:
    layer, head, pos = ctx.layer(), ctx.head(), ctx.view.get("pos")
    h = max(260, 120 + 42 * ctx.cfg.n_layers)
    if res.dims == ("layer", "head"):
        fig = plots.patching_heatmap(res, normalized=normalized, title=f"{act}: layer × head", selected=(layer, head),
                                     clickable=True)
    else:
        sel = (layer, res.index["pos"].index(pos)) if pos in res.index["pos"] else None
        fig = plots.patching_heatmap(res, normalized=normalized, title=f"{act}: layer × position", selected=sel,
                                     clickable=True)
        plots.token_axis(fig, "x", len(res.index["pos"]))
    chart(fig.update_layout(height=h, margin=dict(t=50, b=40)), f"patch_{act}",
          on_point=lambda pt, res=res: _select(res, pt), container=slot)


def _table(ctx: Ctx, results: dict, chosen: list[str], normalized: bool, slot) -> None:
    what = "normalized effect" if normalized else "change of the metric"
    rows = []
    for act in chosen:
        rows += _top_sites(results[act], act, normalized, what)
    with slot.container():
        st.markdown("**Largest effects**")
        st.dataframe(pd.DataFrame(rows).sort_values(what, key=abs, ascending=False).head(12), hide_index=True,
                     width="stretch")
    name = ctx.ck.name.replace("/", "_")
    export(f"{name}_patching", key="patch_export", charts=[f"patch_{a}" for a in chosen],
           table=lambda: pd.concat([results[a].to_frame().assign(act=a) for a in chosen], ignore_index=True),
           arrays=lambda: {f"{a}_{k}": v for a in chosen for k, v in
                           (("values", results[a].values.numpy()), ("normalized", results[a].normalized().numpy()))}
           | {"baseline": np.array(float(results[chosen[0]].baseline)),
              "source": np.array(float(results[chosen[0]].source))})


def _top_sites(res, act: str, normalized: bool, what: str, k: int = 5) -> list[dict]:
    """The k cells of a (layer, pos | head) map with the largest |value|, named for the table
    (positions with their index and token, as the map's axis shows them)."""
    score = (res.normalized() if normalized else res.effect).numpy()
    flat = np.nan_to_num(score).ravel()
    rows = []
    for i in np.argsort(-np.abs(flat))[:k]:
        r, c = np.unravel_index(int(i), score.shape)
        col = res.dims[1]
        where = f"H{res.index[col][c]}" if col == "head" else f"{res.index[col][c]}:{res.labels[col][c]}"
        rows.append({"activation": act, "layer": f"L{res.index['layer'][r]}", "position / head": where,
                     what: round(float(flat[i]), 4)})
    return rows
