"""Feed-forward blocks: GELU / GELU-new / ReLU, and the gated GEGLU / SwiGLU.

TL hooks: `hook_pre` (pre-activation; the gate for gated FFNs), `hook_pre_linear` (the
linear branch of gated FFNs), `hook_post` (what `W_out` reads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import nn

from .config import ModelConfig
from .hooks import HookPoint

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "geglu": F.gelu,
    "swiglu": F.silu,
}


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.gated
        self.d_mlp = cfg.d_mlp
        self.act = ACTIVATIONS[cfg.ffn]
        # gated: one matmul computes [gate | linear]
        self.fc_in = nn.Linear(cfg.d_model, (2 if self.gated else 1) * cfg.d_mlp, bias=cfg.mlp_bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.mlp_bias)
        self.hook_pre = HookPoint()
        if self.gated:
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_model"]:
        h = self.fc_in(x)
        if self.gated:
            gate, lin = h.split(self.d_mlp, dim=-1)
            post = self.act(self.hook_pre(gate)) * self.hook_pre_linear(lin)
        else:
            post = self.act(self.hook_pre(h))
        return self.fc_out(self.hook_post(post))

    # ------------------------------------------------------------------ TL weight views
    @property
    def W_in(self) -> Float[torch.Tensor, "d_model d_mlp"]:
        return self.fc_in.weight[-self.d_mlp :].T  # the linear branch for gated FFNs

    @property
    def W_gate(self) -> Float[torch.Tensor, "d_model d_mlp"]:
        if not self.gated:
            raise AttributeError("W_gate exists only for gated FFNs (geglu, swiglu)")
        return self.fc_in.weight[: self.d_mlp].T

    @property
    def b_in(self) -> Float[torch.Tensor, "d_mlp"]:
        if self.fc_in.bias is None:
            return torch.zeros(self.d_mlp, device=self.fc_in.weight.device, dtype=self.fc_in.weight.dtype)
        return self.fc_in.bias[-self.d_mlp :]

    @property
    def W_out(self) -> Float[torch.Tensor, "d_mlp d_model"]:
        return self.fc_out.weight.T

    @property
    def b_out(self) -> Float[torch.Tensor, "d_model"]:
        if self.fc_out.bias is None:
            return torch.zeros(self.fc_out.out_features, device=self.fc_out.weight.device, dtype=self.fc_out.weight.dtype)
        return self.fc_out.bias
