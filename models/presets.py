"""Named configurations reproducing the systems the project grew from (`../shared/seeds/`).

```python
from models import presets
model = presets.make("factored-alibi", "small", d_vocab=65)
cfg = presets.config("llama-like", "tiny")
```
"""

from __future__ import annotations

import torch

from .config import ConfigError, ModelConfig
from .transformer import HookedTransformer

# size -> (n_layers, d_model, n_heads, n_ctx)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 64, 4, 128),
    "small": (4, 256, 4, 256),
    "medium": (8, 512, 8, 512),
    "large": (12, 768, 12, 1024),
    "character": (6, 384, 6, 256),
}

ARCHITECTURES: dict[str, dict] = {
    # nanoGPT / cleanGPT "Vanilla": learned positions, LayerNorm, GELU, tied embeddings.
    "vanilla": dict(positional="learned", norm="layernorm", ffn="gelu", tie_embeddings=True),
    # cleanGPT "SASP": shaped attention + simplified parallel block (He & Hofmann 2023).
    "sasp": dict(positional="learned", norm="layernorm", ffn="gelu", block="shaped", tie_embeddings=True),
    # cleanGPT "Factored": xt (attention) / xe (MLP) streams, values are channel mixes of xt.
    "factored": dict(positional="learned", stream="factored", factored_value="channel_mix", tie_embeddings=True),
    # cleanGPT "FactoredALiBi": the factored stream with ALiBi, no additive position on xt.
    "factored-alibi": dict(positional="alibi", stream="factored", factored_value="channel_mix", tie_embeddings=True),
    # math-compact: RoPE, padding masks, GELU (GEGLU / SwiGLU by override), tied embeddings.
    "math-compact": dict(positional="rope", norm="layernorm", ffn="gelu", tie_embeddings=True),
    # Yxanul / Llama: RMSNorm, SwiGLU, GQA 6:1, RoPE, no biases, untied embeddings.
    "llama-like": dict(
        positional="rope", norm="rmsnorm", norm_eps=1e-6, ffn="swiglu", attn_bias=False, mlp_bias=False,
        tie_embeddings=False,
    ),
    # GPT-J / SabiYarn: parallel attention + MLP on one LayerNorm, partial interleaved rotary.
    "gptj": dict(
        positional="rope", rope_fraction=0.25, rope_interleaved=True, block="parallel", ffn="gelu_new",
        attn_bias=False, tie_embeddings=False, unembed_bias=True,
    ),
}

NAMES = tuple(ARCHITECTURES)


def config(name: str, size: str = "tiny", **overrides) -> ModelConfig:
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown preset {name!r}; choose from {list(ARCHITECTURES)}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose from {list(SIZES)}")
    n_layers, d_model, n_heads, n_ctx = SIZES[size]
    fields = dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_ctx=n_ctx,
        d_vocab=96 if size == "character" else 128, name=f"{name}-{size}",
    )
    fields.update(ARCHITECTURES[name])
    if name == "llama-like":
        # GQA 6:1 - query heads are a multiple of 6 with d_head kept from the size.
        q_heads = 6 if n_heads <= 6 else 12
        fields.update(n_heads=q_heads, n_kv_heads=q_heads // 6, d_head=d_model // n_heads,
                      d_mlp=int(8 * d_model / 3 / 8 + 0.5) * 8)
    if name == "gptj":
        fields.update(d_head=d_model // n_heads)
    fields.update(overrides)
    return ModelConfig(**fields)


def make(name: str, size: str = "tiny", **overrides) -> HookedTransformer:
    return HookedTransformer(config(name, size, **overrides))


def summary(cfg: ModelConfig) -> dict:
    """A config's shape and parts with its parameter counts (the model is built on the meta
    device: no memory, any size)."""
    with torch.device("meta"):
        model = HookedTransformer(cfg)
    keys = ("name", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab", "n_ctx",
            "positional", "norm", "ffn", "block", "stream", "attn_only", "tie_embeddings", "gradient_checkpointing")
    return {**{k: getattr(cfg, k) for k in keys}, "params": model.get_num_params(non_embedding=False),
            "non_embedding_params": model.get_num_params(non_embedding=True)}


def table() -> list[dict]:
    """Every preset x size with parameter counts (built on the meta device: no memory)."""
    rows = []
    for name in ARCHITECTURES:
        for size in SIZES:
            cfg = config(name, size)
            with torch.device("meta"):
                model = HookedTransformer(cfg)
            rows.append(
                dict(
                    preset=name, size=size, n_layers=cfg.n_layers, d_model=cfg.d_model,
                    n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, n_ctx=cfg.n_ctx,
                    params=model.get_num_params(non_embedding=False),
                    non_embedding_params=model.get_num_params(non_embedding=True),
                )
            )
    return rows
