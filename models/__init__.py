"""Hook-point-rich transformers: one config, composable parts, TransformerLens hook names."""

from .config import ConfigError, ModelConfig
from .transformer import HookedTransformer, KVCache, Output
from . import presets

__all__ = ["ModelConfig", "ConfigError", "HookedTransformer", "KVCache", "Output", "presets"]
