"""Steering with and ablating features (interp.features.steering) on tiny fixture models.

Cross-checks: ablation equals splicing the dictionary with its error term and zeroing the
latent (`features.splice`), steering equals raising the latent by alpha inside that splice,
a position-restricted intervention through the KV-cached generation equals a plain
re-run-everything greedy loop, and a large alpha drives the prediction to the latent's top
logit-effect token. Exactness where the maths is exact: alpha = 0 and ablating a latent that
never fires change no bit.
"""

from __future__ import annotations

import math

import pytest
import torch

import interp
from app_fixtures import make_checkpoint  # tests/ is on sys.path (rootdir conftest)
from interp import features
from interp.features import DictionaryError
from interp.features import steering
from interp.features.dashboards.compute import logit_effects

PROMPT = "To be, or not to be"
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32 logits of a tiny model (|logit| ~ 10): two routes to one sum


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_ckpts")
    return {n: make_checkpoint(root, n) for n in ("shakespeare_vanilla", "shakespeare_factored_alibi")}


@pytest.fixture(scope="module")
def model(ckpts):
    return interp.load(ckpts["shakespeare_vanilla"])[0].eval()


def make(model, hook="blocks.0.hook_resid_post", d_sae=32, arch="relu", seed=0, **kw):
    torch.manual_seed(seed)
    width = kw.pop("d_in", model.cfg.d_model)
    sae = features.make(dict(arch=arch, d_in=width, d_sae=d_sae, hook_name=hook, model=features.model_identity(model),
                             **kw))
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-1.0, 1.0, d_sae))
        sae.b_enc[0] = -1e4  # latent 0 never fires
    return sae.eval()


def tokens_of(model, text=PROMPT):
    return model.to_tokens(text)[0]


def logits_with(model, tokens, hooks):
    with model.hooks(fwd_hooks=hooks):
        return model(tokens[None])[0]


# ------------------------------------------------------------------ exactness
def test_alpha_zero_changes_nothing(model):
    sae = make(model)
    r = features.steer(model, sae, 5, PROMPT, alpha=0.0, max_new_tokens=8)
    assert torch.equal(r.before.probs, r.after.probs)
    assert r.before.continuation == r.after.continuation and len(r.after.continuation) == 8
    assert r.kl == 0.0


def test_ablating_a_latent_that_never_fires_changes_nothing(model):
    sae = make(model)
    t = tokens_of(model)
    _, cache = model.run_with_cache(t[None])
    assert not bool((sae.encode(cache[sae.cfg.hook_name])[..., 0] > 0).any())
    r = features.ablate(model, sae, 0, t, max_new_tokens=8)
    assert torch.equal(r.before.probs, r.after.probs) and r.before.continuation == r.after.continuation
    hooks, _ = steering.ablation_hooks(sae, [0])
    assert torch.equal(logits_with(model, t, hooks), model(t[None])[0])


# ------------------------------------------------------------------ against the splice
def _splice_logits(model, sae, t, edit):
    name = f"{sae.cfg.hook_name}.hook_sae_acts_post"
    with features.splice(model, sae, include_error=True):
        return model.run_with_hooks(t[None], fwd_hooks=[(name, edit)])[0]


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_ablation_equals_zeroing_the_latent_in_the_splice(model, kind):
    if kind == "sae":
        sae = make(model)
    else:
        sae = make(model, hook="blocks.0.ln2.hook_normalized", out_hook_name="blocks.0.hook_mlp_out")
    t = tokens_of(model)
    _, cache = model.run_with_cache(t[None])
    z = sae.encode(cache[sae.cfg.hook_name])[0].detach()
    live = [int(i) for i in z.sum(0).argsort(descending=True)[:3]]
    assert all(float(z[:, i].sum()) > 0 for i in live)

    def zero(acts, hook):
        acts = acts.clone()
        acts[..., live] = 0
        return acts

    hooks, _ = steering.ablation_hooks(sae, live)
    ours = logits_with(model, t, hooks)
    theirs = _splice_logits(model, sae, t, zero)
    torch.testing.assert_close(ours, theirs, **TOL)
    assert (ours - model(t[None])[0]).abs().max() > 1e-3  # it did something


def test_steering_equals_raising_the_latent_in_the_splice(model):
    sae = make(model, hook="blocks.0.ln2.hook_normalized", out_hook_name="blocks.0.hook_mlp_out")
    t = tokens_of(model)

    def raise_(acts, hook):
        acts = acts.clone()
        acts[..., 7] += 2.5
        return acts

    hooks, _ = steering.steering_hooks(sae, 7, 2.5)
    torch.testing.assert_close(logits_with(model, t, hooks), _splice_logits(model, sae, t, raise_), **TOL)


# ------------------------------------------------------------------ positions and generation
def test_positions_touch_only_those_tokens(model):
    sae = make(model)
    t = tokens_of(model)
    T = len(t)
    clean = model(t[None])[0]
    hooks, track = steering.steering_hooks(sae, 9, 3.0, positions=[T - 3])
    track.reset()
    out = logits_with(model, t, hooks)
    assert torch.equal(out[: T - 3], clean[: T - 3])  # causal: earlier positions untouched
    assert (out[T - 3] - clean[T - 3]).abs().max() > 1e-3


def test_generation_through_the_kv_cache_equals_a_plain_loop(model):
    """Steering at one prompt position: the cached step-by-step generation (the steered key
    and value stay in the cache, new tokens are not steered) equals re-running the whole
    sequence each step with a hook that adds at that position only."""
    sae = make(model)
    t = tokens_of(model)
    T, n = len(t), 10
    r = features.steer(model, sae, 9, t, alpha=4.0, positions=[T - 2], max_new_tokens=n)
    vec = 4.0 * steering.direction(sae, 9)

    def at_pos(act, hook):
        act = act.clone()
        act[:, T - 2] += vec
        return act

    seq = t.clone()
    for _ in range(n):
        nxt = logits_with(model, seq, [(sae.cfg.hook_name, at_pos)])[-1].argmax()
        seq = torch.cat([seq, nxt[None]])
    assert r.after.continuation == seq[T:].tolist()
    assert r.positions == [T - 2]


def test_all_positions_steer_generated_tokens_too(model):
    sae = make(model)
    t = tokens_of(model)
    T, n = len(t), 6
    r = features.steer(model, sae, 9, t, alpha=4.0, max_new_tokens=n)
    vec = 4.0 * steering.direction(sae, 9)
    seq = t.clone()
    for _ in range(n):
        nxt = logits_with(model, seq, [(sae.cfg.hook_name, lambda a, hook: a + vec)])[-1].argmax()
        seq = torch.cat([seq, nxt[None]])
    assert r.after.continuation == seq[T:].tolist()


# ------------------------------------------------------------------ what steering does
def test_large_alpha_on_a_token_like_feature_pushes_its_top_tokens_up(model):
    """A latent whose decoder row is token t's unembedding direction (centred, the final
    norm's weight folded in), at the last block's output: t tops its logit effect, and a large
    alpha makes t the prediction. For random latents a large alpha still raises their top
    logit-effect tokens and lowers their bottom ones."""
    L = model.cfg.n_layers
    sae = make(model, hook=f"blocks.{L - 1}.hook_resid_post", seed=3)
    t = model.to_single_token("e")
    u = model.tokens_to_residual_directions(t).detach()
    u = u - u.mean()
    with torch.no_grad():
        sae.W_dec[4] = u / u.norm() * sae.scale_out
    effects, _ = logit_effects(sae, model, k=5)
    assert effects["top_id"][4, 0] == t
    for latent in (4, 11, 20):
        top, bottom = effects["top_id"][latent].tolist(), effects["bottom_id"][latent].tolist()
        r0 = features.steer(model, sae, latent, PROMPT, alpha=0.0, max_new_tokens=0)
        alpha = 100 * r0.act_norm / float(steering.direction(sae, latent).norm())
        r = features.steer(model, sae, latent, PROMPT, alpha=alpha, max_new_tokens=0)
        assert float(r.after.probs[top[:3]].sum()) > float(r.before.probs[top[:3]].sum())
        assert float(r.after.probs[bottom[:3]].sum()) < float(r.before.probs[bottom[:3]].sum())
        if latent == 4:
            assert r.after.top[0][0] == t and r.change(t) > 0.5, (r.before.top[:3], r.after.top[:3])


def test_a_factored_model_steers_its_streams(ckpts):
    m = interp.load(ckpts["shakespeare_factored_alibi"])[0].eval()
    sae = make(m, hook="blocks.0.hook_xe_post")
    r = features.steer(m, sae, 3, PROMPT, alpha=0.0, max_new_tokens=3)
    assert torch.equal(r.before.probs, r.after.probs)
    assert features.steer(m, sae, 3, PROMPT, alpha=5.0, max_new_tokens=3).kl > 0
    bad = make(m, hook="blocks.0.hook_resid_post")
    with pytest.raises(DictionaryError, match="read-only view of xt \\+ xe"):
        features.steer(m, bad, 3, PROMPT, alpha=1.0)


# ------------------------------------------------------------------ bad input
def test_refusals(model, ckpts, monkeypatch):
    sae = make(model)
    with pytest.raises(DictionaryError, match=r"latent 32 is out of range.*32 latents \(0 to 31\)"):
        features.steer(model, sae, 32, PROMPT, alpha=1.0)
    with pytest.raises(DictionaryError, match="out of range"):
        features.ablate(model, sae, [1, -2], PROMPT)
    for a in (math.nan, math.inf):
        with pytest.raises(DictionaryError, match="alpha must be a finite number"):
            features.steer(model, sae, 3, PROMPT, alpha=a)
    with pytest.raises(DictionaryError, match=r"more than 1000 times the activation's mean norm.*\|alpha\| up to"):
        features.steer(model, sae, 3, PROMPT, alpha=1e9)
    monkeypatch.setattr(steering, "MAX_STEER", math.inf)
    with pytest.raises(DictionaryError, match=r"logits overflow \(inf / nan\)"):
        features.steer(model, sae, 3, PROMPT, alpha=1e38)
    with pytest.raises(DictionaryError, match="outside this"):
        features.steer(model, sae, 3, PROMPT, alpha=1.0, positions=[99])
    with pytest.raises(DictionaryError, match=r"longer than this model's context \(n_ctx=48\)"):
        features.steer(model, sae, 3, "x" * 60, alpha=1.0)
    with pytest.raises(DictionaryError, match="is not a hook of this model"):
        features.steer(model, make(model, hook="blocks.9.hook_resid_post"), 3, PROMPT, alpha=1.0)
    with pytest.raises(DictionaryError, match="cannot tokenize the prompt"):
        features.steer(model, sae, 3, "ünïcødé ☃", alpha=1.0)
    other = interp.load(ckpts["shakespeare_factored_alibi"])[0]
    with pytest.raises(DictionaryError, match="trained on another model"):
        features.steer(other, make(model, hook="blocks.0.hook_xt_post"), 3, PROMPT, alpha=1.0)


def test_generation_stops_at_the_context_of_a_learned_position_model(model):
    sae = make(model)
    t = tokens_of(model, "x" * 40)
    r = features.steer(model, sae, 3, t, alpha=1.0, max_new_tokens=20)
    assert len(t) + len(r.after.continuation) <= model.cfg.n_ctx


def test_cli_steer_and_ablate(model, ckpts, tmp_path):
    import json

    from typer.testing import CliRunner

    from interp.cli import app

    sae = make(model)
    sae.cfg.model["checkpoint"] = str(ckpts["shakespeare_vanilla"])
    sae.save(tmp_path / "sae")
    runner = CliRunner()
    r = runner.invoke(app, ["features", "steer", str(tmp_path / "sae"), "--latent", "5", "--alpha", "0",
                            "--prompt", PROMPT, "--new", "5"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["kl"] == 0 and out["before"] == out["after"] and out["hook"] == "blocks.0.hook_resid_post"
    r = runner.invoke(app, ["features", "steer", str(tmp_path / "sae"), "--latent", "5", "--latent", "6", "--ablate",
                            "--prompt", PROMPT, "--pos", "-1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["positions"] == [len(tokens_of(model)) - 1]
    r = runner.invoke(app, ["features", "steer", str(tmp_path / "sae"), "--latent", "99", "--alpha", "1",
                            "--prompt", PROMPT])
    assert r.exit_code == 1 and "out of range" in r.output and "Traceback" not in r.output
