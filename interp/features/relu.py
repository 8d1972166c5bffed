"""ReLU SAE with a decoder-norm-weighted L1 penalty (Anthropic's "Towards Monosemanticity" and its
April 2024 update): loss = ||x - x_hat||^2 + l1_coeff * sum_i z_i ||W_dec[i]||.

Weighting the penalty by each decoder row's norm makes it invariant to trading norm between
encoder and decoder, so the decoder is left unconstrained; rows start at norm 0.1 with the
encoder their transpose (the update's initialisation).
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .dictionary import SparseDictionary, TrainOutput, register

DECODER_INIT_NORM = 0.1


@register("relu")
class ReLUDictionary(SparseDictionary):
    unit_norm_decoder = False

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        self.W_dec.mul_(DECODER_INIT_NORM)
        if self.cfg.d_in == self.cfg.d_out:
            self.W_enc.copy_(self.W_dec.T)
        else:
            self.W_enc.mul_(DECODER_INIT_NORM)

    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        return pre.relu()

    def training_forward(self, x_in: Float[Tensor, "b d_in"], x_target: Float[Tensor, "b d_out"],
                         fired: Optional[Bool[Tensor, "d_sae"]] = None) -> TrainOutput:
        x, t = self._scaled(x_in, x_target)
        z = (self._encoder_in(x) @ self.W_enc + self.b_enc).relu()
        recon = self._with_skip(x, z @ self.W_dec + self.b_dec)
        l1 = self.cfg.l1_coeff * (z.float() * self.W_dec.norm(dim=-1).float()).sum(-1).mean()
        fires = z > 0
        return self._finish(t, recon, {"l1": l1}, fires.any(0), fires.sum(-1).float().mean())
