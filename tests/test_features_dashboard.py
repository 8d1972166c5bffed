"""Feature dashboards (interp.features.dashboards) against a naive whole-set computation.

Everything is checked on tiny cases where the naive answer fits in memory: the dense latents
of every token, sorted per latent, for the top contexts and their windows; equal-width bins of
(0, max] counted directly for the histogram and the activation intervals; the logit effect
from the raw weights; decoder neighbours from a full cosine matrix. The store round-trips
through disk, and bad input gets one DictionaryError naming what is wrong.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import interp
from app_fixtures import make_checkpoint  # tests/ is on sys.path (rootdir conftest)
from interp import features
from interp.features import DictionaryError
from interp.features.dashboards.compute import collect, top_per_group

CTX = (3, 2)
# fp32 latents from a batched vs a whole-set forward: sums over d_model=128 terms of size ~1
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("dash_ckpt"), "induction_attn_only")


@pytest.fixture(scope="module")
def model(ckpt):
    m, _ = interp.load(ckpt)
    return m


def make_sae(model, ckpt, arch="relu", d_sae=24, hook="blocks.0.hook_resid_post", seed=0, **kw):
    torch.manual_seed(seed)
    width = model.cfg.d_model
    sae = features.make(dict(arch=arch, d_in=width, d_sae=d_sae, hook_name=hook,
                             model=features.model_identity(model, str(ckpt)), **kw))
    with torch.no_grad():  # some latents fire often, some rarely, one never
        sae.b_enc.copy_(torch.linspace(-2.0, 0.5, d_sae))
        sae.b_enc[-1] = -1e4
    return sae.eval()


def padded_batches(model, n=10, T=14, seed=0):
    """Random tokens with BOS first and right padding (a padded task's batches)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab - 3, (n, T), generator=g)
    tokens[:, 0] = model.cfg.bos_token_id
    lengths = torch.randint(5, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    tokens[~mask] = model.cfg.pad_token_id or 0
    return [features.TokenBatch(tokens[:4], mask[:4]), features.TokenBatch(tokens[4:], mask[4:])]


def naive_latents(model, sae, batches):
    """(n_seq, T, d_sae) latents of every token (0 on pads and the leading BOS), in one go."""
    tokens = torch.cat([b.tokens for b in batches])
    mask = torch.cat([b.mask for b in batches])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    z = sae.encode(cache[sae.cfg.hook_name]).detach()
    scored = mask.clone()
    scored[:, 0] &= tokens[:, 0] != model.cfg.bos_token_id
    return z * scored[..., None], tokens, mask


@pytest.fixture(scope="module")
def case(model, ckpt, tmp_path_factory):
    sae = make_sae(model, ckpt)
    batches = padded_batches(model)
    out = tmp_path_factory.mktemp("dash") / "store"
    store = features.dashboard(sae, model, out=out, data=batches, n_top=5, n_intervals=4, per_interval=3,
                               n_bins=7, n_logits=4, n_neighbours=3, context=CTX, progress=False)
    z, tokens, mask = naive_latents(model, sae, batches)
    return dict(sae=sae, store=store, z=z, tokens=tokens, mask=mask, out=out, batches=batches)


def window(z, seq, pos, lat, before=CTX[0], after=CTX[1]):
    T = z.shape[1]
    return [float(z[seq, p, lat]) if 0 <= p < T else 0.0 for p in range(pos - before, pos + after + 1)]


# ------------------------------------------------------------------ the streaming pieces
def test_top_per_group_is_a_per_group_sort():
    g = torch.Generator().manual_seed(0)
    group = torch.randint(0, 6, (200,), generator=g)
    key = torch.rand(200, generator=g)
    idx, rank = top_per_group(group, key, 4)
    for j in range(6):
        mine = idx[group[idx] == j]
        ranks = rank[group[idx] == j]
        want = (key * (group == j) - (group != j).float()).argsort(descending=True)[: min(4, int((group == j).sum()))]
        assert mine[ranks.argsort()].tolist() == want.tolist()


def test_top_contexts_equal_the_naive_sort(case):
    z, store = case["z"], case["store"]
    T = z.shape[1]
    flat = z.reshape(-1, z.shape[-1])
    assert store.manifest["tokens"]["n_scored"] == int(case["mask"].sum() - case["mask"].shape[0])  # BOS left out
    for lat in range(z.shape[-1]):
        d = store.latent(lat)
        col = flat[:, lat]
        fired = int((col > 0).sum())
        assert d.n_fired == fired
        order = col.argsort(descending=True)[: min(5, fired)]
        np.testing.assert_allclose([c.value for c in d.top], col[order].numpy(), rtol=RTOL, atol=ATOL)
        chosen = [c.seq * T + c.pos for c in d.top]  # equal activations (same prefix) may tie: any of them
        assert len(set(chosen)) == len(chosen)
        np.testing.assert_allclose(col[chosen].numpy(), [c.value for c in d.top], rtol=RTOL, atol=ATOL)
        for c in d.top:  # the window: real tokens only, activations of this latent on each
            want = window(z, c.seq, c.pos, lat)
            keep = [j for j, p in enumerate(range(c.pos - CTX[0], c.pos + CTX[1] + 1))
                    if 0 <= p < T and bool(case["mask"][c.seq, p])]
            np.testing.assert_allclose(c.acts, [want[j] for j in keep], rtol=RTOL, atol=ATOL)
            assert c.tokens == [int(case["tokens"][c.seq, c.pos - CTX[0] + j]) for j in keep]
            assert c.acts[c.at] == pytest.approx(c.value, rel=RTOL, abs=ATOL)
        if fired:
            assert d.max_act == pytest.approx(float(col.max()), rel=RTOL, abs=ATOL)
            assert d.mean_act == pytest.approx(float(col[col > 0].mean()), rel=RTOL, abs=ATOL)
            assert d.density == pytest.approx(fired / store.manifest["tokens"]["n_scored"])
    assert store.latent(z.shape[-1] - 1).dead and store.latent(z.shape[-1] - 1).top == []


def test_histogram_and_activation_bins_equal_direct_counts(case):
    z, store = case["z"], case["store"]
    T = z.shape[1]
    flat = z.reshape(-1, z.shape[-1])
    live = [lat for lat in range(z.shape[-1]) if bool((flat[:, lat] > 0).any())]
    assert len(live) >= 12
    for lat in live:
        d = store.latent(lat)
        col = flat[:, lat].double()
        vals = col[col > 0]
        peak = float(vals.max())
        share = vals / peak
        hist = np.bincount((np.ceil(share.numpy() * 7) - 1).clip(0, 6).astype(int), minlength=7)
        assert d.hist_counts == hist.tolist()
        assert sum(d.hist_counts) == d.n_fired
        np.testing.assert_allclose(d.hist_edges, np.linspace(0, peak, 8), rtol=RTOL, atol=ATOL)
        bins = (np.ceil(share.numpy() * 4) - 1).clip(0, 3).astype(int)
        assert [iv.count for iv in d.intervals] == np.bincount(bins, minlength=4).tolist()
        for j, iv in enumerate(d.intervals):
            assert len(iv.contexts) == min(3, iv.count)
            tokens = [c.seq * T + c.pos for c in iv.contexts]
            assert len(set(tokens)) == len(tokens)
            for c in iv.contexts:
                assert float(flat[c.seq * T + c.pos, lat]) == pytest.approx(c.value, rel=RTOL, abs=ATOL)
                assert iv.lo - ATOL <= c.value <= iv.hi + ATOL and c.value > 0
            if iv.count <= 3:  # the bin is small: the sample is the whole bin
                members = (torch.nonzero(col > 0).flatten()[torch.from_numpy(bins == j)]).tolist()
                assert set(tokens) == set(members)


def test_bin_samples_are_uniform():
    """One latent, 40 tokens in its top bin, 5 drawn per run: over 400 seeds every token is
    drawn about 400 * 5 / 40 = 50 times (a binomial, sd ~ 6.6)."""
    z = torch.zeros(1, 41, 1)
    z[0, :40, 0] = 1.0 + torch.rand(40) * 1e-3
    z[0, 40, 0] = 0.1  # another bin: the top bin is (0.75 max, max]
    picks = torch.zeros(40)
    for seed in range(400):
        out = collect(lambda: iter([(z, 0)]), 1, 41, n_top=1, n_intervals=4, per_interval=5, n_bins=4, context=(0, 0),
                      seed=seed)
        tok = out["interval_token"][0, 3]
        assert len(set(tok.tolist())) == 5
        picks[tok] += 1
    assert int(picks.sum()) == 2000
    assert picks.min() > 20 and picks.max() < 80, picks


def test_batches_do_not_change_the_result(model, ckpt, case, tmp_path, monkeypatch):
    """Streaming over batches of 1 row, with the model run again for the second pass (no
    inputs kept), gives what one pass over bigger batches gave."""
    import interp.features.dashboards as dashboards

    monkeypatch.setattr(dashboards, "CACHE_BYTES", 0)
    rows = [features.TokenBatch(b.tokens[i : i + 1], b.mask[i : i + 1]) for b in case["batches"] for i in range(len(b.tokens))]
    s1 = features.dashboard(case["sae"], model, out=tmp_path / "s1", data=rows, n_top=5, n_intervals=4, per_interval=3,
                            n_bins=7, n_logits=4, n_neighbours=3, context=CTX, progress=False)
    for lat in (0, 5, 11):
        a, b = s1.latent(lat), case["store"].latent(lat)
        assert [c.value for c in a.top] == pytest.approx([c.value for c in b.top], rel=RTOL, abs=ATOL)
        assert a.hist_counts == b.hist_counts and a.n_fired == b.n_fired
        assert [iv.count for iv in a.intervals] == [iv.count for iv in b.intervals]


# ------------------------------------------------------------------ from the weights
def test_logit_effect_and_neighbours_from_the_raw_weights(model, case):
    sae, store = case["sae"], case["store"]
    D = sae.W_dec.detach() / sae.scale_out
    D = D - D.mean(-1, keepdim=True)  # LayerNorm removes the mean
    eff = (D * model.ln_final.w.detach()) @ model.W_U.detach()  # (d_sae, vocab)
    W = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    cos = W @ W.T
    cos.fill_diagonal_(-2)
    for lat in (0, 7, 20):
        d = store.latent(lat)
        assert [t for t, _, _ in d.logit_top] == eff[lat].argsort(descending=True)[:4].tolist()
        assert [t for t, _, _ in d.logit_bottom] == eff[lat].argsort()[:4].tolist()
        np.testing.assert_allclose([v for _, _, v in d.logit_top], eff[lat].sort(descending=True).values[:4],
                                   rtol=1e-4, atol=1e-5)
        assert [n for n, _ in d.neighbours] == cos[lat].argsort(descending=True)[:3].tolist()
        assert d.logit_top[0][1] == store.vocab[d.logit_top[0][0]]


def test_mlp_hidden_dictionary_maps_through_W_out(tmp_path):
    ck = make_checkpoint(tmp_path, "shakespeare_vanilla")
    m, _ = interp.load(ck)
    torch.manual_seed(0)
    sae = features.make(dict(arch="topk", k=4, d_in=m.cfg.d_mlp, d_sae=16, hook_name="blocks.0.mlp.hook_post",
                             model=features.model_identity(m, str(ck))))
    tokens = torch.randint(0, m.cfg.d_vocab, (3, 12))
    store = features.dashboard(sae, m, out=tmp_path / "s", data=tokens, n_logits=3, progress=False)
    D = (sae.W_dec.detach() / sae.scale_out) @ m.blocks[0].mlp.W_out.detach()
    D = D - D.mean(-1, keepdim=True)
    eff = (D * m.ln_final.w.detach()) @ m.W_U.detach()
    assert [t for t, _, _ in store.latent(2).logit_top] == eff[2].argsort(descending=True)[:3].tolist()
    assert "W_out" in store.manifest["logit_effect"]


# ------------------------------------------------------------------ the store
def test_store_round_trips_from_disk(case):
    store, sae, out = case["store"], case["sae"], case["out"]
    again = features.open_dashboards(out)
    for lat in (0, 9, 23):
        a, b = again.latent(lat), store.latent(lat)
        assert a == b
    table = again.table()
    assert list(table["latent"]) == list(range(24))
    assert len(table["summary"]) == 24 and table["summary"][-1].startswith("dead")
    np.testing.assert_allclose(table["max_act"][:5], [store.latent(i).max_act for i in range(5)], rtol=RTOL)
    assert again.matches(sae)
    other = make_sae(*_model_ckpt(sae), seed=1)
    assert not again.matches(other)
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "interp.feature_dashboards/1" and m["d_sae"] == 24
    assert m["dictionary"]["config"]["hook_name"] == "blocks.0.hook_resid_post"
    assert {p.name for p in out.iterdir()} == {"manifest.json", "dashboards.safetensors", "vocab.json", "latents.json"}


def _model_ckpt(sae):
    m, _ = interp.load(sae.cfg.model["checkpoint"])
    return m, sae.cfg.model["checkpoint"]


def test_dashboard_from_a_dictionary_directory_and_the_task_tokens(model, ckpt, tmp_path):
    sae = make_sae(model, ckpt, arch="topk", k=3)
    sae.save(tmp_path / "sae")
    store = features.dashboard(tmp_path / "sae", tokens=200, batch_size=8, progress=False)  # checkpoint from cfg.model
    assert store.dir == tmp_path / "sae" / "dashboard"
    assert store.manifest["checkpoint"] == str(ckpt) and store.manifest["tokens"]["split"] == "test"
    rows = list(features.token_batches(ckpt, "test", 200, 8))
    assert store.manifest["tokens"]["n_sequences"] == sum(len(b.tokens) for b in rows)
    assert store.matches(features.load(tmp_path / "sae"))


def test_progress_callback(model, ckpt, case, tmp_path):
    seen = []
    features.dashboard(case["sae"], model, out=tmp_path / "p", data=case["batches"], progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


# ------------------------------------------------------------------ bad input
def test_latent_out_of_range(case):
    with pytest.raises(DictionaryError, match=r"latent 24 is out of range.*24 latents \(0 to 23\)"):
        case["store"].latent(24)
    with pytest.raises(DictionaryError, match="out of range"):
        case["store"].latent(-1)


def test_a_dictionary_for_another_model(case, tmp_path):
    ck = make_checkpoint(tmp_path, "shakespeare_vanilla")
    m, _ = interp.load(ck)
    sae = features.make(dict(arch="relu", d_in=m.cfg.d_model, d_sae=8, hook_name="blocks.0.hook_resid_post",
                             model=case["sae"].cfg.model))
    with pytest.raises(DictionaryError, match="trained on another model"):
        features.dashboard(sae, m, out=tmp_path / "x", data=torch.zeros(2, 5, dtype=torch.long), progress=False)


def test_a_hook_the_model_lacks(model, ckpt, tmp_path):
    sae = make_sae(model, ckpt, hook="blocks.7.hook_resid_post")
    with pytest.raises(DictionaryError, match=r"'blocks.7.hook_resid_post' is not a hook of this model"):
        features.dashboard(sae, model, out=tmp_path / "x", data=torch.zeros(2, 5, dtype=torch.long), progress=False)
    sae = features.make(dict(arch="relu", d_in=7, d_sae=8, hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(DictionaryError, match="d_in=7 does not fit blocks.0.hook_resid_post"):
        features.dashboard(sae, model, out=tmp_path / "x", data=torch.zeros(2, 5, dtype=torch.long), progress=False)


def test_not_a_store(tmp_path):
    with pytest.raises(DictionaryError, match="not a dashboard store"):
        features.open_dashboards(tmp_path)
    (tmp_path / "manifest.json").write_text("{ nope")
    with pytest.raises(DictionaryError, match="not valid JSON"):
        features.open_dashboards(tmp_path)


# ------------------------------------------------------------------ CLI
def test_cli_dashboard(model, ckpt, tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    sae = make_sae(model, ckpt, arch="topk", k=3)
    sae.save(tmp_path / "sae")
    runner = CliRunner()
    r = runner.invoke(app, ["features", "dashboard", str(tmp_path / "sae"), "--ckpt", str(ckpt), "--tokens", "150",
                            "--out", str(tmp_path / "dash"), "--context", "4,2", "--show", "3"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["d_sae"] == 24 and len(summary["densest"]) == 3 and summary["store"] == str(tmp_path / "dash")
    store = features.open_dashboards(tmp_path / "dash")
    assert store.settings["context"] == [4, 2]
    r = runner.invoke(app, ["features", "dashboard", str(tmp_path / "nope"), "--ckpt", str(ckpt)])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["features", "dashboard", str(tmp_path / "sae"), "--context", "4"])
    assert r.exit_code == 1 and "--context" in r.output


def test_prompt_latents_equal_the_encoded_cache(model, case):
    sae, t = case["sae"], case["batches"][0].tokens[0]
    _, cache = model.run_with_cache(t[None])
    torch.testing.assert_close(features.prompt_latents(model, sae, t), sae.encode(cache[sae.cfg.hook_name])[0].detach())
