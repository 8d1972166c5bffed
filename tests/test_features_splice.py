"""features.splice: reconstructions in place of activations, the error term, feature patching
through the dictionary's hook points, factored streams, transcoders, head hooks, removal on
exit (also after an exception), and the refusals."""

from __future__ import annotations

import pytest
import torch

from interp import features
from interp.features import DictionaryError

from conftest import build, tiny, tokens


def sae_for(model, hook: str, arch: str = "topk", d_in=None, seed: int = 0, **over) -> features.SparseDictionary:
    torch.manual_seed(seed)
    cfg = dict(arch=arch, d_in=d_in or model.cfg.d_model, d_sae=96, hook_name=hook,
               model=features.model_identity(model), **({"k": 6} if arch == "topk" else {}))
    cfg.update(over)
    sae = features.make(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def activation(model, toks, hook):
    _, cache = model.run_with_cache(toks, names_filter=hook)
    return cache[hook]


@pytest.fixture
def model():
    return build(n_layers=2, d_model=32, n_heads=4)


def test_error_term_leaves_the_output_unchanged_and_reconstruction_replaces(model):
    toks = tokens(2, 10)
    hook = "blocks.0.hook_resid_post"
    sae = sae_for(model, hook)
    clean = model(toks)
    with features.splice(model, sae, include_error=True):
        torch.testing.assert_close(model(toks), clean, rtol=1e-5, atol=1e-5)
    with features.splice(model, sae):
        spliced = model(toks)
    manual = model.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: sae(a)[0])])
    torch.testing.assert_close(spliced, manual, rtol=1e-6, atol=1e-6)
    assert (spliced - clean).abs().max() > 1e-3  # a random dictionary changes the output


def test_features_are_cached_and_patchable(model):
    toks = tokens(2, 10)
    hook = "blocks.1.hook_resid_pre"
    sae = sae_for(model, hook)
    x = activation(model, toks, hook)
    with features.splice(model, sae, include_error=True):
        _, cache = model.run_with_cache(toks)
        torch.testing.assert_close(cache[f"{hook}.hook_sae_acts_post"], sae.encode(x))
        torch.testing.assert_close(cache[f"{hook}.hook_sae_error"], x - sae(x)[0], rtol=1e-5, atol=1e-5)
        z = sae.encode(x)
        j = int((z > 0).sum((0, 1)).argmax())  # a latent that fires

        def ablate(acts, hook):
            acts[..., j] = 0
            return acts

        patched = model.run_with_hooks(toks, fwd_hooks=[(f"{hook}.hook_sae_acts_post", ablate)])
    # by hand: the activation minus latent j's contribution (decoder row in model units)
    contribution = z[..., j : j + 1] * sae.W_dec[j] / sae.scale_out
    manual = model.run_with_hooks(toks, fwd_hooks=[(hook, lambda a, hook: a - contribution)])
    torch.testing.assert_close(patched, manual, rtol=1e-5, atol=1e-5)


def test_splice_survives_run_with_hooks_resetting_its_hooks(model):
    toks = tokens(2, 8)
    sae = sae_for(model, "blocks.0.hook_resid_post")
    with features.splice(model, sae):
        first = model(toks)
        model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: a)])  # resets TL hooks
        torch.testing.assert_close(model(toks), first)


def test_gradients_reach_the_features(model):
    toks = tokens(2, 8)
    sae = sae_for(model, "blocks.0.hook_resid_post")
    with features.splice(model, sae, include_error=True):
        model(toks, return_type="loss").backward()
    assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0


def test_removed_on_exit_even_after_an_exception(model):
    toks = tokens(2, 8)
    hook = "blocks.0.hook_resid_post"
    sae = sae_for(model, hook)
    clean = model(toks)
    names = set(model.hook_dict)
    with pytest.raises(RuntimeError, match="boom"):
        with features.splice(model, sae):
            assert f"{hook}.hook_sae_acts_post" in model.hook_dict
            raise RuntimeError("boom")
    assert set(model.hook_dict) == names
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())
    torch.testing.assert_close(model(toks), clean)
    assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"  # its own names again
    _, cache = sae.run_with_cache(torch.randn(3, 32))
    assert "hook_sae_acts_post" in cache


def test_factored_streams_and_read_only_views():
    model = tiny("factored")
    toks = tokens(2, 9)
    clean = model(toks)
    xt = sae_for(model, "blocks.1.hook_xt_mid")
    xe = sae_for(model, "blocks.0.hook_xe_post", arch="relu")
    with features.splice(model, xt, xe, include_error=True):
        _, cache = model.run_with_cache(toks)
        torch.testing.assert_close(model(toks), clean, rtol=1e-5, atol=1e-5)
    assert "blocks.1.hook_xt_mid.hook_sae_acts_post" in cache and "blocks.0.hook_xe_post.hook_sae_recons" in cache
    with features.splice(model, xt):
        manual = model.run_with_hooks(toks, fwd_hooks=[])  # spliced run (no extra hooks)
    by_hand = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_xt_mid", lambda a, hook: xt(a)[0])])
    torch.testing.assert_close(manual, by_hand, rtol=1e-6, atol=1e-6)
    with pytest.raises(DictionaryError, match="read-only view of xt \\+ xe.*blocks.1.hook_xt_post"):
        with features.splice(model, sae_for(model, "blocks.1.hook_resid_post")):
            pass


def test_transcoder_replaces_the_mlp_output(model):
    toks = tokens(2, 10)
    tc = sae_for(model, "blocks.0.hook_resid_mid", arch="relu", out_hook_name="blocks.0.hook_mlp_out", skip=True)
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.1)
    clean = model(toks)
    with features.splice(model, tc, include_error=True):
        torch.testing.assert_close(model(toks), clean, rtol=1e-5, atol=1e-5)
    with features.splice(model, tc):
        spliced = model(toks)
    x = activation(model, toks, "blocks.0.hook_resid_mid")
    manual = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: tc(x)[0])])
    torch.testing.assert_close(spliced, manual, rtol=1e-5, atol=1e-5)


def test_head_hooks_are_flattened(model):
    toks = tokens(2, 7)
    sae = sae_for(model, "blocks.1.attn.hook_z", d_in=model.cfg.n_heads * model.cfg.d_head)
    clean = model(toks)
    with features.splice(model, sae, include_error=True):
        torch.testing.assert_close(model(toks), clean, rtol=1e-5, atol=1e-5)
    with features.splice(model, sae):
        assert (model(toks) - clean).abs().max() > 0


def test_refusals_say_what_is_wrong(model):
    with pytest.raises(DictionaryError, match="not a hook of this model.*valid hooks: .*blocks.0.hook_resid_pre"):
        with features.splice(model, sae_for(model, "blocks.0.hook_resid_psot")):
            pass
    with pytest.raises(DictionaryError, match="d_in=40 does not fit blocks.0.hook_mlp_out, which is 32 wide"):
        with features.splice(model, sae_for(model, "blocks.0.hook_mlp_out", d_in=40)):
            pass
    other = build(n_layers=2, d_model=32, n_heads=2)
    with pytest.raises(DictionaryError, match="trained on another model.*n_heads: dictionary 2 vs model 4"):
        with features.splice(model, sae_for(other, "blocks.0.hook_resid_pre")):
            pass
    with features.splice(model, sae_for(other, "blocks.0.hook_resid_pre"), check_model=False):
        pass
    a, b = sae_for(model, "blocks.0.hook_resid_pre"), sae_for(model, "blocks.0.hook_resid_pre", seed=1)
    with pytest.raises(DictionaryError, match="several dictionaries read"):
        with features.splice(model, a, b):
            pass
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
