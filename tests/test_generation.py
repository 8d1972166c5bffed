"""KV-cached generation == full recompute; batching, extrapolation, sampling, stop tokens."""

from __future__ import annotations

import pytest
import torch

from conftest import PRESETS, VOCAB, tiny, tokens
from tolerance import close
from models import KVCache
from models.generation import Generation, generate, generate_next_token, sample_logits

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

PROMPTS = [[5, 9, 2, 7, 11, 3], [4, 8], [13, 1, 6, 22]]


def _greedy(model, prompts, n, **kw):
    return generate(model, prompts, max_new_tokens=n, greedy=True, return_output=True, **kw)


@pytest.mark.parametrize("name", PRESETS)
def test_kv_cache_equals_recompute(name):
    model = tiny(name, scale=0.3)
    for prompts in ([PROMPTS[0]], PROMPTS):
        cached = _greedy(model, prompts, 10)
        full = _greedy(model, prompts, 10, use_kv_cache=False)
        assert cached.new_tokens == full.new_tokens
        assert torch.equal(cached.tokens, full.tokens)
        assert all(len(t) == 10 for t in cached.new_tokens)


@pytest.mark.parametrize("name", PRESETS)
def test_batched_equals_alone(name):
    model = tiny(name, scale=0.3)
    batched = _greedy(model, PROMPTS, 8)
    assert batched.prompt_lengths == [len(p) for p in PROMPTS]
    for i, prompt in enumerate(PROMPTS):
        alone = _greedy(model, [prompt], 8)
        assert batched.new_tokens[i] == alone.new_tokens[0], f"{name} row {i}"
        # left padded: the row ends with prompt + new tokens
        row = batched.tokens[i][batched.attention_mask[i]].tolist()
        assert row == prompt + alone.new_tokens[0]


def test_greedy_matches_argmax_of_forward():
    """Independent check: each greedy token is the argmax of a plain forward on the prefix."""
    model = tiny("llama-like", scale=0.3)
    out = _greedy(model, [PROMPTS[0]], 6)
    seq = list(PROMPTS[0])
    for tok in out.new_tokens[0]:
        assert tok == int(model(torch.tensor([seq]))[0, -1].argmax())
        seq.append(tok)
    assert generate(model, torch.tensor([PROMPTS[0]]), max_new_tokens=6, greedy=True)[0].tolist() == seq


@pytest.mark.parametrize("positional", ["alibi", "rope", "none"])
@pytest.mark.parametrize("name", ["math-compact", "factored-alibi"])
def test_generate_past_n_ctx(positional, name):
    model = tiny(name, n_ctx=8, positional=positional, scale=0.3)
    prompts = [[3, 1, 4, 1, 5], [9, 2]]
    n = 4 * 8
    cached = _greedy(model, prompts, n)
    full = _greedy(model, prompts, n, use_kv_cache=False)
    assert cached.new_tokens == full.new_tokens
    assert [len(t) for t in cached.new_tokens] == [n, n]
    assert cached.tokens.shape[1] == 5 + n > 4 * 8


def _incremental_logits(model, toks, mask, first):
    """Feed `first` tokens, then one token per step through a KVCache; (batch, pos, vocab)."""
    cache = KVCache(model.cfg.n_layers)
    steps = [model(toks[:, :first], attention_mask=mask[:, :first], past_kv_cache=cache)]
    for t in range(first, toks.shape[1]):
        steps.append(model(toks[:, t : t + 1], attention_mask=mask[:, t : t + 1], past_kv_cache=cache))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("name", PRESETS)
def test_kv_cache_logits_equal_full_forward(name):
    """Stepwise cached logits == one full forward, on a left-padded batch (independent of
    what greedy decoding happens to pick)."""
    model = tiny(name)
    toks = tokens(3, 14, seed=5)
    mask = torch.ones(3, 14, dtype=torch.bool)
    mask[1, :5] = False
    mask[2, :2] = False
    full = model(toks, attention_mask=mask)
    inc = _incremental_logits(model, toks, mask, first=6)
    close(inc[mask], full[mask])
    for i in range(3):  # and each row == that row alone, unpadded
        alone = model(toks[i][mask[i]][None])[0]
        close(inc[i][mask[i]], alone)


@pytest.mark.parametrize("positional", ["alibi", "rope", "none"])
def test_kv_cache_logits_past_n_ctx(positional):
    model = tiny("math-compact", n_ctx=8, positional=positional)
    toks = tokens(2, 32, seed=6)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, :3] = False
    full = model(toks, attention_mask=mask)
    inc = _incremental_logits(model, toks, mask, first=4)
    close(inc[mask], full[mask])


@pytest.mark.parametrize("name", PRESETS)
def test_sampled_generation_cache_equals_recompute(name):
    """Sampling keeps the continuations diverse (random tiny models collapse under greedy)."""
    model = tiny(name, scale=0.3)
    kw = dict(max_new_tokens=8, temperature=1.0, seed=11, return_output=True)
    cached, full = generate(model, PROMPTS, **kw), generate(model, PROMPTS, use_kv_cache=False, **kw)
    assert cached.new_tokens == full.new_tokens
    assert len({t for row in cached.new_tokens for t in row}) > 4


def test_learned_positions_refuse_past_n_ctx():
    model = tiny("vanilla", n_ctx=8)
    with pytest.raises(ValueError, match="past n_ctx=8.*learned positions"):
        generate(model, [[1, 2, 3]], max_new_tokens=10, greedy=True)
    with pytest.raises(ValueError, match="past n_ctx=8"):
        generate(model, [[1, 2, 3]], max_new_tokens=10, greedy=True, use_kv_cache=False)
    # up to n_ctx is fine
    assert len(_greedy(model, [[1, 2, 3]], 5).new_tokens[0]) == 5


@pytest.mark.parametrize("name", ["vanilla", "sasp", "gptj"])
def test_generate_next_token(name):
    model = tiny(name)
    toks = tokens(2, 7)
    tok, logits = generate_next_token(model, toks, greedy=True)
    expected = model(toks)[:, -1]
    torch.testing.assert_close(logits, expected)
    assert torch.equal(tok, expected.argmax(-1))
    # with a KV cache: feed the prompt, then only the new token
    cache = KVCache(model.cfg.n_layers)
    _, first = generate_next_token(model, toks, past_kv_cache=cache, greedy=True)
    close(first, expected)
    nxt, step = generate_next_token(model, tok[:, None], past_kv_cache=cache, greedy=True)
    full = model(torch.cat([toks, tok[:, None]], dim=1))[:, -1]
    close(step, full)
    assert torch.equal(nxt, full.argmax(-1))


# ------------------------------------------------------------------ sampling
def _logits(batch=4, vocab=VOCAB, seed=0):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_sample_top_k_one_and_tiny_top_p_are_greedy():
    logits = _logits()
    greedy = logits.argmax(-1)
    assert torch.equal(sample_logits(logits, greedy=True), greedy)
    assert torch.equal(sample_logits(logits, temperature=0), greedy)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_logits(logits, top_k=1, generator=g), greedy)
        assert torch.equal(sample_logits(logits, top_p=1e-6, generator=g), greedy)
        assert torch.equal(sample_logits(logits, temperature=5.0, top_k=1, generator=g), greedy)


def test_sample_seeded_reproducible_and_random():
    logits = _logits(batch=64)
    a = sample_logits(logits, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = sample_logits(logits, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = sample_logits(logits, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, logits.argmax(-1))


def test_sample_stays_inside_top_k_and_top_p():
    logits = _logits(batch=8)
    g = torch.Generator().manual_seed(0)
    top5 = logits.topk(5, dim=-1).indices
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    # nucleus with p=0.5: the smallest prefix of the sorted vocabulary with mass >= 0.5
    n_keep = (sorted_p.cumsum(-1) < 0.5).sum(-1) + 1
    seen_k, seen_p = set(), set()
    for _ in range(200):
        s = sample_logits(logits, temperature=2.0, top_k=5, generator=g)
        assert (s[:, None] == top5).any(-1).all()
        seen_k.update((i, int(t)) for i, t in enumerate(s))
        s = sample_logits(logits, top_p=0.5, generator=g)
        for i, t in enumerate(s.tolist()):
            assert t in order[i, : n_keep[i]].tolist()
            seen_p.add((i, t))
    assert len(seen_k) > 8 * 2  # more than one token per row is sampled
    assert len(seen_p) >= int(n_keep.clamp(max=3).sum()) - 2


def test_temperature_sharpens():
    logits = _logits(batch=1).expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    cold = sample_logits(logits, temperature=0.1, generator=g)
    hot = sample_logits(logits, temperature=10.0, generator=g)
    top = int(logits[0].argmax())
    assert (cold == top).float().mean() > 0.9
    assert (hot == top).float().mean() < 0.3
    assert hot.unique().numel() > cold.unique().numel()


def test_generate_sampling_seeded_and_cache_consistent():
    model = tiny("math-compact", scale=0.3)
    kw = dict(max_new_tokens=8, temperature=1.5, top_k=10, return_output=True)
    a = generate(model, PROMPTS, seed=3, **kw)
    b = generate(model, PROMPTS, seed=3, **kw)
    c = generate(model, PROMPTS, seed=3, use_kv_cache=False, **kw)
    assert a.new_tokens == b.new_tokens == c.new_tokens
    d = generate(model, PROMPTS, seed=4, **kw)
    assert a.new_tokens != d.new_tokens


# ------------------------------------------------------------------ stop tokens
@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_stop_tokens_stop_each_row(use_kv_cache):
    model = tiny("llama-like", scale=0.3)
    free = _greedy(model, PROMPTS, 12, use_kv_cache=use_kv_cache).new_tokens
    # choose a stop token that row 0 emits early; rows that never emit it run to the end
    stop = free[0][2]
    out = _greedy(model, PROMPTS, 12, stop_tokens=[stop], use_kv_cache=use_kv_cache)
    assert isinstance(out, Generation)
    for i, row in enumerate(free):
        if stop in row:
            cut = row.index(stop) + 1
            assert out.new_tokens[i] == row[:cut] and out.new_tokens[i][-1] == stop
        else:
            assert out.new_tokens[i] == row
    assert len(out.new_tokens[0]) <= 3
    # the mask marks exactly prompt + new tokens as real
    for i, p in enumerate(PROMPTS):
        assert int(out.attention_mask[i].sum()) == len(p) + len(out.new_tokens[i])
    # every row stopped -> the loop ends early
    stops = [r[0] for r in free]
    early = _greedy(model, PROMPTS, 12, stop_tokens=stops, use_kv_cache=use_kv_cache)
    assert all(len(r) >= 1 for r in early.new_tokens)
    assert all(r[-1] in stops for r in early.new_tokens)
    assert early.tokens.shape[1] < out.tokens.shape[1] or all(len(r) == 1 for r in early.new_tokens)


def test_eos_is_default_stop_token():
    model = tiny("vanilla", scale=0.3)
    free = _greedy(model, [PROMPTS[0]], 10).new_tokens[0]
    eos = free[3]
    model.cfg.eos_token_id = eos
    out = _greedy(model, [PROMPTS[0]], 10).new_tokens[0]
    assert out == free[: free.index(eos) + 1]


def test_generate_text_with_tokenizer():
    class Chars:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) - 96 for c in text]

        def decode(self, ids):
            return "".join(chr(i + 96) for i in ids)

    model = tiny("math-compact", d_vocab=30, scale=0.3)
    model.set_tokenizer(Chars())
    out = generate(model, ["abc", "hello"], max_new_tokens=4, greedy=True, return_output=True)
    assert out.new_tokens[0] == _greedy(model, [[1, 2, 3]], 4).new_tokens[0]
    assert out.new_tokens[1] == _greedy(model, [[8, 5, 12, 12, 15]], 4).new_tokens[0]


def test_empty_prompt_refused():
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(tiny("vanilla"), [[1, 2], []], max_new_tokens=2, greedy=True)
