"""Pay for what you observe: the fused attention path and the explicit (pattern-materialising)
path compute the same function, and the fused one runs whenever nothing watches the pattern."""

from __future__ import annotations

import pytest
import torch

from conftest import PRESETS, tiny, tokens
from tolerance import close
from models.attention import Attention

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

PATTERN_HOOKS = ("attn_scores", "pattern")


def _no_pattern(name: str) -> bool:
    return not name.endswith(PATTERN_HOOKS)


def _padded_batch():
    toks = tokens(3, 10, seed=3)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, :4] = False  # left padding
    mask[2, 7:] = False  # right padding
    return toks, mask


def _compare(model, toks, mask=None):
    kw = {} if mask is None else dict(attention_mask=mask)
    fast_logits, fast = model.run_with_cache(toks, names_filter=_no_pattern, **kw)
    assert {b.attn.last_path for b in model.blocks} == {"sdpa"}
    slow_logits, slow = model.run_with_cache(toks, **kw)
    assert {b.attn.last_path for b in model.blocks} == {"explicit"}
    rows = mask if mask is not None else torch.ones(toks.shape, dtype=torch.bool)
    close(fast_logits[rows], slow_logits[rows])
    common = set(fast.keys()) & set(slow.keys())
    assert common == set(slow.keys()) - {k for k in slow.keys() if not _no_pattern(k)}
    assert len(common) > 10
    for key in sorted(common):
        a, b = fast[key], slow[key]
        if a.shape[:2] == rows.shape:  # (batch, pos, ...): compare real tokens
            a, b = a[rows], b[rows]
        close(a, b, msg=f"{model.cfg.name}: {key}")
    return slow


@pytest.mark.parametrize("name", PRESETS)
def test_fast_equals_explicit(name):
    model = tiny(name)
    _compare(model, tokens(2, 12))


@pytest.mark.parametrize("name", PRESETS)
def test_fast_equals_explicit_padded(name):
    model = tiny(name)
    toks, mask = _padded_batch()
    _compare(model, toks, mask)


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "sasp", "factored-alibi"])
def test_fast_equals_explicit_with_kv_cache(name):
    """Decoding steps (q_len < k_len) on both paths."""
    from models import KVCache

    model = tiny(name)
    toks = tokens(2, 10)
    outs = {}
    for explicit in (False, True):
        fwd_hooks = [(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)] if explicit else []
        with model.hooks(fwd_hooks=fwd_hooks):
            cache = KVCache(model.cfg.n_layers)
            steps = [model(toks[:, :6], past_kv_cache=cache)]
            for t in range(6, 10):
                steps.append(model(toks[:, t : t + 1], past_kv_cache=cache))
            assert {b.attn.last_path for b in model.blocks} == {"explicit" if explicit else "sdpa"}
        outs[explicit] = torch.cat(steps, dim=1)
    close(outs[False], outs[True])
    close(outs[False], model(toks))


@pytest.mark.parametrize("name", PRESETS)
def test_plain_forward_takes_fast_path(name, monkeypatch):
    model = tiny(name)
    toks = tokens(2, 8)
    model(toks)
    assert [b.attn.last_path for b in model.blocks] == ["sdpa"] * model.cfg.n_layers

    def boom(*args, **kwargs):
        raise AssertionError("explicit attention ran although nothing observes the pattern")

    monkeypatch.setattr(Attention, "_attend_explicit", boom)
    model(toks)
    model(toks, attention_mask=torch.ones_like(toks, dtype=torch.bool))
    model.run_with_cache(toks, names_filter=_no_pattern)
    model(toks, return_type="loss")
    with pytest.raises(AssertionError, match="explicit attention ran"):
        model.run_with_cache(toks, names_filter="blocks.0.attn.hook_pattern")


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "sasp", "factored"])
@pytest.mark.parametrize("hook", ["hook_pattern", "hook_attn_scores"])
def test_only_hooked_layer_goes_explicit(name, hook):
    model = tiny(name, n_layers=3)
    toks = tokens(2, 8)
    seen = []
    model.run_with_hooks(toks, fwd_hooks=[(f"blocks.1.attn.{hook}", lambda t, hook: seen.append(t.shape))])
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "explicit", "sdpa"]
    assert seen == [(2, model.cfg.n_heads, 8, 8)]
    # hooks are gone after run_with_hooks: back to the fast path everywhere
    model(toks)
    assert [b.attn.last_path for b in model.blocks] == ["sdpa"] * 3
    # caching a single layer's pattern goes explicit only there
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n == "blocks.2.attn.hook_pattern")
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa", "explicit"]
    assert list(cache.keys()) == ["blocks.2.attn.hook_pattern"]


def test_editing_pattern_changes_output():
    """The explicit path really uses the (possibly edited) pattern."""
    model = tiny("vanilla")
    toks = tokens(1, 6)
    clean = model(toks)
    uniform = torch.tril(torch.ones(6, 6)) / torch.arange(1, 7)[:, None]
    edited = model.run_with_hooks(
        toks, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: uniform.expand_as(t).clone())])
    assert not torch.allclose(clean, edited)
    z = {}
    model.run_with_hooks(toks, fwd_hooks=[
        ("blocks.0.attn.hook_pattern", lambda t, hook: uniform.expand_as(t).clone()),
        ("blocks.0.attn.hook_z", lambda t, hook: z.setdefault("z", t)),
        ("blocks.0.attn.hook_v", lambda t, hook: z.setdefault("v", t)),
    ])
    expected = torch.einsum("qk,bkhd->bqhd", uniform, z["v"])
    close(z["z"], expected)


def test_padded_pattern_rows_are_valid():
    model = tiny("math-compact")
    toks, mask = _padded_batch()
    _, cache = model.run_with_cache(toks, attention_mask=mask)
    for l in range(model.cfg.n_layers):
        p = cache["pattern", l]
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
        # no real query attends to a padded key
        real_q = mask[:, None, :, None]
        pad_k = ~mask[:, None, None, :]
        assert torch.equal(p.masked_select(real_q & pad_k), torch.zeros_like(p.masked_select(real_q & pad_k)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention (ALiBi fast path) runs on CUDA only")
@pytest.mark.parametrize("name", ["factored-alibi", "vanilla", "llama-like"])
def test_cuda_fast_equals_explicit(name):
    """On CUDA, ALiBi takes FlexAttention (`last_path == "flex"`); it must match the explicit path."""
    model = tiny(name).cuda()
    toks = tokens(2, 12).cuda()
    fast = model(toks)
    expected_path = "flex" if model.cfg.positional == "alibi" else "sdpa"
    assert {b.attn.last_path for b in model.blocks} == {expected_path}
    explicit, _ = model.run_with_cache(toks)
    assert {b.attn.last_path for b in model.blocks} == {"explicit"}
    torch.testing.assert_close(fast, explicit, atol=1e-4, rtol=1e-4)
