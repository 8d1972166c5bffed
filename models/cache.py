"""TransformerLens's `ActivationCache`, with refusals where its algebra does not hold.

Every method is TL's own. For shaped-attention (SAS-P) models the residual stream is not the
sum of embeddings and sublayer outputs (the block has no skip connection), so the residual
decompositions raise instead of returning numbers that do not add up.
"""

from __future__ import annotations

from transformer_lens.ActivationCache import ActivationCache as _TLActivationCache


class ActivationCache(_TLActivationCache):
    def _require_additive_stream(self, what: str) -> None:
        if not self.model.cfg.tl_algebra_ok:
            raise NotImplementedError(
                f"ActivationCache.{what}: this model uses block={self.model.cfg.block!r} "
                "(shaped attention with no skip connection), so its residual stream is not "
                "embed + sum(attn_out) + sum(mlp_out); decompose activations with "
                "cache['attn_out', l] / cache['mlp_out', l] per layer instead"
            )

    def decompose_resid(self, *args, **kwargs):
        self._require_additive_stream("decompose_resid")
        return super().decompose_resid(*args, **kwargs)

    def get_full_resid_decomposition(self, *args, **kwargs):
        self._require_additive_stream("get_full_resid_decomposition")
        return super().get_full_resid_decomposition(*args, **kwargs)
