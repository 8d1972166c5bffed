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


def attention_heatmap(
    pattern, q_labels: Optional[Sequence[str]] = None, k_labels: Optional[Sequence[str]] = None, title: str = ""
) -> go.Figure:
    """One head's (q, k) pattern; queries down the y axis, keys along x."""
    p = _np(pattern)
    if p.ndim != 2:
        raise ValueError(f"attention_heatmap needs a (q, k) pattern, got shape {p.shape}")
    y, x = unique_labels(q_labels, p.shape[0]), unique_labels(k_labels, p.shape[1])
    fig = go.Figure(go.Heatmap(z=p, x=x, y=y, colorscale="Blues", zmin=0, zmax=max(1.0, float(np.nanmax(p))),
                               hovertemplate="query %{y}<br>key %{x}<br>attn %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="key", yaxis_title="query", yaxis_autorange="reversed")
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
                title: str = "Residual stream norm") -> go.Figure:
    """Heatmap of ||resid|| per (layer, pos). `x`: a (layer, pos) array, or a (single-example)
    ActivationCache holding `hook_resid_pre` of block 0 and `hook_resid_post` of each block."""
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
    L, T = arr.shape
    fig = go.Figure(go.Heatmap(z=arr, x=unique_labels(labels, T), y=list(layer_names or [str(i) for i in range(L)]),
                               colorscale="Viridis", hovertemplate="%{y}<br>%{x}<br>norm %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="position", yaxis_title="layer")
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
                       title: Optional[str] = None) -> go.Figure:
    """Layers x positions colored by the probability of the correct token, with the top-k
    predictions in the hover text. `result`: a `lens.LensResult`; `decode`: id -> str (a
    callable or a vocabulary list) for hover text and default axis labels."""
    dec = _decoder(decode)
    prob = _np(result.target_prob[:, example])  # (L, T)
    L, T = prob.shape
    tokens = result.tokens[example].tolist()
    if labels is None:
        labels = [dec(t) for t in tokens]
    tops, tps = result.top_tokens[:, example], result.top_probs[:, example]
    ranks, targets = result.target_rank[:, example], result.targets[example]
    hover = []
    for l in range(L):
        row = []
        for t in range(T):
            top = "<br>".join(f"{dec(i)!r}: {p:.3f}" for i, p in zip(tops[l, t].tolist(), tps[l, t].tolist()))
            tgt = int(targets[t])
            head = f"target {dec(tgt)!r} p={prob[l, t]:.3f} rank={int(ranks[l, t])}" if tgt != -100 else "no target"
            row.append(f"{result.layer_names[l]}, pos {t}<br>{head}<br>{top}")
        hover.append(row)
    fig = go.Figure(go.Heatmap(z=prob, x=unique_labels(labels, T), y=list(result.layer_names), zmin=0, zmax=1,
                               colorscale="Blues", text=hover, hovertemplate="%{text}<extra></extra>",
                               colorbar=dict(title="p(correct)")))
    fig.update_layout(title=title if title is not None else f"Logit lens ({result.stream})", xaxis_title="position",
                      yaxis_title="layer")
    return fig


def head_score_heatmap(scores, name: str = "score", title: Optional[str] = None) -> go.Figure:
    """(layer, head) scores as a heatmap."""
    s = _np(scores)
    L, H = s.shape
    fig = go.Figure(go.Heatmap(z=s, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)], colorscale="Viridis",
                               hovertemplate=f"%{{y}}%{{x}}<br>{name} %{{z:.3f}}<extra></extra>", colorbar=dict(title=name)))
    fig.update_layout(title=title or name, xaxis_title="head", yaxis_title="layer")
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
    fig.update_layout(title=title, yaxis_autorange="reversed", xaxis_title="value")
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
