"""The loss path (`HookedTransformer.loss_from_resid`, `models.loss.unembed_cross_entropy`) is a
speed change only: same loss, per-token losses and gradients as the logits + `F.cross_entropy`
path, with and without vocabulary padding, masks, ignored labels and an unembedding bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny, tokens
from tolerance import OTHER_CODE, close
from models import loss as fused

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

VOCAB = 4100  # >= VOCAB_PAD_MIN and not a multiple of 64 -> padded to 4160 inside


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _plain(model, toks, labels=None, attention_mask=None, per_token=False):
    """The independent path: full logits, then `F.cross_entropy` (`loss_fn`)."""
    logits = model(toks, return_type="logits", attention_mask=attention_mask)
    return model.loss_fn(logits, toks if labels is None else labels, attention_mask, per_token=per_token)


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "gptj"])  # tied, untied, unembedding bias
@pytest.mark.parametrize("align", [64, 1])
def test_fused_loss_equals_logits_path(name, align, monkeypatch):
    monkeypatch.setattr(fused, "VOCAB_ALIGN", align)
    model = tiny(name, d_vocab=VOCAB).train()
    if model.b_U is not None:
        torch.nn.init.normal_(model.b_U, 0.0, 0.5)  # a zero bias would hide a wrong bias gradient
    toks = tokens(2, 10, vocab=VOCAB)
    labels = toks.clone()
    labels[0, 3] = -100
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :2] = False
    weights = torch.rand(2, 9)  # a non-uniform upstream gradient per token
    for kw in ({}, dict(labels=labels, attention_mask=mask)):
        for per_token in (False, True):
            model.zero_grad(set_to_none=True)
            ref = _plain(model, toks, per_token=per_token, **kw)
            (ref * weights if per_token else ref).sum().backward()
            g_ref = _grads(model)
            model.zero_grad(set_to_none=True)
            out = model(toks, return_type="loss", loss_per_token=per_token, **kw)
            (out * weights if per_token else out).sum().backward()
            g_out = _grads(model)
            close(out, ref)
            assert g_out.keys() == g_ref.keys()
            for n in g_ref:  # fp32 rounding differs (other summation order): relative to the largest entry
                close(g_out[n], g_ref[n], msg=n)


def test_ignored_and_masked_targets_get_no_loss_and_no_gradient():
    model = tiny("vanilla", d_vocab=VOCAB).train()
    toks = tokens(1, 6, vocab=VOCAB)
    labels = torch.full_like(toks, -100)
    per_token = model(toks, return_type="loss", labels=labels, loss_per_token=True)
    assert torch.all(per_token == 0)
    per_token.sum().backward()
    assert all(torch.all(p.grad == 0) for p in model.parameters() if p.grad is not None)


def test_eval_path_computes_the_same_loss_without_gradients():
    model = tiny("gptj", d_vocab=VOCAB).eval()
    toks = tokens(2, 7, vocab=VOCAB)
    with torch.no_grad():
        ref = _plain(model, toks, per_token=True)
        out = model(toks, return_type="loss", loss_per_token=True)
    close(out, ref)


def test_reference_kernel_is_softmax_minus_onehot():
    torch.manual_seed(0)
    logits = torch.randn(5, 70) * 3
    logits[:, 64:] = 123.0  # padded columns: must be ignored
    targets = torch.tensor([0, 63, -100, 17, 5])
    loss, grad = fused._xent_grad_reference(logits, targets, 64)
    real = logits[:, :64].clone().requires_grad_()
    ref = F.cross_entropy(real, targets, ignore_index=-100, reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(loss, ref.detach())
    close(grad[:, :64], real.grad)
    assert torch.all(grad[:, 64:] == 0) and torch.all(grad[2] == 0)


def test_logits_are_never_padded():
    model = tiny("vanilla", d_vocab=VOCAB)
    assert model(tokens(1, 5, vocab=VOCAB)).shape[-1] == VOCAB


def test_compiled_loss_path_matches_eager():
    model = tiny("vanilla", d_vocab=VOCAB).train()
    toks = tokens(2, 8, vocab=VOCAB)
    model.zero_grad(set_to_none=True)
    model(toks, return_type="loss").backward()
    g_eager = _grads(model)
    model.zero_grad(set_to_none=True)
    torch.compile(model)(toks, return_type="loss").backward()
    for n, g in _grads(model).items():
        close(g, g_eager[n], ulps=OTHER_CODE, msg=n)  # inductor writes its own kernels


def test_gradcheck_fp64():
    """Against finite differences (fp64), with an ignored target, a bias and a padded vocabulary."""
    torch.manual_seed(0)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    W = torch.randn(VOCAB, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(VOCAB, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 4099, -100, 0, 77, 3000])
    assert torch.autograd.gradcheck(lambda x, W, b: fused.unembed_cross_entropy(x, W, b, targets), (x, W, b))
