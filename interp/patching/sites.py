"""Patch sites: which activation (`act`), split how (`by`), at which hook points; the grid of
(layer, pos, head) sites and the boolean masks that pick each site's slice of an activation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

STREAM_ACTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
               "xt_pre", "xt_mid", "xt_post", "xe_pre", "xe_mid", "xe_post")
HEAD_ACTS = ("z", "q", "k", "v")
PATTERN_ACTS = ("pattern",)
DIRECTIONS = ("denoise", "noise")
BY = {"stream": ("pos", "layer"), "head": ("head", "head_pos"), "pattern": ("head", "head_pos")}
Progress = Union[None, bool, Callable[[int, int], None]]
Head = tuple[int, int]


def kind_of(act: str) -> str:
    """"stream" (batch, pos, d_model), "head" (batch, pos, head, d_head) or "pattern" (batch, head, q, k)."""
    if act in STREAM_ACTS:
        return "stream"
    if act in HEAD_ACTS:
        return "head"
    if act in PATTERN_ACTS:
        return "pattern"
    raise ValueError(f"act={act!r} is not one of {list(STREAM_ACTS + HEAD_ACTS + PATTERN_ACTS)}")


def act_hook_names(model, act: str, layer: int) -> list[str]:
    """The hook point(s) patching `act` at `layer` edits: one, or xt and xe for `resid_*` on a
    factored model. Raises naming the reason when the model has no such activation."""
    cfg = model.cfg
    kind = kind_of(act)
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} is outside the model's {cfg.n_layers} layers")
    if act.startswith(("xt_", "xe_")) and cfg.stream != "factored":
        raise ValueError(f"act={act!r} needs a factored-stream model; this one has cfg.stream={cfg.stream!r}")
    if act == "mlp_out" and cfg.attn_only:
        raise ValueError("act='mlp_out': this model is attention-only (no MLP)")
    if act == "resid_mid" and (cfg.attn_only or cfg.block != "sequential"):
        why = "attention-only" if cfg.attn_only else f"block={cfg.block!r} (attention and MLP read the same resid_pre)"
        raise ValueError(f"act='resid_mid': this model has no resid_mid, it is {why}; use resid_pre/resid_post")
    if act.startswith("resid_") and cfg.stream == "factored":
        stage = act.split("_")[1]
        return [f"blocks.{layer}.hook_xt_{stage}", f"blocks.{layer}.hook_xe_{stage}"]
    if kind == "stream":
        return [f"blocks.{layer}.hook_{act}"]
    return [f"blocks.{layer}.attn.hook_{act}"]


def n_heads_of(model, act: str) -> int:
    """Heads along the head axis of `act`: key/value heads for k and v (GQA/MQA)."""
    return model.cfg.n_kv_heads if act in ("k", "v") else model.cfg.n_heads


@dataclass
class Sites:
    """A flat list of patch sites (layer, pos, head), -1 = every position / head, in grid order."""

    layer: np.ndarray
    pos: np.ndarray
    head: np.ndarray
    dims: tuple[str, ...]
    index: dict[str, list]
    by: str

    def __len__(self) -> int:
        return len(self.layer)


def site_grid(model, act: str, by: Optional[str], T: int, layers, positions, heads) -> Sites:
    kind = kind_of(act)
    by = by or BY[kind][0]
    if by not in BY[kind]:
        raise ValueError(f"by={by!r} is not available for act={act!r}; choose from {list(BY[kind])}")
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(l) for l in layers]
    for l in layers:
        act_hook_names(model, act, l)  # validates layer and act
    positions = list(range(T)) if positions is None else [int(p) % T for p in positions]
    H = n_heads_of(model, act)
    heads = list(range(H)) if heads is None else [int(h) for h in heads]
    if any(not 0 <= h < H for h in heads):
        raise ValueError(f"heads {heads} outside [0, {H}) for act={act!r}")
    if by == "layer":
        axes = {"layer": layers}
    elif by == "pos":
        axes = {"layer": layers, "pos": positions}
    elif by == "head":
        axes = {"layer": layers, "head": heads}
    else:
        axes = {"layer": layers, "pos": positions, "head": heads}
    mesh = np.meshgrid(*[np.asarray(v) for v in axes.values()], indexing="ij")
    flat = {d: m.reshape(-1) for d, m in zip(axes, mesh)}
    n = len(flat["layer"])
    return Sites(flat["layer"], flat.get("pos", np.full(n, -1)), flat.get("head", np.full(n, -1)),
                  tuple(axes), axes, by)


def pos_axis(act: str) -> int:
    """The position axis of an activation without its batch axis (the query axis of a pattern)."""
    return 1 if kind_of(act) == "pattern" else 0


def site_mask(model, act: str, sites: Sites, chunk: slice, layer: int, T: int, device) -> Optional[torch.Tensor]:
    """(S, 1, ...) bool mask of the chunk's sites at `layer`, broadcastable against the
    activation viewed as (S, B, ...); None when no site of the chunk is at `layer`."""
    lay, pos, head = sites.layer[chunk], sites.pos[chunk], sites.head[chunk]
    S = len(lay)
    kind = kind_of(act)
    if kind == "stream":
        m = np.zeros((S, T), bool)
    elif kind == "head":
        m = np.zeros((S, T, n_heads_of(model, act)), bool)
    else:
        m = np.zeros((S, model.cfg.n_heads, T), bool)
    here = np.nonzero(lay == layer)[0]
    if len(here) == 0:
        return None
    for s in here:
        p = slice(None) if pos[s] < 0 else pos[s]
        if kind == "stream":
            m[s, p] = True
        elif kind == "head":
            m[s, p, slice(None) if head[s] < 0 else head[s]] = True
        else:
            m[s, slice(None) if head[s] < 0 else head[s], p] = True
    return torch.from_numpy(m).to(device)[:, None, ..., None]  # (S, 1, *dims, 1)


def window(x: torch.Tensor, act: str, axis: int, offset: int, end: int) -> torch.Tensor:
    """Positions offset..end - 1 along `axis` (and keys ..end - 1 of a pattern, the last axis)."""
    if kind_of(act) == "pattern":
        x = x[..., :end]
    return x.narrow(axis, offset, end - offset)


def chunks(layers: np.ndarray, size: int) -> list[slice]:
    """Consecutive runs of at most `size` sites that never straddle two layers: a chunk runs
    from its lowest layer and its first position, so mixing layers would redo blocks."""
    out, start = [], 0
    for stop in range(1, len(layers) + 1):
        if stop == len(layers) or stop - start == size or layers[stop] != layers[start]:
            out.append(slice(start, stop))
            start = stop
    return out
