"""Small helpers around TransformerLens's `HookPoint`."""

from __future__ import annotations

from transformer_lens.hook_points import HookPoint

__all__ = ["HookPoint", "observed"]


def observed(*hook_points: HookPoint) -> bool:
    """True when any of `hook_points` has a forward or backward hook attached.

    Layers use this to take their fused fast path ("pay for what you observe") unless an
    activation that only the explicit path materialises is being watched.
    """
    for hp in hook_points:
        if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks:
            return True
    return False
