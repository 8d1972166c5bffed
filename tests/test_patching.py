"""interp.patching: batched activation patching equals TransformerLens's one-forward-per-site
`transformer_lens.patching` and a plain loop on every preset; path patching equals a naive
two-run loop (and, on the direct path, the algebra); directions, padding, chunking, refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import PRESETS, build, tiny, tokens
from tolerance import OTHER_CODE, approx_tol, close
from transformer_lens import patching as tlp

from interp import patching
from interp.patching.engine import BaseRun
from interp.patching.sites import kind_of, n_heads_of

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

T = 6


def _tl_metric(logits):
    return logits[:, -1, 3].mean() - logits[:, -1, 5].mean()


METRIC = patching.logit_diff(3, 5)


@torch.no_grad()
def logit_scale(model, *prompts) -> float:
    """The magnitudes a metric of the logits is made from (its rounding scales with them)."""
    return max(float(model(p).abs().max()) for p in prompts)


def _pair(batch=2, pos=T):
    return tokens(batch, pos, seed=1), tokens(batch, pos, seed=2)


def _hook_kinds(model):
    names = set(model.hook_dict)
    return {n.rsplit(".", 1)[-1][5:] for n in names}


# ------------------------------------------------------------------ equal to TransformerLens
# (act, by, TL function, permutation of TL's result onto ours)
TL_SWEEPS = [
    ("resid_pre", "pos", tlp.get_act_patch_resid_pre, None),
    ("resid_mid", "pos", tlp.get_act_patch_resid_mid, None),
    ("attn_out", "pos", tlp.get_act_patch_attn_out, None),
    ("mlp_out", "pos", tlp.get_act_patch_mlp_out, None),
    ("z", "head", tlp.get_act_patch_attn_head_out_all_pos, None),
    ("z", "head_pos", tlp.get_act_patch_attn_head_out_by_pos, None),
    ("q", "head", tlp.get_act_patch_attn_head_q_all_pos, None),
    ("k", "head_pos", tlp.get_act_patch_attn_head_k_by_pos, None),
    ("v", "head", tlp.get_act_patch_attn_head_v_all_pos, None),
    ("pattern", "head", tlp.get_act_patch_attn_head_pattern_all_pos, None),
    ("pattern", "head_pos", tlp.get_act_patch_attn_head_pattern_by_pos, (0, 2, 1)),
]


@pytest.mark.parametrize("name", PRESETS)
def test_equals_transformer_lens_on_every_preset(name):
    model = tiny(name)
    clean, corrupted = _pair()
    _, clean_cache = model.run_with_cache(clean)
    factored = model.cfg.stream == "factored"
    checked = 0
    for act, by, tl_fn, perm in TL_SWEEPS:
        if act == "resid_mid" and "resid_mid" not in _hook_kinds(model):
            with pytest.raises(ValueError, match="no resid_mid"):
                patching.activation_patching(model, clean, corrupted, METRIC, act)
            continue
        if act.startswith("resid") and factored:
            continue  # TL refuses the read-only xt + xe view; checked against a loop below
        ours = patching.activation_patching(model, clean, corrupted, METRIC, act, by, sites_per_forward=5)
        theirs = tl_fn(model, corrupted, clean_cache, _tl_metric)
        theirs = theirs.permute(*perm) if perm else theirs
        assert ours.values.shape == theirs.shape, (act, by)
        close(ours.values, theirs.cpu(), ulps=OTHER_CODE, msg=f"{name} {act}/{by}")  # TL: other code
        one = patching.activation_patching(model, clean, corrupted, METRIC, act, by, strategy="one_forward")
        close(one.values, theirs.cpu(), ulps=OTHER_CODE, msg=f"{name} {act}/{by} in one forward")
        checked += 1
    if factored:
        for stream in ("xt", "xe"):
            for stage in ("pre", "mid", "post"):
                act = f"{stream}_{stage}"
                ours = patching.activation_patching(model, clean, corrupted, METRIC, act, sites_per_forward=4)
                theirs = tlp.generic_activation_patch(model, corrupted, clean_cache, _tl_metric,
                                                      tlp.layer_pos_patch_setter, act, ("layer", "pos"))
                close(ours.values, theirs, ulps=OTHER_CODE, msg=f"{name} {act}")
                checked += 1
    assert checked >= 8


# ------------------------------------------------------------------ a plain loop
@torch.no_grad()
def _loop(model, base, source, metric, act, by, mask=None):
    """One run_with_hooks per site: the activation is cloned and the site's slice copied in."""
    factored = model.cfg.stream == "factored"
    kind = kind_of(act)
    names = lambda l: ([f"blocks.{l}.hook_{s}_{act.split('_')[1]}" for s in ("xt", "xe")]
                       if act.startswith("resid") and factored else patching.act_hook_names(model, act, l))
    _, src = model.run_with_cache(source, attention_mask=mask)
    L, Tn = model.cfg.n_layers, base.shape[1]
    H = n_heads_of(model, act)
    grid = {"pos": (L, Tn), "layer": (L,), "head": (L, H), "head_pos": (L, Tn, H)}[by]
    out = torch.empty(grid + ((base.shape[0],) if isinstance(metric(model(base)), torch.Tensor)
                              and metric(model(base)).ndim == 1 else ()))
    for cell in torch.cartesian_prod(*[torch.arange(n) for n in grid]).reshape(-1, len(grid)).tolist():
        layer, rest = cell[0], cell[1:]
        pos = rest[0] if by in ("pos", "head_pos") else slice(None)
        head = rest[-1] if by in ("head", "head_pos") else slice(None)

        def setter(x, hook, pos=pos, head=head):
            x = x.clone()
            idx = (slice(None), pos) if kind == "stream" else (slice(None), pos, head) if kind == "head" \
                else (slice(None), head, pos)
            x[idx] = src[hook.name][idx]
            return x

        logits = model.run_with_hooks(base, attention_mask=mask, fwd_hooks=[(n, setter) for n in names(layer)])
        out[tuple(cell)] = metric(logits)
    return out


@pytest.mark.parametrize("name", ["vanilla", "factored", "llama-like", "sasp"])
def test_noising_with_padding_equals_plain_loop(name):
    """direction="noise" (clean base, corrupted source), padded prompts, per-prompt values."""
    model = tiny(name)
    clean, corrupted = _pair(3, 7)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, :2] = False  # left padding
    mask[2, 5:] = False  # right padding
    per_prompt = patching.logprob(torch.tensor([3, 4, 5]), pos=torch.tensor([6, 6, 4]))
    for (act, by), strategy in zip([("resid_pre", "pos"), ("resid_post", "layer"), ("z", "head_pos"), ("pattern", "head")],
                                   ["partial", "one_forward", "partial", "one_forward"]):
        ours = patching.activation_patching(model, clean, corrupted, per_prompt, act, by, direction="noise",
                                            attention_mask=mask, reduce="none", sites_per_forward=4, strategy=strategy)
        naive = _loop(model, clean, corrupted, lambda lg: per_prompt(lg[None])[0], act, by, mask)
        assert ours.dims[-1] == "batch"
        close(ours.values, naive, msg=f"{name} {act}/{by} {strategy}")
        # the unpatched runs: base = clean, source = corrupted
        close(ours.baseline, per_prompt(model(clean, attention_mask=mask)[None])[0])
        close(ours.source, per_prompt(model(corrupted, attention_mask=mask)[None])[0])


@pytest.mark.parametrize("sites", [1, 7, None])
def test_chunking_and_budget_do_not_change_numbers(sites):
    model = tiny("math-compact")
    clean, corrupted = _pair(2, 9)
    ref = _loop(model, corrupted, clean, _tl_metric, "resid_pre", "pos")
    res = patching.activation_patching(model, clean, corrupted, METRIC, "resid_pre", sites_per_forward=sites)
    close(res.values, ref)
    tiny_budget = patching.activation_patching(model, clean, corrupted, METRIC, "z", "head_pos", memory_budget=1)
    close(tiny_budget.values, _loop(model, corrupted, clean, _tl_metric, "z", "head_pos"))


def test_tail_forward_equals_model_on_every_preset():
    """`BaseRun.run` (from block l and position p, the base keys/values before p) is the model."""
    for name in PRESETS:
        model = tiny(name, n_layers=3)
        toks = tokens(2, 8)
        run = BaseRun(model, toks, None)
        full = model(toks)
        for layer in range(3):
            for offset in (0, 3, 7):
                got = run.run(2, layer, [], offset)
                close(got, full.repeat(2, 1, 1), msg=f"{name} {layer} {offset}")
        explicit = run.run(3, 1, [], 2, explicit=True)  # the path stacked ALiBi runs take on CUDA
        assert {b.attn.last_path for b in model.blocks[1:]} == {"explicit"}
        close(explicit, full.repeat(3, 1, 1))


# ------------------------------------------------------------------ metrics and results
def test_metrics_against_direct_computation():
    model = tiny("vanilla")
    toks = tokens(3, 8)
    logits = model(toks)
    ans, wrong, pos = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor([7, 5, 6])
    rows = torch.arange(3)
    stacked = torch.stack([logits, 2 * logits])  # (site, batch, pos, vocab)
    lp = logits.log_softmax(-1)
    torch.testing.assert_close(patching.logit_diff(ans, wrong, pos)(stacked)[0], logits[rows, pos, ans] - logits[rows, pos, wrong])
    torch.testing.assert_close(patching.logit_diff(ans, wrong, pos)(stacked)[1], 2 * (logits[rows, pos, ans] - logits[rows, pos, wrong]))
    torch.testing.assert_close(patching.logprob(ans, pos)(logits), lp[rows, pos, ans])
    torch.testing.assert_close(patching.prob(3)(logits), logits[:, -1].softmax(-1)[:, 3])
    many = patching.logprob(toks[:, 2:5], pos=torch.tensor([[1, 2, 3]]))  # (batch, n) targets, (1, n) positions
    torch.testing.assert_close(many(logits), lp[:, 1:4].gather(-1, toks[:, 2:5, None])[..., 0].mean(-1))
    per_token = model(toks, return_type="loss", loss_per_token=True)
    close(patching.loss(toks)(logits), per_token.mean(-1))
    with pytest.raises(ValueError, match="outside a sequence"):
        patching.prob(3, pos=8)(logits)


def test_result_frame_normalized_top_and_metric_mapping():
    model = tiny("vanilla")
    clean, corrupted = _pair()
    res = patching.activation_patching(model, clean, corrupted, {"diff": METRIC, "p": patching.prob(3)}, "z",
                                       pos_labels=[f"t{i}" for i in range(T)])
    assert res.dims == ("metric", "layer", "head") and res.values.shape == (2, 2, 4)
    diff = res["diff"]
    single = patching.activation_patching(model, clean, corrupted, METRIC, "z")
    torch.testing.assert_close(diff.values, single.values)
    with torch.no_grad():
        base, source = METRIC(model(corrupted)).mean(), METRIC(model(clean)).mean()
    close(diff.baseline, base)
    close(diff.source, source)
    norm = diff.normalized()
    torch.testing.assert_close(norm, (diff.values - diff.baseline) / (diff.source - diff.baseline))
    frame = diff.to_frame()
    assert len(frame) == 8 and set(frame.columns) >= {"layer", "head", "value", "effect", "normalized"}
    top = diff.top(3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[-1][1]) and top[0][0].startswith("L")
    pos = patching.activation_patching(model, clean, corrupted, METRIC, "resid_pre", pos_labels=[f"t{i}" for i in range(T)])
    assert pos.labels["pos"] == [f"t{i}" for i in range(T)] and pos.labels["layer"] == ["L0", "L1"]
    # patching every position of the first block input is the source run
    whole = patching.activation_patching(model, clean, corrupted, METRIC, "resid_pre", "layer")
    close(whole.values[0], whole.source)


def test_progress_and_subsets():
    model = tiny("gptj")
    clean, corrupted = _pair()
    calls = []
    res = patching.activation_patching(model, clean, corrupted, METRIC, "z", "head_pos", layers=[1], positions=[-1, 2],
                                       heads=[0, 3], sites_per_forward=3, progress=lambda d, t: calls.append((d, t)))
    assert res.values.shape == (1, 2, 2) and res.index == {"layer": [1], "pos": [5, 2], "head": [0, 3]}
    assert calls == [(3, 4), (4, 4)]
    full = patching.activation_patching(model, clean, corrupted, METRIC, "z", "head_pos")
    torch.testing.assert_close(res.values[0], full.values[1][[5, 2]][:, [0, 3]])


def test_refusals_name_the_problem():
    clean, corrupted = _pair()
    with pytest.raises(ValueError, match="needs a factored-stream model"):
        patching.activation_patching(tiny("vanilla"), clean, corrupted, METRIC, "xt_pre")
    with pytest.raises(ValueError, match="attention-only"):
        patching.activation_patching(build(attn_only=True), clean, corrupted, METRIC, "mlp_out")
    with pytest.raises(ValueError, match="by='pos' is not available"):
        patching.activation_patching(tiny("vanilla"), clean, corrupted, METRIC, "z", "pos")
    with pytest.raises(ValueError, match="same"):
        patching.activation_patching(tiny("vanilla"), clean, corrupted[:, :-1], METRIC)
    with pytest.raises(ValueError, match="eval"):
        patching.activation_patching(tiny("vanilla").train(), clean, corrupted, METRIC)
    with pytest.raises(ValueError, match="direction"):
        patching.activation_patching(tiny("vanilla"), clean, corrupted, METRIC, direction="sideways")
    with pytest.raises(ValueError, match="GQA"):
        patching.path_patching(tiny("llama-like"), clean, corrupted, METRIC, receivers=[(1, 0)], receiver_input="k")
    with pytest.raises(ValueError, match="below any receiver"):
        patching.path_patching(tiny("vanilla"), clean, corrupted, METRIC, receivers=[(1, 0)], senders=[(1, 2)])


# ------------------------------------------------------------------ path patching
@torch.no_grad()
def _naive_path(model, base, source, metric, sender, receivers, inputs, freeze_mlps):
    """Wang et al.'s two runs, one sender at a time, with plain hooks."""
    _, src = model.run_with_cache(source)
    _, bas = model.run_with_cache(base)
    recorded = {}

    def freeze(z, hook):
        layer = int(hook.name.split(".")[1])
        out = bas[hook.name].clone()
        if layer == sender[0]:
            out[:, :, sender[1]] = src[hook.name][:, :, sender[1]]
        return out

    def record(x, hook):
        recorded[hook.name] = x.clone()

    hooks = [(f"blocks.{l}.attn.hook_z", freeze) for l in range(model.cfg.n_layers)]
    if freeze_mlps:
        hooks += [(f"blocks.{l}.hook_mlp_out", lambda x, hook: bas[hook.name]) for l in range(model.cfg.n_layers)]
    hooks += [(f"blocks.{l}.attn.hook_{c}", record) for l, _ in receivers for c in inputs]
    model.run_with_hooks(base, fwd_hooks=hooks)

    def patch(x, hook):
        x = x.clone()
        layer = int(hook.name.split(".")[1])
        for rl, rh in receivers:
            if rl == layer:
                x[:, :, rh] = recorded[hook.name][:, :, rh]
        return x

    hooks = [(f"blocks.{l}.attn.hook_{c}", patch) for l in sorted({l for l, _ in receivers}) for c in inputs]
    return float(metric(model.run_with_hooks(base, fwd_hooks=hooks)))


@pytest.mark.parametrize("name", PRESETS)
def test_path_patching_equals_naive_two_runs(name):
    model = tiny(name, n_layers=3)
    clean, corrupted = _pair()
    inputs = "q" if name == "llama-like" else "kv"
    receivers = [(2, 1), (2, 3), (1, 0)]
    for direction, freeze_mlps in [("denoise", False), ("noise", True)]:
        res = patching.path_patching(model, clean, corrupted, METRIC, receivers, inputs, direction=direction,
                                     freeze_mlps=freeze_mlps, sites_per_forward=3)
        assert res.dims == ("layer", "head") and res.values.shape == (3, 4 if name != "llama-like" else 6)
        assert torch.isnan(res.values[2]).all() and not torch.isnan(res.values[:2]).any()
        base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
        for sender in [(0, 0), (0, 3), (1, 2)]:
            expected = _naive_path(model, base, source, _tl_metric, sender, receivers, inputs, freeze_mlps)
            scale = logit_scale(model, clean, corrupted)  # a path effect is a difference of logits
            assert float(res.values[sender]) == pytest.approx(expected, **approx_tol(expected, scale=scale)), \
                (name, direction, sender)


@torch.no_grad()
def test_direct_path_equals_the_algebra():
    """With every MLP and every other head frozen, the receiver's key is W_K ln1(resid_pre + the
    sender's write difference) + b_K: computed here by hand from weights and caches."""
    model = tiny("vanilla", n_layers=3)
    clean, corrupted = _pair()
    _, cc = model.run_with_cache(clean)
    _, kc = model.run_with_cache(corrupted)
    sender, receiver = (0, 2), (2, 1)
    delta = (cc["z", 0][:, :, 2] - kc["z", 0][:, :, 2]) @ model.W_O[0, 2]
    block = model.blocks[2]
    k = block.ln1(kc["resid_pre", 2] + delta) @ block.attn.W_K[1] + block.attn.b_K[1]

    def set_k(x, hook):
        x = x.clone()
        x[:, :, 1] = k
        return x

    expected = float(_tl_metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.2.attn.hook_k", set_k)])))
    res = patching.path_patching(model, clean, corrupted, METRIC, [receiver], "k", senders=[sender], freeze_mlps=True)
    scale = logit_scale(model, clean, corrupted)
    assert float(res.values[sender]) == pytest.approx(expected, **approx_tol(expected, scale=scale))


@pytest.mark.parametrize("name", ["vanilla", "factored-alibi", "gptj"])
def test_a_metric_that_reads_early_positions(name):
    """A built-in metric says which positions it reads; patched runs stop after the last one
    (and sites after it keep the baseline): still equal to full one-site-per-forward runs."""
    model = tiny(name, n_layers=3)
    clean, corrupted = _pair(2, 8)
    metric = patching.logit_diff(torch.tensor([3, 4]), 5, pos=torch.tensor([[2, 4]]))
    plain = lambda logits: metric(logits[None])[0].mean()
    for act, by in [("resid_pre", "pos"), ("pattern", "head_pos"), ("k", "head_pos"), ("z", "head")]:
        ours = patching.activation_patching(model, clean, corrupted, metric, act, by, sites_per_forward=3)
        close(ours.values, _loop(model, corrupted, clean, plain, act, by), msg=act)
    res = patching.path_patching(model, clean, corrupted, metric, [(2, 0), (1, 3)], "qk", sites_per_forward=2)
    scale = logit_scale(model, clean, corrupted)
    for sender in [(0, 1), (1, 2)]:
        expected = _naive_path(model, corrupted, clean, plain, sender, [(2, 0), (1, 3)], "qk", False)
        assert float(res.values[sender]) == pytest.approx(expected, **approx_tol(expected, scale=scale))


def test_figures_for_every_grid_shape():
    from interp import plots

    model = tiny("vanilla")
    clean, corrupted = _pair()
    labels = ["a", "b", "a", "c", "d", "a"]  # repeated token labels stay distinct on the axis
    for act, by, n_traces in [("resid_pre", "pos", 1), ("attn_out", "layer", 1), ("z", "head", 1), ("z", "head_pos", 2)]:
        res = patching.activation_patching(model, clean, corrupted, METRIC, act, by, pos_labels=labels)
        fig = plots.patching_heatmap(res)
        assert len(fig.data) == n_traces, (act, by)
        if by == "pos":
            assert list(fig.data[0].x) == plots.unique_labels(labels)
            assert fig.data[0].z.shape == (2, T)
    paths = patching.path_patching(model, clean, corrupted, METRIC, [(1, 0)], "k")
    assert plots.patching_heatmap(paths, normalized=False).data[0].z.shape == (2, 4)
    with pytest.raises(ValueError, match="one metric"):
        plots.patching_heatmap(patching.activation_patching(model, clean, corrupted, METRIC, "z", reduce="none"))
