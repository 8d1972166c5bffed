"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): a BatchTopK SAE whose
every prefix of latents `[0, w)` for w in `matryoshka_widths` must reconstruct the input on
its own; the loss sums the prefixes' reconstruction errors (the last prefix is the whole
dictionary). Early latents are pushed towards general, frequently used features and later
ones refine them, which counters feature absorption.

The prefixes share one sparse decode pass per width group (the kept entries of each group
as weights of an `embedding_bag`), accumulated in order: no dense (batch, d_sae) matrix.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .batchtopk import BatchTopKDictionary
from .dictionary import TrainOutput, register


@register("matryoshka")
class MatryoshkaDictionary(BatchTopKDictionary):
    def training_forward(self, x_in: Float[Tensor, "b d_in"], x_target: Float[Tensor, "b d_out"],
                         fired: Optional[Bool[Tensor, "d_sae"]] = None) -> TrainOutput:
        x, t = self._scaled(x_in, x_target)
        pre = self._encoder_in(x) @ self.W_enc + self.b_enc
        vals, latents, offsets, _ = self.batch_topk(pre)
        if self.training:
            self._record_threshold(vals)
        W = self.decoder_weights()
        recon = self._with_skip(x, self.b_dec.expand(pre.shape[0], -1))
        extra, start = {}, 0
        widths = self.cfg.matryoshka_widths
        for i, width in enumerate(widths):
            in_group = (latents >= start) & (latents < width)
            recon = recon + self.bag_decode(vals * in_group.to(vals.dtype), latents, offsets, W).float()
            if i < len(widths) - 1:  # the full width's error is the main mse term
                extra[f"mse_{width}"] = (t - recon).pow(2).sum(-1).mean()
            start = width
        extra["aux"] = self.auxk_loss(pre, t - recon, fired, W)
        l0 = (vals > 0).sum().float() / pre.shape[0]
        return self._finish(t, recon, extra, self.fired_in(latents, vals, self.cfg.d_sae), l0)
