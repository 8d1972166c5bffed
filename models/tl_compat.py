"""What differs between TransformerLens 3.x and 4.x, in one place (the toolkit supports both).

The hooking core the models are built on (`HookedRootModule`, `HookPoint`, `ActivationCache`)
is the same in both majors from 3.3 on. What 4.0 removed is TL's own model class,
`HookedTransformer` (and `HookedTransformerConfig`): TL 4 builds models as a `TransformerBridge`
instead, from a config plus a state dict in `HookedTransformer`'s parameter layout through
`TransformerBridge.boot_native` + `convert_tl_checkpoint`. `build_tl_model` hides that choice.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import torch
from torch import nn

TL_VERSION: str = version("transformer-lens")
TL_MAJOR: int = int(TL_VERSION.split(".")[0])
HAS_HOOKED_TRANSFORMER: bool = TL_MAJOR < 4  # TL 4.0 deleted HookedTransformer


def build_tl_model(config: dict[str, Any], state_dict: dict[str, torch.Tensor], ours: Any = None) -> nn.Module:
    """TransformerLens's model for `config` (HookedTransformerConfig fields) holding `state_dict`
    (HookedTransformer's parameter names): a `HookedTransformer` on TL 3, a `TransformerBridge`
    around TL's native model on TL 4. `ours` (our ModelConfig) only words refusals."""
    if HAS_HOOKED_TRANSFORMER:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**config))
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))]
        if missing or unexpected:
            raise RuntimeError(f"TransformerLens {TL_VERSION} parameters not matched: missing {missing}, "
                               f"unexpected {unexpected}")
        return model
    return _native_bridge(config, state_dict)


def _native_bridge(config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """TL 4: `TransformerBridge.boot_native`, whose model has sequential blocks, learned or
    interleaved-rotary positions and bias-free gated MLPs."""
    lacks = []
    if config["parallel_attn_mlp"]:
        lacks.append("parallel attention + MLP blocks (GPT-J)")
    if config["positional_embedding_type"] == "alibi":
        lacks.append("ALiBi")
    if config["positional_embedding_type"] == "rotary" and not config.get("rotary_adjacent_pairs"):
        lacks.append("half-split rotary (it rotates adjacent pairs only)")
    if config["gated_mlp"] and any(k.endswith("mlp.b_in") and v.any() for k, v in state_dict.items()):
        lacks.append("biases in gated MLPs")
    if state_dict["unembed.b_U"].any():
        lacks.append("an unembedding bias")
    if lacks:
        raise NotImplementedError(
            f"TransformerLens {TL_VERSION} has no HookedTransformer (removed in 4.0), and its native "
            f"TransformerBridge model lacks {', '.join(lacks)}; install transformer-lens 3.x "
            "(pip install 'transformer-lens>=3.3,<4') to export this model")
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401 - attaches boot_native
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    fields = {k: v for k, v in config.items() if k not in ("init_weights", "model_name", "rotary_adjacent_pairs")}
    cfg = TransformerBridgeConfig(**fields, architecture="TransformerLensNative")
    cfg.init_weights = False
    bridge = TransformerBridge.boot_native(cfg, model_name=config.get("model_name", "native"))
    converted = convert_tl_checkpoint({k: v for k, v in state_dict.items() if k != "unembed.b_U"}, cfg)
    result = bridge.load_state_dict(converted, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"TransformerLens {TL_VERSION} bridge did not take {result.unexpected_keys}")
    return bridge
