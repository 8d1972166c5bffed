"""Conversion to and from the native `transformers` architectures (GPT-2, Llama, GPT-J, MPT).

```python
from transformers import AutoModelForCausalLM
from models import hf
model = hf.from_hf(AutoModelForCausalLM.from_pretrained("path/to/local/dir"))  # -> HookedTransformer
hf_model = hf.to_hf(model)                     # -> transformers.PreTrainedModel, same logits
hf.export_hf(model, "out/hf", tokenizer=tok)   # save_pretrained (+ tokenizer when it has an HF form)
```

Four architectures map both ways:

| transformers             | our config                                                           |
|--------------------------|----------------------------------------------------------------------|
| `GPT2LMHeadModel`        | learned positions, LayerNorm, GELU(-new)/ReLU, sequential block       |
| `LlamaForCausalLM`       | RoPE (half-split), RMSNorm, SwiGLU/GEGLU, GQA, sequential block       |
| `GPTJForCausalLM`        | partial interleaved RoPE, one LayerNorm, parallel block, lm_head bias |
| `MptForCausalLM`         | ALiBi, bias-free LayerNorm and linears, exact GELU                    |

MPT rather than BLOOM for ALiBi: BLOOM normalises the embeddings
(`word_embeddings_layernorm`), which our model has no slot for. MPT adds
`slope_h * (k - T + 1)` to the scores; under causal masking that differs from our
`-slope_h * (q - k)` by a per-row constant, which softmax ignores. Its slopes equal
`models.positions.alibi_slopes` (transformers always uses `alibi_bias_max=8`; a config
saying otherwise is refused).

Each architecture is one `Arch` row: the `ModelConfig` fields it implies (`fixed`, also what
export requires), the config attributes that are plain renames, one function per direction
for the rest of the config (and the HF options we refuse), and one weight table. A weight
table entry `(ours, (hf, ...), transposed)` says: our tensor is the HF tensors concatenated
along dim 0 (q|k|v, gate|up), transposed first for GPT-2's `Conv1D`. Import and export both
walk the same table, and both check that every parameter on either side was used.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..config import ModelConfig
from ..transformer import HookedTransformer

__all__ = [
    "from_hf", "to_hf", "export_hf", "config_from_hf", "config_to_hf", "hf_tokenizer", "mpt_slopes",
    "HFConversionError", "ARCHS",
]


class HFConversionError(ValueError):
    """A model or config uses an option the other side cannot represent."""


Entry = tuple[str, tuple[str, ...], bool]  # (our key, HF keys concatenated on dim 0, Conv1D-transposed)


# ---------------------------------------------------------------------------- table helpers
def _lin(ours: str, hf: str | tuple[str, ...], transposed: bool = False) -> list[Entry]:
    """A Linear (or GPT-2 Conv1D): weight and bias. Several HF modules are stacked on dim 0."""
    hf = (hf,) if isinstance(hf, str) else hf
    return [
        (f"{ours}.weight", tuple(f"{h}.weight" for h in hf), transposed),
        (f"{ours}.bias", tuple(f"{h}.bias" for h in hf), False),
    ]


def _norm(ours: str, hf: str) -> list[Entry]:
    return [(f"{ours}.w", (f"{hf}.weight",), False), (f"{ours}.b", (f"{hf}.bias",), False)]


def _one(ours: str, hf: str) -> list[Entry]:
    return [(ours, (hf,), False)]


def _layers(n_layers: int, per_layer: Callable[[str, str], list[Entry]], hf_layer: str) -> list[Entry]:
    """Expand a per-layer table for every layer: `per_layer(our_prefix, hf_prefix)`."""
    return [e for i in range(n_layers) for e in per_layer(f"blocks.{i}", hf_layer.format(i=i))]


def _refuse(hf_cfg: Any, **bad: bool) -> None:
    """Raise naming every HF option that is set to something we cannot represent."""
    hits = [name for name, is_bad in bad.items() if is_bad]
    if hits:
        shown = ", ".join(f"{n}={_get(hf_cfg, n)!r}" for n in hits)
        raise HFConversionError(
            f"{type(hf_cfg).__name__}: {shown} cannot be represented by models.ModelConfig "
            "(no equivalent option); convert a checkpoint without it"
        )


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _require_mha_shapes(cfg: ModelConfig, target: str) -> None:
    """GPT-2, GPT-J and MPT derive head_dim = hidden/heads and have no GQA."""
    bad = []
    if cfg.n_kv_heads != cfg.n_heads:
        bad.append(f"n_kv_heads={cfg.n_kv_heads} (needs n_heads={cfg.n_heads}: {target} has no GQA)")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        bad.append(f"d_head={cfg.d_head} (needs d_model / n_heads = {cfg.d_model / cfg.n_heads:g})")
    if bad:
        raise HFConversionError(f"cannot export to {target}: " + "; ".join(bad))


_HF_ACT = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_ACT_HF = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}


def _ffn_from_act(hf_cfg: Any, attr: str) -> str:
    act = getattr(hf_cfg, attr)
    if act not in _HF_ACT:
        raise HFConversionError(f"{type(hf_cfg).__name__}.{attr}={act!r} is not one of {sorted(_HF_ACT)}")
    return _HF_ACT[act]


def _act_from_ffn(cfg: ModelConfig, target: str) -> str:
    if cfg.ffn not in _ACT_HF:
        raise HFConversionError(f"cannot export to {target}: ffn={cfg.ffn!r} (needs one of {sorted(_ACT_HF)})")
    return _ACT_HF[cfg.ffn]


# ---------------------------------------------------------------------------- GPT-2
def _gpt2_read(c) -> dict:
    _refuse(
        c,
        scale_attn_weights=not c.scale_attn_weights,
        scale_attn_by_inverse_layer_idx=bool(c.scale_attn_by_inverse_layer_idx),
        add_cross_attention=bool(c.add_cross_attention),
    )
    # reorder_and_upcast_attn only changes precision (fp32 q.k), not the function: accepted.
    return dict(d_mlp=c.n_inner or 4 * c.n_embd, ffn=_ffn_from_act(c, "activation_function"))


def _gpt2_write(model: HookedTransformer) -> dict:
    cfg = model.cfg
    _require_mha_shapes(cfg, "GPT2LMHeadModel")
    return dict(n_inner=cfg.d_mlp, activation_function=_act_from_ffn(cfg, "GPT2LMHeadModel"))


def _gpt2_weights(cfg: ModelConfig) -> list[Entry]:
    def layer(o: str, h: str) -> list[Entry]:
        return [
            *_norm(f"{o}.ln1", f"{h}.ln_1"),
            *_lin(f"{o}.attn.qkv", f"{h}.attn.c_attn", transposed=True),
            *_lin(f"{o}.attn.out", f"{h}.attn.c_proj", transposed=True),
            *_norm(f"{o}.ln2", f"{h}.ln_2"),
            *_lin(f"{o}.mlp.fc_in", f"{h}.mlp.c_fc", transposed=True),
            *_lin(f"{o}.mlp.fc_out", f"{h}.mlp.c_proj", transposed=True),
        ]

    return [
        *_one("embed.weight", "transformer.wte.weight"),
        *_one("pos_embed.W_pos", "transformer.wpe.weight"),
        *_layers(cfg.n_layers, layer, "transformer.h.{i}"),
        *_norm("ln_final", "transformer.ln_f"),
        *_one("unembed.weight", "lm_head.weight"),
    ]


# ---------------------------------------------------------------------------- Llama
_LLAMA_ACT = {"silu": "swiglu", "gelu": "geglu"}


def _llama_read(c) -> dict:
    rope = dict(c.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise HFConversionError(
            f"LlamaConfig.rope_parameters (rope_scaling) has rope_type={rope_type!r}: only plain RoPE "
            "('default') maps onto models.ModelConfig (rope_theta); scaled RoPE variants are not represented"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFConversionError("LlamaConfig.rope_parameters.partial_rotary_factor != 1 is ignored by Llama; refusing")
    if c.hidden_act not in _LLAMA_ACT:
        raise HFConversionError(f"LlamaConfig.hidden_act={c.hidden_act!r} is not one of {sorted(_LLAMA_ACT)}")
    return dict(rope_theta=float(rope.get("rope_theta", 10000.0)), ffn=_LLAMA_ACT[c.hidden_act])


def _llama_write(model: HookedTransformer) -> dict:
    cfg = model.cfg
    if cfg.d_model % cfg.n_heads:
        raise HFConversionError(
            f"cannot export to LlamaForCausalLM: d_model={cfg.d_model} is not a multiple of n_heads={cfg.n_heads} "
            "(transformers' LlamaConfig refuses that even with an explicit head_dim)"
        )
    ffn = {v: k for k, v in _LLAMA_ACT.items()}
    if cfg.ffn not in ffn:
        raise HFConversionError(f"cannot export to LlamaForCausalLM: ffn={cfg.ffn!r} (needs a gated FFN: swiglu or geglu)")
    return dict(hidden_act=ffn[cfg.ffn], rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})


def _llama_weights(cfg: ModelConfig) -> list[Entry]:
    def layer(o: str, h: str) -> list[Entry]:
        a = f"{h}.self_attn"
        return [
            *_one(f"{o}.ln1.w", f"{h}.input_layernorm.weight"),
            *_lin(f"{o}.attn.qkv", (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj")),
            *_lin(f"{o}.attn.out", f"{a}.o_proj"),
            *_one(f"{o}.ln2.w", f"{h}.post_attention_layernorm.weight"),
            *_lin(f"{o}.mlp.fc_in", (f"{h}.mlp.gate_proj", f"{h}.mlp.up_proj")),
            *_lin(f"{o}.mlp.fc_out", f"{h}.mlp.down_proj"),
        ]

    return [
        *_one("embed.weight", "model.embed_tokens.weight"),
        *_layers(cfg.n_layers, layer, "model.layers.{i}"),
        *_one("ln_final.w", "model.norm.weight"),
        *_one("unembed.weight", "lm_head.weight"),
    ]


# ---------------------------------------------------------------------------- GPT-J
def _gptj_read(c) -> dict:
    d_head = c.n_embd // c.n_head
    _refuse(c, rotary_dim=c.rotary_dim is None or not 0 < c.rotary_dim <= d_head or c.rotary_dim % 2)
    fraction = c.rotary_dim / d_head  # ModelConfig.rotary_dim = round(d_head * fraction) gives it back
    return dict(d_mlp=c.n_inner or 4 * c.n_embd, ffn=_ffn_from_act(c, "activation_function"), rope_fraction=fraction)


def _gptj_write(model: HookedTransformer) -> dict:
    cfg = model.cfg
    _require_mha_shapes(cfg, "GPTJForCausalLM")
    return dict(
        n_inner=cfg.d_mlp, rotary_dim=cfg.rotary_dim, activation_function=_act_from_ffn(cfg, "GPTJForCausalLM")
    )


def _gptj_weights(cfg: ModelConfig) -> list[Entry]:
    def layer(o: str, h: str) -> list[Entry]:
        return [
            *_norm(f"{o}.ln1", f"{h}.ln_1"),
            *_lin(f"{o}.attn.qkv", (f"{h}.attn.q_proj", f"{h}.attn.k_proj", f"{h}.attn.v_proj")),
            *_lin(f"{o}.attn.out", f"{h}.attn.out_proj"),
            *_lin(f"{o}.mlp.fc_in", f"{h}.mlp.fc_in"),
            *_lin(f"{o}.mlp.fc_out", f"{h}.mlp.fc_out"),
        ]

    return [
        *_one("embed.weight", "transformer.wte.weight"),
        *_layers(cfg.n_layers, layer, "transformer.h.{i}"),
        *_norm("ln_final", "transformer.ln_f"),
        *_one("unembed.weight", "lm_head.weight"),
        *_one("b_U", "lm_head.bias"),
    ]


# ---------------------------------------------------------------------------- MPT (ALiBi)
def mpt_slopes(n_heads: int, alibi_bias_max: int = 8) -> torch.Tensor:
    """The per-head slopes `MptForCausalLM` uses (read off transformers' own bias tensor)."""
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    return -build_mpt_alibi_tensor(n_heads, 2, alibi_bias_max)[:, 0, 0].float()


def _mpt_read(c) -> dict:
    a = c.attn_config
    d_head = c.d_model / c.n_heads
    _refuse(
        c,
        **{
            "attn_config.clip_qkv": a.clip_qkv is not None,
            "attn_config.qk_ln": bool(a.qk_ln),
            "attn_config.softmax_scale": a.softmax_scale is not None and not math.isclose(a.softmax_scale, d_head**-0.5),
            "attn_config.alibi": not a.alibi,
            "attn_config.attn_type": a.attn_type != "multihead_attention",
            "attn_config.prefix_lm": bool(a.prefix_lm),
            # transformers' MptModel builds its ALiBi table with the default 8 whatever this says
            "attn_config.alibi_bias_max": a.alibi_bias_max != 8,
            "no_bias": not c.no_bias,
            "logit_scale": c.logit_scale is not None,
            "expansion_ratio": c.expansion_ratio != 4,  # transformers' MptMLP hard-codes 4x
        },
    )
    return dict(d_mlp=4 * c.d_model)


def _mpt_write(model: HookedTransformer) -> dict:
    cfg = model.cfg
    _require_mha_shapes(cfg, "MptForCausalLM")
    if cfg.d_mlp != 4 * cfg.d_model:
        raise HFConversionError(
            f"cannot export to MptForCausalLM: d_mlp={cfg.d_mlp} (transformers' MptMLP hard-codes 4 * d_model = {4 * cfg.d_model})"
        )
    want = mpt_slopes(cfg.n_heads)
    for blk in model.blocks:
        if not torch.allclose(blk.attn.alibi_slopes.float().cpu(), want, rtol=1e-6, atol=0):
            raise HFConversionError(
                "cannot export to MptForCausalLM: blocks[i].attn.alibi_slopes are not the standard geometric "
                f"slopes {want.tolist()} (transformers' MPT always uses alibi_bias_max=8)"
            )
    return dict(expansion_ratio=4, no_bias=True, attn_config={"alibi": True, "alibi_bias_max": 8})


def _mpt_weights(cfg: ModelConfig) -> list[Entry]:
    def layer(o: str, h: str) -> list[Entry]:
        return [
            *_norm(f"{o}.ln1", f"{h}.norm_1"),
            *_lin(f"{o}.attn.qkv", f"{h}.attn.Wqkv"),
            *_lin(f"{o}.attn.out", f"{h}.attn.out_proj"),
            *_norm(f"{o}.ln2", f"{h}.norm_2"),
            *_lin(f"{o}.mlp.fc_in", f"{h}.ffn.up_proj"),
            *_lin(f"{o}.mlp.fc_out", f"{h}.ffn.down_proj"),
        ]

    return [
        *_one("embed.weight", "transformer.wte.weight"),
        *_layers(cfg.n_layers, layer, "transformer.blocks.{i}"),
        *_norm("ln_final", "transformer.norm_f"),
        *_one("unembed.weight", "lm_head.weight"),
    ]


# ---------------------------------------------------------------------------- the table
_STANDARD = dict(stream="standard", attn_only=False)


@dataclass(frozen=True)
class Arch:
    name: str
    model_class: str  # transformers class
    config_class: str
    fixed: dict  # ModelConfig fields this architecture implies; export requires them
    renames: tuple[tuple[str, str], ...]  # (HF config attribute, ModelConfig field), both ways
    read_config: Callable[[Any], dict]  # HF config -> further ModelConfig fields (refuses options)
    write_config: Callable[[HookedTransformer], dict]  # our model -> further HF config kwargs
    weights: Callable[[ModelConfig], list[Entry]]


_GPT_NAMES = (
    ("n_layer", "n_layers"), ("n_embd", "d_model"), ("n_head", "n_heads"), ("n_positions", "n_ctx"),
    ("vocab_size", "d_vocab"), ("layer_norm_epsilon", "norm_eps"), ("tie_word_embeddings", "tie_embeddings"),
)

ARCHS: dict[str, Arch] = {
    a.model_class: a
    for a in (
        Arch(
            "gpt2", "GPT2LMHeadModel", "GPT2Config",
            fixed=dict(_STANDARD, positional="learned", norm="layernorm", norm_bias=True, block="sequential",
                       attn_bias=True, mlp_bias=True, unembed_bias=False),
            renames=_GPT_NAMES, read_config=_gpt2_read, write_config=_gpt2_write, weights=_gpt2_weights,
        ),
        Arch(
            "llama", "LlamaForCausalLM", "LlamaConfig",
            fixed=dict(_STANDARD, positional="rope", rope_fraction=1.0, rope_interleaved=False, norm="rmsnorm",
                       block="sequential", unembed_bias=False),
            renames=(
                ("num_hidden_layers", "n_layers"), ("hidden_size", "d_model"), ("num_attention_heads", "n_heads"),
                ("num_key_value_heads", "n_kv_heads"), ("head_dim", "d_head"), ("intermediate_size", "d_mlp"),
                ("vocab_size", "d_vocab"), ("max_position_embeddings", "n_ctx"), ("rms_norm_eps", "norm_eps"),
                ("attention_bias", "attn_bias"), ("mlp_bias", "mlp_bias"), ("tie_word_embeddings", "tie_embeddings"),
            ),
            read_config=_llama_read, write_config=_llama_write, weights=_llama_weights,
        ),
        Arch(
            "gptj", "GPTJForCausalLM", "GPTJConfig",
            fixed=dict(_STANDARD, positional="rope", rope_theta=10000.0, rope_interleaved=True, norm="layernorm",
                       norm_bias=True, block="parallel", attn_bias=False, mlp_bias=True, unembed_bias=True),
            renames=_GPT_NAMES, read_config=_gptj_read, write_config=_gptj_write, weights=_gptj_weights,
        ),
        Arch(
            "mpt", "MptForCausalLM", "MptConfig",
            fixed=dict(_STANDARD, positional="alibi", norm="layernorm", norm_bias=False, block="sequential",
                       attn_bias=False, mlp_bias=False, ffn="gelu", unembed_bias=False),
            renames=(
                ("n_layers", "n_layers"), ("d_model", "d_model"), ("n_heads", "n_heads"), ("max_seq_len", "n_ctx"),
                ("vocab_size", "d_vocab"), ("layer_norm_epsilon", "norm_eps"), ("tie_word_embeddings", "tie_embeddings"),
            ),
            read_config=_mpt_read, write_config=_mpt_write, weights=_mpt_weights,
        ),
    )
}

_SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id")


def _arch_of_hf(hf_config: Any) -> Arch:
    names = list(getattr(hf_config, "architectures", None) or [])
    by_type = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "gptj": "GPTJForCausalLM", "mpt": "MptForCausalLM"}
    model_type = getattr(hf_config, "model_type", None)
    if model_type in by_type:
        return ARCHS[by_type[model_type]]
    raise HFConversionError(
        f"transformers model_type={model_type!r} (architectures={names}) is not supported; "
        f"models.hf maps {sorted(ARCHS)}"
    )


def _arch_of_ours(cfg: ModelConfig) -> Arch:
    """Pick the HF architecture by the fields that decide it, then demand the rest match."""
    if cfg.stream != "standard":
        raise HFConversionError(f"stream={cfg.stream!r} has no transformers counterpart (only stream='standard' exports)")
    if cfg.block == "shaped":
        raise HFConversionError("block='shaped' (SAS-P shaped attention) has no transformers counterpart")
    if cfg.attn_only:
        raise HFConversionError("attn_only=True has no transformers counterpart (every exported architecture has MLPs)")
    if cfg.positional == "none":
        raise HFConversionError("positional='none' has no transformers counterpart among GPT-2 / Llama / GPT-J / MPT")
    if cfg.positional == "rope" and cfg.block == "parallel" and not cfg.rope_interleaved:
        raise HFConversionError(
            "block='parallel' with rope_interleaved=False has no counterpart here (GPT-J rotates interleaved pairs)"
        )
    name = {"learned": "GPT2LMHeadModel", "alibi": "MptForCausalLM"}.get(cfg.positional)
    if name is None:
        name = "GPTJForCausalLM" if cfg.block == "parallel" else "LlamaForCausalLM"
    arch = ARCHS[name]
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in arch.fixed.items() if getattr(cfg, k) != v]
    if bad:
        raise HFConversionError(f"cannot export to {name}: " + "; ".join(bad))
    return arch


# ---------------------------------------------------------------------------- configs
def config_from_hf(hf_config: Any) -> ModelConfig:
    """Map a transformers config (GPT2Config, LlamaConfig, GPTJConfig, MptConfig) onto ModelConfig."""
    arch = _arch_of_hf(hf_config)
    fields = dict(arch.fixed)
    fields.update({ours: getattr(hf_config, hf) for hf, ours in arch.renames})
    fields.update(arch.read_config(hf_config))
    for tok in _SPECIAL:
        value = getattr(hf_config, tok, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and 0 <= value < fields["d_vocab"]:
            fields[tok] = value
    fields["name"] = getattr(hf_config, "_name_or_path", "") or f"hf-{arch.name}"
    fields["dropout"] = 0.0
    return ModelConfig(**fields)


def config_to_hf(model: HookedTransformer) -> Any:
    """The transformers config for `model` (raises `HFConversionError` naming the blocking option)."""
    import transformers

    cfg = model.cfg
    arch = _arch_of_ours(cfg)
    kwargs = {hf: getattr(cfg, ours) for hf, ours in arch.renames}
    kwargs.update(arch.write_config(model))
    for tok in _SPECIAL:
        kwargs[tok] = getattr(cfg, tok)
    return getattr(transformers, arch.config_class)(architectures=[arch.model_class], **kwargs)


# ---------------------------------------------------------------------------- weights
def _check_coverage(side: str, params: dict, used: set, skip: set = frozenset()) -> None:
    left = sorted(set(params) - used - skip)
    if left:
        raise HFConversionError(f"{side} parameters with no counterpart (unrepresentable option?): {left}")


@torch.no_grad()
def _import_weights(model: HookedTransformer, hf_model: Any, table: list[Entry]) -> None:
    ours = dict(model.named_parameters())
    theirs = dict(hf_model.named_parameters())  # tied lm_head appears once, as the embedding
    used_ours, used_hf = set(), set()
    for key, hf_keys, transposed in table:
        have = [k in theirs for k in hf_keys]
        if key not in ours and not any(have):
            continue  # an optional tensor (bias, untied head, ...) neither side has
        if key not in ours or not all(have):
            raise HFConversionError(f"weight mismatch: ours {key!r} present={key in ours}, HF {hf_keys} present={have}")
        value = torch.cat([theirs[k].T if transposed else theirs[k] for k in hf_keys], dim=0)
        if value.shape != ours[key].shape:
            raise HFConversionError(f"{key}: HF {hf_keys} give shape {tuple(value.shape)}, ours is {tuple(ours[key].shape)}")
        ours[key].copy_(value)
        used_ours.add(key)
        used_hf.update(hf_keys)
    _check_coverage("HF", theirs, used_hf)
    _check_coverage("our", ours, used_ours)


@torch.no_grad()
def _export_weights(model: HookedTransformer, hf_model: Any, table: list[Entry]) -> None:
    ours = dict(model.named_parameters())
    theirs = dict(hf_model.named_parameters())
    used_ours, used_hf = set(), set()
    for key, hf_keys, transposed in table:
        have = [k in theirs for k in hf_keys]
        if key not in ours and not any(have):
            continue
        if key not in ours or not all(have):
            raise HFConversionError(f"weight mismatch: ours {key!r} present={key in ours}, HF {hf_keys} present={have}")
        sizes = [theirs[k].shape[-1 if transposed else 0] for k in hf_keys]
        for k, part in zip(hf_keys, ours[key].split(sizes, dim=0)):
            theirs[k].copy_(part.T if transposed else part)
        used_ours.add(key)
        used_hf.update(hf_keys)
    _check_coverage("HF", theirs, used_hf)
    _check_coverage("our", ours, used_ours)


# ---------------------------------------------------------------------------- public API
def from_hf(hf_model: Any) -> HookedTransformer:
    """A `HookedTransformer` computing the same function as `hf_model` (a GPT2LMHeadModel,
    LlamaForCausalLM, GPTJForCausalLM or MptForCausalLM), in the HF model's dtype, eval mode.
    For our own wrapper (`models.hf.InterpForCausalLM`) it is the wrapped model itself."""
    from .native import InterpForCausalLM

    if isinstance(hf_model, InterpForCausalLM):
        return hf_model.model.eval()
    cfg = config_from_hf(hf_model.config)
    arch = _arch_of_hf(hf_model.config)
    if type(hf_model).__name__ != arch.model_class:
        raise HFConversionError(f"expected a {arch.model_class} (the causal-LM head model), got {type(hf_model).__name__}")
    model = HookedTransformer(cfg)
    if cfg.tie_embeddings:
        out, inp = hf_model.get_output_embeddings().weight, hf_model.get_input_embeddings().weight
        if out is not inp and not torch.equal(out, inp):
            raise HFConversionError("config says tie_word_embeddings=True but lm_head.weight differs from the embedding")
    _import_weights(model, hf_model, arch.weights(cfg))
    dtype = next(hf_model.parameters()).dtype
    return model.to(dtype=dtype).eval()


def to_hf(model: HookedTransformer) -> Any:
    """A transformers `PreTrainedModel` computing the same function as `model`, in eval mode.

    Raises `HFConversionError` naming the config field that has no counterpart (e.g.
    `stream='factored'`, `block='shaped'`, `norm='layernorm'` with RoPE + sequential block)."""
    import transformers

    hf_config = config_to_hf(model)
    arch = _arch_of_ours(model.cfg)
    hf_model = getattr(transformers, arch.model_class)(hf_config)
    _export_weights(model, hf_model.float(), arch.weights(model.cfg))
    dtype = next(model.parameters()).dtype
    return hf_model.to(dtype=dtype, device=model.cfg.device).eval()


def export_hf(model: HookedTransformer, out_dir: str | os.PathLike, tokenizer: Any = None, *,
              arch: str = "native") -> Any:
    """Save `model` as a `transformers` directory (config.json + model.safetensors), plus the
    tokenizer (`tokenizer` or `model.tokenizer`) when it has an HF form; returns the HF model.
    `AutoModelForCausalLM.from_pretrained(out_dir)` then loads it offline.

    `arch`: "native" converts to GPT-2 / Llama / GPT-J / MPT (`to_hf`) or raises
    `HFConversionError`; "wrapper" saves our `InterpForCausalLM` (every architecture; loading
    it needs `import models` first, which registers it with the Auto classes); "auto" is
    native where possible, else the wrapper."""
    if arch not in ("native", "auto", "wrapper"):
        raise ValueError(f"arch={arch!r}: choose native | auto | wrapper")
    from .native import InterpForCausalLM

    hf_model = None
    if arch != "wrapper":
        try:
            hf_model = to_hf(model)
        except HFConversionError as e:
            if arch == "native":
                raise HFConversionError(f"{e}. export_hf(..., arch='auto') exports it anyway (as our "
                                        "InterpForCausalLM wrapper where no native class fits; "
                                        "arch='wrapper' always uses it)") from None
    if hf_model is None:
        hf_model = InterpForCausalLM.from_hooked(model)
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    hf_tok = hf_tokenizer(tokenizer if tokenizer is not None else model.tokenizer, model.cfg)
    if hf_tok is not None:
        hf_tok.save_pretrained(out_dir)
    return hf_model


def hf_tokenizer(tokenizer: Any, cfg: Optional[ModelConfig] = None) -> Any:
    """An object with `save_pretrained`: the tokenizer itself if it has one, a
    `PreTrainedTokenizerFast` around a `tokenizers.Tokenizer` (also one found on the
    attributes `tokenizer` / `_tokenizer` / `hf` / `backend`), else None with a warning."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "save_pretrained"):
        return tokenizer
    if hasattr(tokenizer, "to_transformers"):  # interp.tokenizers.Tokenizer: roles + chat template
        return tokenizer.to_transformers()
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    inner = tokenizer if isinstance(tokenizer, Tokenizer) else None
    for attr in ("tokenizer", "_tokenizer", "hf", "backend"):
        if inner is None and isinstance(getattr(tokenizer, attr, None), Tokenizer):
            inner = getattr(tokenizer, attr)
    if inner is None:
        warnings.warn(f"tokenizer of type {type(tokenizer).__name__} has no Hugging Face form; saved the model only")
        return None
    special = {}
    if cfg is not None:
        for tok, name in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"), ("pad_token_id", "pad_token")):
            tid = getattr(cfg, tok)
            if tid is not None and inner.id_to_token(tid) is not None:
                special[name] = inner.id_to_token(tid)
    return PreTrainedTokenizerFast(tokenizer_object=inner, **special)
