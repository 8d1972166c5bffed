"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"): z = pre * H(pre - theta) with a
learned per-latent threshold theta = exp(log_threshold), trained through straight-through
estimators, and an L0 penalty: loss = ||x - x_hat||^2 + l0_coeff * sum_i H(pre_i - theta_i).

H has zero gradient almost everywhere, so its derivative with respect to theta is replaced
by a rectangle kernel of width `bandwidth`: d/dtheta H(pre - theta) ~ -K((pre - theta)/eps)/eps,
and d/dtheta [pre H(pre - theta)] ~ -(theta/eps) K((pre - theta)/eps). The input keeps its
ordinary gradient (pre where active), as in DeepMind's implementation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from .dictionary import SparseDictionary, TrainOutput, register


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold).to(grad.dtype)
        grad_thr = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad
        return grad_pre, grad_thr.reshape(-1, grad_thr.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_thr = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad
        return None, grad_thr.reshape(-1, grad_thr.shape[-1]).sum(0), None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """pre * H(pre - threshold), straight-through gradient for the threshold."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(pre - threshold), straight-through gradient for the threshold only."""
    return _Step.apply(pre, threshold, bandwidth)


@register("jumprelu")
class JumpReLUDictionary(SparseDictionary):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(
            torch.full((self.cfg.d_sae,), math.log(self.cfg.threshold_init), dtype=torch.float32))

    @property
    def threshold(self) -> Float[Tensor, "d_sae"]:
        return self.log_threshold.exp()

    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        return pre * (pre > self.threshold.to(pre.dtype)).to(pre.dtype)

    def training_forward(self, x_in: Float[Tensor, "b d_in"], x_target: Float[Tensor, "b d_out"],
                         fired: Optional[Bool[Tensor, "d_sae"]] = None) -> TrainOutput:
        x, t = self._scaled(x_in, x_target)
        pre = (self._encoder_in(x) @ self.W_enc + self.b_enc).float()
        theta = self.threshold
        eps = self.cfg.bandwidth
        z = jumprelu(pre, theta, eps)
        recon = self._with_skip(x, z.to(self.W_dec.dtype) @ self.decoder_weights() + self.b_dec)
        l0_per_token = step(pre, theta, eps).sum(-1)
        l0_loss = self.cfg.l0_coeff * l0_per_token.mean()
        fires = z > 0
        return self._finish(t, recon, {"l0": l0_loss}, fires.any(0), fires.sum(-1).float().mean())
