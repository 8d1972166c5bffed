"""tests/tolerance.py in both directions: its tolerances pass honest reorderings (float32 vs a
float64 recomputation, which bounds any float32 summation order) and fail a real bug of the
smallest kind (one weight entry of thousands moved by 1% of the weights' std), on the comparisons the
suite makes: a factored-ALiBi model's latent thoughts (values near 80, where a fixed 1e-5
absolute tolerance broke on another CPU), logits, patching values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny, tokens
from tolerance import OTHER_CODE, SAME_CODE, approx_tol, tol

from interp import patching
from models.thoughts import LatentReasoner, latent_forward_naive

pytestmark = pytest.mark.equivalence


def fails(actual, expected, **kw) -> bool:
    try:
        torch.testing.assert_close(actual, expected, **tol(expected, **kw))
    except AssertionError:
        return True
    return False


def nudge(model, name: str, rel: float = 1e-2):
    """A copy of `model` with one entry of parameter `name` moved by `rel` x that tensor's std."""
    bad = copy.deepcopy(model)
    p = dict(bad.named_parameters())[name]
    with torch.no_grad():
        p.view(-1)[p.numel() // 2] += rel * float(p.std())
    return bad


def test_the_formula():
    x = torch.tensor([80.0, -3.0, 1e-3])
    t = tol(x)
    assert t["rtol"] == SAME_CODE * torch.finfo(torch.float32).eps and t["atol"] == pytest.approx(t["rtol"] * 80)
    assert tol(x.double())["rtol"] == SAME_CODE * torch.finfo(torch.float64).eps
    assert tol(x, scale=1.0)["atol"] == t["rtol"]
    assert tol(torch.tensor([float("nan"), 2.0]))["atol"] == pytest.approx(t["rtol"] * 2)  # NaN ignored
    assert approx_tol(2.0, ulps=OTHER_CODE) == {"rel": OTHER_CODE * torch.finfo(torch.float32).eps,
                                                "abs": pytest.approx(2 * OTHER_CODE * torch.finfo(torch.float32).eps)}


def test_latent_thoughts_near_80_pass_float64_and_fail_a_nudged_weight():
    torch.manual_seed(0)
    from test_thoughts import model_for, ragged_batch

    model = model_for("factored", "alibi")
    ids = ragged_batch()
    with torch.no_grad():
        reasoner = LatentReasoner(model, 9)
        logits = reasoner(ids)
        thoughts = reasoner.thoughts
        ref_logits, ref_thoughts = latent_forward_naive(copy.deepcopy(model).double(), ids, 9)
        bad_logits, bad_thoughts = latent_forward_naive(nudge(model, "blocks.0.attn.qkv.weight"), ids, 9)
    assert float(ref_thoughts.abs().max()) > 50  # the magnitudes that broke atol=1e-5
    assert not fails(thoughts, ref_thoughts.float()) and not fails(logits, ref_logits.float())
    assert fails(thoughts, bad_thoughts) and fails(logits, bad_logits)


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "factored-alibi", "sasp"])
def test_logits_and_gradients(name):
    model = tiny(name)
    toks = tokens(2, 12)
    exact = copy.deepcopy(model).double()
    assert not fails(model(toks), exact(toks).float())
    assert fails(model(toks), nudge(model, "blocks.1.mlp.fc_out.weight")(toks))
    model(toks, return_type="loss").backward()
    exact(toks, return_type="loss").backward()
    for (n, p), q in zip(model.named_parameters(), exact.parameters()):
        assert not fails(p.grad, q.grad.float()), n
    bad = nudge(model, "blocks.1.mlp.fc_in.weight")
    bad.zero_grad()
    bad(toks, return_type="loss").backward()
    qkv = "blocks.0.attn.qkv.weight"
    assert fails(dict(bad.named_parameters())[qkv].grad, dict(model.named_parameters())[qkv].grad)


def test_patching_values_with_the_other_code_margin():
    """Patching values are differences of logits: OTHER_CODE, scaled by the values, still
    sees one nudged weight."""
    model = tiny("vanilla")
    clean, corrupted = tokens(2, 6, seed=1), tokens(2, 6, seed=2)
    metric = patching.logit_diff(3, 5)
    ours = patching.activation_patching(model, clean, corrupted, metric, "resid_pre").values
    exact = patching.activation_patching(copy.deepcopy(model).double(), clean, corrupted, metric, "resid_pre").values
    bad = patching.activation_patching(nudge(model, "blocks.1.mlp.fc_in.weight"), clean, corrupted, metric, "resid_pre").values
    assert not fails(ours, exact.float(), ulps=OTHER_CODE)
    assert fails(ours, bad, ulps=OTHER_CODE)
