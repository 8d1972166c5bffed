"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the k largest
pre-activations of each token (ReLU'd), unit-norm decoder rows, AuxK for dead latents.

Training decodes from the k values and indices (`sparse_decode`, an `embedding_bag`): the
dense (batch, d_sae) latent matrix is never built. The AuxK term (the same paper, appendix
A.2) asks the top `aux_k` *dead* latents of each token to reconstruct what the live ones left,
which revives latents that stopped firing.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .dictionary import SparseDictionary, TrainOutput, register, sparse_decode


class TopKFamily(SparseDictionary):
    """Shared by topk, batchtopk and matryoshka: AuxK and the sparse pieces."""

    @property
    def k_aux(self) -> int:
        c = self.cfg
        return c.aux_k if c.aux_k is not None else max(1, min(c.d_in // 2, c.d_sae - 1))

    def auxk_loss(self, pre: Float[Tensor, "b d_sae"], residual: Float[Tensor, "b d_out"],
                  fired: Optional[Bool[Tensor, "d_sae"]], W_dec: Tensor) -> Tensor:
        """AuxK: the top `k_aux` dead latents (fired == False) of each token reconstruct the
        (detached) residual; normalised by the residual's variance and scaled down while
        fewer than k_aux latents are dead (sparsify / dictionary_learning). Zero with `fired=None`."""
        if fired is None or self.cfg.aux_coeff == 0:
            return pre.new_zeros((), dtype=torch.float32)
        dead = ~fired.to(device=pre.device, dtype=torch.bool)
        masked = torch.where(dead, pre, torch.full_like(pre, float("-inf")))
        vals, idx = masked.topk(self.k_aux, dim=-1, sorted=False)
        e_hat = sparse_decode(vals.relu(), idx, W_dec).float()
        residual = residual.detach()
        var = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        scale = (dead.sum().float() / self.k_aux).clamp(max=1.0)
        return self.cfg.aux_coeff * scale * (e_hat - residual).pow(2).sum(-1).mean() / var

    @staticmethod
    def fired_in(indices: Tensor, values: Tensor, d_sae: int) -> Bool[Tensor, "d_sae"]:
        """Which latents got a positive value somewhere in the batch (fixed shape, no sync)."""
        counts = torch.zeros(d_sae, dtype=torch.float32, device=indices.device)
        counts.index_add_(0, indices.reshape(-1), (values > 0).reshape(-1).float())
        return counts > 0


@register("topk")
class TopKDictionary(TopKFamily):
    def activation(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def encode_sparse(self, x: Float[Tensor, "... d_in"]) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
        """The k (ReLU'd) values and latent indices of each token, sorted by value (no hooks)."""
        vals, idx = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=True)
        return vals.relu(), idx

    def training_forward(self, x_in: Float[Tensor, "b d_in"], x_target: Float[Tensor, "b d_out"],
                         fired: Optional[Bool[Tensor, "d_sae"]] = None) -> TrainOutput:
        x, t = self._scaled(x_in, x_target)
        pre = self._encoder_in(x) @ self.W_enc + self.b_enc
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        vals = vals.relu()
        W = self.decoder_weights()
        recon = self._with_skip(x, sparse_decode(vals, idx, W) + self.b_dec)
        aux = self.auxk_loss(pre, t - recon, fired, W)
        l0 = (vals > 0).sum(-1).float().mean()
        return self._finish(t, recon, {"aux": aux}, self.fired_in(idx, vals, self.cfg.d_sae), l0)
