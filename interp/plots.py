"""Every plot builder of the project (plotly only); the app and the analyses reuse these.

Each function returns a `plotly.graph_objects.Figure`. Token labels on category axes are
made unique with `unique_labels` ("3:a"): plotly merges equal category labels otherwise.
Inputs may be torch tensors, numpy arrays or nested lists.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

Decode = Union[None, Callable[[int], str], Sequence[str]]


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def unique_labels(labels: Optional[Sequence[Any]], n: Optional[int] = None) -> list[str]:
    """["a", "b", "a"] -> ["0:a", "1:b", "2:a"]; None -> ["0", "1", ...] (needs n)."""
    if labels is None:
        if n is None:
            raise ValueError("unique_labels needs labels or n")
        return [str(i) for i in range(n)]
    labels = [str(x) for x in labels]
    if n is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for an axis of length {n}")
    return [f"{i}:{x}" for i, x in enumerate(labels)]


def _decoder(decode: Decode) -> Callable[[int], str]:
    if decode is None:
        return lambda i: str(int(i))
    if callable(decode):
        return lambda i: str(decode(int(i)))
    return lambda i: str(decode[int(i)])


MAX_TICKS = 120  # token axes label every token up to this many, then every k-th (and say so)


def label_every(n: int, max_ticks: int = MAX_TICKS) -> int:
    """1 when all `n` token labels fit on an axis, else the stride that keeps <= max_ticks."""
    return 1 if n <= max_ticks else math.ceil(n / max_ticks)


def token_axis(fig: go.Figure, axis: str, n: int, max_ticks: int = MAX_TICKS) -> int:
    """Label every category of a token axis (`axis` = "x" or "y"; plotly would skip labels
    that crowd): all of them up to `max_ticks`, else every k-th. Returns k."""
    k = label_every(n, max_ticks)
    size = 11 if n <= 40 else 9 if n <= 80 else 8
    fig.update_layout({f"{axis}axis": dict(tickmode="linear", dtick=k, tick0=0, tickfont=dict(size=size),
                                           automargin=True)})
    return k


def add_click_targets(fig: go.Figure, x: Sequence[Any], y: Sequence[Any], text: Optional[Sequence[Sequence[str]]] = None,
                      **scatter) -> go.Figure:
    """Make every cell of a heatmap clickable: an invisible marker at each (y[i], x[j]),
    row-major (point index i * len(x) + j), carrying the hover text. Plotly heatmaps emit no
    selection events; Streamlit's `on_select` gets these points instead."""
    xs = [xv for _ in y for xv in x]
    ys = [yv for yv in y for _ in x]
    hover = None if text is None else [t for row in text for t in row]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", showlegend=False, name="",
                             marker=dict(size=scatter.pop("size", 10), opacity=0, symbol="square"),
                             hovertext=hover, hoverinfo="text" if hover is not None else "none", **scatter))
    fig.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select", dragmode=False)
    return fig


def mark_cell(fig: go.Figure, row_index: int, col_index: int, color: str = "#e4572e", width: int = 3) -> go.Figure:
    """Outline one cell (0-based category indices) of a heatmap: the current selection."""
    fig.add_shape(type="rect", xref="x", yref="y", x0=col_index - 0.5, x1=col_index + 0.5,
                  y0=row_index - 0.5, y1=row_index + 0.5, line=dict(color=color, width=width),
                  fillcolor="rgba(0,0,0,0)")
    return fig


def mark_column(fig: go.Figure, col_index: int, n_rows: int, color: str = "#e4572e") -> go.Figure:
    """Outline column `col_index` (0-based category index) of a categorical heatmap."""
    fig.add_shape(type="rect", xref="x", yref="y", x0=col_index - 0.5, x1=col_index + 0.5, y0=-0.5, y1=n_rows - 0.5,
                  line=dict(color=color, width=2), fillcolor="rgba(0,0,0,0)")
    return fig


def mark_row(fig: go.Figure, row_index: int, n_cols: int, color: str = "#e4572e") -> go.Figure:
    """Outline row `row_index` (0-based category index) of a categorical heatmap."""
    fig.add_shape(type="rect", xref="x", yref="y", x0=-0.5, x1=n_cols - 0.5, y0=row_index - 0.5, y1=row_index + 0.5,
                  line=dict(color=color, width=2), fillcolor="rgba(0,0,0,0)")
    return fig


def attention_heatmap(
    pattern, q_labels: Optional[Sequence[str]] = None, k_labels: Optional[Sequence[str]] = None, title: str = "",
    zmax: Optional[float] = 1.0, highlight_row: Optional[int] = None,
) -> go.Figure:
    """One head's (q, k) pattern; queries down the y axis, keys along x, every token labelled
    (every k-th past `MAX_TICKS`, noted in the title). `zmax`: top of the colour scale (None:
    this pattern's max; pass one value to several figures to compare them on one scale).
    `highlight_row` outlines one query row."""
    p = _np(pattern)
    if p.ndim != 2:
        raise ValueError(f"attention_heatmap needs a (q, k) pattern, got shape {p.shape}")
    y, x = unique_labels(q_labels, p.shape[0]), unique_labels(k_labels, p.shape[1])
    top = max(float(np.nanmax(p)) if zmax is None else float(zmax), 1e-9)
    fig = go.Figure(go.Heatmap(z=p, x=x, y=y, colorscale="Blues", zmin=0, zmax=top,
                               hovertemplate="query %{y}<br>key %{x}<br>attn %{z:.3f}<extra></extra>"))
    kx, ky = token_axis(fig, "x", len(x)), token_axis(fig, "y", len(y))
    note = f" (labels: every {max(kx, ky)}th token)" if max(kx, ky) > 1 else ""
    fig.update_layout(title=title + note, xaxis_title="key", yaxis_title="query", yaxis_autorange="reversed")
    if highlight_row is not None:
        mark_row(fig, highlight_row, p.shape[1])
    return fig


def attention_grid(patterns, labels: Optional[Sequence[str]] = None, title: str = "", max_cols: Optional[int] = None) -> go.Figure:
    """Thumbnail grid of patterns: (layer, head, q, k) -> rows = layers, cols = heads; or
    (head, q, k) -> one row. `labels` are the token labels for both axes."""
    p = _np(patterns)
    if p.ndim == 3:
        p = p[None]
    if p.ndim != 4:
        raise ValueError(f"attention_grid needs (layer, head, q, k) or (head, q, k), got shape {p.shape}")
    L, H, T, K = p.shape
    cols = H if max_cols is None else min(H, max_cols)
    fig = make_subplots(rows=L, cols=cols, subplot_titles=[f"L{l}H{h}" for l in range(L) for h in range(cols)],
                        horizontal_spacing=0.02, vertical_spacing=0.06 if L > 1 else 0.0)
    y, x = unique_labels(labels, T), unique_labels(labels, K) if K == T else unique_labels(None, K)
    for l in range(L):
        for h in range(cols):
            fig.add_trace(go.Heatmap(z=p[l, h], x=x, y=y, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                                     hovertemplate=f"L{l}H{h}<br>q %{{y}}<br>k %{{x}}<br>%{{z:.3f}}<extra></extra>"),
                          row=l + 1, col=h + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(title=title, height=max(250, 160 * L))
    return fig


def resid_norms(x, labels: Optional[Sequence[str]] = None, layer_names: Optional[Sequence[str]] = None,
                title: str = "Residual stream norm", scale: str = "linear", selected_pos: Optional[int] = None,
                clickable: bool = False) -> go.Figure:
    """Heatmap of ||resid|| per (layer, pos). `x`: a (layer, pos) array, or a (single-example)
    ActivationCache holding `hook_resid_pre` of block 0 and `hook_resid_post` of each block.

    `scale`: "linear" (one colour scale), "layer" (each row on its own 0..max scale, so a
    large late layer does not swamp the early ones) or "log" (log10 colours); the hover
    always shows the norm itself. `selected_pos` outlines a column; `clickable` adds click
    targets (`add_click_targets`, row-major over layers x positions)."""
    if hasattr(x, "cache_dict"):
        names = sorted((n for n in x.cache_dict if n.endswith("hook_resid_post")), key=lambda n: int(n.split(".")[1]))
        first = ["blocks.0.hook_resid_pre"] if "blocks.0.hook_resid_pre" in x.cache_dict else []
        acts = [x[n] for n in first + names]
        if not acts:
            raise ValueError("resid_norms: the cache holds no hook_resid_pre/post")
        arr = np.stack([_np(a.norm(dim=-1)) for a in acts])
        if arr.ndim == 3:  # batch kept: first example
            arr = arr[:, 0]
        layer_names = layer_names or (["embed"] if first else []) + [f"block {n.split('.')[1]}" for n in names]
    else:
        arr = _np(x)
    if scale not in ("linear", "layer", "log"):
        raise ValueError(f"scale must be 'linear', 'layer' or 'log', got {scale!r}")
    L, T = arr.shape
    if scale == "layer":
        z, bar = arr / np.maximum(np.nanmax(arr, axis=1, keepdims=True), 1e-12), "norm / row max"
    elif scale == "log":
        z, bar = np.log10(np.maximum(arr, 1e-12)), "log10 norm"
    else:
        z, bar = arr, "norm"
    xs, ys = unique_labels(labels, T), list(layer_names or [str(i) for i in range(L)])
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, customdata=arr, colorscale="Viridis", colorbar=dict(title=bar),
                               hovertemplate="%{y}<br>%{x}<br>norm %{customdata:.3f}<extra></extra>"))
    k = token_axis(fig, "x", T)
    fig.update_layout(title=title + (f" (labels: every {k}th token)" if k > 1 else ""), xaxis_title="position",
                      yaxis_title="layer")
    if clickable:
        add_click_targets(fig, xs, ys, [[f"{ys[l]}<br>{xs[t]}<br>norm {arr[l, t]:.3f}" for t in range(T)]
                                        for l in range(L)])
    if selected_pos is not None and 0 <= selected_pos < T:
        mark_column(fig, selected_pos, L)
    return fig


def stream_norms_factored(xt_norms, xe_norms, layer_names: Optional[Sequence[str]] = None,
                          title: str = "Factored stream norms") -> go.Figure:
    """Mean ||xt|| and ||xe|| per layer as two lines. Inputs: (layer,) or (layer, pos)
    (averaged over positions)."""
    xt, xe = _np(xt_norms), _np(xe_norms)
    xt = xt.mean(-1) if xt.ndim > 1 else xt
    xe = xe.mean(-1) if xe.ndim > 1 else xe
    x = list(layer_names) if layer_names is not None else [str(i) for i in range(len(xt))]
    fig = go.Figure([go.Scatter(x=x, y=xt, mode="lines+markers", name="xt (attention)"),
                     go.Scatter(x=x, y=xe, mode="lines+markers", name="xe (MLP)")])
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="norm")
    return fig


def logit_lens_heatmap(result, example: int = 0, decode: Decode = None, labels: Optional[Sequence[str]] = None,
                       title: Optional[str] = None, cell_text: bool = False, selected_pos: Optional[int] = None,
                       clickable: bool = False) -> go.Figure:
    """Layers x positions colored by the probability of the target token (by default the
    next token), with the top-k predictions in the hover text. `result`: a `lens.LensResult`;
    `decode`: id -> str (a callable or a vocabulary list) for hover text and default axis
    labels. `cell_text`: write each cell's top-1 token in it (up to `MAX_TICKS` positions).
    `selected_pos` outlines a column; `clickable` adds click targets (row-major over
    layers x positions)."""
    dec = _decoder(decode)
    prob = _np(result.target_prob[:, example])  # (L, T)
    L, T = prob.shape
    tokens = result.tokens[example].tolist()
    if labels is None:
        labels = [dec(t) for t in tokens]
    tops, tps = result.top_tokens[:, example], result.top_probs[:, example]
    ranks, targets = result.target_rank[:, example], result.targets[example]
    hover, top1 = [], []
    for l in range(L):
        row, row1 = [], []
        for t in range(T):
            top = "<br>".join(f"{dec(i)!r}: {p:.3f}" for i, p in zip(tops[l, t].tolist(), tps[l, t].tolist()))
            tgt = int(targets[t])
            head = f"target {dec(tgt)!r} p={prob[l, t]:.3f} rank={int(ranks[l, t])}" if tgt != -100 else "no target"
            row.append(f"{result.layer_names[l]}, pos {t}<br>{head}<br>{top}")
            row1.append(dec(int(tops[l, t, 0])))
        hover.append(row)
        top1.append(row1)
    xs, ys = unique_labels(labels, T), list(result.layer_names)
    show_text = cell_text and T <= MAX_TICKS
    fig = go.Figure(go.Heatmap(z=prob, x=xs, y=ys, zmin=0, zmax=1, colorscale="Blues", text=hover,
                               hovertemplate="%{text}<extra></extra>", colorbar=dict(title="p(target)")))
    if show_text:  # top-1 token in each cell, dark on light cells and light on dark ones
        for dark in (False, True):
            mask = (np.nan_to_num(prob) > 0.55) == dark
            fig.add_trace(go.Scatter(
                x=[xs[t] for l in range(L) for t in range(T) if mask[l, t]],
                y=[ys[l] for l in range(L) for t in range(T) if mask[l, t]],
                text=[top1[l][t] for l in range(L) for t in range(T) if mask[l, t]], mode="text", hoverinfo="skip",
                textfont=dict(size=11 if T <= 40 else 9, color="white" if dark else "#1b1b1b"), showlegend=False))
    k = token_axis(fig, "x", T)
    fig.update_layout(title=(title if title is not None else f"Logit lens ({result.stream})")
                      + (": top-1 token in each cell, colour = p(target)" if show_text else "")
                      + (f" (labels: every {k}th token)" if k > 1 else ""),
                      xaxis_title="position", yaxis_title="layer")
    if clickable:
        add_click_targets(fig, xs, ys, hover)
    if selected_pos is not None and 0 <= selected_pos < T:
        mark_column(fig, selected_pos, L)
    return fig


def head_score_heatmap(scores, name: str = "score", title: Optional[str] = None,
                       selected: Optional[tuple[int, int]] = None, clickable: bool = False,
                       zmin: Optional[float] = None, zmax: Optional[float] = None) -> go.Figure:
    """(layer, head) scores as a heatmap. `selected` = (layer, head) is outlined; `clickable`
    adds click targets (row-major: point index = layer * n_heads + head); `zmin`/`zmax` fix
    the colour scale (pass the same to several maps to compare them)."""
    s = _np(scores)
    L, H = s.shape
    xs, ys = [f"H{h}" for h in range(H)], [f"L{l}" for l in range(L)]
    fig = go.Figure(go.Heatmap(z=s, x=xs, y=ys, colorscale="Viridis", zmin=zmin, zmax=zmax,
                               hovertemplate=f"%{{y}}%{{x}}<br>{name} %{{z:.3f}}<extra></extra>", colorbar=dict(title=name)))
    fig.update_layout(title=title or name, xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed")
    if clickable:
        add_click_targets(fig, xs, ys, [[f"L{l}H{h}<br>{name} {s[l, h]:.3f}" for h in range(H)] for l in range(L)],
                          size=max(8, min(40, 400 // max(L, H))))
    if selected is not None:
        mark_cell(fig, selected[0], selected[1])
    return fig


def metric_curves(series: dict, title: str = "", step: Optional[int] = None, log_y: bool = False,
                  checkpoint_steps: Optional[Sequence[int]] = None, yaxis_title: str = "") -> go.Figure:
    """Training curves: `series` maps a name to (steps, values); one line each. `step` draws
    a vertical line (the checkpoint on show); `checkpoint_steps` puts an open circle on each
    line at the steps that have a checkpoint (their points carry `customdata` = step). Every
    point is selectable (a click emits a selection event with its step as x)."""
    fig = go.Figure()
    marks = sorted(set(int(s) for s in checkpoint_steps)) if checkpoint_steps is not None else []
    for i, (name, (xs, ys)) in enumerate(series.items()):
        xs, ys = list(xs), list(ys)
        color = _COLORS[i % len(_COLORS)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=color, width=1.6),
                                 marker=dict(size=3), hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"))
        if marks and xs:
            at = [min(range(len(xs)), key=lambda j: abs(xs[j] - m)) for m in marks]
            fig.add_trace(go.Scatter(x=[xs[j] for j in at], y=[ys[j] for j in at], customdata=marks, mode="markers",
                                     marker=dict(color=color, size=7, symbol="circle-open"), showlegend=False,
                                     name=name, hovertemplate=f"checkpoint step %{{customdata}}<br>{name} "
                                     "%{y:.4g}<extra></extra>"))
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#e4572e", width=2, dash="dot"))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=yaxis_title, clickmode="event+select",
                      hovermode="closest", legend=dict(font=dict(size=10)))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def per_token_lines(values: dict, labels: Sequence[str], title: str = "", yaxis_title: str = "") -> go.Figure:
    """One line per name over the token positions: `values` maps a name to a (pos,) array
    (e.g. each checkpoint's next-token loss on one prompt); x = token labels."""
    fig = go.Figure()
    xs = unique_labels(labels)
    for i, (name, v) in enumerate(values.items()):
        v = _np(v)
        fig.add_trace(go.Scatter(x=xs[: len(v)], y=v, mode="lines+markers", name=str(name),
                                 line=dict(color=_COLORS[i % len(_COLORS)]), marker=dict(size=4)))
    k = token_axis(fig, "x", len(xs))
    fig.update_layout(title=title + (f" (labels: every {k}th token)" if k > 1 else ""), yaxis_title=yaxis_title,
                      xaxis_title="position", hovermode="x unified")
    return fig


def segment_bars(rows: Sequence[dict], metric: str = "accuracy", segments: Sequence[str] = ("prompt", "step", "answer"),
                 title: Optional[str] = None) -> go.Figure:
    """Grouped bars: one trace per checkpoint row (`steps.compare_checkpoints`), x = segment,
    y = row[f"{metric}/{segment}"]."""
    fig = go.Figure()
    for row in rows:
        fig.add_trace(go.Bar(name=str(row.get("name", "?")), x=list(segments),
                             y=[row.get(f"{metric}/{s}", math.nan) for s in segments]))
    fig.update_layout(barmode="group", title=title or f"{metric} per segment", xaxis_title="segment", yaxis_title=metric)
    return fig


def top_neurons_bar(values, indices: Optional[Sequence[int]] = None, k: int = 20, labels: Optional[Sequence[str]] = None,
                    title: str = "Top neurons") -> go.Figure:
    """Horizontal bars of the k largest |values|. `values`: (d_mlp,) activations or
    attributions; or pass already-chosen `indices` with their `values`."""
    v = _np(values)
    if indices is None:
        order = np.argsort(-np.abs(v))[:k]
        idx, vals = order.tolist(), v[order]
    else:
        idx, vals = [int(i) for i in indices], v
    names = [str(x) for x in labels] if labels is not None else [f"n{i}" for i in idx]
    names = [f"{j}:{n}" for j, n in enumerate(names)] if len(set(names)) < len(names) else names
    fig = go.Figure(go.Bar(x=vals, y=names, orientation="h",
                           marker_color=["#1f77b4" if x >= 0 else "#d62728" for x in vals]))
    fig.update_layout(title=title, yaxis_autorange="reversed", xaxis_title="value",
                      yaxis=dict(tickmode="linear", dtick=1))  # a label on every bar
    return fig


def generation_steps(probs, k: int = 10, decode: Decode = None, chosen: Optional[int] = None,
                     title: str = "Next-token probabilities") -> go.Figure:
    """Top-k probability bars for one decoding step. `probs`: (vocab,) probabilities (or
    logits: anything not summing to 1 is softmaxed); `chosen` highlights the sampled id."""
    p = _np(probs).reshape(-1)
    if not np.isclose(p.sum(), 1.0, atol=1e-3) or (p < 0).any():
        e = np.exp(p - p.max())
        p = e / e.sum()
    dec = _decoder(decode)
    order = np.argsort(-p)[:k]
    x = unique_labels([dec(i) for i in order])
    colors = ["#d62728" if chosen is not None and int(i) == int(chosen) else "#1f77b4" for i in order]
    fig = go.Figure(go.Bar(x=x, y=p[order], marker_color=colors,
                           hovertemplate="%{x}<br>p=%{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="token (rank:token)", yaxis_title="probability", yaxis_range=[0, 1])
    return fig


# ---------------------------------------------------------------------------- causal analysis
# Figures for `interp.patching` (PatchResult) and `interp.attribution` (LogitAttribution).


def _diverging(arr: np.ndarray) -> dict:
    """Symmetric red-blue colour range around 0 for an array of signed effects."""
    m = float(np.nanmax(np.abs(arr))) if np.isfinite(arr).any() else 1.0
    return dict(colorscale="RdBu", zmid=0, zmin=-(m or 1.0), zmax=m or 1.0)


def patching_heatmap(result, normalized: bool = True, title: Optional[str] = None,
                     selected: Optional[tuple[int, int]] = None, clickable: bool = False) -> go.Figure:
    """A `PatchResult` (activation, path or attribution patching) of one metric, reduced over
    the batch: (layer, pos) or (layer, head) as a heatmap, (layer,) as bars, (layer, pos,
    head) as one pos x head panel per layer. Colour: the normalized effect (1 = the patch moves
    the metric to the source run's value) or, with normalized=False, values - baseline.
    Two-dimensional grids only: `selected` = (row, column) indices is outlined; `clickable`
    adds click targets (row-major: point index = row * n_columns + column)."""
    if "metric" in result.dims or "batch" in result.dims:
        raise ValueError(f"patching_heatmap draws one metric reduced over the batch; this result has dims {result.dims}")
    arr = _np(result.normalized() if normalized else result.effect)
    name = "normalized" if normalized else "effect"
    title = title if title is not None else f"{result.method} patching: {result.act} ({result.direction}), {name}"
    dims, labels = result.dims, result.labels
    axis = lambda d: unique_labels(labels[d]) if d == "pos" else list(labels[d])
    hover = f"%{{y}} %{{x}}<br>{name} %{{z:.3f}}<extra></extra>"
    if len(dims) == 1:
        fig = go.Figure(go.Bar(x=axis(dims[0]), y=arr, marker_color=["#1f77b4" if v >= 0 else "#d62728" for v in arr]))
        fig.update_layout(title=title, xaxis_title=dims[0], yaxis_title=name)
        return fig
    if len(dims) == 2:
        xs, ys = axis(dims[1]), axis(dims[0])
        fig = go.Figure(go.Heatmap(z=arr, x=xs, y=ys, hovertemplate=hover, colorbar=dict(title=name),
                                   **_diverging(arr)))
        fig.update_layout(title=title, xaxis_title=dims[1], yaxis_title=dims[0], yaxis_autorange="reversed")
        if clickable:
            add_click_targets(fig, xs, ys, [[f"{y} {x}<br>{name} {arr[i, j]:.3f}" for j, x in enumerate(xs)]
                                            for i, y in enumerate(ys)], size=max(8, min(40, 400 // max(arr.shape))))
        if selected is not None and 0 <= selected[0] < arr.shape[0] and 0 <= selected[1] < arr.shape[1]:
            mark_cell(fig, selected[0], selected[1])
        return fig
    L = arr.shape[0]
    fig = make_subplots(rows=L, cols=1, subplot_titles=list(labels["layer"]), vertical_spacing=0.04 if L > 1 else 0.0)
    for l in range(L):
        fig.add_trace(go.Heatmap(z=arr[l].T, x=axis("pos"), y=axis("head"), hovertemplate=hover, showscale=l == 0,
                                 colorbar=dict(title=name), **_diverging(arr)), row=l + 1, col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=max(300, 180 * L))
    return fig


def attribution_scatter(estimate, actual, title: Optional[str] = None) -> go.Figure:
    """Attribution-patching estimates against real patching effects, cell by cell (two
    PatchResults on the same grid), with the y = x line and Pearson r in the title."""
    x, y = _np(actual.effect).reshape(-1), _np(estimate.effect).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"the two results have different grids: {actual.dims} {actual.values.shape} vs "
                         f"{estimate.dims} {estimate.values.shape}")
    cells = [" ".join(parts) for parts in np.array(np.meshgrid(*[actual.labels[d] for d in actual.dims],
                                                                  indexing="ij")).reshape(len(actual.dims), -1).T]
    ok = np.isfinite(x) & np.isfinite(y)
    r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 1 else float("nan")
    lo, hi = float(np.nanmin(np.r_[x, y])), float(np.nanmax(np.r_[x, y]))
    fig = go.Figure([go.Scatter(x=x, y=y, mode="markers", text=cells, name="site",
                                hovertemplate="%{text}<br>patching %{x:.3f}<br>attribution %{y:.3f}<extra></extra>"),
                     go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="gray"), name="y = x")])
    fig.update_layout(title=title or f"attribution patching vs activation patching ({actual.act}): r = {r:.3f}",
                      xaxis_title="activation patching effect", yaxis_title="attribution patching estimate")
    return fig


def _dla_column(dla, batch: Optional[int], pos: int) -> np.ndarray:
    """(component,) contributions at one position, of one example or the batch mean."""
    v = dla.values[:, :, pos]
    return _np(v.nanmean(1) if batch is None else v[:, batch])


def logit_attribution_bars(dla, batch: Optional[int] = 0, pos: int = -1, k: int = 15,
                           title: Optional[str] = None) -> go.Figure:
    """The k components with the largest |direct logit attribution| at one position
    (`pos` indexes `dla.positions`; `batch=None` averages the batch)."""
    v = _dla_column(dla, batch, pos)
    order = np.argsort(-np.abs(np.nan_to_num(v)))[:k]
    fig = go.Figure(go.Bar(x=v[order], y=[dla.labels[i] for i in order], orientation="h",
                           marker_color=["#1f77b4" if v[i] >= 0 else "#d62728" for i in order],
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"direct logit attribution at position {dla.positions[pos]}",
                      yaxis_autorange="reversed", xaxis_title="contribution to the logit")
    return fig


def logit_attribution_stacked(dla, batch: Optional[int] = 0, pos: int = -1, n_named: int = 5,
                              title: Optional[str] = None) -> go.Figure:
    """Stacked contributions per layer at one position: one bar segment per head, the MLP and
    the attention bias (embeddings in their own column); the `n_named` largest are labelled."""
    v = _dla_column(dla, batch, pos)
    columns = ["embed"] + [f"L{l}" for l in sorted({l for l in dla.layers if l >= 0})]
    col = lambda i: "embed" if dla.layers[i] < 0 else f"L{dla.layers[i]}"
    named = set(np.argsort(-np.abs(np.nan_to_num(v)))[:n_named].tolist())
    groups: dict[str, list[int]] = {}
    for i, kind in enumerate(dla.kinds):
        key = f"H{dla.heads[i]}" if kind == "head" else {"mlp": "MLP", "attn_bias": "attn bias"}.get(kind, kind)
        groups.setdefault(key, []).append(i)
    fig = go.Figure()
    for key, idx in groups.items():
        y = [0.0] * len(columns)
        text = [""] * len(columns)
        for i in idx:
            y[columns.index(col(i))] = float(v[i])
            text[columns.index(col(i))] = dla.labels[i] if i in named else ""
        fig.add_trace(go.Bar(name=key, x=columns, y=y, text=text, textposition="inside",
                             hovertemplate=f"%{{x}} {key}: %{{y:.3f}}<extra></extra>"))
    total = float(np.nansum(v))
    fig.update_layout(barmode="relative", xaxis_title="layer", yaxis_title="contribution to the logit",
                      title=title or f"direct logit attribution at position {dla.positions[pos]} (sum {total:.2f})")
    return fig


def logit_attribution_heatmap(dla, batch: Optional[int] = 0, labels: Optional[Sequence[str]] = None,
                              title: Optional[str] = None, selected_pos: Optional[int] = None,
                              clickable: bool = False) -> go.Figure:
    """Components x positions: every component's contribution at every position (`labels`:
    token labels of `dla.positions`). `selected_pos` (an index into `dla.positions`) outlines a
    column; `clickable` adds click targets (row-major over components x positions)."""
    v = dla.values
    arr = _np(v.nanmean(1) if batch is None else v[:, batch])
    x = unique_labels(labels if labels is not None else [str(p) for p in dla.positions])
    y = list(dla.labels)
    fig = go.Figure(go.Heatmap(z=arr, x=x, y=y, hovertemplate="%{y} at %{x}: %{z:.3f}<extra></extra>",
                               colorbar=dict(title="logit"), **_diverging(arr)))
    fig.update_layout(title=title or "direct logit attribution", xaxis_title="position", yaxis_title="component",
                      yaxis_autorange="reversed", height=max(350, 14 * len(dla.labels)))
    if clickable:
        add_click_targets(fig, x, y, [[f"{c} at {p}: {arr[i, j]:.3f}" for j, p in enumerate(x)] for i, c in enumerate(y)])
    if selected_pos is not None and 0 <= selected_pos < arr.shape[1]:
        mark_column(fig, selected_pos, arr.shape[0])
    return fig


def fourier_spectrum(shares, key_freqs: Sequence[int] = (), title: str = "") -> go.Figure:
    """Share of the number embeddings' squared norm in each frequency k = 1 .. p // 2 (bars),
    key frequencies highlighted (Nanda et al. 2023's sparse Fourier embedding)."""
    shares = _np(shares)
    ks = list(range(1, len(shares) + 1))
    key = set(int(k) for k in key_freqs)
    colors = ["#d62728" if k in key else "#9fb4c7" for k in ks]
    fig = go.Figure(go.Bar(x=ks, y=shares, marker_color=colors,
                           hovertemplate="frequency %{x}<br>share %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="frequency k (w = 2πk/p)", yaxis_title="share of ‖W_E‖²",
                      bargap=0.1)
    return fig


# ---------------------------------------------------------------------- latent thoughts (interp.thoughts)
def thought_lens_heatmap(lens, example: int = 0, decode: Decode = None, title: Optional[str] = None) -> go.Figure:
    """Layers x thoughts for one example (`lens`: an `interp.thoughts.ThoughtLens`): colour =
    probability of the top-1 token, written in the cell; hover = the top-k."""
    dec = _decoder(decode)
    ids, ps = lens.top_ids[example], lens.top_probs[example]  # (thought, layer, k)
    S, L = ids.shape[0], ids.shape[1]
    z = _np(ps[:, :, 0]).T  # (layer, thought)
    text = [[dec(int(ids[s, l, 0])) for s in range(S)] for l in range(L)]
    hover = [[f"thought {s}, {lens.layer_names[l]}<br>" + "<br>".join(
        f"{dec(int(i))!r}: {float(p):.3f}" for i, p in zip(ids[s, l].tolist(), ps[s, l].tolist()))
        for s in range(S)] for l in range(L)]
    xs = [f"thought {s}" for s in range(S)]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=list(lens.layer_names), zmin=0, zmax=1, colorscale="Blues",
                               text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", colorbar=dict(title="p(top-1)")))
    fig.update_layout(title=title or "Logit lens of each continuous thought (top-1 token per layer)",
                      xaxis_title="thought (j = 0 is read at <bot>; the last is the last slot's output)",
                      yaxis_title="layer")
    return fig


FRONTIER_COLORS = {"frontier_path": "#1f77b4", "frontier_other": "#2ca02c", "reachable_other": "#9fb4c7",
                   "unreachable": "#d62728", "not_a_node": "#c7c7c7"}


def frontier_mass_bars(result: dict, title: Optional[str] = None) -> go.Figure:
    """Stacked probability mass of each thought's decoding on search-frontier nodes vs the rest
    (`result`: `interp.thoughts.frontier_mass`)."""
    mass = _np(result["mass"])  # (thought, category)
    xs = [f"thought {j}" for j in range(mass.shape[0])]
    names = {"frontier_path": "frontier: path node", "frontier_other": "frontier: other nodes at depth j",
             "reachable_other": "reachable, other depth", "unreachable": "unreachable nodes", "not_a_node": "not a node"}
    fig = go.Figure([go.Bar(x=xs, y=mass[:, c], name=names[cat], marker_color=FRONTIER_COLORS[cat],
                            hovertemplate=f"{names[cat]}: %{{y:.3f}}<extra></extra>")
                     for c, cat in enumerate(result["categories"])])
    fig.update_layout(barmode="stack", title=title or "Where each thought's decoded mass goes (BFS depth j = thought j)",
                      yaxis_title="probability mass", yaxis_range=[0, 1])
    return fig


def thought_attention_heatmap(attention, title: Optional[str] = None, layer_names: Optional[Sequence[str]] = None
                              ) -> go.Figure:
    """Attention from the answer position (`<eot>`) into each latent slot: (layer, head, slot)
    gives one row per layer and head, (layer, slot) one row per layer."""
    a = _np(attention)
    if a.ndim == 3:
        L, H, S = a.shape
        rows = [f"L{l}H{h}" for l in range(L) for h in range(H)]
        a = a.reshape(L * H, S)
    else:
        S = a.shape[1]
        rows = list(layer_names) if layer_names is not None else [f"layer {l}" for l in range(a.shape[0])]
    fig = go.Figure(go.Heatmap(z=a, x=[f"slot {s}" for s in range(S)], y=rows, colorscale="Viridis", zmin=0,
                               hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>", colorbar=dict(title="attention")))
    fig.update_layout(title=title or "Attention from the answer into each thought", xaxis_title="latent slot",
                      yaxis_autorange="reversed", height=max(300, 18 * len(rows) + 120))
    return fig


def answer_prob_curve(curve, title: Optional[str] = None, max_lines: int = 32) -> go.Figure:
    """P(answer) with 0, 1, ... thoughts: the mean (thick) over examples, and each example (thin);
    `curve`: (examples, n_thoughts + 1) or (n_thoughts + 1,)."""
    c = _np(curve)
    c = c[None] if c.ndim == 1 else c
    xs = list(range(c.shape[1]))
    traces = [go.Scatter(x=xs, y=row, mode="lines", line=dict(width=1, color="rgba(31,119,180,0.25)"),
                         showlegend=False, hoverinfo="skip") for row in c[:max_lines]] if c.shape[0] > 1 else []
    traces.append(go.Scatter(x=xs, y=c.mean(0), mode="lines+markers", line=dict(width=3, color="#1f77b4"),
                             name="mean" if c.shape[0] > 1 else "P(answer)",
                             hovertemplate="%{x} thoughts: P(answer) %{y:.3f}<extra></extra>"))
    fig = go.Figure(traces)
    fig.update_layout(title=title or "Answer probability as thoughts are added", xaxis_title="thoughts before <eot>",
                      yaxis_title="P(answer)", yaxis_range=[0, 1], xaxis=dict(tickmode="linear", dtick=1))
    return fig


def thought_timeline(view: dict, title: Optional[str] = None) -> go.Figure:
    """One example's passes left to right (`view`: `interp.thoughts.timeline`): each thought's
    top decoded tokens, the answer's attention into each slot per layer, and P(answer) with
    that many thoughts."""
    tokens, probs = view["top_tokens"], _np(view["top_probs"])  # (thought, k)
    S, k = probs.shape
    attn = _np(view["attention"])  # (layer, slot)
    curve = _np(view["answer_prob"])
    xs = [f"thought {s}" for s in range(S)]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=False, vertical_spacing=0.12, row_heights=[0.4, 0.35, 0.25],
                        subplot_titles=("top decoded tokens of each thought", "answer's attention into each slot",
                                        "P(answer) with t thoughts"))
    lo_hi = fig.layout.yaxis2.domain  # the attention panel's colour bar sits beside it
    fig.add_trace(go.Heatmap(z=probs.T, x=xs, y=[f"#{i + 1}" for i in range(k)], zmin=0, zmax=1,
                             colorscale="Blues", text=[[tokens[s][i] for s in range(S)] for i in range(k)],
                             texttemplate="%{text}", showscale=False,
                             hovertemplate="%{x} %{y}: %{text} p=%{z:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=attn, x=[f"slot {s}" for s in range(attn.shape[1])],
                             y=list(view.get("layer_names", []))[1:] or [f"layer {l}" for l in range(attn.shape[0])],
                             colorscale="Viridis", zmin=0, hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>",
                             colorbar=dict(title="attn", len=lo_hi[1] - lo_hi[0], y=sum(lo_hi) / 2, thickness=14)),
                  row=2, col=1)
    fig.add_trace(go.Scatter(x=list(range(len(curve))), y=curve, mode="lines+markers", showlegend=False,
                             hovertemplate="%{x} thoughts: %{y:.3f}<extra></extra>"), row=3, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=3, col=1)
    fig.update_xaxes(tickmode="linear", dtick=1, row=3, col=1)
    fig.update_layout(title=title or f"Latent thoughts, answer {view.get('answer', '')!r}", height=760)
    return fig


def head_series_heatmap(steps: Sequence[int], values: dict, title: str = "", mark_step: Optional[int] = None,
                        colorbar: str = "score") -> go.Figure:
    """Heads x steps: `values` maps a head name ("L1H0") to its series over `steps`
    (e.g. each head's induction score at every eval)."""
    names = list(values)
    z = np.array([[np.nan if v is None else v for v in values[n]] for n in names], dtype=float)
    fig = go.Figure(go.Heatmap(z=z, x=list(steps), y=names, colorscale="Viridis", colorbar=dict(title=colorbar),
                               hovertemplate="%{y}<br>step %{x}<br>%{z:.3f}<extra></extra>"))
    if mark_step is not None:
        fig.add_vline(x=mark_step, line=dict(color="#e4572e", width=2, dash="dot"))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="head", height=max(300, 40 + 22 * len(names)))
    return fig


def loss_and_score(steps: Sequence[int], loss, score, marks: Optional[dict] = None, title: str = "",
                   score_name: str = "best induction score") -> go.Figure:
    """A loss curve (left axis, log) and a score over the same steps (right axis), with a dotted
    vertical line per entry of `marks` ({label: step}): e.g. a phase change seen in both."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=list(steps), y=_np(loss), name="eval loss", mode="lines+markers", marker=dict(size=3),
                             line=dict(color=_COLORS[0]), hovertemplate="step %{x}<br>loss %{y:.4g}<extra></extra>"),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=list(steps), y=_np(score), name=score_name, mode="lines+markers", marker=dict(size=3),
                             line=dict(color=_COLORS[1]), hovertemplate="step %{x}<br>score %{y:.3f}<extra></extra>"),
                  secondary_y=True)
    for i, (label, step) in enumerate((marks or {}).items()):
        fig.add_vline(x=step, line=dict(color=_COLORS[3 + i % 7], width=1.5, dash="dot"), annotation_text=label,
                      annotation_position="top right" if i % 2 == 0 else "bottom right")
    fig.update_yaxes(title_text="eval loss", type="log", secondary_y=False)
    fig.update_yaxes(title_text=score_name, secondary_y=True)
    fig.update_layout(title=title, xaxis_title="step", hovermode="x unified", legend=dict(font=dict(size=10)))
    return fig


# ---------------------------------------------------------------------- features (dictionaries)
def latent_density_histogram(density, title: str = "", bins: int = 40) -> go.Figure:
    """Histogram of log10(firing frequency) of a dictionary's latents (`features.evaluate`'s
    `latent_density`); latents that never fired are counted in the title, and latents firing on
    more than 10% of tokens lie right of the dotted line."""
    d = _np(density).astype(float)
    live = d[d > 0]
    fig = go.Figure(go.Histogram(x=np.log10(live), nbinsx=bins, marker_color=_COLORS[0],
                                 hovertemplate="log10 density %{x}<br>%{y} latents<extra></extra>"))
    fig.add_vline(x=-1, line=dict(color="#e4572e", width=1.5, dash="dot"), annotation_text="dense (10%)")
    dead = int((d == 0).sum())
    fig.update_layout(title=(title + " — " if title else "") + f"{dead} of {len(d)} latents never fired",
                      xaxis_title="log10(fraction of tokens the latent fires on)", yaxis_title="latents", bargap=0.05)
    return fig


def dictionary_eval_losses(stats: dict, title: str = "") -> go.Figure:
    """Next-token loss of the model clean, with the dictionary spliced in, and with the
    activation zero- / mean-ablated (`features.evaluate`), labelled with CE loss recovered."""
    names = ["clean", "spliced", "mean ablation", "zero ablation"]
    keys = ["ce_loss_clean", "ce_loss_spliced", "ce_loss_mean_ablation", "ce_loss_zero_ablation"]
    values = [stats[k] for k in keys]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=[_COLORS[i] for i in range(4)],
                           text=[f"{v:.3f}" for v in values], textposition="outside",
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    head = (f"FVE {stats['fve']:.3f} · L0 {stats['l0']:.1f} · CE recovered {stats['ce_recovered']:.3f} "
            f"(vs mean {stats['ce_recovered_mean']:.3f}) · dead {stats['dead_fraction']:.1%}")
    fig.update_layout(title=(title + "<br>" if title else "") + head, yaxis_title="next-token loss (nats)")
    return fig


# ---------------------------------------------------------------------- thought superposition
SUPERPOSITION_COLORS = {"reachable": "#1f77b4", "frontier": "#2ca02c", "optimal": "#ff7f0e", "not_reachable": "#d62728"}
SUPERPOSITION_NAMES = {"reachable": "reachable in ≤ k steps", "frontier": "frontier: exactly k steps",
                       "optimal": "optimal: on a shortest path to the target", "not_reachable": "not reachable in k steps"}


def superposition_boxes(scores: dict, key: str = "inner", title: Optional[str] = None) -> go.Figure:
    """Per thought k, the distribution over (example, node) of each node group's score
    (`scores`: `interp.superposition.thought_node_scores`; `key`: inner | prob)."""
    fig = go.Figure()
    for g in scores["groups"]:
        rows = [r for r in scores["rows"] if g in r["groups"]]
        fig.add_trace(go.Box(x=[f"thought {r['k']}" for r in rows], y=[r[key] for r in rows], name=SUPERPOSITION_NAMES[g],
                             marker_color=SUPERPOSITION_COLORS[g], boxpoints=False))
    what = "inner product with the node's embedding" if key == "inner" else "node's probability under the thought's lens"
    fig.update_layout(boxmode="group", title=title or f"Continuous thought k vs node groups: {what}",
                      yaxis_title=what, xaxis_title="thought k (fed into latent slot k - 1)")
    return fig


def edge_attention_bars(result: dict, title: Optional[str] = None) -> go.Figure:
    """Mean attention (summed over heads) per edge of each group from the position producing
    thought k and from the answer (`result`: `interp.superposition.edge_attention`)."""
    xs = [f"thought {k}" for k in result["thoughts"]] + ["answer"]
    fig = go.Figure([go.Bar(x=xs, y=list(result["mean"][g]) + [result["answer_mean"][g]], name=SUPERPOSITION_NAMES[g]
                            .replace("≤ k", "≤ k - 1").replace("exactly k", "exactly k - 1").replace("in k steps", "yet"),
                            marker_color=SUPERPOSITION_COLORS[g], hovertemplate="%{x}: %{y:.4f}<extra></extra>")
                     for g in result["groups"]])
    fig.update_layout(barmode="group", title=title or f"Layer {result['layer']} attention to the edges, by source node group",
                      yaxis_title="mean attention per edge (s, t, |), summed over heads")
    return fig


def edge_copy_head_bars(result: dict, title: Optional[str] = None) -> go.Figure:
    """Per head of a layer: attention from each edge's separator to its two nodes and from each
    target to its source (`result`: `interp.superposition.edge_copy_heads`)."""
    xs = [f"L{result['layer']}H{h}" for h in range(len(result["separator_to_edge"]))]
    fig = go.Figure([go.Bar(x=xs, y=result["separator_to_edge"], name="| → its edge's s and t", marker_color=_COLORS[0]),
                     go.Bar(x=xs, y=result["target_to_source"], name="t → its source s", marker_color=_COLORS[1])])
    fig.update_layout(barmode="group", yaxis_range=[0, 1], yaxis_title="mean attention",
                      title=title or f"Edge-copying heads in layer {result['layer']} (mean over {result['n_edges']} edges)")
    return fig


def thought_frontier_nodes(scores: dict, example: int, title: Optional[str] = None) -> go.Figure:
    """One example's graph nodes x thoughts (`scores`: `interp.superposition.thought_node_scores`):
    colour = the node's probability under thought k's lens; ★ marks an optimal node (distance k
    on a shortest path to the target), • another frontier node (distance exactly k)."""
    rows = [r for r in scores["rows"] if r["example"] == example]
    if not rows:
        raise ValueError(f"no scores for example {example}")
    ks = sorted({r["k"] for r in rows})
    depth = {r["node"]: r["depth"] for r in rows if r["depth"] is not None}
    nodes = sorted({r["node"] for r in rows}, key=lambda v: (depth.get(v, 1 << 20), v))
    z = np.full((len(nodes), len(ks)), np.nan)
    text = [["" for _ in ks] for _ in nodes]
    for r in rows:
        i, j = nodes.index(r["node"]), ks.index(r["k"])
        z[i, j] = r["prob"]
        text[i][j] = "★" if "optimal" in r["groups"] else ("•" if "frontier" in r["groups"] else "")
    ys = [f"{v} (depth {depth[v]})" if v in depth else f"{v} (unreachable)" for v in nodes]
    fig = go.Figure(go.Heatmap(z=z, x=[f"thought {k}" for k in ks], y=ys, colorscale="Blues", zmin=0,
                               text=text, texttemplate="%{text}", colorbar=dict(title="p"),
                               hovertemplate="%{y}, %{x}: p=%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or "Each thought's lens probability of every graph node (★ optimal, • frontier)",
                      yaxis_autorange="reversed", height=max(320, 16 * len(nodes) + 140))
    return fig


# ---------------------------------------------------------------------- feature dashboards
def _shown(piece: str) -> str:
    return piece.replace("\n", "↵").replace(" ", "␣").replace("\t", "⇥") or "∅"


def feature_activation_histogram(dash, title: Optional[str] = None, n_intervals: int = 10) -> go.Figure:
    """A latent's activations where it fires (`features.LatentDashboard`): the histogram of
    (0, max], with the boundaries of its sampled activation bins dotted."""
    edges = np.asarray(dash.hist_edges, dtype=float)
    counts = np.asarray(dash.hist_counts, dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker_color=_COLORS[0],
                           customdata=np.stack([edges[:-1], edges[1:]], -1),
                           hovertemplate="(%{customdata[0]:.3g}, %{customdata[1]:.3g}]: %{y} tokens<extra></extra>"))
    for j in range(1, n_intervals):
        fig.add_vline(x=dash.max_act * j / n_intervals, line=dict(color="#bbbbbb", width=1, dash="dot"))
    fig.update_layout(title=title or f"Latent {dash.index}: activation where it fires ({dash.n_fired:,} tokens, "
                      f"density {dash.density:.3%})", xaxis_title="activation", yaxis_title="tokens", bargap=0)
    return fig


def feature_logit_effect(dash, title: Optional[str] = None) -> go.Figure:
    """The tokens a latent's decoder direction promotes (top) and suppresses (bottom) through
    the unembedding (`features.LatentDashboard.logit_top / logit_bottom`)."""
    rows = sorted(dash.logit_bottom, key=lambda r: r[2]) + sorted(dash.logit_top, key=lambda r: r[2])
    labels = unique_labels([_shown(p) for _, p, _ in rows])
    values = [v for _, _, v in rows]
    fig = go.Figure(go.Bar(x=values, y=labels, orientation="h",
                           marker_color=[_COLORS[3] if v < 0 else _COLORS[0] for v in values],
                           hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    fig.update_layout(title=title or f"Latent {dash.index}: direct logit effect (per unit of activation)",
                      xaxis_title="logit change (before the final norm's scale)", yaxis=dict(automargin=True))
    return fig


def latent_density_scatter(table: dict, selected: Optional[int] = None, title: str = "") -> go.Figure:
    """Every live latent of a dictionary (`DashboardStore.table()`): log10 density against max
    activation, hover = its summary; click targets carry the latent index."""
    dens = np.asarray(table["density"], dtype=float)
    peak = np.asarray(table["max_act"], dtype=float)
    live = np.nonzero(dens > 0)[0]
    fig = go.Figure(go.Scattergl(
        x=np.log10(dens[live]), y=peak[live], mode="markers", customdata=live,
        marker=dict(size=5, color=_COLORS[0], opacity=0.6),
        hovertext=[f"latent {i}: {table['summary'][i]}" for i in live], hoverinfo="text+x+y"))
    if selected is not None and 0 <= selected < len(dens) and dens[selected] > 0:
        fig.add_trace(go.Scatter(x=[np.log10(dens[selected])], y=[peak[selected]], mode="markers", hoverinfo="skip",
                                 marker=dict(size=12, color="rgba(0,0,0,0)", line=dict(color="#e4572e", width=2))))
    dead = len(dens) - len(live)
    fig.update_layout(title=(title + " — " if title else "") + f"{len(live)} live latents ({dead} dead)", showlegend=False,
                      xaxis_title="log10 density (fraction of tokens it fires on)", yaxis_title="max activation",
                      clickmode="event+select", hovermode="closest")
    return fig


def steering_bars(before, after, vocab: Sequence[str], k: int = 10, title: Optional[str] = None) -> go.Figure:
    """Next-token probabilities before and after steering / ablation (`features.Intervention`'s
    `before` / `after`): the union of both top-k, sorted by the probability after."""
    b, a = _np(before.probs), _np(after.probs)
    ids = list(dict.fromkeys([i for i, _ in after.top[:k]] + [i for i, _ in before.top[:k]]))
    ids.sort(key=lambda i: -a[i])
    labels = unique_labels([_shown(vocab[i]) for i in ids])
    fig = go.Figure([go.Bar(x=labels, y=[b[i] for i in ids], name="before", marker_color="#9fb4c7",
                            hovertemplate="%{x}: %{y:.4f}<extra>before</extra>"),
                     go.Bar(x=labels, y=[a[i] for i in ids], name="after", marker_color=_COLORS[1],
                            hovertemplate="%{x}: %{y:.4f}<extra>after</extra>")])
    fig.update_layout(barmode="group", title=title or "Next-token probability before and after",
                      yaxis_title="probability", yaxis_range=[0, 1], legend=dict(orientation="h", y=1.02, x=1,
                                                                                 xanchor="right", yanchor="bottom"))
    return fig


# ============================================================================ attribution graphs
_GRAPH_STYLE = {"feature": ("circle", "#4c78a8"), "error": ("square", "#9d9d9d"),
                "embedding": ("diamond", "#54a24b"), "logit": ("diamond", "#e45756")}


def graph_layout(graph) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every node of an `interp.graphs.AttributionGraph`: x = position (nodes that
    share a position and row spread across it, the most influential in the middle), y = row:
    tokens 0, the dictionaries of layer L at L + 1 (+ a third per further dictionary of the
    layer), logits n_layers + 1."""
    n_layers = int(graph.model.get("n_layers", 0) or max([n.layer for n in graph.nodes] + [0]))
    rows = []
    for n in graph.nodes:
        if n.kind == "embedding":
            rows.append(0.0)
        elif n.kind == "logit":
            rows.append(n_layers + 1.0)
        else:
            slot = graph.dictionaries[n.dictionary].get("slot", 0) if n.dictionary is not None else 0
            rows.append(n.layer + 1.0 + 0.33 * slot)
    y = np.array(rows)
    x = np.array([float(n.pos) for n in graph.nodes])
    weight = np.array([n.influence if n.influence is not None else abs(n.activation) for n in graph.nodes])
    cells: dict[tuple[float, float], list[int]] = {}
    for i in range(len(graph.nodes)):
        cells.setdefault((x[i], y[i]), []).append(i)
    for members in cells.values():
        if len(members) > 1:
            members.sort(key=lambda i: -weight[i])
            offsets = np.linspace(-0.38, 0.38, len(members))
            middle_out = np.argsort(np.abs(offsets), kind="stable")
            for rank, i in enumerate(members):
                x[i] += offsets[middle_out[rank]]
    return x, y


def attribution_graph(graph, max_edges: int = 1500, title: Optional[str] = None,
                      selected: Optional[str] = None) -> go.Figure:
    """An attribution graph (best pruned first) laid out by layer x position: features (circles),
    errors (squares), tokens and logits (diamonds), sized by influence; the `max_edges`
    strongest edges drawn with width by |weight| (blue +, red -). Each node's `customdata` is
    its id (for click handling); `selected` outlines one node and keeps its edges on top."""
    x, y = graph_layout(graph)
    A = graph.adjacency
    t_idx, s_idx = (A != 0).nonzero(as_tuple=True)
    w = A[t_idx, s_idx]
    order = w.abs().argsort(descending=True)[:max_edges]
    t_idx, s_idx, w = t_idx[order].numpy(), s_idx[order].numpy(), w[order].numpy()
    wmax = float(np.abs(w).max()) if len(w) else 1.0
    traces = []
    sel = graph.index(selected) if selected is not None else None
    for sign, color in ((1, "rgba(76,120,168,{a})"), (-1, "rgba(228,87,86,{a})")):
        for lo, hi, width, alpha in ((0.0, 0.1, 0.6, 0.25), (0.1, 0.4, 1.5, 0.45), (0.4, 1.01, 3.0, 0.7)):
            pick = (np.sign(w) == sign) & (np.abs(w) / wmax >= lo) & (np.abs(w) / wmax < hi)
            if sel is not None:
                pick &= (t_idx != sel) & (s_idx != sel)
            if not pick.any():
                continue
            xs = np.stack([x[s_idx[pick]], x[t_idx[pick]], np.full(pick.sum(), np.nan)], 1).reshape(-1)
            ys = np.stack([y[s_idx[pick]], y[t_idx[pick]], np.full(pick.sum(), np.nan)], 1).reshape(-1)
            traces.append(go.Scattergl(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                       line=dict(color=color.format(a=alpha), width=width)))
    if sel is not None:
        mine = (t_idx == sel) | (s_idx == sel)
        for k in np.nonzero(mine)[0]:
            traces.append(go.Scatter(x=[x[s_idx[k]], x[t_idx[k]]], y=[y[s_idx[k]], y[t_idx[k]]], mode="lines",
                                     hoverinfo="skip", showlegend=False,
                                     line=dict(color="#e4572e" if w[k] > 0 else "#7b3294",
                                               width=1 + 4 * abs(w[k]) / wmax)))
    infl = np.array([n.influence if n.influence is not None else 0.0 for n in graph.nodes])
    size = 7 + 25 * np.sqrt(infl / infl.max()) if infl.max() > 0 else np.full(len(x), 9.0)
    for kind, (symbol, color) in _GRAPH_STYLE.items():
        idx = [i for i, n in enumerate(graph.nodes) if n.kind == kind]
        if not idx:
            continue
        text = []
        for i in idx:
            n = graph.nodes[i]
            owner = graph.dictionaries[n.dictionary]["name"] if n.dictionary is not None else "?"
            if kind == "feature":
                what = f"feature {n.latent} of {owner}"
            elif kind == "error":
                what = f"error of {owner}"
            elif kind == "embedding":
                what = f"token {_shown(n.token or '')}"
            else:
                what = f"logit {_shown(n.token or '')} (p={n.prob or 0:.3f})"
            infl_txt = f"<br>influence {n.influence:.3f}" if n.influence is not None else ""
            text.append(f"{n.id}: {what}<br>layer {n.layer}, pos {n.pos}, stream {n.stream}<br>activation "
                        f"{n.activation:.3f}{infl_txt}")
        traces.append(go.Scatter(
            x=x[idx], y=y[idx], mode="markers", name=kind, customdata=[graph.nodes[i].id for i in idx],
            hovertext=text, hoverinfo="text",
            marker=dict(symbol=symbol, color=color, size=size[idx], line=dict(
                width=[3 if i == sel else 0.5 for i in idx], color=["#e4572e" if i == sel else "white" for i in idx]))))
    fig = go.Figure(traces)
    n_layers = int(y.max()) if len(y) else 0
    labels = unique_labels([_shown(t) for t in graph.token_strs])
    fig.update_layout(
        title=title or f"Attribution graph: {len(graph.nodes)} nodes, {len(w)} of {int((A != 0).sum())} edges drawn",
        xaxis=dict(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels, title="position",
                   range=[-0.6, len(labels) - 0.4]),
        yaxis=dict(tickmode="array", tickvals=list(range(n_layers + 1)),
                   ticktext=["tokens"] + [f"L{l}" for l in range(n_layers - 1)] + ["logits"], title="layer"),
        hovermode="closest", clickmode="event+select", legend=dict(orientation="h", y=1.02, x=1, xanchor="right",
                                                                   yanchor="bottom"))
    return fig


def influence_vs_ablation(influence, effect, labels: Optional[Sequence[str]] = None, groups: Optional[Sequence[str]] = None,
                          rho: Optional[float] = None, title: Optional[str] = None) -> go.Figure:
    """Each feature's influence in its attribution graph against the change of the target logit
    when that feature is zeroed in the real model (|effect|, log-log), one colour per group
    (e.g. prompt); `rho` (e.g. `graphs.validate.spearman`) goes in the title."""
    x, yv = _np(influence).reshape(-1), np.abs(_np(effect).reshape(-1))
    groups = list(groups) if groups is not None else ["features"] * len(x)
    labels = list(labels) if labels is not None else [str(i) for i in range(len(x))]
    fig = go.Figure()
    for gi, name in enumerate(dict.fromkeys(groups)):
        idx = [i for i, g in enumerate(groups) if g == name]
        fig.add_trace(go.Scatter(x=x[idx], y=yv[idx], mode="markers", name=str(name), text=[labels[i] for i in idx],
                                 marker=dict(color=_COLORS[gi % len(_COLORS)], size=8, opacity=0.8),
                                 hovertemplate="%{text}<br>influence %{x:.4f}<br>|ablation effect| %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title or "Graph influence vs ablation effect" + (f": Spearman rho = {rho:.3f}" if rho is not None else ""),
                      xaxis=dict(type="log", title="influence on the target logit (graph)"),
                      yaxis=dict(type="log", title="|change of the target logit| when the feature is zeroed"))
    return fig
