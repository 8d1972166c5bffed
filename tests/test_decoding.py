"""Static-cache decoding (`models.decoding`, the default `generate` path on CUDA) returns
exactly what the step-by-step dynamic-cache loop returns; hooks force the eager loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import PRESETS, tiny
from models import decoding
from models.generation import generate

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

PROMPTS = [[5, 9, 2, 7, 11, 3], [4, 8], [13, 1, 6, 22]]


def _pair(model, prompts, n, **kw):
    slow = generate(model, prompts, max_new_tokens=n, return_output=True, fast=False, **kw)
    fast = generate(model, prompts, max_new_tokens=n, return_output=True, fast=True, **kw)
    return slow, fast


def _assert_same(slow, fast):
    assert fast.new_tokens == slow.new_tokens
    assert torch.equal(fast.tokens, slow.tokens)
    assert torch.equal(fast.attention_mask, slow.attention_mask)
    assert fast.prompt_lengths == slow.prompt_lengths


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the static-cache loop."""
    calls = []
    real = decoding.fast_generate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "fast_generate", counting)
    return calls


@pytest.mark.parametrize("name", PRESETS)
def test_greedy_equals_step_by_step(name, spy):
    model = tiny(name, scale=0.3)
    for prompts in ([PROMPTS[0]], PROMPTS):
        slow, fast = _pair(model, prompts, 12, greedy=True)
        _assert_same(slow, fast)
        assert all(len(t) == 12 for t in fast.new_tokens)
    assert len(spy) == 2


@pytest.mark.parametrize("name", ["vanilla", "factored-alibi", "llama-like", "sasp"])
def test_compiled_decode_is_one_graph(name):
    """The decode step traces into a single graph (`fullgraph=True`, what CUDA graphs need)
    with torch.compile's eager backend, and gives the same tokens."""
    model = tiny(name, scale=0.3)
    slow = generate(model, PROMPTS, max_new_tokens=8, greedy=True, return_output=True, fast=False)
    fast = generate(model, PROMPTS, max_new_tokens=8, greedy=True, return_output=True, fast=True, compile="eager")
    _assert_same(slow, fast)


def test_inductor_compiled_decode_on_cpu():
    """The real thing (inductor, `mode="reduce-overhead"`, no CUDA graphs on CPU), twice:
    the second call reuses the compiled graphs and the pooled cache."""
    model = tiny("llama-like", scale=0.3)
    slow = generate(model, PROMPTS, max_new_tokens=8, greedy=True, return_output=True, fast=False)
    for _ in range(2):
        fast = generate(model, PROMPTS, max_new_tokens=8, greedy=True, return_output=True, fast=True, compile=True)
        _assert_same(slow, fast)


@pytest.mark.parametrize("name", ["vanilla", "factored-alibi", "gptj"])
def test_stop_tokens(name, monkeypatch):
    """Rows stop independently; the output ends where the last row stopped, though the
    static loop only looks every STOP_CHECK_EVERY steps."""
    model = tiny(name, scale=0.3)
    free = generate(model, PROMPTS, max_new_tokens=20, greedy=True, return_output=True, fast=False).new_tokens
    for every in (1, 4, 16):
        monkeypatch.setattr(decoding, "STOP_CHECK_EVERY", every)
        for stops in ([free[0][2]], [r[1] for r in free], [free[1][5], free[2][7]]):
            slow, fast = _pair(model, PROMPTS, 20, greedy=True, stop_tokens=stops)
            _assert_same(slow, fast)


def test_sampling_equals_step_by_step():
    model = tiny("math-compact", scale=0.3)
    slow, fast = _pair(model, PROMPTS, 10, temperature=1.5, top_k=10, top_p=0.9, seed=3)
    _assert_same(slow, fast)
    assert len({t for row in fast.new_tokens for t in row}) > 4


@pytest.mark.parametrize("positional", ["alibi", "rope", "none"])
def test_past_n_ctx(positional):
    model = tiny("math-compact", n_ctx=8, positional=positional, scale=0.3)
    slow, fast = _pair(model, [[3, 1, 4, 1, 5], [9, 2]], 30, greedy=True)
    _assert_same(slow, fast)


def test_learned_positions_past_n_ctx_take_the_step_by_step_loop(spy):
    model = tiny("vanilla", n_ctx=8)
    with pytest.raises(ValueError, match="past n_ctx=8.*learned positions"):
        generate(model, [[1, 2, 3]], max_new_tokens=10, greedy=True, fast=True)
    assert spy == []
    slow, fast = _pair(model, [[1, 2, 3]], 6, greedy=True)  # 3 + 6 - 1 = 8 columns: fits
    _assert_same(slow, fast)
    assert spy == [1]


def test_hooks_take_the_eager_loop(spy):
    model = tiny("llama-like", scale=0.3)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t.shape))]):
        hooked = generate(model, PROMPTS, max_new_tokens=5, greedy=True, return_output=True, fast=True)
    assert spy == [] and len(seen) == 5  # the prompt, then one per fed-back token
    handle = model.blocks[1].register_forward_hook(lambda *a: None)  # a plain torch hook counts too
    generate(model, PROMPTS, max_new_tokens=5, greedy=True, fast=True)
    assert spy == []
    handle.remove()
    fast = generate(model, PROMPTS, max_new_tokens=5, greedy=True, return_output=True, fast=True)
    assert spy == [1]
    assert fast.new_tokens == hooked.new_tokens


def test_default_is_step_by_step_on_cpu(spy):
    model = tiny("vanilla", scale=0.3)
    generate(model, PROMPTS, max_new_tokens=3, greedy=True)
    assert spy == []


def test_autocast_cache_dtype():
    """Under autocast the cache holds what attention sees (bf16); the first token comes from
    the same prefill computation as the step-by-step loop."""
    model = tiny("llama-like", scale=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slow, fast = _pair(model, PROMPTS, 4, greedy=True)
    assert [r[0] for r in fast.new_tokens] == [r[0] for r in slow.new_tokens]
    caches = list(decoding._POOLS[model].values())
    assert caches and caches[-1].layers[0].k.dtype == torch.bfloat16


def test_bench_generate_small(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_generate

    out = tmp_path / "gen.json"
    result = bench_generate.main(["--small", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert {r["positional"] for r in rows} == {"learned", "rope", "alibi"}
    errors = [r for r in rows if "error" in r]
    assert not errors, f"configurations failed: {errors}"  # the error itself, not a KeyError on its row
    for r in rows:
        assert r["ours_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0
        assert r["hf_best"]["tokens_per_s"] > 0 and r["hf_best"]["rows_equal_to_hf"] == 1.0
        assert r["ours_equals_step_by_step"] is True
