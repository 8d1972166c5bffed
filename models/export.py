"""Export to TransformerLens: `to_transformer_lens(model)` gives TL's own model with our weights.

```python
from models.export import to_transformer_lens
tl_model = to_transformer_lens(model)            # same logits (fp32: 1e-5), same hook values
logits, cache = tl_model.run_with_cache(tokens)  # TL's code path, for tools written for TL models
```

Under TransformerLens 3.x the result is a `transformer_lens.HookedTransformer` (what
circuit-tracer and most TL-era code expect). TransformerLens 4 deleted that class; there the
result is a `TransformerBridge` around TL's native model (`TransformerBridge.boot_native`),
which expresses fewer architectures (see `models.tl_compat.build_tl_model`).

What TransformerLens can express, exactly: standard-stream models with sequential or GPT-J
parallel blocks, learned / rotary (half-split or interleaved, any fraction) / ALiBi / no
positions, LayerNorm / RMSNorm / none, GELU / GELU-new / ReLU and gated (SwiGLU, GEGLU) MLPs
without biases inside the gate, MHA / GQA / MQA, tied or untied unembeddings with or without
a bias. Factored (`xt`/`xe`) streams and SAS-P shaped attention have no TL counterpart and are
refused with the reason.

The conversion is two tables: `tl_config(cfg)` (HookedTransformerConfig fields) and
`tl_state_dict(model)` (TL's parameter names and shapes: W_Q (head, d_model, d_head), ...).
Biases we do not have are zeros; a GPT-J block's one LayerNorm is TL's ln1 and ln2 both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .tl_compat import build_tl_model

__all__ = ["to_transformer_lens", "tl_config", "tl_state_dict", "TLExportError"]


class TLExportError(ValueError):
    """The model uses something TransformerLens's model cannot compute."""


def _refusals(cfg: ModelConfig) -> list[str]:
    why = []
    if cfg.stream == "factored":
        why.append("stream='factored': TransformerLens has one residual stream; xt (attention) and xe (MLP) "
                   "with values read from xt have no counterpart")
    if cfg.block == "shaped":
        why.append("block='shaped' (SAS-P): shaped attention (alpha*I + beta*softmax - gamma*C, identity values, "
                   "no skip connection) has no TransformerLens counterpart")
    if cfg.positional == "learned+rope":
        why.append("positional='learned+rope': TransformerLens uses one positional scheme per model")
    if cfg.gated and cfg.mlp_bias:
        why.append(f"ffn={cfg.ffn!r} with mlp_bias=True: TransformerLens's gated MLP adds b_in after the "
                   "gate product, ours inside both branches")
    if cfg.ffn not in ("gelu", "gelu_new", "relu", "geglu", "swiglu"):
        why.append(f"ffn={cfg.ffn!r}")
    return why


def tl_config(cfg: ModelConfig) -> dict[str, Any]:
    """`HookedTransformerConfig` fields for `cfg` (TransformerLens's names)."""
    why = _refusals(cfg)
    if why:
        raise TLExportError("cannot export to TransformerLens: " + "; ".join(why))
    positional = {"learned": "standard", "none": "standard", "rope": "rotary", "alibi": "alibi"}[cfg.positional]
    out = dict(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_mlp=None if cfg.attn_only else cfg.d_mlp, d_vocab=cfg.d_vocab, act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type, eps=cfg.norm_eps, attn_only=cfg.attn_only,
        gated_mlp=cfg.gated, parallel_attn_mlp=cfg.block == "parallel",
        n_key_value_heads=cfg.n_key_value_heads, positional_embedding_type=positional,
        default_prepend_bos=False, init_weights=False, model_name=cfg.name, dtype=torch.float32,
    )
    if cfg.uses_rope:
        out.update(rotary_dim=cfg.rotary_dim, rotary_base=cfg.rope_theta, rotary_adjacent_pairs=cfg.rope_interleaved)
    return out


@torch.no_grad()
def tl_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under TransformerLens's `HookedTransformer` names and shapes (fp32 copies)."""
    cfg = model.cfg
    tl_config(cfg)  # refuses what TL cannot express
    f = lambda t: t.detach().float().clone()
    zeros = lambda *shape: torch.zeros(*shape)
    sd = {"embed.W_E": f(model.W_E)}
    if cfg.uses_learned_positions:
        sd["pos_embed.W_pos"] = f(model.W_pos)
    elif cfg.positional in ("none", "alibi"):
        sd["pos_embed.W_pos"] = zeros(cfg.n_ctx, cfg.d_model)  # TL always has a table (added for none): zero
    gqa = cfg.n_kv_heads != cfg.n_heads
    for i, block in enumerate(model.blocks):
        p, attn = f"blocks.{i}.", block.attn
        norms = [("ln1", block.ln1)]
        if not cfg.attn_only:
            norms.append(("ln2", block.ln2 if block.ln2 is not None else block.ln1))  # GPT-J: one norm, twice
        for name, norm in norms:
            if cfg.norm == "none":
                continue
            sd[p + name + ".w"] = f(norm.w)
            if cfg.norm == "layernorm":
                sd[p + name + ".b"] = f(norm.b) if norm.b is not None else zeros(cfg.d_model)
        kv = "_" if gqa else ""  # TL keeps the un-repeated key/value heads under _W_K / _W_V
        sd[p + "attn.W_Q"], sd[p + "attn.b_Q"] = f(attn.W_Q), f(attn.b_Q)
        sd[p + f"attn.{kv}W_K"] = f(attn._W_K)
        sd[p + f"attn.{kv}W_V"] = f(attn._W_V)
        h, hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        sd[p + f"attn.{kv}b_K"] = f(attn._bias(h * d, (h + hkv) * d, hkv))
        sd[p + f"attn.{kv}b_V"] = f(attn._bias((h + hkv) * d, (h + 2 * hkv) * d, hkv))
        sd[p + "attn.W_O"], sd[p + "attn.b_O"] = f(attn.W_O), f(attn.b_O)
        if block.mlp is not None:
            mlp = block.mlp
            sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = f(mlp.W_in), f(mlp.b_in)
            if cfg.gated:
                sd[p + "mlp.W_gate"] = f(mlp.W_gate)
            sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = f(mlp.W_out), f(mlp.b_out)
    if cfg.norm != "none":
        sd["ln_final.w"] = f(model.ln_final.w)
        if cfg.norm == "layernorm":
            sd["ln_final.b"] = f(model.ln_final.b) if model.ln_final.b is not None else zeros(cfg.d_model)
    sd["unembed.W_U"] = f(model.W_U)
    sd["unembed.b_U"] = f(model.b_U) if model.b_U is not None else zeros(cfg.d_vocab)
    return sd


def to_transformer_lens(model: nn.Module, device: Any = None) -> nn.Module:
    """TransformerLens's model with `model`'s weights, in eval mode, fp32 (see the module doc).

    Raises `TLExportError` naming what TransformerLens cannot express (factored streams, SAS-P,
    ...), or, under TransformerLens 4, what its native model lacks."""
    cfg = tl_config(model.cfg)
    tl_model = build_tl_model(cfg, tl_state_dict(model), model.cfg)
    if getattr(model, "tokenizer", None) is not None:
        _attach_tokenizer(tl_model, model.tokenizer)
    return tl_model.to(device or model.cfg.device).eval()


def _attach_tokenizer(tl_model: nn.Module, tokenizer: Any) -> None:
    """HF tokenizers go to TL's own `set_tokenizer`; ours (no HF interface) are kept as an
    attribute only, since TL's string helpers call HF methods on it."""
    if hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tl_model, "set_tokenizer"):
        try:
            tl_model.set_tokenizer(tokenizer, default_padding_side="right")
            return
        except Exception:  # noqa: BLE001 - TL rejects some tokenizers; the model still works on ids
            pass
    tl_model.__dict__["interp_tokenizer"] = tokenizer
