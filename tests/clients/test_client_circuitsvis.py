"""CircuitsVis renders one of our attention patterns (the shipped induction model's induction
head) from run_with_cache, as it would a TransformerLens model's. Runs in .venv-clients/circuitsvis."""

from __future__ import annotations

import json

import pytest
import torch

cv = pytest.importorskip("circuitsvis")
pytestmark = pytest.mark.clients

from common import induction_tokens, load  # noqa: E402


def test_attention_heads_renders_our_pattern():
    model = load("induction_attn_only")
    tokens = induction_tokens(model, batch=1)
    _, cache = model.run_with_cache(tokens)
    pattern = cache["pattern", 1][0]  # (head, q, k)
    labels = model.to_str_tokens(tokens[0])
    html = str(cv.attention.attention_heads(attention=pattern, tokens=labels))
    assert "<div" in html and "AttentionHeads" in html
    # the props CircuitsVis hands its React component are our pattern and tokens
    start = html.index('{"attention":')
    props, _ = json.JSONDecoder().raw_decode(html, start)
    assert props["tokens"] == labels
    assert torch.tensor(props["attention"]).shape == pattern.shape
    torch.testing.assert_close(torch.tensor(props["attention"]), pattern, atol=1e-6, rtol=0)
    # the head the shipped card calls an induction head attends one past the earlier copy
    half = tokens.shape[1] // 2
    assert float(pattern[0, -1, half]) > 0.5
