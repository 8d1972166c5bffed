"""Logit lens: read every layer's residual stream through the final norm and unembedding.

```python
from interp.lens import logit_lens
res = logit_lens(model, tokens, k=5)               # stream="resid" (default)
res.target_prob[-1]                                # (batch, pos): last layer == model's softmax
res.top_tokens[2, 0, 7]                            # top-5 ids after block 1, example 0, pos 7
logit_lens(model, tokens, stream="xt")             # factored models: the attention stream alone
```

Layer index 0 is the embedding (`blocks.0.hook_resid_pre`), layer i + 1 the stream after
block i (`blocks.{i}.hook_resid_post`). Each is normalised afresh with `model.ln_final`
(its statistics recomputed on that residual, like TL's `recompute_ln`), then
`model.unembed_resid`. The last layer therefore reproduces the model's logits exactly.

For `cfg.stream == "factored"`, `stream="xt"` reads `hook_xt_pre/post` (what attention
wrote plus the embedding) and `stream="xe"` reads `hook_xe_pre/post` (what the MLPs wrote;
zero at the embedding), each normalised on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float, Int

from .cache import cached

STREAMS = ("resid", "xt", "xe")


@dataclass
class LensResult:
    """Per layer (embed + after each block) top-k predictions and the target's prob/rank.

    Shapes: L = n_layers + 1 lens layers, B batch, T positions, k.
        top_tokens  (L, B, T, k) long      top_probs (L, B, T, k) float
        target_prob (L, B, T) float, NaN where there is no target
        target_rank (L, B, T) long: how many tokens have a strictly larger logit (0 = argmax,
                    ties count in the target's favour); -1 where there is no target
        targets     (B, T) long, the token each position is scored against (-100 = none)
        tokens      (B, T) the input ids
    """

    layer_names: list[str]
    tokens: Int[torch.Tensor, "batch pos"]
    targets: Int[torch.Tensor, "batch pos"]
    top_tokens: Int[torch.Tensor, "layer batch pos k"]
    top_probs: Float[torch.Tensor, "layer batch pos k"]
    target_prob: Float[torch.Tensor, "layer batch pos"]
    target_rank: Int[torch.Tensor, "layer batch pos"]
    stream: str = "resid"

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    def example(self, b: int) -> "LensResult":
        """The result for one example, keeping a batch axis of 1."""
        s = slice(b, b + 1)
        return LensResult(
            self.layer_names, self.tokens[s], self.targets[s], self.top_tokens[:, s], self.top_probs[:, s],
            self.target_prob[:, s], self.target_rank[:, s], self.stream,
        )


def lens_hooks(model, stream: str = "resid") -> list[str]:
    """The hook names the lens reads for `stream`, embed first."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    n = model.cfg.n_layers
    if stream == "resid":
        return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    if model.cfg.stream != "factored":
        raise ValueError(
            f"stream={stream!r} needs a factored-stream model (cfg.stream == 'factored'); "
            f"this model ({model.cfg.name!r}) has cfg.stream={model.cfg.stream!r}: use stream='resid'"
        )
    return [f"blocks.0.hook_{stream}_pre"] + [f"blocks.{i}.hook_{stream}_post" for i in range(n)]


def next_token_targets(
    tokens: Int[torch.Tensor, "batch pos"], attention_mask: Optional[torch.Tensor] = None
) -> Int[torch.Tensor, "batch pos"]:
    """targets[:, t] = tokens[:, t + 1]; -100 at the last position and wherever the query or
    the target is padding."""
    targets = torch.full_like(tokens, -100)
    targets[:, :-1] = tokens[:, 1:]
    if attention_mask is not None:
        m = attention_mask.bool()
        ok = m.clone()
        ok[:, :-1] &= m[:, 1:]
        targets = targets.masked_fill(~ok, -100)
    return targets


@torch.no_grad()
def lens_logits(model, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
    """Logits the model would produce if `resid` were its final residual stream."""
    return model.unembed_resid(model.ln_final(resid))


@torch.no_grad()
def logit_lens(
    model,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    cache=None,
    targets: Optional[Int[torch.Tensor, "batch pos"]] = None,
    k: int = 5,
    stream: str = "resid",
    attention_mask: Optional[torch.Tensor] = None,
) -> LensResult:
    """Logit lens over every layer.

    Args:
        tokens: (batch, pos) or (pos,) ids.
        cache: an ActivationCache from a run on `tokens` holding the lens hooks
            (`lens_hooks(model, stream)`); computed here when None.
        targets: (batch, pos) ids that position t is scored against, -100 = none. Default:
            the next token (`next_token_targets`).
        k: how many top tokens to keep per position.
        stream: "resid", or "xt" / "xe" for factored-stream models.
        attention_mask: (batch, pos), True = real; padded positions get no target.
    """
    if tokens.ndim == 1:
        tokens = tokens[None]
    names = lens_hooks(model, stream)
    if cache is None:
        cache = cached(model, tokens, names=names, attention_mask=attention_mask)
    missing = [n for n in names if n not in cache.cache_dict]
    if missing:
        raise KeyError(f"cache lacks the lens hooks {missing}; cache names={names} or pass cache=None")
    if targets is None:
        targets = next_token_targets(tokens, attention_mask)
    targets = targets.to(tokens.device)
    valid = targets != -100
    safe = targets.clamp(min=0).to(model.cfg.device)

    tops, top_ps, probs_t, ranks = [], [], [], []
    for name in names:
        logits = lens_logits(model, cache[name]).float()  # (B, T, V)
        probs = logits.softmax(-1)
        p, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
        tgt_logit = logits.gather(-1, safe[..., None])
        rank = (logits > tgt_logit).sum(-1)
        tops.append(ids.cpu())
        top_ps.append(p.cpu())
        probs_t.append(probs.gather(-1, safe[..., None])[..., 0].cpu())
        ranks.append(rank.cpu())
    valid = valid.cpu()
    target_prob = torch.stack(probs_t).masked_fill(~valid, float("nan"))
    target_rank = torch.stack(ranks).masked_fill(~valid, -1)
    layer_names = ["embed"] + [f"block {i}" for i in range(model.cfg.n_layers)]
    return LensResult(
        layer_names, tokens.cpu(), targets.cpu(), torch.stack(tops), torch.stack(top_ps), target_prob, target_rank,
        stream,
    )
