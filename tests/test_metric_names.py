"""Metrics by name (`"logit_diff"`, `"logprob"`, `"prob"`, `"loss"`) in activation, path and
attribution patching equal the metric built by hand from the unpatched runs; what cannot be
built is refused with the recipe. `hf.export_hf` on a model with no native class names the
`arch` that exports it."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny, tokens

from interp import attribution, patching
from models.hf import HFConversionError, export_hf

T = 6


def _setup(mask=None):
    model = tiny("vanilla", seed=2)  # a seed whose clean and corrupted runs predict different tokens
    return model, tokens(3, T, seed=1), tokens(3, T, seed=2), mask


def _top1(model, ids, mask):
    logits = model(ids, attention_mask=mask)
    last = torch.full((ids.shape[0],), T - 1) if mask is None else torch.tensor(
        [int(m.nonzero().max()) for m in mask])
    return logits[torch.arange(ids.shape[0]), last].argmax(-1), last


def _by_hand(name, model, clean, corrupted, mask):
    answer, last = _top1(model, clean, mask)
    if name == "loss":
        return patching.loss(clean, mask)
    if name == "logit_diff":
        return patching.logit_diff(answer, _top1(model, corrupted, mask)[0], last)
    return getattr(patching, name)(answer, last)


RIGHT_PADDED = torch.tensor([[1] * T, [1] * (T - 2) + [0] * 2, [1] * (T - 3) + [0] * 3], dtype=torch.bool)


@pytest.mark.parametrize("mask", [None, RIGHT_PADDED], ids=["unpadded", "right-padded"])
@pytest.mark.parametrize("name", ["logit_diff", "logprob", "prob", "loss"])
def test_a_name_equals_the_metric_built_by_hand(name, mask):
    model, clean, corrupted, mask = _setup(mask)
    want = _by_hand(name, model, clean, corrupted, mask)
    for direction in ("denoise", "noise"):
        got = patching.activation_patching(model, clean, corrupted, name, "resid_pre", attention_mask=mask,
                                           direction=direction)
        ref = patching.activation_patching(model, clean, corrupted, want, "resid_pre", attention_mask=mask,
                                           direction=direction)
        torch.testing.assert_close(got.values, ref.values, rtol=0, atol=0)  # the same metric, the same forwards
        torch.testing.assert_close(got.baseline, ref.baseline, rtol=0, atol=0)
    assert got.values.isfinite().all() and not torch.equal(got.baseline, got.source)


def test_names_in_a_mapping_and_in_path_and_attribution_patching():
    model, clean, corrupted, _ = _setup()
    many = patching.activation_patching(model, clean, corrupted, {"ld": "logit_diff", "lp": patching.logprob(3)})
    ld = patching.activation_patching(model, clean, corrupted, _by_hand("logit_diff", model, clean, corrupted, None))
    torch.testing.assert_close(many.values[0], ld.values, rtol=0, atol=0)
    want = _by_hand("logprob", model, clean, corrupted, None)
    path = patching.path_patching(model, clean, corrupted, "logprob", receivers=[(1, 0)])
    torch.testing.assert_close(path.values, patching.path_patching(model, clean, corrupted, want, receivers=[(1, 0)]).values,
                               rtol=0, atol=0, equal_nan=True)
    est = attribution.attribution_patching(model, clean, corrupted, "loss", acts=["resid_pre"])["resid_pre"]
    ref = attribution.attribution_patching(model, clean, corrupted, patching.loss(clean), acts=["resid_pre"])["resid_pre"]
    torch.testing.assert_close(est.values, ref.values, rtol=0, atol=0)


def test_what_cannot_be_built_is_refused_with_the_recipe():
    model, clean, corrupted, _ = _setup()
    with pytest.raises(ValueError, match=r"both runs predict the same token for prompt\(s\) \[0, 1, 2\].*"
                                         r"interp\.patching\.logit_diff\(answer="):
        patching.activation_patching(model, clean, clean, "logit_diff")
    with pytest.raises(ValueError, match=r"unknown metric 'logits'.*\['logit_diff', 'logprob', 'prob', 'loss'\]"
                                         r".*interp\.patching\.logprob\(target="):
        patching.activation_patching(model, clean, corrupted, "logits")
    with pytest.raises(ValueError, match=r"metric must be a name .* got int 3.*interp\.patching\.loss\(tokens"):
        patching.activation_patching(model, clean, corrupted, 3)
    with pytest.raises(ValueError, match="unknown metric 'lp'"):
        attribution.attribution_patching(model, clean, corrupted, "lp")


@pytest.mark.parametrize("preset,why", [("factored", "stream='factored'"), ("sasp", "block='shaped'")])
def test_export_hf_refusal_names_the_arch_that_exports(tmp_path, preset, why):
    model = tiny(preset)
    with pytest.raises(HFConversionError, match=rf"{why}.*arch='auto'.*arch='wrapper'"):
        export_hf(model, tmp_path / "native")
    hf_model = export_hf(model, tmp_path / "auto", arch="auto")
    assert type(hf_model).__name__ == "InterpForCausalLM"
    assert (tmp_path / "auto" / "model.safetensors").is_file()
