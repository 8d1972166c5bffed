"""Features: a checkpoint's dictionaries (SAEs, transcoders), a sortable table of their
latents, one latent's dashboard (top-activating contexts with the tokens shaded by its
activation, activation bins with samples, histogram, logit effect, decoder neighbours), the
latent on the prompt with the features active at the selected position (click a token here
or in the Attention page's token view: the shared `pos`), and steering / ablation with the
next-token distribution and a greedy continuation before and after.

Dashboards open from the dictionary's store on disk (`DICT/dashboard`, `interp features
dashboard`); a missing one is computed once, with a progress bar."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from interp import plots

from .. import components, data
from ..data import AppError
from ..state import set_param
from .common import Ctx, chart, export, working

TITLE = "Features"
MODES = {"steer": "steer: add α × its direction", "ablate": "ablate: zero it"}
WHERE = {"all": "every position", "pos": "the selected position"}
N_NEW = 20  # greedy tokens before / after, unless the URL's `n` says otherwise
ACTIVE = 12  # latents listed as active at the selected position
CSS = """<style>
.fx-ctx{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;line-height:1.9;white-space:pre;
  overflow-x:auto;margin:0}
.fx-ctx .v{display:inline-block;min-width:4.2em;color:#666;font-size:11px}
.fx-ctx span.t{border-radius:2px;padding:1px 0}
.fx-ctx span.at{outline:1.5px solid #d62728;outline-offset:0}
</style>"""


def unavailable(ctx: Ctx):
    if not data.dictionaries(ctx.ck):
        return ("no dictionaries for this checkpoint (put them in CKPT/dictionaries/NAME or data/dictionaries/"
                f"{ctx.ck.name.split('/')[0]}/NAME; train one with `interp features train`)")
    return None


def _visible(piece: str) -> str:
    return piece.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def contexts_html(contexts, scale: float) -> str:
    """One line per context: its activation, then the tokens shaded by the latent's
    activation on each (hover: the value); the activating token outlined."""
    scale = max(scale, 1e-12)
    lines = []
    for c in contexts:
        spans = []
        for j, (piece, a) in enumerate(zip(c.pieces, c.acts)):
            alpha = min(1.0, max(0.0, a / scale))
            cls = "t at" if j == c.at else "t"
            spans.append(f'<span class="{cls}" style="background:rgba(255,127,14,{alpha:.3f})" '
                         f'title="{html.escape(repr(piece))}: {a:.4g}">{html.escape(_visible(piece))}</span>')
        lines.append(f'<div class="fx-ctx"><span class="v">{c.value:.3g}</span>{"".join(spans)}</div>')
    return "".join(lines)


def _pick_latent(i: int) -> None:
    set_param("latent", int(i))


def _table_selected(frame: pd.DataFrame) -> None:
    rows = ((st.session_state.get("feat_table") or {}).get("selection") or {}).get("rows") or []
    if rows:
        set_param("latent", int(frame.index[rows[0]]))


def render(ctx: Ctx) -> None:
    view, ck = ctx.view, ctx.ck
    found = data.dictionaries(ck)
    names = [f.name for f in found]
    name = view.choice("dict", names, what=f"checkpoint {ck.name}")
    f = found[names.index(name)]
    c1, c2 = st.columns([2, 3])
    view.widget("selectbox", "dict", "Dictionary", value=name, options=names, container=c1,
                format_func=lambda n: f"{n} · {found[names.index(n)].what}", after=lambda: set_param("latent", None),
                help="Dictionaries next to the checkpoint (CKPT/dictionaries/) or shipped under data/dictionaries/.")
    c2.caption(f"{f.what}  \n`{f.path}`")
    store = data.feature_store(ck, f)
    if store is None:
        bar = st.progress(0.0, text=f"Computing the dashboards of {f.name} over {data.PAGE_TOKENS:,} test tokens "
                                    "(once; they are saved next to the dictionary)")
        store = data.compute_feature_store(ck, f, lambda frac, msg: bar.progress(frac, text=f"{msg} ({frac:.0%})"))
        bar.empty()
        if store is None:
            raise AppError(f"The dashboards of `{f.name}` were computed but cannot be opened from `{data.store_dir(f)}`.")
    path, stamp = str(store.dir), data.store_stamp(store.dir)
    tab = data.latent_table(path, stamp)
    n = len(tab["latent"])
    lat = view.clamp("latent", 0, n - 1, what=f"{f.name} ({n} latents)")
    toks = store.manifest["tokens"]
    st.caption(f"Dashboards over {toks['n_scored']:,} held-out tokens ({toks['split']} split of "
               f"`{store.manifest.get('checkpoint') or ck.path}`), from `{path}`.")

    left, right = st.columns([2, 3], gap="medium")
    with left:
        _latent_table(tab, lat)
    d = data.latent_dashboard(path, stamp, lat)
    with right:
        _dashboard(d, store)
    _on_prompt(ctx, f, d, lat)


# ------------------------------------------------------------------ the latent table
def _latent_table(tab: dict, lat: int) -> None:
    frame = pd.DataFrame({"density": tab["density"], "max act": tab["max_act"], "mean act": tab["mean_act"],
                          "summary": tab["summary"]}, index=pd.Index(tab["latent"], name="latent"))
    st.markdown(f"**Latents** · {int((tab['density'] > 0).sum()):,} live of {len(frame):,} · click a row "
                "(sort by a column's header)")
    st.dataframe(frame, key="feat_table", height=430, width="stretch", on_select=lambda: _table_selected(frame),
                 selection_mode="single-row", column_config={
                     "density": st.column_config.NumberColumn("density", format="%.2e",
                                                              help="share of the tokens it fires on"),
                     "max act": st.column_config.NumberColumn(format="%.3g"),
                     "mean act": st.column_config.NumberColumn(format="%.3g", help="mean where it fires"),
                     "summary": st.column_config.TextColumn(
                         width="large", help="tokens it fires most on (×count among its top contexts) → tokens its "
                                             "logit effect promotes most")})
    live = np.nonzero(tab["density"] > 0)[0]
    fig = plots.latent_density_scatter(tab, selected=lat).update_layout(height=300, margin=dict(t=40, b=40))
    chart(fig, "feat_scatter", on_point=lambda pt: _pick_latent(live[int(pt.get("point_index", 0))])
          if pt.get("curve_number", 0) == 0 and int(pt.get("point_index", -1)) < len(live) else None)


# ------------------------------------------------------------------ one latent
def _dashboard(d, store) -> None:
    st.markdown(f"#### Latent {d.index}")
    if d.dead:
        st.info(f"Latent {d.index} never fired on these {d.n_tokens:,} tokens (dead here); its logit effect and "
                "neighbours come from the weights.")
    else:
        st.markdown(f"`{d.summary}`  \ndensity **{d.density:.3%}** ({d.n_fired:,} tokens) · max **{d.max_act:.3g}** · "
                    f"mean where it fires **{d.mean_act:.3g}**")
    st.html(CSS)
    if d.top:
        st.markdown(f"**Top {len(d.top)} activations** (shade = activation / max; the outlined token is where it fires)")
        st.html(f'<div class="fx-top">{contexts_html(d.top, d.max_act)}</div>')
        with st.expander(f"Activation bins: {len(d.intervals)} equal bins of (0, max], up to "
                         f"{store.settings['per_interval']} random samples each"):
            for iv in reversed(d.intervals):
                st.markdown(f"({iv.lo:.3g}, {iv.hi:.3g}] · {iv.count:,} tokens ({iv.share:.1%} of its firings)")
                if iv.contexts:
                    st.html(contexts_html(iv.contexts, d.max_act))
    c1, c2 = st.columns(2)
    if not d.dead:
        chart(plots.feature_activation_histogram(d, title="Activations where it fires", n_intervals=len(d.intervals))
              .update_layout(height=300, margin=dict(t=40, b=40)), "feat_hist", container=c1)
    if d.logit_top:
        chart(plots.feature_logit_effect(d, title="Direct logit effect").update_layout(height=300 + 10 * len(d.logit_top),
                                                                                      margin=dict(t=40, b=40)),
              "feat_logits", container=c2)
    else:
        c2.caption(f"No logit effect: {d.logit_note}")
    st.markdown("**Nearest decoder directions** (cosine; click to open)")
    cols = st.columns(min(5, max(1, len(d.neighbours))))
    for j, (nb, cos) in enumerate(d.neighbours):
        cols[j % len(cols)].button(f"{nb} · {cos:.2f}", key=f"feat_nb_{j}", on_click=_pick_latent, args=(nb,),
                                   width="stretch")
    export(f"latent_{d.index}", key="feat_export", charts=[k for k, shown in (("feat_hist", not d.dead), ("feat_logits", bool(d.logit_top))) if shown],
           table=lambda: pd.DataFrame([{"kind": "top", "seq": c.seq, "pos": c.pos, "value": c.value,
                                        "text": "".join(c.pieces)} for c in d.top]),
           arrays=lambda: {"hist_edges": np.array(d.hist_edges), "hist_counts": np.array(d.hist_counts),
                           "logit_top": np.array([t for t, _, _ in d.logit_top]),
                           "logit_top_value": np.array([v for _, _, v in d.logit_top])})


# ------------------------------------------------------------------ the prompt: activations, active features, steering
def _on_prompt(ctx: Ctx, f, d, lat: int) -> None:
    st.markdown("#### On the prompt")
    p = ctx.prompt()
    ids, T = p.ids, len(p)
    dstamp = data.dict_stamp(Path(f.path))
    with working("Encoding the prompt"):
        acts = data.prompt_latents(ctx.key, f.path, dstamp, ids)
    pos = ctx.pos(T, T - 1)
    col = acts[:, lat]
    scale = max(float(col.max()), d.max_act, 1e-12)
    st.markdown(f"Latent **{lat}** on each token (shade = activation / {scale:.3g}); click a token to see the "
                f"features active there (position **{pos}** `{p.labels[pos]}` now):")
    components.token_strip("feat_strip", p.pieces, values=[max(0.0, float(a)) / scale for a in col], selected=pos,
                           titles=[f"{i}: {p.labels[i]}  latent {lat} = {a:.4g}" for i, a in enumerate(col)],
                           on_pick=lambda i: set_param("pos", i))
    active = data.active_latents(acts, pos, ACTIVE)
    if active:
        st.markdown(f"**Active at position {pos}** (`{p.labels[pos]}`): {len(active)} shown of "
                    f"{int((acts[pos] > 0).sum())} active · click to open")
        cols = st.columns(min(6, len(active)))
        for j, (i, a) in enumerate(active):
            cols[j % len(cols)].button(f"{i} · {a:.3g}", key=f"feat_active_{j}", on_click=_pick_latent, args=(i,),
                                       width="stretch", type="primary" if i == lat else "secondary")
    else:
        st.caption(f"No latent is active at position {pos}.")
    _steering(ctx, f, d, lat, ids, pos, dstamp)


def _steering(ctx: Ctx, f, d, lat: int, ids, pos: int, dstamp: float) -> None:
    view, cfg = ctx.view, ctx.cfg
    st.markdown("#### Steering and ablation")
    mode = view.choice("fmode", list(MODES))
    where = view.choice("where", list(WHERE))
    default_alpha = round(2 * d.max_act, 3) if d.max_act > 0 else 1.0
    alpha = view.get("alpha")
    alpha = default_alpha if alpha is None else float(alpha)
    T = len(ids)
    room = cfg.n_ctx - T if cfg.uses_learned_positions else 256
    n_new = int(view.get("n") or N_NEW)
    if view.get("n") is not None:
        n_new = view.clamp("n", 0, max(0, room), what="new tokens here")
    n_new = max(0, min(n_new, room))
    c1, c2, c3, c4 = st.columns([2.2, 1.4, 2, 1.2])
    view.widget("radio", "fmode", "Intervention", value=mode, options=list(MODES), format_func=MODES.get, container=c1,
                horizontal=True)
    view.widget("number_input", "alpha", "α (latent units)", value=alpha, step=max(0.1, round(d.max_act / 4, 2)),
                format="%.3g", container=c2, disabled=mode == "ablate",
                to_url=lambda v: None if v == default_alpha else v,
                help=f"Adds α × the latent's decoder direction at {f.out_hook or f.hook}: what raising the latent by α "
                     f"would add. Its max activation here is {d.max_act:.3g}; default 2 × max.")
    view.widget("radio", "where", "At", value=where, options=list(WHERE), container=c3, horizontal=True,
                format_func=lambda w: WHERE[w] if w == "all" else f"position {pos} only")
    view.widget("number_input", "n", "New tokens", value=n_new, min_value=0, max_value=max(0, room), container=c4,
                to_url=lambda v: None if v == N_NEW else v)
    positions = None if where == "all" else (pos,)
    with working("Running the model before and after"):
        r = data.intervene(ctx.key, f.path, dstamp, ids, lat, mode, alpha, positions, n_new)
    vocab = data.decode_list(ctx.ck)
    what = (f"α = {alpha:g} × latent {lat}'s direction (norm {r.added_norm:.3g}; the activation there averages "
            f"{r.act_norm:.3g})" if mode == "steer" else f"latent {lat} zeroed")
    st.markdown(f"{what} at `{r.hook}`, {('every position' if positions is None else f'position {pos}')} · "
                f"KL(before ‖ after) of the next token = **{r.kl:.4f}** nats")
    c1, c2 = st.columns([3, 2])
    chart(plots.steering_bars(r.before, r.after, vocab, title="Next token after the prompt")
          .update_layout(height=340), "feat_steer", container=c1)
    with c2:
        st.markdown("**Greedy continuation**")
        st.markdown("before:")
        st.code("".join(vocab[t] for t in r.before.continuation) or "(nothing)", language=None)
        st.markdown("after:")
        st.code("".join(vocab[t] for t in r.after.continuation) or "(nothing)", language=None)
