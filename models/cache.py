"""TransformerLens's `ActivationCache`, with refusals where its algebra does not hold.

Every method is TL's own. For shaped-attention (SAS-P) models the residual stream is not the
sum of embeddings and sublayer outputs (the block has no skip connection), so the residual
decompositions raise instead of returning numbers that do not add up. Blocks with no
`resid_mid` (parallel and shaped blocks, attention-only models) say so where TL would look
it up and fail with a bare KeyError.
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

    def _require_resid_mid(self, what: str) -> None:
        cfg = self.model.cfg
        if cfg.block == "sequential" and not cfg.attn_only:
            return
        why = (
            "it is attention-only (no MLP, so nothing sits between attention and MLP)"
            if cfg.attn_only
            else f"block={cfg.block!r} runs attention and the MLP side by side on the same normalised resid_pre"
        )
        raise ValueError(
            f"ActivationCache.{what}: this model has no resid_mid because {why}; "
            "use incl_mid=False / mlp_input=False (resid_pre and resid_post are the only stream points)"
        )

    def accumulated_resid(self, layer=None, incl_mid: bool = False, apply_ln: bool = False, pos_slice=None,
                          mlp_input: bool = False, return_labels: bool = False):
        if incl_mid or mlp_input:
            self._require_resid_mid(f"accumulated_resid(incl_mid={incl_mid}, mlp_input={mlp_input})")
        return super().accumulated_resid(layer=layer, incl_mid=incl_mid, apply_ln=apply_ln, pos_slice=pos_slice,
                                         mlp_input=mlp_input, return_labels=return_labels)

    def decompose_resid(self, *args, **kwargs):
        self._require_additive_stream("decompose_resid")
        return super().decompose_resid(*args, **kwargs)

    def get_full_resid_decomposition(self, *args, **kwargs):
        self._require_additive_stream("get_full_resid_decomposition")
        return super().get_full_resid_decomposition(*args, **kwargs)
