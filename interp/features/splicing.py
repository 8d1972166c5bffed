"""Dictionaries inside a model: the model runs on their reconstructions.

```python
with features.splice(model, sae):                      # blocks.1.hook_resid_post := x_hat
    logits, cache = model.run_with_cache(tokens)
    cache["blocks.1.hook_resid_post.hook_sae_acts_post"]   # the latents, (batch, pos, d_sae)
with features.splice(model, sae, include_error=True):  # x_hat + (x - x_hat): output unchanged...
    model.run_with_hooks(tokens, fwd_hooks=[            # ...until a hook edits a feature
        ("blocks.1.hook_resid_post.hook_sae_acts_post", ablate_feature_7)])
```

An SAE replaces the activation at its `hook_name`; a transcoder reads `hook_name` (leaving it
as it is) and replaces the activation at `out_hook_name` (e.g. an MLP's output) with what it
computes from that input. With `include_error` the written value is reconstruction +
`hook_sae_error` (the true activation minus the clean reconstruction, a constant without
gradient, as in SAELens), so the model's output is exactly unchanged unless a hook edits
the latents.

While spliced, the dictionary's hook points are part of the model, named after the hook it
reads (`{hook_name}.hook_sae_input|acts_pre|acts_post|recons|error`, SAELens's names), so
`run_with_cache`, `run_with_hooks`, `interp.patching` and gradients reach features with no
new API. Hooks added at `hook_name` inside the splice see the spliced value. Everything is
removed on exit, also when the body raises.

The splice refuses, with one message, an unknown hook (listing the model's hooks), a
read-only hook (`hook_resid_*` of a factored model: splice `hook_xt_*` / `hook_xe_*`), a
`d_in`/`d_out` that does not fit the hook's width, and a dictionary trained for another model
(`cfg.model` identity fields differ from the model's config).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .dictionary import DictionaryError, SparseDictionary

IDENTITY_FIELDS = ("name", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab", "n_ctx",
                   "positional", "norm", "ffn", "block", "stream", "attn_only")
HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_rot_q", "hook_rot_k")  # (..., head, d_head): flattened
NOT_SPLICEABLE = ("hook_pattern", "hook_attn_scores")
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")


def model_identity(model: nn.Module, checkpoint: Optional[str] = None) -> dict:
    """What a dictionary records about the model it was trained on (`DictionaryConfig.model`):
    the config fields that decide the activations' meaning, plus the checkpoint path."""
    from interp.checkpoint import unwrap

    cfg = unwrap(model).cfg
    out = {f: getattr(cfg, f) for f in IDENTITY_FIELDS if hasattr(cfg, f)}
    if checkpoint is not None:
        out["checkpoint"] = str(checkpoint)
    return out


@torch.no_grad()
def hook_widths(model: nn.Module) -> dict[str, int]:
    """Flat width of every hook that fires on a 2-token input (head hooks: n_heads * d_head);
    hooks whose activation is not (batch, pos, ...) (attention patterns) are left out."""
    shapes: dict[str, tuple] = {}

    def record(act, hook):
        shapes[hook.name] = tuple(act.shape)

    device = next(model.parameters()).device
    tokens = torch.zeros(1, 2, dtype=torch.long, device=device)
    was = model.training
    model.eval()
    try:
        with model.hooks(fwd_hooks=[(lambda name: not name.endswith(NOT_SPLICEABLE), record)]):
            model(tokens)
    finally:
        model.train(was)
    return {n: math.prod(s[2:]) for n, s in shapes.items() if len(s) >= 3 and s[:2] == (1, 2)}


def _flat(act: torch.Tensor, width: int) -> torch.Tensor:
    return act if act.shape[-1] == width else act.reshape(*act.shape[:2], width)


def _check(model: nn.Module, sae: SparseDictionary, widths: dict[str, int], check_model: bool) -> None:
    cfg = sae.cfg
    valid = sorted(model.hook_dict)
    factored = getattr(model.cfg, "stream", "standard") == "factored"
    for name, width, what in ((cfg.hook_name, cfg.d_in, "d_in"), (cfg.out_hook_name, cfg.d_out, "d_out")):
        if name is None:
            continue
        if name not in model.hook_dict:
            raise DictionaryError(f"dictionary hook {name!r} is not a hook of this model "
                                  f"({model.cfg.name}); valid hooks: {', '.join(valid)}")
        if name.endswith(NOT_SPLICEABLE):
            raise DictionaryError(f"{name}: attention patterns/scores are not activations a dictionary can read or write")
        if factored and ".hook_resid_" in name and what == ("d_out" if cfg.is_transcoder else "d_in"):
            stage = name.rsplit("hook_resid_", 1)[1]
            layer = name.split(".")[1]
            raise DictionaryError(f"{name} is a read-only view of xt + xe in this factored-stream model; splice a "
                                  f"dictionary of blocks.{layer}.hook_xt_{stage} or blocks.{layer}.hook_xe_{stage}")
        if name in widths and widths[name] != width:
            raise DictionaryError(f"dictionary {what}={width} does not fit {name}, which is {widths[name]} wide "
                                  f"in this model ({model.cfg.name})")
    if check_model and cfg.model:
        ours = model_identity(model)
        diff = {f: (cfg.model[f], ours[f]) for f in IDENTITY_FIELDS if f in cfg.model and f in ours
                and cfg.model[f] != ours[f]}
        if diff:
            shown = ", ".join(f"{f}: dictionary {a!r} vs model {b!r}" for f, (a, b) in diff.items())
            src = f" (trained on {cfg.model['checkpoint']})" if cfg.model.get("checkpoint") else ""
            raise DictionaryError(f"dictionary for {cfg.hook_name} was trained on another model{src}: {shown}; "
                                  "pass check_model=False to splice it anyway")


def _width_guard(name: str, width: int, act: torch.Tensor, what: str) -> None:
    if act.ndim < 3 or math.prod(act.shape[2:]) != width:
        raise DictionaryError(f"dictionary {what}={width} does not fit {name}: activation of shape {tuple(act.shape)}")


@contextmanager
def splice(model: nn.Module, *dicts: SparseDictionary, include_error: bool = False,
           check_model: bool = True) -> Iterator[nn.Module]:
    """Context manager: `model` runs with each dictionary's reconstruction in place of the
    activation it replaces (see the module docstring); yields the model."""
    if not dicts:
        raise DictionaryError("splice: give at least one dictionary")
    reads = [d.cfg.hook_name for d in dicts]
    writes = [d.cfg.out_hook_name or d.cfg.hook_name for d in dicts]
    for names, verb in ((reads, "read"), (writes, "write")):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DictionaryError(f"splice: several dictionaries {verb} {dup}; splice them one at a time")
    widths = hook_widths(model)
    for d in dicts:
        _check(model, d, widths, check_model)
    handles, attached = [], []
    try:
        for d in dicts:
            cfg = d.cfg
            hp = model.hook_dict[cfg.hook_name]
            for hname in SAE_HOOKS:  # the dictionary's hook points join the model's hook_dict
                hp.add_module(hname, getattr(d, hname))
            attached.append((hp, d))
            if cfg.is_transcoder:
                seen: dict[str, torch.Tensor] = {}

                def read(module, inputs, out, cfg=cfg, seen=seen):
                    _width_guard(cfg.hook_name, cfg.d_in, out, "d_in")
                    seen["x"] = out

                def write(module, inputs, out, d=d, cfg=cfg, seen=seen):
                    if "x" not in seen:
                        raise DictionaryError(f"transcoder writes {cfg.out_hook_name} before {cfg.hook_name}, "
                                              "which it reads, has run in this forward")
                    _width_guard(cfg.out_hook_name, cfg.d_out, out, "d_out")
                    x = seen.pop("x")
                    y = d.replace(_flat(x, cfg.d_in), _flat(out, cfg.d_out), include_error)
                    return y.to(out.dtype).reshape(out.shape)

                handles.append(hp.register_forward_hook(read))
                handles.append(model.hook_dict[cfg.out_hook_name].register_forward_hook(write))
            else:

                def replace(module, inputs, out, d=d, cfg=cfg):
                    _width_guard(cfg.hook_name, cfg.d_in, out, "d_in")
                    flat = _flat(out, cfg.d_in)
                    return d.replace(flat, flat, include_error).to(out.dtype).reshape(out.shape)

                handles.append(hp.register_forward_hook(replace))
        model.setup()  # rebuild hook_dict / mod_dict with the dictionaries' hook points
        yield model
    finally:
        for h in handles:
            h.remove()
        for hp, d in attached:
            for hname in SAE_HOOKS:
                if hname in hp._modules:
                    del hp._modules[hname]
            d.setup()  # give the dictionary's hook points back their own names
        model.setup()


