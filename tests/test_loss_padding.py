"""The loss path's padded vocabulary (`HookedTransformer._unembed_for_loss`) is a speed change
only: same loss, per-token losses and gradients as the plain unembedding."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny, tokens
from models import transformer

VOCAB = 4100  # >= UNEMBED_PAD_MIN and not a multiple of 64 -> padded to 4160


def _loss_and_grads(model, toks, align, **kw):
    old = transformer.UNEMBED_ALIGN
    transformer.UNEMBED_ALIGN = align
    try:
        model.zero_grad(set_to_none=True)
        loss = model(toks, return_type="loss", **kw)
        loss.sum().backward()
    finally:
        transformer.UNEMBED_ALIGN = old
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "gptj"])  # tied, untied, unembedding bias
def test_padded_loss_equals_plain(name):
    model = tiny(name, d_vocab=VOCAB).train()
    toks = tokens(2, 10, vocab=VOCAB)
    labels = toks.clone()
    labels[0, 3] = -100
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :2] = False
    for kw in ({}, dict(labels=labels, attention_mask=mask, loss_per_token=True)):
        plain, g_plain = _loss_and_grads(model, toks, 1, **kw)
        padded, g_padded = _loss_and_grads(model, toks, 64, **kw)
        torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
        assert g_padded.keys() == g_plain.keys()
        for n in g_plain:
            torch.testing.assert_close(g_padded[n], g_plain[n], atol=1e-6, rtol=1e-4, msg=n)
        assert torch.isfinite(padded).all()


def test_padding_applies_only_to_large_unaligned_vocabularies(monkeypatch):
    model = tiny("vanilla", d_vocab=VOCAB)
    x = torch.randn(1, 3, model.cfg.d_model)
    assert model._unembed_for_loss(x).shape[-1] == 4160
    assert torch.all(model._unembed_for_loss(x)[..., VOCAB:] == float("-inf"))
    small = tiny("vanilla", d_vocab=65)
    assert small._unembed_for_loss(torch.randn(1, 3, small.cfg.d_model)).shape[-1] == 65
    # the logits a caller sees are never padded
    assert model(tokens(1, 5, vocab=VOCAB)).shape[-1] == VOCAB
