"""The explorer's own Streamlit components: `st.components.v2` with inline JS and CSS (no
iframe, no build step, nothing fetched from the network).

* `attention_view`: one layer's attention (heatmap with full token labels, token view,
  every head as a clickable thumbnail); head changes are drawn in the browser.
* `token_strip`: a row of tokens coloured by a value or a colour, optionally clickable.
* `figure_export`: PNG / SVG buttons for a plotly chart on the page.

Both report choices through a state value carrying a sequence number `seq`; the caller
echoes the last applied `seq` back as `ack`, so data computed before a newer click cannot
undo it in the browser.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import streamlit as st

_DIR = Path(__file__).resolve().parent


def _component(name: str):
    return st.components.v2.component(
        f"interp_explorer.{name}", js=(_DIR / f"{name}.js").read_text(), css=(_DIR / f"{name}.css").read_text(),
        isolate_styles=False,  # plain DOM: page CSS stays out (ix- prefixes), tests and screenshots see it
    )


_attention = _component("attention")
_strip = _component("strip")
_figexport = _component("figexport")


def _changed(key: str, field: str, handler: Callable[[dict], None]) -> None:
    value = (st.session_state.get(key) or {}).get(field)
    if isinstance(value, dict):
        st.session_state[f"{key}.ack"] = int(value.get("seq", 0))
        handler(value)


def ack(key: str) -> int:
    return int(st.session_state.get(f"{key}.ack", 0))


def attention_view(key: str, data: dict, on_select: Callable[[dict], None]):
    """Mount the attention component. `data`: see app/views/attention.py; `on_select(sel)` gets
    {"layer", "head", "mode", "dir", "scale", "pos", "seq"} after a click in the browser."""
    data = dict(data, ack=ack(key))
    return _attention(key=key, data=data, on_sel_change=partial(_changed, key, "sel", on_select), height="content")


def token_strip(key: str, tokens: Sequence[str], *, values: Optional[Sequence[Optional[float]]] = None,
                colors: Optional[Sequence[Optional[str]]] = None, titles: Optional[Sequence[str]] = None,
                selected: int = -1, prefix: str = "", on_pick: Optional[Callable[[int], None]] = None):
    """Tokens in a row; `values` in [0, 1] shade them (or `colors` paint them); with
    `on_pick`, clicking token i calls `on_pick(i)`."""
    data = dict(tokens=list(tokens), values=None if values is None else [None if v is None else float(v) for v in values],
                colors=None if colors is None else list(colors), titles=None if titles is None else list(titles),
                selected=int(selected), prefix=prefix, clickable=on_pick is not None, ack=ack(key))
    callbacks = {}
    if on_pick is not None:
        callbacks["on_pick_change"] = partial(_changed, key, "pick", lambda v: on_pick(int(v["i"])))
    return _strip(key=key, data=data, height="content", **callbacks)


def figure_export(chart_key: str, name: str) -> None:
    """PNG and SVG buttons that save the plotly chart drawn with `key=chart_key`."""
    _figexport(key=f"figexport.{chart_key}", data=dict(chart=chart_key, name=name), height="content")
