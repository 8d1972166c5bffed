"""What every page shares: the page context, the one prompt box, pickers bound to the URL
state, plotly charts whose clicks select things, and the export menu."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from .. import components, data
from ..data import AppError, Loaded, Run
from ..state import View, set_param

PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass
class Prompt:
    text: str
    ids: tuple[int, ...]
    labels: list[str]  # visible glyphs, for axes
    pieces: list[str]  # each token's text, for the token view

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Ctx:
    """What a page's `render(ctx)` gets: the URL state, the loaded checkpoint and, for a
    checkpoint inside a training run, the run and the step on show."""

    view: View
    ck: Loaded
    run: Optional[Run] = None
    step: Optional[int] = None
    _prompt: Optional[Prompt] = field(default=None, repr=False)

    @property
    def cfg(self):
        return self.ck.cfg

    @property
    def key(self) -> tuple:
        return self.ck.key

    def prompt(self) -> Prompt:
        """The prompt box (shared by every page through the URL) and its tokens; AppError
        when the text cannot be run."""
        if self._prompt is None:
            self._prompt = prompt_box(self)
        return self._prompt

    def layer(self) -> int:
        return self.view.choice("layer", list(range(self.cfg.n_layers)), what=f"this {self.cfg.n_layers}-layer model")

    def head(self) -> int:
        return self.view.choice("head", list(range(self.cfg.n_heads)), what=f"this {self.cfg.n_heads}-head model")

    def pos(self, n: int, default: int) -> int:
        """The selected position if it is inside a prompt of `n` tokens, else `default` (a URL
        position outside is said on the page)."""
        return self.view.position("pos", n, default, what="tokens")


def prompt_box(ctx: Ctx) -> Prompt:
    ck, view = ctx.ck, ctx.view
    default = data.default_prompt(ck)
    text = view.get("prompt") or default
    view.widget(
        "text_area", "prompt", "Prompt", value=text, height=90,
        to_url=lambda t: None if t == default else t,
        help="One prompt for every page (it is part of the URL). Special tokens such as <bos>, <bot>, <eot>, "
        "<eos> may be typed out; the model's <bos> is put in front when it has one. Ctrl+Enter applies.",
    )
    try:
        ids = data.encode(ck, text)
    except AppError:
        if text != default:
            st.button("Use this checkpoint's default prompt", on_click=set_param, args=("prompt", None),
                      key="reset_prompt")
        raise
    cfg = ck.cfg
    if not cfg.uses_learned_positions and len(ids) > cfg.n_ctx:
        st.warning(f"{len(ids)} tokens is past the n_ctx={cfg.n_ctx} this model was trained on "
                   f"({cfg.positional} positions still run; expect drift).")
    return Prompt(text, tuple(ids), data.labels(ck, ids), data.pieces(ck, ids))


def layer_picker(ctx: Ctx, label: str = "Layer", container=None) -> int:
    layer = ctx.layer()
    n = ctx.cfg.n_layers
    kind = "segmented_control" if n <= 16 else "selectbox"
    extra = dict(required=True) if kind == "segmented_control" else {}
    ctx.view.widget(kind, "layer", label, value=layer, options=list(range(n)), format_func=lambda l: f"L{l}",
                    container=container, **extra)
    return layer


def head_picker(ctx: Ctx, label: str = "Head", container=None) -> int:
    head = ctx.head()
    n = ctx.cfg.n_heads
    kind = "segmented_control" if n <= 16 else "selectbox"
    extra = dict(required=True) if kind == "segmented_control" else {}
    ctx.view.widget(kind, "head", label, value=head, options=list(range(n)), format_func=lambda h: f"H{h}",
                    container=container, **extra)
    return head


def working(what: str):
    """A spinner with a running clock for a step that may take seconds (shown only past
    half a second, so cached reruns do not flicker): `with working("Scoring heads"): ...`."""
    return st.spinner(f"{what}…", show_time=True)


def prompt_head(labels: Sequence[str], n: int, most: int = 24) -> str:
    """The first `n` tokens as quoted text: whole up to `most` tokens, else "…" and the
    last `most` (never a cut-off number that reads as another)."""
    shown = "".join(labels[max(0, n - most):n])
    return f"“{'…' if n > most else ''}{shown}”"


def titled_below_modebar(fig, title: str, height: int):
    """A figure for a narrow column: its title sits under plotly's mode bar (top right of
    the figure), which would cover a title across the panel."""
    return fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", y=1, yref="container", yanchor="top",
                                        pad=dict(t=34), font=dict(size=14)), height=height)


def height(n_rows: int, per_row: int = 18, lo: int = 380, hi: int = 900) -> int:
    return int(min(hi, max(lo, 140 + per_row * n_rows)))


# ------------------------------------------------------------------ charts
def _selected(key: str, on_point: Callable[[dict], None]) -> None:
    event = st.session_state.get(key) or {}
    points = (event.get("selection") or {}).get("points") or []
    if points:
        on_point(dict(points[0]))


def chart(fig, key: str, on_point: Optional[Callable[[dict], None]] = None, filename: Optional[str] = None,
          container=None) -> None:
    """`st.plotly_chart` with the export config; with `on_point`, a click on a point (the
    figure's click targets, see `interp.plots.add_click_targets`) calls `on_point(point)`:
    {"curve_number", "point_index", "x", "y", ...}."""
    config = dict(PLOTLY_CONFIG, toImageButtonOptions=dict(PLOTLY_CONFIG["toImageButtonOptions"], filename=filename or key))
    c = container if container is not None else st
    if on_point is None:
        c.plotly_chart(fig, key=key, config=config)
    else:
        c.plotly_chart(fig, key=key, config=config, on_select=partial(_selected, key, on_point),
                       selection_mode="points")


def grid_point(n_cols: int) -> Callable[[dict], tuple[int, int]]:
    """point -> (row, col) for click targets laid out row-major over `n_cols` columns."""
    def rc(point: dict) -> tuple[int, int]:
        i = int(point.get("point_index", point.get("point_number", 0)))
        return i // n_cols, i % n_cols
    return rc


# ------------------------------------------------------------------ export
def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=True).encode()


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def export(name: str, *, table: Optional[Callable[[], pd.DataFrame]] = None,
           arrays: Optional[Callable[[], Mapping[str, np.ndarray]]] = None, key: Optional[str] = None,
           charts: Sequence[str] = (), container=None) -> None:
    """An "Export" popover: the figure's numbers as CSV (`table()`) and/or `.npz` (`arrays()`),
    computed only when clicked, and PNG / SVG of the plotly `charts` (their keys). The
    attention component has its own PNG / SVG / CSV buttons."""
    c = container if container is not None else st
    key = key or name
    # the deferred builders of this run, by key: what the buttons call (tests call them too)
    st.session_state.setdefault("_exports", {})[key] = {"name": name, "csv": table, "npz": arrays}
    with c.popover("Export", help="Download the numbers behind this figure"):
        if table is not None:
            st.download_button("CSV", data=lambda: csv_bytes(table()), file_name=f"{name}.csv", mime="text/csv",
                               key=f"csv.{key}", on_click="ignore")
        if arrays is not None:
            st.download_button("NumPy .npz", data=lambda: npz_bytes(arrays()), file_name=f"{name}.npz",
                               mime="application/octet-stream", key=f"npz.{key}", on_click="ignore")
        for chart_key in charts:
            if len(charts) > 1:
                st.caption(chart_key)
            components.figure_export(chart_key, f"{name}_{chart_key}" if len(charts) > 1 else name)


def labelled(values: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(values), index=[f"{i}:{r}" for i, r in enumerate(rows)],
                        columns=[f"{j}:{c}" for j, c in enumerate(cols)])
