"""The static (preallocated) KV cache computes what the dynamic `KVCache` does, step by step."""

from __future__ import annotations

import pytest
import torch

from conftest import PRESETS, tiny, tokens
from tolerance import close
from models import KVCache
from models.decoding import StaticKVCache

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)



def _padded(batch=3, pos=14, seed=5):
    toks = tokens(batch, pos, seed=seed)
    mask = torch.ones(batch, pos, dtype=torch.bool)
    mask[1, :5] = False  # left padding
    mask[2, :2] = False
    if pos > 10:
        mask[2, 10] = False  # a row that "stopped": a dead token mid-sequence
    return toks, mask


def _dynamic_logits(model, toks, mask, first):
    cache = KVCache(model.cfg.n_layers)
    steps = [model(toks[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache)]
    for t in range(first, toks.shape[1]):
        steps.append(model(toks[:, t : t + 1], attention_mask=mask[:, t : t + 1], past_kv_cache=cache))
    return torch.cat(steps, dim=1)


def _static_logits(model, toks, mask, first, max_len=32):
    cache = StaticKVCache(model.cfg, toks.shape[0], max_len, "cpu", torch.float32)
    cache.phase = "prefill"
    steps = [model(toks[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache)]
    cache.phase = "decode"
    for t in range(first, toks.shape[1]):
        steps.append(model(toks[:, t : t + 1], attention_mask=mask[:, t : t + 1], past_kv_cache=cache))
        cache.step.add_(1)
    return torch.cat(steps, dim=1), cache


@pytest.mark.parametrize("name", PRESETS)
def test_static_equals_dynamic_cache(name):
    model = tiny(name)
    toks, mask = _padded()
    dynamic = _dynamic_logits(model, toks, mask, first=6)
    static, cache = _static_logits(model, toks, mask, first=6)
    assert {b.attn.last_path for b in model.blocks} == {"static"}
    close(static[mask], dynamic[mask])
    # independent of any cache: each row alone, unpadded, in one forward
    for i in range(3):
        alone = model(toks[i][mask[i]][None])[0]
        close(static[i][mask[i]], alone)
    assert int(cache.step) == toks.shape[1]
    assert cache.n_real.tolist() == mask.sum(-1).tolist()
    assert torch.equal(cache.valid[:, : toks.shape[1]], mask)


@pytest.mark.parametrize("positional", ["rope", "alibi", "none"])
def test_static_cache_past_n_ctx(positional):
    """Positions past n_ctx (RoPE / ALiBi / none extrapolate); the ALiBi bias comes from the
    cached positions, which left padding shifts away from the column index."""
    model = tiny("math-compact", n_ctx=8, positional=positional)
    toks = tokens(2, 24, seed=6)
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, :3] = False
    dynamic = _dynamic_logits(model, toks, mask, first=4)
    static, cache = _static_logits(model, toks, mask, first=4, max_len=24)
    close(static[mask], dynamic[mask])
    assert cache.positions[1, 3:24].tolist() == list(range(21))  # positions count real tokens only


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "sasp", "factored-alibi"])
def test_static_step_explicit_path_with_pattern_hook(name):
    """A hook on the pattern takes the explicit path on a static step too: same logits, and
    the pattern is zero on padding and on columns not written yet."""
    model = tiny(name)
    toks, mask = _padded(pos=9)
    fast, _ = _static_logits(model, toks, mask, first=6)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, hook: seen.append(t.clone()))]):
        slow, cache = _static_logits(model, toks, mask, first=6)
    assert [b.attn.last_path for b in model.blocks] == ["static", "explicit"]
    close(slow[mask], fast[mask])
    last = seen[-1]  # (batch, head, 1, max_len): the step writing column 8
    assert last.shape == (3, model.cfg.n_heads, 1, 32)
    assert torch.all(last[..., 9:] == 0)
    assert torch.all(last[1, :, 0, :5] == 0)  # row 1's left padding
    if name != "sasp":  # shaped attention mixes in identity and uniform terms
        close(last.sum(-1), torch.ones(3, model.cfg.n_heads, 1))


def test_static_cache_writes_in_place():
    model = tiny("llama-like")
    toks, mask = _padded(pos=9)
    cache = StaticKVCache(model.cfg, 3, 16, "cpu", torch.float32)
    ptrs = [t.data_ptr() for t in cache.tensors()]
    cache.phase = "prefill"
    model(toks[:, :6], attention_mask=mask[:, :6], past_kv_cache=cache)
    cache.phase = "decode"
    model(toks[:, 6:7], attention_mask=mask[:, 6:7], past_kv_cache=cache)
    assert [t.data_ptr() for t in cache.tensors()] == ptrs
    dyn = KVCache(model.cfg.n_layers)
    model(toks[:, :7], attention_mask=mask[:, :7], past_kv_cache=dyn)
    for static_kv, dyn_kv in zip(cache.layers, dyn.layers):
        close(static_kv.k[:, :, :7], dyn_kv.k)
        close(static_kv.v[:, :, :7], dyn_kv.v)
        assert torch.all(static_kv.k[:, :, 7:] == 0)  # nothing written past the step


def test_static_cache_refusals():
    model = tiny("vanilla", n_ctx=16)
    with pytest.raises(ValueError, match="past n_ctx=16"):
        StaticKVCache(model.cfg, 1, 32, "cpu", torch.float32)
    cache = StaticKVCache(model.cfg, 2, 16, "cpu", torch.float32)
    with pytest.raises(ValueError, match="batch 3 != the static cache's batch 2"):
        model(tokens(3, 4), past_kv_cache=cache)
    with pytest.raises(ValueError, match="computes positions itself"):
        model(tokens(2, 4), past_kv_cache=cache, position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="does not fit"):
        model(tokens(2, 17), past_kv_cache=cache)
    cache.phase = "decode"
    with pytest.raises(ValueError, match="one token per row"):
        model(tokens(2, 2), attention_mask=torch.ones(2, 2, dtype=torch.bool), past_kv_cache=cache)
