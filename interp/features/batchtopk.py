"""BatchTopK SAE (Bussmann et al. 2024): in training keep the k * batch largest (ReLU'd)
pre-activations of the whole batch, so a token may use more or fewer than k latents; at
inference a learned global threshold replaces the batch: z = relu(pre) * (pre > threshold).

The threshold is a running average (rate `threshold_lr`) of each training batch's smallest
kept activation, folded in by `after_step` (it starts unset, -1, and takes the first batch's
value). Saved for SAELens as a JumpReLU with that threshold on every latent, as SAELens does.

The sparse decode sorts the kept entries by token and reads them as `embedding_bag` bags:
fixed shapes (k * batch entries, batch bags), no dense (batch, d_sae) matrix.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .dictionary import TrainOutput, register
from .topk import TopKFamily


@register("batchtopk")
class BatchTopKDictionary(TopKFamily):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.full((), -1.0, dtype=torch.float32))
        # the last training batch's smallest kept activation, folded into `threshold` by after_step
        self.register_buffer("_batch_min", torch.full((), -1.0, dtype=torch.float32), persistent=False)

    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        return pre.relu() * (pre > self.threshold.to(pre.dtype)).to(pre.dtype)

    def batch_topk(self, pre: Float[Tensor, "b d_sae"]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(values, latent ids, bag offsets, token ids) of the k * b kept entries, ordered by token."""
        b, d_sae = pre.shape
        vals, flat = pre.relu().reshape(-1).topk(self.cfg.k * b, sorted=False)
        flat, order = flat.sort()
        vals = vals[order]
        tokens = flat // d_sae
        offsets = torch.searchsorted(tokens, torch.arange(b, device=pre.device, dtype=tokens.dtype))
        return vals, flat % d_sae, offsets, tokens

    @staticmethod
    def bag_decode(vals: Tensor, latents: Tensor, offsets: Tensor, W_dec: Tensor) -> Tensor:
        return torch.nn.functional.embedding_bag(latents, W_dec, offsets, mode="sum",
                                                 per_sample_weights=vals.to(W_dec.dtype))

    def _record_threshold(self, vals: Tensor) -> None:
        with torch.no_grad():
            # smallest positive kept value (+inf if none: after_step then keeps the old threshold)
            pos = torch.where(vals > 0, vals.float(), torch.full_like(vals, float("inf"), dtype=torch.float32))
            self._batch_min.copy_(pos.min())

    def training_forward(self, x_in: Float[Tensor, "b d_in"], x_target: Float[Tensor, "b d_out"],
                         fired: Optional[Bool[Tensor, "d_sae"]] = None) -> TrainOutput:
        x, t = self._scaled(x_in, x_target)
        pre = self._encoder_in(x) @ self.W_enc + self.b_enc
        vals, latents, offsets, _ = self.batch_topk(pre)
        if self.training:
            self._record_threshold(vals)
        W = self.decoder_weights()
        recon = self._with_skip(x, self.bag_decode(vals, latents, offsets, W) + self.b_dec)
        aux = self.auxk_loss(pre, t - recon, fired, W)
        l0 = (vals > 0).sum().float() / pre.shape[0]
        return self._finish(t, recon, {"aux": aux}, self.fired_in(latents, vals, self.cfg.d_sae), l0)

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        m = self._batch_min
        ok = torch.isfinite(m) & (m > 0)
        ema = torch.where(self.threshold < 0, m, torch.lerp(self.threshold, m, self.cfg.threshold_lr))
        self.threshold.copy_(torch.where(ok, ema, self.threshold))
        self._batch_min.fill_(-1.0)
