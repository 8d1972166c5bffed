"""models.thoughts: the KV-cached multi-pass latent forward against the naive full recompute
(every positional scheme, both streams, left and right padding, rows with different latent
counts at different offsets; logits, thoughts and gradients), hooks per pass, generation."""

from __future__ import annotations

import pytest
import torch

from tolerance import close

from models import presets
from models.thoughts import LatentReasoner, latent_forward_naive, latent_layout, plan_latents, trunk

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

LATENT = 9
VOCAB = 24


def model_for(preset: str, positional: str, **kw):
    torch.manual_seed(0)
    model = presets.make(preset, "tiny", d_vocab=VOCAB, positional=positional, pad_token_id=0, n_layers=2, **kw)
    with torch.no_grad():  # larger than init scale, so that a wrong thought shows in the logits
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(4.0)
    return model


def ragged_batch():
    """Three rows: 3 slots at 4..6, 2 slots at 8..9, none; every other token random."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, VOCAB, (3, 15), generator=g)
    ids[0, 4:7] = LATENT
    ids[1, 8:10] = LATENT
    return ids


CASES = [(preset, pos) for preset in ("vanilla", "factored") for pos in ("learned", "rope", "alibi", "none")]
CASES.append(("vanilla", "learned+rope"))


@pytest.mark.parametrize("preset,positional", CASES, ids=[f"{p}-{q}" for p, q in CASES])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_multipass_equals_naive_recompute(preset, positional, padding):
    model = model_for(preset, positional)
    ids = ragged_batch()
    mask = None
    if padding == "left":  # rows 1 and 2 start later (left padding, masked)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[1, :2] = False
        mask[2, :5] = False
        ids = ids.masked_fill(~mask, 0)
    else:  # right padding, unmasked as in training batches (pads come after every real token)
        ids[2, 12:] = 0
    reasoner = LatentReasoner(model, LATENT)
    logits = reasoner(ids, attention_mask=mask)
    ref_logits, ref_thoughts = latent_forward_naive(model, ids, LATENT, attention_mask=mask)
    real = mask if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    close(logits[real], ref_logits[real])
    assert reasoner.thoughts.shape == (3, 3, model.cfg.d_model)
    close(reasoner.thoughts, ref_thoughts)  # thoughts reach ~80
    assert reasoner.plan.n_passes == 4  # max slots + 1
    # the thoughts matter: the same batch with plain <latent> embeddings differs
    assert (model(ids, attention_mask=mask) - logits).abs()[real].max() > 1e-2


@pytest.mark.parametrize("preset,positional", [("math-compact", "rope"), ("factored-alibi", "alibi"),
                                               ("sasp", "learned"), ("llama-like", "rope"), ("gptj", "rope")])
def test_gradients_equal_naive(preset, positional):
    model = model_for(preset, positional)
    ids = ragged_batch()
    labels = ids.masked_fill(ids == LATENT, -100)
    reasoner = LatentReasoner(model, LATENT)
    reasoner(ids, labels=labels, return_type="loss").backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits, _ = latent_forward_naive(model, ids, LATENT)
    model.loss_fn(logits, labels).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            close(ours[name], p.grad, msg=name)


def test_gradient_reaches_the_first_thought():
    """The loss after the slots depends on thought 0 (the hidden state at <bot>) through every pass."""
    model = model_for("vanilla", "rope")
    ids = ragged_batch()[:1]
    seen = []
    reasoner = LatentReasoner(model, LATENT)

    def keep(t, hook):
        if reasoner.pass_index == 1:
            t.retain_grad()
            seen.append(t)
        return t

    with reasoner.hooks(fwd_hooks=[("hook_thought", keep)]):
        loss = reasoner(ids, labels=ids.masked_fill(ids == LATENT, -100), return_type="loss")
    loss.backward()
    assert seen and seen[0].grad is not None and seen[0].grad.abs().sum() > 0


def test_every_position_is_computed_once_and_hooks_see_the_pass():
    model = model_for("vanilla", "learned")
    ids = ragged_batch()
    reasoner = LatentReasoner(model, LATENT)
    widths, thoughts = {}, []

    def resid(t, hook):
        widths.setdefault(reasoner.pass_index, t.shape[1])

    def thought(t, hook):
        thoughts.append((reasoner.pass_index, tuple(t.shape)))

    with reasoner.hooks(fwd_hooks=[("blocks.1.hook_resid_post", resid), ("hook_thought", thought)]):
        reasoner(ids)
    plan = reasoner.plan
    # row 1's first slot (8) is aligned with row 0's (4 -> shifted by 4): 15 + 4 columns in all
    assert plan.first_slot == 8 and plan.shift.tolist() == [4, 0, 0] and plan.width == 19
    assert widths == {p: c1 - c0 for p, (c0, c1) in enumerate(plan.passes)}
    assert sum(widths.values()) == plan.width
    assert thoughts == [(1, (3, 1, model.cfg.d_model)), (2, (3, 1, model.cfg.d_model)), (3, (3, 1, model.cfg.d_model))]


def test_patching_a_thought_through_hook_thought():
    model = model_for("math-compact", "rope")
    ids = ragged_batch()[:1]
    reasoner = LatentReasoner(model, LATENT)
    clean = reasoner(ids)
    zero = lambda t, hook: torch.zeros_like(t) if reasoner.pass_index == 2 else t  # noqa: E731
    with reasoner.hooks(fwd_hooks=[("hook_thought", zero)]):
        patched = reasoner(ids)
    assert torch.equal(patched[:, :5], clean[:, :5])  # before slot 1 (position 5): untouched
    assert (patched[:, 5:] - clean[:, 5:]).abs().max() > 1e-3
    assert reasoner.thoughts[0, 1].abs().max() == 0


def test_trunk_is_forward_up_to_the_final_norm():
    model = model_for("factored-alibi", "alibi")
    ids = ragged_batch()
    captured = []
    handle = model.ln_final.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    model(ids)
    handle.remove()
    assert torch.equal(trunk(model, model.embed(ids)), captured[0])


def test_plan_refuses_bad_layouts():
    ids = ragged_batch()
    gap = ids.clone()
    gap[0, 8] = LATENT
    with pytest.raises(ValueError, match="contiguous"):
        plan_latents(gap, LATENT)
    first = ids.clone()
    first[2, 0] = LATENT
    with pytest.raises(ValueError, match="no real token before it"):
        plan_latents(first, LATENT)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        LatentReasoner(model_for("vanilla", "rope"), VOCAB + 3)


@pytest.mark.parametrize("eot", [None, 3])
def test_generate_matches_the_forward(eot):
    """Greedy generation after n thoughts = the argmax of the latent forward on the same layout,
    token by token; prompts of different lengths in one batch."""
    model = model_for("llama-like", "rope").eval()
    reasoner = LatentReasoner(model, LATENT)
    prompts = [[11, 12, 13, 1], [14, 15, 1]]
    out = reasoner.generate(prompts, n_latents=3, max_new_tokens=4, eot_token_id=eot, stop_tokens=[])
    for prompt, new, thoughts in zip(prompts, out.new_tokens, out.thoughts):
        seq = prompt + [LATENT] * 3 + ([eot] if eot is not None else [])
        for tok in new:
            with torch.no_grad():
                nxt = int(reasoner(torch.tensor([seq]))[0, -1].argmax())
            assert nxt == tok
            seq.append(tok)
        with torch.no_grad():
            reasoner(torch.tensor([prompt + [LATENT] * 3]))
        close(reasoner.thoughts[0], thoughts)


def test_run_with_cache_points_to_pass_caches():
    with pytest.raises(NotImplementedError, match="pass_caches"):
        LatentReasoner(model_for("vanilla", "rope"), LATENT).run_with_cache(ragged_batch())


def stage_rows():
    """Six rows of one 'stage': slots at different offsets and counts (one row without),
    right-padded, as a curriculum stage's train split."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(10, VOCAB, (6, 16), generator=g)
    for b, (first, n) in enumerate([(4, 3), (8, 2), (None, 0), (6, 3), (3, 1), (7, 3)]):
        if first is not None:
            ids[b, first : first + n] = LATENT
    ids[2, 12:] = 0
    return ids


@pytest.mark.parametrize("positional", ["learned", "rope", "alibi", "none"])
def test_fixed_layout_equals_planning_each_batch(positional):
    """Under a `LatentLayout` made from all rows, a batch of some of them gives the logits,
    thoughts and gradients that planning that batch alone gives (its columns are wider)."""
    model = model_for("vanilla" if positional != "alibi" else "factored-alibi", positional)
    rows = stage_rows()
    layout = latent_layout(rows, LATENT)
    assert (layout.length, layout.first_slot, layout.width, layout.max_slots) == (16, 8, 21, 3)
    batch = rows[[0, 2, 4]]  # its own plan: first slot 4, width 17
    labels = batch.masked_fill(batch == LATENT, -100)
    planned, fixed = LatentReasoner(model, LATENT), LatentReasoner(model, LATENT, layout=layout)
    logits, grads = [], []
    for reasoner in (planned, fixed):
        model.zero_grad()
        out = reasoner(batch, labels=labels)
        out.loss.backward()
        logits.append(out.logits)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert planned.plan.width == 17 and fixed.plan.width == 21 and fixed.plan.n_passes == 4
    close(logits[1], logits[0])
    # the batch's own plan has 3 slots too (row 0); the thoughts are the same
    close(fixed.thoughts, planned.thoughts)
    for name, g in grads[0].items():
        close(grads[1][name], g, msg=name)


def test_fixed_layout_step_has_no_host_read():
    """What makes the trainer's Coconut step capturable as one CUDA graph: under a layout the
    latent forward traces into a single graph (a host read would break it), planned per batch
    it does not."""
    model = model_for("math-compact", "rope")
    rows = stage_rows()
    labels = rows.masked_fill(rows == LATENT, -100)
    fixed = LatentReasoner(model, LATENT, layout=latent_layout(rows, LATENT))
    planned = LatentReasoner(model, LATENT)
    torch._dynamo.reset()
    loss = torch.compile(lambda x, y: fixed(x, labels=y, return_type="loss"), fullgraph=True, backend="eager")
    want = planned(rows, labels=labels, return_type="loss")
    close(loss(rows, labels), want)
    with pytest.raises(Exception, match=r"(?i)data-dependent|graph break|unsupported"):
        torch.compile(lambda x, y: planned(x, labels=y, return_type="loss"), fullgraph=True, backend="eager")(rows, labels)
    torch._dynamo.reset()


def test_fixed_layout_refuses_rows_it_was_not_made_for():
    rows = stage_rows()
    layout = latent_layout(rows[:2], LATENT)  # first slots 4 and 8: no room for a slot at 3
    reasoner = LatentReasoner(model_for("vanilla", "rope"), LATENT, layout=layout)
    with pytest.raises(ValueError, match="does not fit its LatentLayout"):
        reasoner(rows[[4]])
    with pytest.raises(ValueError, match="width 15"):
        reasoner(rows[:, :15])


@pytest.mark.parametrize("preset,positional", [("llama-like", "rope"), ("vanilla", "learned"),
                                               ("factored-alibi", "alibi"), ("math-compact", "none")])
@pytest.mark.parametrize("eot", [None, 5])
def test_static_cache_generation_equals_pass_by_pass(preset, positional, eot):
    """The static-cache path (every thought, <eot> and token one step on a preallocated cache)
    gives the tokens, masks and thoughts of the pass-by-pass loop: prompts of different lengths,
    rows stopping at different steps; eager and traced as one graph (backend "eager")."""
    model = model_for(preset, positional).eval()
    reasoner = LatentReasoner(model, LATENT)
    prompts = [[11, 12, 13, 1], [14, 15, 1], [16, 1]]
    ref = reasoner.generate(prompts, n_latents=3, max_new_tokens=20, eot_token_id=eot, fast=False)
    def stop_steps(t):  # where each row would stop at token t (greedy: the tokens before do not change)
        return [row.index(t) if t in row else len(row) for row in ref.new_tokens]

    stops = [next(t for t in sorted({t for row in ref.new_tokens for t in row})
                  if len(set(stop_steps(t))) > 1)]  # rows stop at different steps
    ref = reasoner.generate(prompts, n_latents=3, max_new_tokens=20, eot_token_id=eot, stop_tokens=stops, fast=False)
    assert len({len(r) for r in ref.new_tokens}) > 1
    for compile in (False, "eager"):
        got = reasoner.generate(prompts, n_latents=3, max_new_tokens=20, eot_token_id=eot, stop_tokens=stops,
                                fast=True, compile=compile)
        assert got.new_tokens == ref.new_tokens
        assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.attention_mask, ref.attention_mask)
        close(got.thoughts, ref.thoughts)  # thoughts here reach ~100


def test_generation_with_a_thought_hook_runs_pass_by_pass():
    model = model_for("llama-like", "rope").eval()
    reasoner = LatentReasoner(model, LATENT)
    seen = []
    with reasoner.hooks(fwd_hooks=[("hook_thought", lambda t, hook: seen.append(reasoner.pass_index))]):
        reasoner.generate([[11, 12, 1]], n_latents=2, max_new_tokens=2, fast=True, stop_tokens=[])
    assert seen == [1, 2]
