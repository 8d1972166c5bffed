"""One dataclass describes every model variant.

`ModelConfig` is JSON-serialisable (`to_dict` / `from_dict` / `to_json` / `from_json`),
validated on construction with messages that name the offending field, and exposes the
attribute names TransformerLens reads off `model.cfg` (`act_fn`, `normalization_type`,
`positional_embedding_type`, `n_key_value_heads`, `parallel_attn_mlp`, `device`, `dtype`...)
so TL's `ActivationCache`, patching and head detectors work on our models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch

FORMAT_VERSION = 1

CHOICES: dict[str, tuple[str, ...]] = {
    # "learned+rope": a learned table added to the embeddings *and* rotary q/k (Yxanul)
    "positional": ("learned", "rope", "alibi", "none", "learned+rope"),
    "norm": ("layernorm", "rmsnorm", "none"),
    "ffn": ("gelu", "gelu_new", "relu", "geglu", "swiglu"),
    "block": ("sequential", "parallel", "shaped"),
    "stream": ("standard", "factored"),
    "factored_value": ("identity", "channel_mix", "modulated"),
}

GATED_FFNS = ("geglu", "swiglu")

# annotation -> the check `ModelConfig._check_types` makes
_FIELD_KINDS = {"int": "int", "Optional[int]": "int", "bool": "bool", "bool | int": "bool | int", "float": "float",
                "str": "str", "dict": "dict"}
_KIND_NAMES = {"int": "an integer", "bool": "true or false", "bool | int": "true, false or an integer",
               "float": "a finite number", "str": "a string", "dict": "a mapping"}


class ConfigError(ValueError):
    """A config field holds a value we cannot build a model from."""


@dataclass
class ModelConfig:
    # --- shape -------------------------------------------------------------------------
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None -> n_heads (MHA); 1 -> MQA; else GQA
    d_head: Optional[int] = None  # None -> d_model // n_heads
    d_mlp: Optional[int] = None  # None -> 4 * d_model
    d_vocab: int = 64
    n_ctx: int = 256
    # --- positions -----------------------------------------------------------------------
    positional: str = "learned"
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # fraction of d_head that is rotated
    rope_interleaved: bool = False  # False: half-split (NeoX/Llama); True: GPT-J pairs
    # --- parts ---------------------------------------------------------------------------
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    ffn: str = "gelu"
    block: str = "sequential"
    stream: str = "standard"
    factored_value: str = "identity"
    factored_out_proj: bool = False
    attn_only: bool = False
    attn_bias: bool = True
    mlp_bias: bool = True
    unembed_bias: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    init_range: float = 0.02
    # True: recompute every block in backward; N (int): every Nth block (layers N-1, 2N-1, ...)
    gradient_checkpointing: bool | int = False
    # --- special tokens ------------------------------------------------------------------
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    bot_token_id: Optional[int] = None
    eot_token_id: Optional[int] = None
    # --- bookkeeping ---------------------------------------------------------------------
    name: str = "custom"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()  # before deriving d_head etc. from them
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_head is None:
            if self.n_heads > 0 and self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                    "when d_head is not given (d_model % n_heads != 0)"
                )
            self.d_head = self.d_model // max(self.n_heads, 1)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        self._check_types()  # again: fields can be reassigned after construction
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name}={value!r} is not one of {list(options)}")
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx", "d_head", "d_mlp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_kv_heads, int) or self.n_kv_heads <= 0:
            raise ConfigError(f"n_kv_heads must be a positive integer, got {self.n_kv_heads!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}) "
                "(n_heads % n_kv_heads != 0)"
            )
        if not 0.0 < self.rope_fraction <= 1.0:
            raise ConfigError(f"rope_fraction must be in (0, 1], got {self.rope_fraction}")
        gc = self.gradient_checkpointing
        if not isinstance(gc, (bool, int)) or (not isinstance(gc, bool) and gc < 0):
            raise ConfigError(f"gradient_checkpointing must be true/false or a layer interval N >= 1, got {gc!r}")
        if self.uses_rope and self.rotary_dim % 2:
            raise ConfigError(
                f"rope_fraction * d_head = {self.rotary_dim} must be even (d_head={self.d_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.stream == "factored":
            if self.block == "shaped":
                raise ConfigError("block='shaped' cannot be combined with stream='factored'")
            if self.n_heads * self.d_head != self.d_model:
                raise ConfigError(
                    "stream='factored' reads values straight from xt, so n_heads * d_head "
                    f"({self.n_heads}*{self.d_head}) must equal d_model ({self.d_model})"
                )
            if self.n_kv_heads != self.n_heads:
                raise ConfigError("stream='factored' needs n_kv_heads == n_heads (values come from xt)")
        if self.block == "shaped":
            if self.n_heads * self.d_head != self.d_model:
                raise ConfigError(
                    "block='shaped' uses identity values and projection, so n_heads * d_head "
                    f"({self.n_heads}*{self.d_head}) must equal d_model ({self.d_model})"
                )
            if self.n_kv_heads != self.n_heads:
                raise ConfigError("block='shaped' needs n_kv_heads == n_heads")
            if self.attn_only:
                raise ConfigError("block='shaped' (SAS-P) needs its MLP branch: attn_only=False")
        for tok in ("pad_token_id", "bos_token_id", "eos_token_id", "bot_token_id", "eot_token_id"):
            value = getattr(self, tok)
            if value is not None and not 0 <= value < self.d_vocab:
                raise ConfigError(f"{tok}={value} is outside the vocabulary [0, {self.d_vocab})")

    def _check_types(self) -> None:
        """Each field holds its annotated type (a JSON or YAML file can say `"64"` or `"false"`,
        and `bool("false")` is True): refused by name rather than built into another model."""
        for f in fields(self):
            if f.metadata.get("runtime"):
                continue
            value, kind = getattr(self, f.name), _FIELD_KINDS.get(str(f.type))
            if kind is None or (value is None and str(f.type).startswith("Optional")):
                continue
            ok = {
                "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
                "bool": isinstance(value, bool),
                "bool | int": isinstance(value, numbers.Integral),
                "float": isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value),
                "str": isinstance(value, str),
                "dict": isinstance(value, dict),
            }[kind]
            if not ok:
                raise ConfigError(f"{f.name} must be {_KIND_NAMES[kind]}, got {value!r} ({type(value).__name__})")

    # ------------------------------------------------------------------ derived
    @property
    def rotary_dim(self) -> int:
        return int(round(self.d_head * self.rope_fraction))

    @property
    def uses_learned_positions(self) -> bool:
        """A learned position table is added to the embeddings (`learned`, `learned+rope`)."""
        return self.positional in ("learned", "learned+rope")

    @property
    def uses_rope(self) -> bool:
        """Queries and keys are rotated (`rope`, `learned+rope`)."""
        return self.positional in ("rope", "learned+rope")

    def checkpointed(self, layer: int) -> bool:
        """Whether block `layer` recomputes its activations in backward: every block for
        `gradient_checkpointing=True`, every Nth (layers N-1, 2N-1, ...) for an integer N."""
        gc = self.gradient_checkpointing
        if isinstance(gc, bool) or gc <= 1:
            return bool(gc)
        return (layer + 1) % gc == 0

    @property
    def gated(self) -> bool:
        return self.ffn in GATED_FFNS

    @property
    def tl_algebra_ok(self) -> bool:
        """True when the residual stream is the sum of embeddings, attn_out and mlp_out and
        values are linear in ln1(resid): TransformerLens's decompositions then hold."""
        return self.block != "shaped"

    # --- names TransformerLens reads off `model.cfg` -------------------------------------
    @property
    def act_fn(self) -> str:
        return {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "geglu": "gelu", "swiglu": "silu"}[
            self.ffn
        ]

    @property
    def normalization_type(self) -> Optional[str]:
        return {"layernorm": "LN", "rmsnorm": "RMS", "none": None}[self.norm]

    @property
    def positional_embedding_type(self) -> str:
        # learned+rope adds hook_pos_embed to the stream like "standard" (what TL's algebra reads)
        return {"learned": "standard", "rope": "rotary", "alibi": "alibi", "none": "none",
                "learned+rope": "standard"}[self.positional]

    @property
    def n_key_value_heads(self) -> Optional[int]:
        return None if self.n_kv_heads == self.n_heads else self.n_kv_heads

    @property
    def parallel_attn_mlp(self) -> bool:
        return self.block in ("parallel", "shaped")

    @property
    def gated_mlp(self) -> bool:
        return self.gated

    @property
    def eps(self) -> float:
        return self.norm_eps

    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def model_name(self) -> str:
        return self.name

    # Runtime attributes TL expects; set by HookedTransformer when it moves.
    device: Any = dataclasses.field(default=None, repr=False, compare=False, metadata={"runtime": True})
    dtype: Any = dataclasses.field(default=torch.float32, repr=False, compare=False, metadata={"runtime": True})
    use_attn_result: bool = dataclasses.field(default=False, repr=False, compare=False, metadata={"runtime": True})
    use_split_qkv_input: bool = dataclasses.field(default=False, repr=False, compare=False, metadata={"runtime": True})
    use_attn_in: bool = dataclasses.field(default=False, repr=False, compare=False, metadata={"runtime": True})
    use_hook_mlp_in: bool = dataclasses.field(default=False, repr=False, compare=False, metadata={"runtime": True})
    ungroup_grouped_query_attention: bool = dataclasses.field(
        default=False, repr=False, compare=False, metadata={"runtime": True}
    )
    default_prepend_bos: bool = dataclasses.field(default=True, repr=False, compare=False, metadata={"runtime": True})

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("runtime")}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), indent=2, **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls) if not f.metadata.get("runtime")}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "ModelConfig":
        data = self.to_dict()
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}")
        # Fields that were derived from others are re-derived when their sources change.
        if "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads:
            data["n_kv_heads"] = None
        if "d_head" not in changes and self.d_head * self.n_heads == self.d_model:
            data["d_head"] = None
        if "d_mlp" not in changes and self.d_mlp == 4 * self.d_model:
            data["d_mlp"] = None
        data.update(changes)
        return ModelConfig.from_dict(data)
