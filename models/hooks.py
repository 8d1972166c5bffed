"""Small helpers around TransformerLens's `HookPoint`."""

from __future__ import annotations

from torch import nn
from transformer_lens.hook_points import HookPoint

__all__ = ["HookPoint", "observed", "sync_hook_point", "toggled_hook"]


def observed(*hook_points: HookPoint) -> bool:
    """True when anyone watches one of `hook_points`: a TransformerLens hook, any PyTorch
    forward / forward-pre / backward hook (pyvene's interventions are such hooks), or a
    running nnsight trace that asks for its input or output.

    Layers use this to take their fused fast path ("pay for what you observe") unless an
    activation that only the explicit path materialises is being watched.
    """
    for hp in hook_points:
        if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks:
            return True
        if _NNSIGHT_STATE in hp.__dict__ and _requested_by_trace(hp):
            return True
    return False


# nnsight (0.6+, tested on 0.8) hooks no module: it installs a controller in each module's
# __dict__ and keeps, per module, which of its traces reach it (`state.active()`: the running
# interleaver and the module's "<path>.input" / "<path>.output" locations). A worker of the
# trace that waits for a location is in `interleaver.parked`, a cache that keeps it in
# `interleaver.observers`. Requests arrive in forward order, so when a layer decides its path
# the request for its own hook is already parked.
_NNSIGHT_STATE = "__nnsight__"


def _requested_by_trace(hp: HookPoint) -> bool:
    try:
        interleaver, _, locations = hp.__dict__[_NNSIGHT_STATE].active()
    except Exception:  # noqa: BLE001 - another nnsight layout: treat as not requested
        return False
    if interleaver is None or len(locations) < 3:
        return False
    parked, cached = getattr(interleaver, "parked", ()), getattr(interleaver, "observers", {})
    return any(loc in parked or loc in cached for loc in (locations[0], locations[2]))


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
