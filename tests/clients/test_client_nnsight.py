"""nnsight on our models: every hook readable with no TransformerLens hook attached (the layer a
trace asks for leaves the fused path, the others stay on it), and interventions that give the
numbers our own hooks and interp.patching give. Runs in .venv-clients/nnsight."""

from __future__ import annotations

import pytest
import torch

nnsight = pytest.importorskip("nnsight")
pytestmark = pytest.mark.clients

from common import TOL, induction_tokens, load  # noqa: E402


def _envoy(wrapped, name):
    envoy = wrapped
    for part in name.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


@pytest.mark.parametrize("ckpt", ["shakespeare_factored_alibi", "shakespeare_vanilla", "induction_attn_only"])
def test_trace_reads_patterns_scores_and_norm_scales(ckpt):
    model = load(ckpt)
    tokens = induction_tokens(model) if ckpt.startswith("induction") else model.to_tokens(["To be, or not", "to be: that is"])
    logits, cache = model.run_with_cache(tokens)
    names = []
    for i in range(model.cfg.n_layers):
        names += [f"blocks.{i}.ln1.hook_scale", f"blocks.{i}.ln1.hook_normalized",
                  f"blocks.{i}.attn.hook_attn_scores", f"blocks.{i}.attn.hook_pattern", f"blocks.{i}.hook_resid_post"]
    names += ["ln_final.hook_scale"]
    wrapped = nnsight.NNsight(model)
    saved = {}
    with wrapped.trace(tokens):
        for name in names:
            saved[name] = _envoy(wrapped, name).output.save()
        out = wrapped.output.save()
    torch.testing.assert_close(out, logits, **TOL)
    for name in names:
        want, got = cache[name], saved[name]
        assert got.shape == want.shape, name
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got)), name
        torch.testing.assert_close(got[finite], want[finite], **TOL, msg=name)


def test_only_the_traced_layer_leaves_the_fused_path():
    model = load("shakespeare_vanilla")
    tokens = model.to_tokens("Now is the winter")
    wrapped = nnsight.NNsight(model)
    with wrapped.trace(tokens):
        pattern = wrapped.blocks[2].attn.hook_pattern.output.save()
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa", "explicit", "sdpa"]
    assert pattern.shape[-1] == tokens.shape[1]
    with wrapped.trace(tokens):
        wrapped.blocks[1].hook_resid_post.output.save()
    assert {b.attn.last_path for b in model.blocks} == {"sdpa"}  # nothing asked for a pattern
    model(tokens)  # outside a trace: the plain model, fused everywhere
    assert {b.attn.last_path for b in model.blocks} == {"sdpa"}


def test_intervention_matches_our_hooks_and_patching():
    """Patch one head's z from the clean run into the corrupted run through nnsight; the metric
    equals interp.patching.activation_patching's cell and a run_with_hooks edit."""
    from interp import patching

    model = load("induction_attn_only")
    clean = induction_tokens(model, seed=1)
    corrupted = induction_tokens(model, seed=2)
    last = clean.shape[1] - 1
    answer, wrong = clean[:, last], corrupted[:, last]

    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return (logits[rows, -1, answer] - logits[rows, -1, wrong]).mean()

    result = patching.activation_patching(model, clean, corrupted, metric, act="z", by="head")
    _, clean_cache = model.run_with_cache(clean)
    wrapped = nnsight.NNsight(model)
    for layer, head in [(0, 0), (1, 0), (1, 3)]:
        with wrapped.trace(corrupted):
            z = wrapped.blocks[layer].attn.hook_z.output
            z[:, :, head] = clean_cache["z", layer][:, :, head]
            logits = wrapped.output.save()
        via_nnsight = float(metric(logits))

        def put(z, hook, layer=layer, head=head):
            z = z.clone()
            z[:, :, head] = clean_cache["z", layer][:, :, head]
            return z

        via_hooks = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", put)])))
        assert via_nnsight == pytest.approx(via_hooks, abs=1e-5)
        assert via_nnsight == pytest.approx(float(result.values[layer, head]), abs=1e-4)
    # an edit of a pattern (explicit path, on request) reaches the output as a hook edit does
    with wrapped.trace(corrupted):
        p = wrapped.blocks[1].attn.hook_pattern.output
        p[:, 0] = 0.0
        edited = wrapped.output.save()

    def zero_head(p, hook):
        p = p.clone()
        p[:, 0] = 0.0
        return p

    torch.testing.assert_close(edited, model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_pattern", zero_head)]), **TOL)
