"""LayerNorm / RMSNorm with TransformerLens hook points (`hook_scale`, `hook_normalized`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from .config import ModelConfig
from .hooks import HookPoint, observed


class Norm(nn.Module):
    """`norm="layernorm"` or `"rmsnorm"`; `"none"` is `Identity` (see `make_norm`).

    TL conventions: `hook_scale` is the (batch, pos, 1) divisor
    sqrt(mean(x_c^2) + eps) and `hook_normalized` is the output after weight and bias.
    When neither hook is observed the fused `F.layer_norm` / `F.rms_norm` kernel runs.
    """

    def __init__(self, cfg: ModelConfig, d: int | None = None):
        super().__init__()
        d = d or cfg.d_model
        self.kind = cfg.norm
        self.eps = cfg.norm_eps
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d)) if (cfg.norm_bias and cfg.norm == "layernorm") else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
        if not observed(self.hook_scale, self.hook_normalized):
            if self.kind == "layernorm":
                return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
            return F.rms_norm(x, x.shape[-1:], self.w, self.eps)
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = x / scale * self.w
        if self.b is not None:
            x = x + self.b
        return self.hook_normalized(x)


def make_norm(cfg: ModelConfig) -> nn.Module:
    return Norm(cfg) if cfg.norm != "none" else nn.Identity()
