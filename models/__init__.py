"""Hook-point-rich transformers: one config, composable parts, TransformerLens hook names."""

from .config import ConfigError, ModelConfig
from .transformer import HookedTransformer, KVCache, Output
from . import presets
from . import hf  # registers model_type "interp" with transformers' AutoConfig / AutoModelForCausalLM

__all__ = ["ModelConfig", "ConfigError", "HookedTransformer", "KVCache", "Output", "presets", "hf"]
