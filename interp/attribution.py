"""Direct logit attribution and attribution patching.

```python
from interp import attribution, patching
dla = attribution.direct_logit_attribution(model, tokens)            # next token, every position
dla = attribution.direct_logit_attribution(model, tokens, target=ans, wrong=other, pos=-1)
dla.values          # (component, batch, pos): embed, pos_embed, L0H0.., L0 attn bias, L0 MLP, ...
dla.top(5, batch=0, pos=-1); dla.by_layer(); dla.per_stream(); dla.to_frame()

est = attribution.attribution_patching(model, clean, corrupted, patching.logit_diff(a, b),
                                       acts=("resid_pre", "attn_out", "mlp_out", "z"))
est["z"].values     # (layer, head): first-order estimate of activation_patching(..., act="z")
```

**Direct logit attribution.** The final residual is embed (+ pos_embed) + every head's
output z_h W_O_h + the attention biases + every MLP output (in a factored model the first
three make `xt`, the MLPs make `xe`). The final norm is handled as TransformerLens does: each
component is centred (LayerNorm) and divided by the norm's scale *cached from the actual run*,
then dotted with the unembedding direction of the target (minus that of `wrong`) times the
norm's weight. The components then sum exactly to the target logit (or logit difference)
minus `constant` (the norm's bias and `b_U` along that direction). Shaped-attention (SAS-P)
blocks have no skip connection, so their stream is not such a sum: refused.

**Attribution patching** (Nanda 2023): one forward and one backward on the base prompts give
the gradient of the metric at every activation; the effect of patching a site is estimated as
grad . (source - base) summed over the site. Same sites, directions and `PatchResult` as
`interp.patching.activation_patching` (values = baseline + estimate, `method="attribution"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float, Int

from .cache import cached
from .lens import next_token_targets
from .patching import PatchResult, act_hook_names
from .patching.engine import prepare
from .patching.metrics import metric_name, resolve
from .patching.result import labelled
from .patching.sites import kind_of, site_grid

__all__ = ["LogitAttribution", "direct_logit_attribution", "attribution_patching"]


# ============================================================================ direct logit attribution
@dataclass
class LogitAttribution:
    """Contribution of every component to a logit (or logit difference) at every position.

    values: (component, batch, pos), NaN where a position has no target. Components, in
        order: "embed", "pos_embed" (learned positions), then per layer "L{l}H{h}" for each
        head, "L{l} attn bias" (when the attention output has a bias), "L{l} MLP" (mlp_out,
        its bias included). `kinds` / `layers` / `heads` / `streams` describe each component
        (`streams` is "xt" / "xe" for factored models, else "resid").
    logit: (batch, pos) the model's logit of `target` (minus that of `wrong`);
    constant: (batch, pos) the part no component owns, so values.sum(0) + constant == logit.
    positions: the sequence positions of the pos axis; target / wrong: (batch, pos) ids.
    """

    values: Float[torch.Tensor, "component batch pos"]
    labels: list[str]
    kinds: list[str]
    layers: list[int]
    heads: list[Optional[int]]
    streams: list[str]
    logit: Float[torch.Tensor, "batch pos"]
    constant: Float[torch.Tensor, "batch pos"]
    positions: list[int]
    target: Int[torch.Tensor, "batch pos"]
    wrong: Optional[Int[torch.Tensor, "batch pos"]] = None

    def mean(self) -> torch.Tensor:
        """(component, pos) mean over the batch (positions without a target ignored)."""
        return self.values.nanmean(1)

    def by_layer(self) -> tuple[torch.Tensor, list[str]]:
        """((row, batch, pos), row labels): embeddings, then per layer "L{l} attn" (heads +
        bias) and "L{l} MLP"."""
        rows, names = [], []
        groups: dict[str, list[int]] = {}
        for i, (kind, layer) in enumerate(zip(self.kinds, self.layers)):
            key = kind if layer < 0 else f"L{layer} {'MLP' if kind == 'mlp' else 'attn'}"
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            rows.append(self.values[idx].sum(0))
            names.append(key)
        return torch.stack(rows), names

    def per_stream(self) -> dict[str, torch.Tensor]:
        """{stream: (batch, pos)} the summed contribution of each stream ("xt"/"xe" or "resid")."""
        out: dict[str, torch.Tensor] = {}
        for i, s in enumerate(self.streams):
            out[s] = out.get(s, 0) + self.values[i]
        return out

    def top(self, k: int = 10, batch: int = 0, pos: int = -1) -> list[tuple[str, float]]:
        """The k components with the largest |contribution| at (batch, pos), pos indexing
        `positions`."""
        v = self.values[:, batch, pos]
        order = v.nan_to_num(0).abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(v[i])) for i in order.tolist()]

    def to_frame(self):
        """Long format: component, kind, layer, head, stream, batch, pos, value."""
        import pandas as pd

        C, B, P = self.values.shape
        v = self.values.reshape(C, -1).numpy()
        rows = []
        for c in range(C):
            for j in range(B * P):
                b, p = divmod(j, P)
                rows.append(dict(component=self.labels[c], kind=self.kinds[c], layer=self.layers[c],
                                 head=self.heads[c], stream=self.streams[c], batch=b, pos=self.positions[p],
                                 value=float(v[c, j])))
        return pd.DataFrame(rows)


def _target_grid(x, B: int, T: int, name: str) -> torch.Tensor:
    """An int, (batch,) or (batch, pos) of token ids -> (batch, pos); -100 = no target."""
    t = torch.as_tensor(x, dtype=torch.long)
    if t.ndim == 0:
        return t.expand(B, T).clone()
    if t.ndim == 1:
        if t.shape[0] != B:
            raise ValueError(f"{name} has {t.shape[0]} entries for a batch of {B}")
        return t[:, None].expand(B, T).clone()
    if t.shape != (B, T):
        raise ValueError(f"{name} must be an int, (batch,) or (batch, pos) = {(B, T)}, got {tuple(t.shape)}")
    return t.clone()


def _refuse_shaped(model, what: str) -> None:
    if not model.cfg.tl_algebra_ok:
        raise NotImplementedError(
            f"{what}: block={model.cfg.block!r} (shaped attention, SAS-P) has no skip connection, so the final "
            "residual is not embed + head outputs + MLP outputs and a direct attribution would not add up; "
            "use interp.patching.activation_patching or attribution_patching instead"
        )


@torch.no_grad()
def direct_logit_attribution(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    target=None,
    wrong=None,
    *,
    pos: Union[None, int, Sequence[int]] = None,
    attention_mask: Optional[torch.Tensor] = None,
) -> LogitAttribution:
    """Direct logit attribution of `target` (minus `wrong`) at every position.

    Args:
        tokens: (batch, pos) or (pos,) ids.
        target: token ids an int, (batch,) or (batch, pos); None = the next token
            (positions without one, the last and padding, are NaN).
        wrong: ids of the same forms: attribute the logit difference target - wrong.
        pos: keep only these positions (int or list; negative counts from the end).
        attention_mask: (batch, pos), True = real token.
    """
    _refuse_shaped(model, "direct_logit_attribution")
    cfg = model.cfg
    tokens = torch.as_tensor(tokens).to(cfg.device)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    B, T = tokens.shape
    if attention_mask is not None:
        attention_mask = attention_mask.to(cfg.device).bool()
    tgt = next_token_targets(tokens, attention_mask) if target is None else _target_grid(target, B, T, "target").to(cfg.device)
    bad = _target_grid(wrong, B, T, "wrong").to(cfg.device) if wrong is not None else None
    positions = list(range(T)) if pos is None else [p % T for p in ([pos] if isinstance(pos, int) else pos)]
    keep = torch.tensor(positions, device=cfg.device)
    tgt = tgt[:, keep]
    bad = None if bad is None else bad[:, keep]
    valid = tgt != -100
    if bad is not None:
        valid &= bad != -100

    L, H = cfg.n_layers, cfg.n_heads
    learned_pos = "hook_pos_embed" in model.hook_dict
    names = ["hook_embed"] + (["hook_pos_embed"] if learned_pos else [])
    names += [f"blocks.{l}.attn.hook_z" for l in range(L)]
    names += [f"blocks.{l}.hook_mlp_out" for l in range(L)] if not cfg.attn_only else []
    norm = model.ln_final if hasattr(model.ln_final, "hook_scale") else None
    names += ["ln_final.hook_scale"] if norm is not None else []
    logits, cache = cached(model, tokens, names=names, attention_mask=attention_mask, return_logits=True)
    at = lambda x: x[:, keep]  # (B, T, ...) -> (B, P, ...)

    # the unembedding direction, with the final norm's weight folded in and its centring moved
    # onto the direction: (x - mean x) . d == x . (d - mean d)
    W_U = model.W_U
    safe_t, safe_w = tgt.clamp(min=0), None if bad is None else bad.clamp(min=0)
    direction = W_U.T[safe_t] - (0 if bad is None else W_U.T[safe_w])  # (B, P, D)
    constant = torch.zeros(B, len(positions), device=cfg.device)
    if norm is not None:
        if norm.b is not None:
            constant = constant + direction @ norm.b
        direction = direction * norm.w
        if norm.kind == "layernorm":
            direction = direction - direction.mean(-1, keepdim=True)
        direction = direction / at(cache["ln_final.hook_scale"])
    if model.b_U is not None:
        constant = constant + model.b_U[safe_t] - (0 if bad is None else model.b_U[safe_w])
    dot = lambda x: (x * direction).sum(-1)  # (B, P, D) -> (B, P)

    factored = cfg.stream == "factored"
    rows, labels, kinds, layers, heads, streams = [], [], [], [], [], []

    def add(value, label, kind, layer, head, stream):
        rows.append(value)
        labels.append(label)
        kinds.append(kind)
        layers.append(layer)
        heads.append(head)
        streams.append(stream if factored else "resid")

    add(dot(at(cache["hook_embed"])), "embed", "embed", -1, None, "xt")
    if learned_pos:
        add(dot(at(cache["hook_pos_embed"])), "pos_embed", "pos_embed", -1, None, "xt")
    for l in range(L):
        attn = model.blocks[l].attn
        W_O = attn.W_O  # (H, d_head, D)
        per_head = torch.einsum("bphe,hed,bpd->hbp", at(cache[f"blocks.{l}.attn.hook_z"]), W_O, direction)
        for h in range(H):
            add(per_head[h], f"L{l}H{h}", "head", l, h, "xt")
        if attn.out is not None and attn.out.bias is not None:
            add(direction @ attn.out.bias, f"L{l} attn bias", "attn_bias", l, None, "xt")
        if not cfg.attn_only:
            add(dot(at(cache[f"blocks.{l}.hook_mlp_out"])), f"L{l} MLP", "mlp", l, None, "xe")

    values = torch.stack(rows).float()
    picked = at(logits).gather(-1, safe_t[..., None])[..., 0]
    if bad is not None:
        picked = picked - at(logits).gather(-1, safe_w[..., None])[..., 0]
    nan = torch.tensor(float("nan"), device=values.device)
    return LogitAttribution(
        values=torch.where(valid, values, nan).cpu(), labels=labels, kinds=kinds, layers=layers, heads=heads,
        streams=streams, logit=torch.where(valid, picked.float(), nan).cpu(),
        constant=torch.where(valid, constant.float(), nan).cpu(), positions=positions, target=tgt.cpu(),
        wrong=None if bad is None else bad.cpu(),
    )


# ============================================================================ attribution patching
def _reduce_site(product: torch.Tensor, act: str, by: str) -> torch.Tensor:
    """Sum grad * delta (batch, *act dims) over each site -> (batch, *site grid dims without layer)."""
    kind = kind_of(act)
    if kind == "stream":  # (B, T, D)
        return product.sum(-1) if by == "pos" else product.sum((-1, -2))
    if kind == "head":  # (B, T, H, d)
        return product.sum(-1) if by == "head_pos" else product.sum((-1, -3))
    # pattern (B, H, Tq, Tk)
    return product.sum(-1).transpose(1, 2) if by == "head_pos" else product.sum((-1, -2))


def attribution_patching(
    model,
    clean: Int[torch.Tensor, "batch pos"],
    corrupted: Int[torch.Tensor, "batch pos"],
    metric,
    acts: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "z"),
    by: Union[None, str, dict] = None,
    *,
    direction: str = "denoise",
    attention_mask: Optional[torch.Tensor] = None,
    reduce: str = "mean",
    pos_labels: Optional[Sequence[str]] = None,
) -> dict[str, PatchResult]:
    """First-order estimates of `activation_patching` for every act at once: one forward and
    one backward on the base prompts, one forward on the source prompts.

    Args:
        metric: a `patching.Metric`, a name (as in `activation_patching`), or a callable
            logits (batch, pos, d_vocab) -> (batch,) or a scalar (differentiable). Per-prompt
            values (`reduce="none"`) need a (batch,) metric.
        acts: activation kinds (see `interp.patching`); acts a model lacks are refused.
        by: None (each act's default split), one split for all, or {act: split}.
        direction, attention_mask, reduce, pos_labels: as in `activation_patching`.

    Returns:
        {act: PatchResult} with method="attribution".
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    if isinstance(metric, dict):
        raise ValueError("attribution_patching takes one metric (each needs its own backward pass)")
    base, source, mask = prepare(model, clean, corrupted, attention_mask, direction)
    B, T = base.shape
    clean, corrupted = (source, base) if direction == "denoise" else (base, source)
    metric = resolve(metric, model, clean, corrupted, mask)
    L = model.cfg.n_layers
    splits = {a: (by.get(a) if isinstance(by, dict) else by) for a in acts}
    grids = {a: site_grid(model, a, splits[a], T, None, None, None) for a in acts}
    names = {a: [act_hook_names(model, a, l) for l in range(L)] for a in acts}
    wanted = sorted({n for a in acts for ns in names[a] for n in ns})

    with torch.no_grad():
        source_logits, source_cache = cached(model, source, names=wanted, attention_mask=mask, return_logits=True)

    acts_seen: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        # A hook point returns its input object, so one tensor can sit at several points
        # (xt_mid, xt_post and the next xt_pre of a factored model; the gradient of that object
        # would include readers upstream of a later point). An alias per point is its own
        # autograd node: its gradient is exactly what flows downstream of that point.
        acts_seen[hook.name] = act.view_as(act)
        return acts_seen[hook.name]

    def leaf(x, hook):  # a model whose weights need no grad still gets a graph from here
        return None if x.requires_grad else x.requires_grad_()

    with torch.enable_grad():
        with model.hooks(fwd_hooks=[("hook_embed", leaf)] + [(n, keep) for n in wanted]):
            logits = model(base, attention_mask=mask)
        per_prompt = _metric_values(metric, logits, B)
        total = per_prompt.sum()
        # a constant (xe entering block 0 is zero) has no gradient: it cannot change anything
        live = [n for n in wanted if acts_seen[n].requires_grad]
        grads = torch.autograd.grad(total, [acts_seen[n] for n in live], allow_unused=True)
    grad = {n: torch.zeros_like(acts_seen[n]) for n in wanted}
    grad.update({n: g for n, g in zip(live, grads) if g is not None})
    with torch.no_grad():
        source_v = _metric_values(metric, source_logits, B)

    scalar = per_prompt.numel() == 1  # a TL-style metric that averages the batch itself
    if scalar and reduce == "none":
        raise ValueError("reduce='none' needs a metric that returns one value per prompt, (batch,)")
    per_prompt = per_prompt.detach()
    results = {}
    with torch.no_grad():
        for a in acts:
            sites = grids[a]
            est = torch.stack([
                sum(_reduce_site((source_cache[n] - acts_seen[n].detach()) * grad[n], a, sites.by) for n in names[a][l])
                for l in range(L)
            ], dim=1).float()  # (batch, layer, ...): each prompt's estimated change
            # a per-prompt metric's gradient holds each prompt's own change; a scalar metric's
            # gradient already carries its batch average, so the prompts' estimates add up
            if scalar:
                effect, base_v, source_c = est.sum(0), per_prompt[0], source_v[0]
            elif reduce == "mean":
                effect, base_v, source_c = est.mean(0), per_prompt.mean(), source_v.mean()
            else:
                effect, base_v, source_c = est.movedim(0, -1), per_prompt, source_v
            results[a] = labelled(
                (effect + base_v)[None], {metric_name(metric): metric}, False, reduce == "none", sites.index,
                pos_labels, base_v[None], source_c[None], a, direction, "attribution",
            )
    return results


def _metric_values(metric, logits: torch.Tensor, B: int) -> torch.Tensor:
    """(batch,) per-prompt values, or a (1,) scalar for a TL-style metric that reduces itself."""
    v = torch.as_tensor(metric(logits)).float().reshape(-1)
    if v.numel() not in (1, B):
        raise ValueError(f"metric returned {v.numel()} values for {B} prompts; return a scalar or (batch,)")
    return v
