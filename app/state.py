"""One state for the whole explorer, kept in the URL.

Every choice that defines a view (checkpoint, training step, page, prompt, layer, head,
query position, tracked token, and each page's options) is a query parameter, so a view is a
URL: reload it or send it and the same view comes back.

    http://localhost:8501/?ckpt=add3_none&page=attention&layer=2&head=1&pos=17

`View.from_url()` parses `st.query_params` once per script run (bad values are dropped and
reported in `view.problems`). Pages read with `view.get(name)`, draw widgets bound to a
parameter with `view.widget("selectbox", "layer", "Layer", options=...)` (the widget shows the
URL's value; changing it rewrites the URL before the next run), and clicks in figures or
components call `set_param(...)`. A value equal to its default is left out of the URL;
`ckpt` and `page` are always written, so every URL names its checkpoint and page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import streamlit as st


@dataclass(frozen=True)
class Param:
    kind: str  # "int" | "float" | "str" | "bool" | "list"
    default: Any
    doc: str


PARAMS: dict[str, Param] = {
    # shared by every page
    "ckpt": Param("str", None, "checkpoint or run: a name under the checkpoint roots, or a directory"),
    "step": Param("int", None, "training step, for a checkpoint that belongs to a run (default: the run's last)"),
    "page": Param("str", "attention", "page slug (app/views registry)"),
    "prompt": Param("str", None, "prompt text (default: the checkpoint's default prompt)"),
    "layer": Param("int", 0, "selected layer"),
    "head": Param("int", 0, "selected head"),
    "pos": Param("int", None, "selected (query) position (default: the page's choice)"),
    "target": Param("str", "", "logit lens: track this token at every position (empty: the next token)"),
    # Attention
    "mode": Param("str", "head", "token view: head | all | mean"),
    "dir": Param("str", "from", "token view: attention from the hovered token, or to it"),
    "scale": Param("str", "auto", "attention colour scale: auto (each panel's max) | shared (0-1)"),
    "score": Param("str", "prev_token", "head score shown as the layer x head map"),
    # Streams
    "norm": Param("str", "layer", "stream-norm colours: layer (each row on its own scale) | log | linear"),
    "stream": Param("str", "xt", "factored models: which stream the per-position map shows (xt | xe)"),
    "k": Param("int", 20, "Streams: how many neurons"),
    # Logit lens
    "lens": Param("str", "resid", "logit lens stream: resid | xt | xe"),
    "topk": Param("int", 5, "logit lens: top-k per cell"),
    # Step-by-step / Compare
    "cut": Param("int", None, "generate after this many prompt tokens (default: the task's prompt, else all)"),
    "n": Param("int", None, "most tokens to generate (default: 128 for task checkpoints, 32 for text)"),
    "eos": Param("bool", None, "stop at <eos> (default: on for task checkpoints)"),
    "greedy": Param("bool", True, "greedy decoding (else sampling)"),
    "temp": Param("float", 1.0, "sampling temperature"),
    "seed": Param("int", 0, "sampling seed"),
    "gstep": Param("int", 0, "Step-by-step: the generated token inspected"),
    "cmp": Param("list", None, "Compare: the checkpoints (2 or 3, sharing a tokenizer)"),
    "nex": Param("int", 32, "Compare: test examples scored"),
    "acc": Param("bool", True, "Compare: greedy accuracy on the test examples"),
    # Training
    "logy": Param("bool", True, "Training: log-scale y for losses"),
    # Attribution
    "tmode": Param("str", "next", "Attribution target: next (the next token) | top1 (the model's top-1) | token "
                   "(the token in `target`, shared with the logit lens)"),
    "wrong": Param("str", "", "Attribution: contrast token (attribute the logit difference target - wrong)"),
    # Patching
    "corrupt": Param("str", None, "Patching: corrupted prompt (default: derived from the prompt, one change)"),
    "metric": Param("str", "logit_diff", "Patching metric: logit_diff | prob | logprob | loss"),
    "pdir": Param("str", "denoise", "Patching direction: denoise (clean into corrupted) | noise (corrupted into clean)"),
    "mpos": Param("int", None, "Patching: the position the metric reads (default: where the answers differ)"),
    "acts": Param("list", None, "Patching: activations swept (default: resid_pre, attn_out, mlp_out, z; + xt_pre, "
                  "xe_pre for factored models)"),
    "pnorm": Param("bool", True, "Patching: colour by the normalized effect (else the metric's raw change)"),
    # Features
    "dict": Param("str", None, "Features: the dictionary (one of the names the page lists; default: the first)"),
    "latent": Param("int", 0, "Features: the latent whose dashboard is shown"),
    "fmode": Param("str", "steer", "Features: steer (add alpha x the latent's decoder direction) | ablate (zero it)"),
    "alpha": Param("float", None, "Features: steering strength in units of the latent's activation (default: twice its max)"),
    "where": Param("str", "all", "Features: steer / ablate at every position (all) or at the selected one (pos)"),
    # Latent thoughts
    "split": Param("str", "test", "Latent thoughts: test | val"),
    "index": Param("int", 0, "Latent thoughts: example index in the split"),
    "slot": Param("int", 0, "Latent thoughts: the thought (latent slot) patched"),
    "donor": Param("int", None, "Latent thoughts: the example whose thought is patched in (default: index + 1)"),
}
ALWAYS = ("ckpt", "page")
WIDGET_PREFIX = "w."
_MISSING = object()


def _decode(name: str, raw: list[str]) -> Any:
    p = PARAMS[name]
    if p.kind == "list":
        return [x for x in raw if x]
    s = raw[-1]
    if p.kind == "int":
        return int(s)
    if p.kind == "float":
        v = float(s)
        if not math.isfinite(v):
            raise ValueError(s)
        return v
    if p.kind == "bool":
        if s.lower() in ("1", "true", "yes", "on"):
            return True
        if s.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(s)
    return s


def _encode(name: str, value: Any):
    p = PARAMS[name]
    if p.kind == "list":
        return [str(x) for x in value]
    if p.kind == "bool":
        return "1" if value else "0"
    if p.kind == "float":
        return f"{float(value):g}"
    return str(value)


def _read_query() -> dict[str, list[str]]:
    qp = st.query_params
    return {k: qp.get_all(k) for k in qp.keys()}


def set_param(name: str, value: Any) -> None:
    """Write one parameter to the URL (removed when it equals its default). Safe in callbacks."""
    if name not in PARAMS:
        raise KeyError(f"unknown view parameter {name!r}")
    p = PARAMS[name]
    if value is None or (name not in ALWAYS and value == p.default) or (p.kind == "list" and not value):
        if name in st.query_params:
            del st.query_params[name]
        return
    enc = _encode(name, value)
    if st.query_params.get_all(name) != (enc if isinstance(enc, list) else [enc]):
        st.query_params[name] = enc


def _widget_changed(name: str, key: str, to_url: Optional[Callable[[Any], Any]],
                    after: Optional[Callable[[], None]]) -> None:
    value = st.session_state[key]
    set_param(name, to_url(value) if to_url else value)
    if after is not None:
        after()


class View:
    """The parsed URL state of one script run."""

    def __init__(self, query: Mapping[str, list[str]]):
        self.values: dict[str, Any] = {}
        self.problems: list[str] = []
        self.dropped: list[str] = []
        for name, raw in query.items():
            if name not in PARAMS:
                self.problems.append(f"unknown URL parameter `{name}` (ignored)")
                self.dropped.append(name)
                continue
            try:
                self.values[name] = _decode(name, raw)
            except (ValueError, IndexError):
                self.dropped.append(name)
                self.problems.append(f"URL parameter `{name}={raw[-1] if raw else ''}` is not a valid "
                                     f"{PARAMS[name].kind} (ignored): {PARAMS[name].doc}")

    @classmethod
    def from_url(cls) -> "View":
        view = cls(_read_query())
        for name in view.dropped:  # drop what cannot be read, so the URL only holds real state
            if name in st.query_params:
                del st.query_params[name]
        return view

    def get(self, name: str, default: Any = _MISSING) -> Any:
        if name in self.values:
            return self.values[name]
        return PARAMS[name].default if default is _MISSING else default

    def set(self, name: str, value: Any) -> None:
        """Change a value for the rest of this run and in the URL."""
        self.values[name] = value
        set_param(name, value)

    def choice(self, name: str, options: list, default: Any = _MISSING, what: str = "") -> Any:
        """The value if it is one of `options`; else `default` (or the first option), and an
        out-of-range URL value is dropped from the URL with a note in `problems`."""
        v = self.get(name)
        fallback = options[0] if default is _MISSING else default
        if v is None or v in options:
            return fallback if v is None else v
        shown = options if len(options) <= 12 else options[:5] + ["…"] + options[-3:]
        self.problems.append(f"`{name}={v}` is not available{(' for ' + what) if what else ''} "
                             f"(choose from {', '.join(map(str, shown))}); showing `{fallback}`.")
        self.values.pop(name, None)
        set_param(name, None)
        return fallback

    def clamp(self, name: str, lo, hi, what: str = "", value: Any = _MISSING):
        """The URL's value (or `value`) limited to [lo, hi]. A URL value outside is said in
        `problems` and replaced in the URL by the value shown, so the note comes once."""
        v = self.get(name) if value is _MISSING else value
        shown = min(max(v, lo), hi)
        if shown != v:
            if name in self.values:
                self.problems.append(f"`{name}={_encode(name, v)}` is out of range{(' for ' + what) if what else ''} "
                                     f"({_encode(name, lo)} to {_encode(name, hi)}); showing {_encode(name, shown)}.")
            self.set(name, shown)
        return shown

    def position(self, name: str, n: int, default: Any, what: str = "positions") -> Any:
        """The URL's position `name` if it is inside 0..n-1, else `default`; a URL value
        outside is said in `problems` and dropped from the URL."""
        v = self.get(name)
        if v is None or 0 <= v < n:
            return default if v is None else v
        self.problems.append(f"`{name}={v}` is outside this prompt's {n} {what} (0 to {n - 1}); showing the default.")
        self.values.pop(name, None)
        set_param(name, None)
        return default

    def widget(self, kind: str, name: str, label: str, *, value: Any = _MISSING, container=None,
               to_url: Optional[Callable[[Any], Any]] = None, key: Optional[str] = None,
               after: Optional[Callable[[], None]] = None, **kwargs):
        """A Streamlit widget (`st.<kind>`) bound to URL parameter `name`: it shows `value`
        (default: the URL's), and a change is written to the URL (through `to_url`, then
        `after()` runs). `key` tells apart two widgets bound to one parameter."""
        key = key or WIDGET_PREFIX + name
        v = self.get(name) if value is _MISSING else value
        if st.session_state.get(key, _MISSING) != v:
            st.session_state[key] = v
        fn = getattr(container if container is not None else st, kind)
        return fn(label, key=key, on_change=_widget_changed, args=(name, key, to_url, after), **kwargs)

    def sync(self) -> None:
        """Write the parameters that every URL names (checkpoint and page)."""
        for name in ALWAYS:
            if name in self.values:
                set_param(name, self.values[name])
