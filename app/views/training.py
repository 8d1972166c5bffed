"""Training: every numeric series of a run's metrics.jsonl (loss, accuracy, learning rate,
any progress measure), with the run's checkpoints marked; the step slider in the sidebar
(or a click on a checkpoint marker) loads that step's checkpoint for every page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from interp import plots

from .. import data
from ..state import set_param
from .common import Ctx, chart, export, working

TITLE = "Training"
LAST = ("lr", "grad_norm", "tokens_per_s", "tokens_seen", "n_examples", "n_tokens", "n_generated", "seq_len",
        "max_len", "n_truncated")


def unavailable(ctx: Ctx) -> Optional[str]:
    if ctx.run is None:
        return "this checkpoint is not part of a training run (a directory of `step_*` checkpoints)"
    if not ctx.run.has_training_view:
        return f"the run `{ctx.run.dir}` has fewer than two checkpoints or no metrics.jsonl"
    return None


@st.cache_data(max_entries=8, show_spinner=False)
def _series(path: str, mtime: float) -> dict:
    return data.metric_series(Path(path))


HEAD = re.compile(r"L\d+H\d+$")


def group_of(name: str) -> str:
    """"train/loss" -> "loss"; "progress/induction[0][1]" -> "induction";
    "progress/prev_token/L0H1" -> "prev_token/L0H1" (merged later, see `groups_of`)."""
    key = name.split("/", 1)[1] if "/" in name else name
    return re.sub(r"(\[\d+\])+", "", key)


def groups_of(series: dict) -> dict[str, dict]:
    """One figure per group: series of one key across events (train and eval loss together),
    list elements together, and scalar keys "prefix/part" of one prefix together (per-head
    scores "induction/L1H0", weight norms "weight_norm/embed" beside "weight_norm")."""
    groups: dict[str, dict] = {}
    for name, xy in series.items():
        groups.setdefault(group_of(name), {})[name] = xy
    by_prefix: dict[str, list[str]] = {}
    for g, lines in groups.items():
        if "/" in g and not any("[" in n for n in lines):
            by_prefix.setdefault(g.split("/", 1)[0], []).append(g)
    for prefix, members in by_prefix.items():
        if len(members) >= 2:
            merged = groups.pop(prefix, {})
            for g in members:
                merged.update(groups.pop(g))
            groups[prefix] = merged
    return groups


SPECTRUM = re.compile(r"spectrum\[(\d+)\]$")  # interp.training.progress.fourier: element i is frequency k = i + 1
UNTRAINED = re.compile(r"_prompt$")  # eval series on prompt tokens, which are never a training target


def as_rows(lines: dict, many: int = 12) -> Optional[tuple[list, dict]]:
    """(steps, row name -> values) for a group drawn better as a rows x steps map: one head's
    score per line ("induction/L1H0"), or more than `many` elements of one list (a
    spectrum: rows named by frequency, "k=1" first), all over the same steps; else None."""
    heads = all(HEAD.search(n) for n in lines)
    if not (heads and len(lines) >= 2) and not (len(lines) > many and all("[" in n for n in lines)):
        return None
    rows, steps = {}, None
    for name, (xs, ys) in lines.items():
        if steps is not None and list(xs) != steps:
            return None
        steps = list(xs)
        m = SPECTRUM.search(name)
        rows[HEAD.search(name).group(0) if heads else f"k={int(m.group(1)) + 1}" if m else name.rsplit("/", 1)[-1]] = ys
    return steps, rows


def row_axis(rows: dict) -> str:
    """What the rows of a rows x steps map are, for its y axis."""
    first = next(iter(rows))
    return "head" if HEAD.search(first) else "frequency k" if first.startswith("k=") else "element"


def key_frequency_marks(series: dict, group: str) -> Optional[tuple[list, list]]:
    """(steps, "k=..." rows) of the key frequencies logged beside a spectrum (`.../key_freqs`,
    1-based like the spectrum's rows), to mark on its map; None without them."""
    prefix = group.rsplit("/", 1)[0]
    xs, ys = [], []
    for name, (steps, values) in series.items():
        if group_of(name) == f"{prefix}/key_freqs":
            xs += steps
            ys += [f"k={int(v)}" for v in values]
    return (xs, ys) if xs else None


def _rank(group: str) -> tuple:
    g = group.lower()
    kind = 0 if "loss" in g or "ppl" in g else 1 if "acc" in g or "match" in g else 3 if g in LAST else 2
    return (kind, g != "loss", g)  # the loss first


MAX_POINTS = 2000  # per line: a long run's log is thinned for drawing (exports keep every row)


def thin(xs: list, ys: list, n: int = MAX_POINTS) -> tuple[list, list]:
    """Every k-th point (and the last) so at most about `n` remain."""
    if len(xs) <= n:
        return xs, ys
    k = -(-len(xs) // n)
    idx = list(range(0, len(xs), k)) + ([len(xs) - 1] if (len(xs) - 1) % k else [])
    return [xs[i] for i in idx], [ys[i] for i in idx]


def _nearest(steps: list[int], x) -> int:
    return min(steps, key=lambda s: abs(s - float(x)))


def render(ctx: Ctx) -> None:
    run, view = ctx.run, ctx.view
    file = run.metrics_file
    with working(f"Reading {file.name}"):
        series = _series(str(file), file.stat().st_mtime)
    if not series:
        st.info(f"`{file}` holds no numeric series yet.")
        return
    steps = list(run.steps)
    st.markdown(f"**Run** `{run.dir}`: {len(steps)} checkpoints (steps {steps[0]}–{steps[-1]}"
                + (f", last {run.last}" if run.last is not None else "") + (f", best {run.best}" if run.best is not None else "")
                + f"); showing step **{ctx.step}** on every page. Pick another with the slider in the sidebar or "
                "click a checkpoint marker (open circle).")
    logy = bool(view.get("logy"))
    view.widget("toggle", "logy", "Log-scale losses", value=logy)
    groups = {g: {n: thin(*xy) for n, xy in lines.items()} for g, lines in groups_of(series).items()}
    untrained = sorted(g for g in groups if UNTRAINED.search(g))
    for g in untrained:  # loss / accuracy on prompt tokens: the model was never trained to predict them
        groups.pop(g)
    spectra = [g for g in groups if as_rows(groups[g]) and row_axis(as_rows(groups[g])[1]) == "frequency k"]
    marks = {g: key_frequency_marks(series, g) for g in spectra}
    for g in spectra:  # key frequencies are drawn on their spectrum, not as 16 separate lines
        if marks[g] is not None:
            groups.pop(f"{g.rsplit('/', 1)[0]}/key_freqs", None)
    constant = {}  # groups in which nothing ever changes: a table, not a figure
    for g in [g for g, lines in groups.items() if all(len(set(ys)) <= 1 for _, ys in lines.values())]:
        constant.update({name: ys[0] for name, (_, ys) in groups.pop(g).items() if ys})
    cols = st.columns(2)
    for i, g in enumerate(sorted(groups, key=_rank)):
        lines = groups[g]
        is_loss = "loss" in g.lower() or "ppl" in g.lower()
        positive = all(v > 0 for _, ys in lines.values() for v in ys)
        rows = as_rows(lines)
        if rows is not None:  # one row per head (or element): a phase change shows as a colour change
            xs, by_row = rows
            axis = row_axis(by_row)
            fig = plots.head_series_heatmap(xs, by_row, title=f"{g} per head" if axis == "head" else g,
                                            mark_step=ctx.step, colorbar=g.rsplit("/", 1)[-1])
            plots.add_click_targets(fig, xs, list(by_row), size=6)
            if marks.get(g) is not None:  # open circles on the spectrum's rows: that step's key frequencies
                fig.add_scatter(x=marks[g][0], y=marks[g][1], mode="markers", name="key frequencies",
                                marker=dict(symbol="circle-open", size=7, color="#e4572e"),
                                hovertemplate="step %{x}: key frequency %{y}<extra></extra>")
                fig.update_layout(legend=dict(orientation="h", y=-0.15))
            fig.update_layout(yaxis_title=axis, height=min(700, max(300, 60 + 14 * len(by_row))),
                              margin=dict(t=40, b=30))
        else:
            fig = plots.metric_curves(lines, title=g, step=ctx.step, log_y=logy and is_loss and positive,
                                      checkpoint_steps=steps).update_layout(height=300, margin=dict(t=40, b=30))
        chart(fig, f"train_{i}", container=cols[i % 2],
              on_point=lambda pt: set_param("step", _nearest(steps, pt.get("x", steps[-1]))))
    if untrained:
        st.caption(f"Not drawn: {', '.join(f'`{g}`' for g in untrained)}, measured on prompt tokens, which are never "
                   "a training target (the CSV export has them).")
    if constant:
        with st.expander(f"{len(constant)} constant series"):
            st.dataframe(pd.DataFrame({"series": list(constant), "value": list(constant.values())}), hide_index=True)
    export(f"{run.dir.name}_metrics", key="training_export", charts=[f"train_{i}" for i in range(len(groups))],
           table=lambda: pd.DataFrame([{"series": n, "step": x, "value": y} for n, (xs, ys) in series.items()
                                       for x, y in zip(xs, ys)]).set_index("series"))
