"""models.export.to_transformer_lens: TransformerLens's own model, our weights, the same numbers.

Under transformer-lens 3.x (`make test-tl3`) the export is TL's `HookedTransformer` and every
TL-expressible architecture is compared logit for logit and hook for hook, the TL hook
toggles and start_at_layer included. Under 4.x (the default venv) TL has no HookedTransformer;
the export is a `TransformerBridge` around TL's native model, compared where that model
reaches, and the rest is refused with the reason.
"""

from __future__ import annotations

import pytest
import torch

from conftest import build, tiny, tokens
from models.export import TLExportError, tl_state_dict, to_transformer_lens
from models.tl_compat import HAS_HOOKED_TRANSFORMER, TL_VERSION

TOL = dict(atol=1e-5, rtol=1e-5)  # fp32, same operations in another order
EXPORTABLE = ["vanilla", "llama-like", "gptj", "math-compact"]
CUSTOM = {  # options the presets leave out
    "alibi": dict(positional="alibi"),
    "no-positions": dict(positional="none"),
    "attn-only": dict(positional="rope", attn_only=True),
    "no-norm": dict(norm="none"),
    "relu-partial-interleaved-rope": dict(ffn="relu", positional="rope", rope_fraction=0.5, rope_interleaved=True),
    "mqa-geglu": dict(n_kv_heads=1, positional="rope", ffn="geglu", mlp_bias=False),
}
needs_tl3 = pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER,
                               reason=f"transformer-lens {TL_VERSION} has no HookedTransformer (make test-tl3 runs this)")


def _same(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    assert a.shape == b.shape, f"{name}: {tuple(a.shape)} vs {tuple(b.shape)}"
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)  # masked attention scores
    assert torch.equal(inf_a, inf_b), name
    torch.testing.assert_close(a.masked_fill(inf_a, 0), b.masked_fill(inf_b, 0), **TOL, msg=name)


def compare(ours, theirs, toks, hook_normalized="pre-affine", toggle="", **kwargs) -> set[str]:
    """Logits and every hook both models have; returns the shared hook names.

    `ln*.hook_normalized` differs by convention: ours is the norm's output (after w and b),
    TL's is x / scale before them, so ours == TL's * w (+ b) is what is checked."""
    with torch.no_grad():
        logits, mine = ours.run_with_cache(toks, **kwargs)
        tl_logits, cache = theirs.run_with_cache(toks, **kwargs)
    torch.testing.assert_close(tl_logits, logits, **TOL)
    shared = {k for k in mine.keys() if k in cache}
    assert len(shared) > 10 * ours.cfg.n_layers // 2, sorted(shared)
    for name in sorted(shared):
        a, b = mine[name], cache[name]
        if hook_normalized == "skip" and (name.endswith("hook_normalized") or
                                          (ours.cfg.block == "parallel" and ".ln1." in name)):
            continue  # per-head ln1 calls; a GPT-J block's MLP reads our ln1 where TL has an ln2
        if name.endswith("hook_normalized"):
            norm = ours.get_submodule(name.rsplit(".", 1)[0])
            b = b * norm.w + (norm.b if getattr(norm, "b", None) is not None else 0)
        _same(a, b, f"{name} {toggle}")
    return shared


@needs_tl3
@pytest.mark.parametrize("name", EXPORTABLE + list(CUSTOM))
def test_hooked_transformer_has_our_logits_and_hooks(name):
    from transformer_lens import HookedTransformer

    model = build(**CUSTOM[name]) if name in CUSTOM else tiny(name)
    tl_model = to_transformer_lens(model)
    assert type(tl_model) is HookedTransformer
    shared = compare(model, tl_model, tokens(2, 9))
    for hook in ("blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
                 "blocks.1.hook_resid_post", "blocks.0.attn.hook_attn_scores"):
        assert hook in shared
    if model.cfg.uses_rope:
        assert "blocks.1.attn.hook_rot_q" in shared


@needs_tl3
@pytest.mark.parametrize("name", ["vanilla", "llama-like", "gptj"])
def test_toggled_hooks_match_transformer_lens(name):
    """Our set_use_* toggles against TL's own: hook_result, hook_q/k/v_input, hook_attn_in,
    hook_mlp_in, value for value."""
    model = tiny(name)
    tl_model = to_transformer_lens(model)
    toggles = ["set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"]
    if model.cfg.n_kv_heads == model.cfg.n_heads:
        toggles.append("set_use_attn_in")
    for toggle in toggles:
        for m in (model, tl_model):
            getattr(m, toggle)(True)
        shared = compare(model, tl_model, tokens(2, 7), hook_normalized="skip", toggle=toggle)  # ln1 per head
        added = {"set_use_attn_result": "attn.hook_result", "set_use_split_qkv_input": "hook_q_input",
                 "set_use_hook_mlp_in": "hook_mlp_in", "set_use_attn_in": "hook_attn_in"}[toggle]
        assert f"blocks.1.{added}" in shared, (toggle, sorted(shared))
        for m in (model, tl_model):
            getattr(m, toggle)(False)


@needs_tl3
@pytest.mark.parametrize("name", ["llama-like", "gptj"])
def test_start_and_stop_at_layer_match_transformer_lens(name):
    model = tiny(name, n_layers=3)
    tl_model = to_transformer_lens(model)
    toks = tokens(2, 8)
    with torch.no_grad():
        mid = model(toks, stop_at_layer=1)
        torch.testing.assert_close(tl_model(toks, stop_at_layer=1), mid, **TOL)
        torch.testing.assert_close(tl_model(mid, start_at_layer=1, stop_at_layer=-1),
                                   model(mid, start_at_layer=1, stop_at_layer=-1), **TOL)
        torch.testing.assert_close(tl_model(mid, start_at_layer=1), model(mid, start_at_layer=1), **TOL)


def test_transformer_lens_4_bridge_or_refusal():
    """TL 4: vanilla becomes a TransformerBridge over TL's native model (same logits; hooks
    equal except the bridge's conventions for hook_attn_scores, which its native attention
    fills with the pattern, and hook_normalized, before the affine map); what the native model
    cannot compute is refused with the reason and the way out."""
    if HAS_HOOKED_TRANSFORMER:
        pytest.skip("transformer-lens 3.x exports a HookedTransformer (tested above)")
    from transformer_lens.model_bridge import TransformerBridge

    model = tiny("vanilla")
    bridge = to_transformer_lens(model)
    assert isinstance(bridge, TransformerBridge)
    toks = tokens(2, 9)
    with torch.no_grad():
        logits, mine = model.run_with_cache(toks)
        tl_logits, cache = bridge.run_with_cache(toks)
    torch.testing.assert_close(tl_logits, logits, **TOL)
    shared = {k for k in mine.keys() if k in cache}
    for name in sorted(shared):
        if name.endswith("hook_attn_scores"):
            _same(mine[name.replace("attn_scores", "pattern")], cache[name], name)
        elif name.endswith("hook_normalized"):
            norm = model.get_submodule(name.rsplit(".", 1)[0])
            _same(mine[name], cache[name] * norm.w + norm.b, name)
        else:
            _same(mine[name], cache[name], name)
    assert {"blocks.1.attn.hook_z", "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"} <= shared
    for name, lacks in [("llama-like", "half-split rotary"), ("gptj", "parallel attention"),
                        ("math-compact", "half-split rotary")]:
        with pytest.raises(NotImplementedError, match=f"lacks .*{lacks}.*transformer-lens>=3.3,<4"):
            to_transformer_lens(tiny(name))


@pytest.mark.parametrize("name, why", [("factored", "stream='factored'"), ("factored-alibi", "one residual stream"),
                                       ("sasp", "shaped attention")])
def test_refuses_what_transformer_lens_cannot_express(name, why):
    with pytest.raises(TLExportError, match=why):
        to_transformer_lens(tiny(name))
    with pytest.raises(TLExportError, match="learned\\+rope"):
        tl_state_dict(tiny("llama-like", positional="learned+rope"))
    with pytest.raises(TLExportError, match="b_in after the gate"):
        tl_state_dict(build(ffn="swiglu", mlp_bias=True))


def test_state_dict_shapes_follow_transformer_lens():
    model = tiny("llama-like")
    sd = tl_state_dict(model)
    H, Hkv, m, d = model.cfg.n_heads, model.cfg.n_kv_heads, model.cfg.d_model, model.cfg.d_head
    assert sd["blocks.0.attn.W_Q"].shape == (H, m, d)
    assert sd["blocks.0.attn._W_K"].shape == (Hkv, m, d)  # GQA: TL keeps the un-repeated heads
    assert sd["blocks.0.attn.W_O"].shape == (H, d, m)
    assert sd["blocks.0.mlp.W_gate"].shape == (m, model.cfg.d_mlp)
    assert sd["unembed.W_U"].shape == (m, model.cfg.d_vocab)
    torch.testing.assert_close(sd["blocks.1.attn.W_Q"], model.W_Q[1].detach())
