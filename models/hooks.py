"""Small helpers around TransformerLens's `HookPoint`."""

from __future__ import annotations

from torch import nn
from transformer_lens.hook_points import HookPoint

__all__ = ["HookPoint", "observed", "sync_hook_point", "toggled_hook"]


def observed(*hook_points: HookPoint) -> bool:
    """True when any of `hook_points` has a forward or backward hook attached.

    Layers use this to take their fused fast path ("pay for what you observe") unless an
    activation that only the explicit path materialises is being watched.
    """
    for hp in hook_points:
        if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks:
            return True
    return False


def sync_hook_point(module: nn.Module, name: str, wanted: bool) -> None:
    """Add the optional hook point `name` to `module`, or remove it (and its hooks); the root
    model re-indexes its hooks afterwards (`HookedRootModule.setup`)."""
    if wanted and not hasattr(module, name):
        setattr(module, name, HookPoint())
    elif not wanted and hasattr(module, name):
        getattr(module, name).remove_hooks("both", including_permanent=True)
        delattr(module, name)


def toggled_hook(module: nn.Module, name: str, setter: str) -> HookPoint:
    """The optional hook point `name` of `module`, which its toggle's setter adds; a cfg flag
    flipped by hand (TransformerLens code sometimes does) gets a clear pointer instead."""
    hp = getattr(module, name, None)
    if hp is None:
        raise RuntimeError(f"cfg asks for {name} but the hook point was never added: call model.{setter}(True) "
                           "instead of setting the cfg flag directly")
    return hp
