"""LayerNorm / RMSNorm with TransformerLens hook points (`hook_scale`, `hook_normalized`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from .config import ModelConfig
from .hooks import HookPoint, observed
from .layer_norm import layer_norm


class Norm(nn.Module):
    """`norm="layernorm"` or `"rmsnorm"`; `"none"` is `Identity` (see `make_norm`).

    TL conventions: `hook_scale` is the (batch, pos, 1) divisor
    sqrt(mean(x_c^2) + eps) and `hook_normalized` is the output after weight and bias.
    When neither hook is observed the fused `F.layer_norm` / `F.rms_norm` kernel runs (for
    LayerNorm in a CUDA training step, `models.layer_norm`: one-pass backward). `matmul_input`
    marks a norm whose output only feeds matmuls (the blocks' ln1 / ln2): under autocast that path
    may return it in the autocast dtype, which the matmul would cast it to anyway.
    """

    def __init__(self, cfg: ModelConfig, d: int | None = None, matmul_input: bool = False):
        super().__init__()
        d = d or cfg.d_model
        self.matmul_input = matmul_input
        self.kind = cfg.norm
        self.eps = cfg.norm_eps
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d)) if (cfg.norm_bias and cfg.norm == "layernorm") else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
        if not observed(self.hook_scale, self.hook_normalized):
            if self.kind == "layernorm":
                return layer_norm(x, self.w, self.b, self.eps, low_precision_out=self.matmul_input)
            return F.rms_norm(x, x.shape[-1:], self.w, self.eps)
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = x / scale * self.w
        if self.b is not None:
            x = x + self.b
        return self.hook_normalized(x)


def make_norm(cfg: ModelConfig, matmul_input: bool = False) -> nn.Module:
    return Norm(cfg, matmul_input=matmul_input) if cfg.norm != "none" else nn.Identity()
