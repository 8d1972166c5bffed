"""TransformerLens's own ActivationCache algebra, patching and head detection on our models."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching
from transformer_lens.head_detector import detect_head

from conftest import tiny, tokens
from tolerance import OTHER_CODE, approx_tol, close

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)

TL_PRESETS = ["vanilla", "llama-like", "gptj", "factored", "math-compact", "factored-alibi"]


@pytest.fixture(scope="module", params=TL_PRESETS)
def run(request):
    model = tiny(request.param, n_layers=3)
    toks = tokens(2, 9)
    logits, cache = model.run_with_cache(toks)
    return model, toks, logits, cache


def _ln_final_affine(model, x):
    x = x * model.ln_final.w
    return x if model.ln_final.b is None else x + model.ln_final.b


def test_accumulated_resid_apply_ln(run):
    """TL 4.3: accumulated_resid(apply_ln=True) up to the unembed re-applies ln_final (affine
    included) to each entry; the cached-scale route (`apply_ln_to_stack`) leaves out the affine
    part, so `last * ln_final.w + ln_final.b` is ln_final's output."""
    model, _, _, cache = run
    L = model.cfg.n_layers
    acc = cache.accumulated_resid(apply_ln=True)
    assert acc.shape[0] == L + 1
    close(acc[-1], cache["ln_final.hook_normalized"], ulps=OTHER_CODE)
    raw = cache.accumulated_resid()
    for l in range(L):
        torch.testing.assert_close(raw[l], cache["resid_pre", l])
        close(acc[l], model.ln_final(raw[l]), ulps=OTHER_CODE)
    torch.testing.assert_close(raw[-1], cache["resid_post", L - 1])
    scaled = cache.apply_ln_to_stack(raw, layer=L)
    close(_ln_final_affine(model, scaled[-1]), cache["ln_final.hook_normalized"], ulps=OTHER_CODE)


def test_decompose_resid_sums_to_stream(run):
    model, _, _, cache = run
    L = model.cfg.n_layers
    parts, labels = cache.decompose_resid(return_labels=True)
    n_embed = 2 if model.cfg.positional == "learned" else 1
    assert len(labels) == n_embed + 2 * L
    close(parts.sum(0), cache["resid_post", L - 1], ulps=OTHER_CODE)
    for l in range(L):
        close(cache.decompose_resid(layer=l).sum(0), cache["resid_pre", l], ulps=OTHER_CODE)


def test_logit_attrs_sum_to_logits(run):
    """logit_attrs applies ln_final's cached scale itself (TL 4.3) and our
    `tokens_to_residual_directions` folds in ln_final.w, so the attributions of the raw
    decomposition plus the constant (ln_final.b @ W_U[:, t] + b_U[t]) are the logits."""
    model, toks, logits, cache = run
    targets = toks[:, 1:]
    front = slice(0, -1)  # position p predicts token p + 1
    stack = cache.decompose_resid(pos_slice=front)  # (component, batch, pos - 1, d_model)
    attrs = cache.logit_attrs(stack, tokens=targets, pos_slice=front)
    assert attrs.shape == (stack.shape[0],) + targets.shape
    const = torch.zeros(model.cfg.d_vocab)
    if model.ln_final.b is not None:
        const = const + model.ln_final.b @ model.W_U
    if model.b_U is not None:
        const = const + model.b_U
    expected = logits[:, :-1].gather(-1, targets[..., None])[..., 0]
    close(attrs.sum(0) + const[targets], expected, ulps=OTHER_CODE)
    # equivalently: the ln-applied stack dotted with the (w-folded) unembedding direction
    normed = cache.decompose_resid(apply_ln=True, pos_slice=front)
    dirs = model.tokens_to_residual_directions(targets)  # (batch, pos - 1, d_model)
    close((normed * dirs).sum(-1).sum(0) + const[targets], expected, ulps=OTHER_CODE)
    # single token / incorrect token form: a logit difference at the last position
    last = cache.decompose_resid(pos_slice=-1)
    diff = cache.logit_attrs(last, tokens=3, incorrect_tokens=5, pos_slice=-1).sum(0)
    close(diff + const[3] - const[5], logits[:, -1, 3] - logits[:, -1, 5], ulps=OTHER_CODE)


def test_apply_ln_to_stack_is_linear_in_the_stack(run):
    """LayerNorm centres each component and every component shares the final scale, so the
    normalised stack sums to ln_final's output before its affine part."""
    model, _, _, cache = run
    stack = cache.decompose_resid()
    normed = cache.apply_ln_to_stack(stack)
    scale = cache["ln_final.hook_scale"]
    centred = stack - stack.mean(-1, keepdim=True) if model.cfg.norm == "layernorm" else stack
    close(normed, centred / scale, ulps=OTHER_CODE)
    close(_ln_final_affine(model, normed.sum(0)), cache["ln_final.hook_normalized"], ulps=OTHER_CODE)


def test_stack_head_results_sum_to_attn_out(run):
    model, _, _, cache = run
    for l in range(model.cfg.n_layers):
        heads = cache.stack_head_results(layer=l + 1, pos_slice=None)
        # stack_head_results(layer=k) stacks every head of layers < k; take layer l's heads
        layer_heads = heads[l * model.cfg.n_heads : (l + 1) * model.cfg.n_heads]
        close(layer_heads.sum(0) + model.blocks[l].attn.b_O, cache["attn_out", l], ulps=OTHER_CODE)


def test_stack_head_results_labels(run):
    model, _, _, cache = run
    heads, labels = cache.stack_head_results(layer=-1, return_labels=True)
    assert heads.shape[0] == model.cfg.n_layers * model.cfg.n_heads
    assert labels[0] == "L0H0" and labels[-1] == f"L{model.cfg.n_layers - 1}H{model.cfg.n_heads - 1}"


# ------------------------------------------------------------------ patching
def _metric(logits):
    return logits[:, -1, 3].mean() - logits[:, -1, 5].mean()


def _manual_patch(model, corrupted, hook_name, setter):
    return float(_metric(model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, setter)])))


@torch.no_grad()
def _logit_scale(model, *prompts) -> float:
    """The magnitudes a logit difference is made from (its rounding scales with them)."""
    return max(float(model(p).abs().max()) for p in prompts)


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "gptj", "math-compact"])
def test_act_patch_resid_pre(name):
    model = tiny(name)
    clean, corrupted = tokens(1, 7, seed=1), tokens(1, 7, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, _metric)
    assert result.shape == (model.cfg.n_layers, 7)
    for layer, pos in [(0, 0), (1, 3), (1, 6)]:
        def setter(act, hook, pos=pos, layer=layer):
            act = act.clone()
            act[:, pos] = clean_cache["resid_pre", layer][:, pos]
            return act
        expected = _manual_patch(model, corrupted, f"blocks.{layer}.hook_resid_pre", setter)
        scale = _logit_scale(model, clean, corrupted)
        assert result[layer, pos].item() == pytest.approx(expected, **approx_tol(expected, ulps=OTHER_CODE, scale=scale))
    # patching every position of layer 0 restores the clean run
    assert result[0, -1].item() != pytest.approx(float(_metric(model(corrupted))), abs=1e-6)


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "gptj", "factored", "math-compact"])
def test_act_patch_attn_head_out_all_pos(name):
    model = tiny(name)
    clean, corrupted = tokens(1, 7, seed=1), tokens(1, 7, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    result = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, _metric)
    assert result.shape == (model.cfg.n_layers, model.cfg.n_heads)
    for layer, head in [(0, 1), (1, 3)]:
        def setter(z, hook, layer=layer, head=head):
            z = z.clone()
            z[:, :, head] = clean_cache["z", layer][:, :, head]
            return z
        expected = _manual_patch(model, corrupted, f"blocks.{layer}.attn.hook_z", setter)
        scale = _logit_scale(model, clean, corrupted)
        assert result[layer, head].item() == pytest.approx(expected, **approx_tol(expected, ulps=OTHER_CODE, scale=scale))
    assert len(set(result.flatten().tolist())) > 1


def test_factored_resid_patching_refused_even_in_place():
    """TL's patch setters edit the activation in place; in a factored model that must still be
    refused (an in-place edit of xt + xe would reach ln1 but neither stream)."""
    model = tiny("factored")
    clean, corrupted = tokens(1, 7, seed=1), tokens(1, 7, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    with pytest.raises(RuntimeError, match="read-only view of xt \\+ xe"):
        patching.get_act_patch_resid_pre(model, corrupted, clean_cache, _metric)


# ------------------------------------------------------------------ head detector
class CharTokenizer:
    """Tiny char-level tokenizer: a-z -> 1..26, space -> 27."""

    def encode(self, text, add_special_tokens=False):
        return [27 if c == " " else ord(c) - 96 for c in text]

    def decode(self, ids):
        return "".join(" " if i == 27 else chr(i + 96) for i in ids)


@pytest.mark.parametrize("name", ["vanilla", "llama-like", "factored-alibi", "sasp"])
def test_detect_head_previous_token(name):
    model = tiny(name)
    model.set_tokenizer(CharTokenizer())
    seq = "the quick brown fox"
    scores = detect_head(model, seq, "previous_token_head")
    assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    toks = model.to_tokens(seq)
    assert toks.shape == (1, len(seq)) and model.to_string(toks[0]) == seq
    _, cache = model.run_with_cache(toks)
    T = toks.shape[1]
    prev = torch.zeros(T, T)
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    for l in range(model.cfg.n_layers):
        p = cache["pattern", l][0]  # (head, q, k)
        manual = (p * prev).sum((-1, -2)) / p.sum((-1, -2))
        close(scores[l], manual, ulps=OTHER_CODE)  # TL's detector


# ------------------------------------------------------------------ refusals
def test_sasp_refuses_decompose_resid():
    model = tiny("sasp")
    _, cache = model.run_with_cache(tokens(1, 6))
    for method in (cache.decompose_resid, cache.get_full_resid_decomposition):
        with pytest.raises(NotImplementedError, match="shaped attention with no skip connection"):
            method()
    # the per-head attention output is still exact (identity W_O): heads sum to attn_out
    heads = cache.stack_head_results(layer=1)
    close(heads.sum(0), cache["attn_out", 0], ulps=OTHER_CODE)


def test_factored_refuses_W_V():
    model = tiny("factored")
    with pytest.raises(NotImplementedError, match="factored"):
        model.W_V
    with pytest.raises(NotImplementedError, match="xt stream"):
        model.blocks[0].attn.b_V
    assert model.W_Q.shape == (2, 4, 64, 16)
    # without an output projection attention writes z straight into xt: W_O is the identity
    W_O = model.W_O[0].reshape(64, 64)
    torch.testing.assert_close(W_O, torch.eye(64))
    with pytest.raises(NotImplementedError, match="shaped"):
        tiny("sasp").W_V


def test_factored_resid_in_place_edit_refused():
    model = tiny("factored")

    def zero_in_place(x, hook):
        x[:, 2] = 0
        return x

    def zero_in_place_no_return(x, hook):
        x[:, 2] = 0

    for fn in (zero_in_place, zero_in_place_no_return):
        for name in ("resid_pre", "resid_mid", "resid_post"):
            with pytest.raises(RuntimeError, match=f"hook_{name} is a read-only view"):
                model.run_with_hooks(tokens(1, 6), fwd_hooks=[(f"blocks.1.hook_{name}", fn)])


def test_full_resid_decomposition(run):
    """Heads + neurons + embeddings + accumulated biases == the stream, at every layer input."""
    model, _, _, cache = run
    L = model.cfg.n_layers
    parts, labels = cache.get_full_resid_decomposition(return_labels=True, expand_neurons=True)
    assert labels[-1] == "bias" and "L0H0" in labels
    assert parts.shape[0] == len(labels)
    assert sum(1 for s in labels if "N" in s) == L * model.cfg.d_mlp  # one row per neuron
    assert sum(1 for s in labels if "H" in s) == L * model.cfg.n_heads  # one row per head
    close(parts.sum(0), cache["resid_post", L - 1], ulps=OTHER_CODE)
    for l in range(L):
        p = cache.get_full_resid_decomposition(layer=l, expand_neurons=False)
        close(p.sum(0), cache["resid_pre", l], ulps=OTHER_CODE)
        if model.cfg.block == "sequential":
            p = cache.get_full_resid_decomposition(layer=l, mlp_input=True, expand_neurons=False)
            close(p.sum(0), cache["resid_mid", l], ulps=OTHER_CODE)


# ------------------------------------------------------------------ TL forward / hook API parity
# TransformerLens's own tests check these on its HookedTransformer (start/stop_at_layer, the four
# hook toggles); the same checks on ours, every preset. tests/test_export_tl.py compares the
# toggled hooks value for value with TL's model itself.
from conftest import PRESETS  # noqa: E402

STANDARD = [p for p in PRESETS if p not in ("factored", "factored-alibi", "sasp")]


def _stream_at(model, cache, layer):
    """What start_at_layer=layer takes: resid_pre, or (xt, xe) on factored models."""
    if model.cfg.stream == "factored":
        return cache[f"blocks.{layer}.hook_xt_pre"], cache[f"blocks.{layer}.hook_xe_pre"]
    return cache["resid_pre", layer]


@pytest.mark.parametrize("name", PRESETS)
def test_start_at_layer_continues_the_forward(name):
    model = tiny(name, n_layers=3)
    toks = tokens(2, 8)
    logits, cache = model.run_with_cache(toks)
    L = model.cfg.n_layers
    for start in range(-L, L):
        n = start % L
        close(model(_stream_at(model, cache, n), start_at_layer=start), logits)
    # start + stop: blocks [start, stop) map resid_pre[start] to resid_pre[stop]
    mid = model(_stream_at(model, cache, 0), start_at_layer=0, stop_at_layer=2)
    close(mid, cache["resid_pre", 2])
    # start == n_layers runs no block: the unembedding of the final residual
    final = cache["resid_post", L - 1]
    if model.cfg.stream == "factored":
        final = (cache[f"blocks.{L - 1}.hook_xt_post"], cache[f"blocks.{L - 1}.hook_xe_post"])
    close(model(final, start_at_layer=L), logits)
    # a loss needs the tokens (TL's tokens=), and equals the full forward's
    loss = model(_stream_at(model, cache, 1), start_at_layer=1, return_type="loss", tokens=toks)
    close(loss, model(toks, return_type="loss"))
    with pytest.raises(ValueError, match="needs tokens= or labels="):
        model(_stream_at(model, cache, 1), start_at_layer=1, return_type="loss")


def test_start_at_layer_with_padding_and_hooks_of_earlier_layers():
    model = tiny("math-compact", n_layers=3)
    toks = tokens(2, 8)
    mask = torch.ones_like(toks, dtype=torch.bool)
    mask[1, :3] = False  # left padding: positions and key masks still apply
    logits, cache = model.run_with_cache(toks, attention_mask=mask)
    out, late = model.run_with_cache(cache["resid_pre", 2], start_at_layer=2, attention_mask=mask)
    close(out[mask], logits[mask])
    assert "blocks.2.hook_resid_pre" in late and "blocks.1.hook_resid_post" not in late
    assert "hook_embed" not in late  # the embeddings did not run
    close(late["blocks.2.attn.hook_pattern"], cache["blocks.2.attn.hook_pattern"])


def test_start_at_layer_refusals():
    fac = tiny("factored")
    _, cache = fac.run_with_cache(tokens(1, 5))
    with pytest.raises(ValueError, match=r"\(xt, xe\).*cannot be split back"):
        fac(cache["resid_pre", 1], start_at_layer=1)
    model = tiny("vanilla")
    x = torch.zeros(1, 5, model.cfg.d_model)
    with pytest.raises(ValueError, match="start_at_layer must be an int in \\[-2, 2\\]"):
        model(x, start_at_layer=3)
    with pytest.raises(ValueError, match="d_model=64"):
        model(torch.zeros(1, 5, 3), start_at_layer=1)
    with pytest.raises(ValueError, match="neither inputs_embeds"):
        model(x, start_at_layer=1, past_kv_cache=object())


def test_device_properties():
    model = tiny("vanilla")
    assert model.device == torch.device("cpu") == model.cfg.device
    model.to(torch.float64)
    assert model.cfg.dtype == torch.float64 and model.device.type == "cpu"


TOGGLES = {
    "set_use_attn_result": ["blocks.{i}.attn.hook_result"],
    "set_use_split_qkv_input": ["blocks.{i}.hook_q_input", "blocks.{i}.hook_k_input", "blocks.{i}.hook_v_input"],
    "set_use_attn_in": ["blocks.{i}.hook_attn_in"],
    "set_use_hook_mlp_in": ["blocks.{i}.hook_mlp_in"],
}


@pytest.mark.parametrize("name", STANDARD)
@pytest.mark.parametrize("toggle", list(TOGGLES))
def test_hook_toggles_change_nothing_but_add_their_hooks(name, toggle):
    model = tiny(name)
    if toggle == "set_use_attn_in" and model.cfg.n_kv_heads != model.cfg.n_heads:
        with pytest.raises(ValueError, match="set_use_split_qkv_input"):
            model.set_use_attn_in(True)
        return
    toks = tokens(2, 7)
    ref, ref_cache = model.run_with_cache(toks)
    names = [n.format(i=i) for n in TOGGLES[toggle] for i in range(model.cfg.n_layers)]
    assert not any(n in model.hook_dict for n in names)
    getattr(model, toggle)(True)
    logits, cache = model.run_with_cache(toks)
    close(logits, ref)
    H, Hkv, d = model.cfg.n_heads, model.cfg.n_kv_heads, model.cfg.d_model
    for i in range(model.cfg.n_layers):
        pre = ref_cache["resid_pre", i]
        if toggle == "set_use_attn_result":
            result = cache[f"blocks.{i}.attn.hook_result"]
            assert result.shape == (2, 7, H, d)
            close(result.sum(2) + model.blocks[i].attn.b_O, ref_cache["attn_out", i])
            # TL's stack_head_results reads hook_result when it is cached
            close(result, torch.einsum("bphd,hdm->bphm", ref_cache["z", i], model.W_O[i]))
        elif toggle == "set_use_split_qkv_input":
            for kind, n in (("q", H), ("k", Hkv), ("v", Hkv)):
                x = cache[f"blocks.{i}.hook_{kind}_input"]
                assert x.shape == (2, 7, n, d)
                torch.testing.assert_close(x, pre[:, :, None].expand(-1, -1, n, -1))
            # ln1 runs on each head's copy, as in TL (the cache keeps its last call: the values';
            # a parallel block's MLP then reads ln1(resid_pre) once more)
            if model.cfg.block == "sequential":
                assert cache[f"blocks.{i}.ln1.hook_scale"].shape == (2, 7, Hkv, 1)
        elif toggle == "set_use_attn_in":
            torch.testing.assert_close(cache[f"blocks.{i}.hook_attn_in"], pre[:, :, None].expand(-1, -1, H, -1))
        else:
            want = ref_cache["resid_mid", i] if model.cfg.block == "sequential" else pre
            torch.testing.assert_close(cache[f"blocks.{i}.hook_mlp_in"], want)
        for kind in ("q", "k", "v", "z", "pattern"):
            close(cache[kind, i], ref_cache[kind, i])
    getattr(model, toggle)(False)
    assert not any(n in model.hook_dict for n in names)
    close(model(toks), ref)
    assert model.blocks[0].attn.last_path == "sdpa"  # off again: the fused path


def test_split_qkv_input_edits_reach_one_head():
    """TL's point of the toggle: patch one head's query input and only that head's q moves."""
    model = tiny("llama-like")
    model.set_use_split_qkv_input(True)
    toks = tokens(1, 6)
    _, clean = model.run_with_cache(toks)

    def bump(x, hook):
        x[:, :, 2] += 1.0
        return x

    with model.hooks(fwd_hooks=[("blocks.1.hook_q_input", bump)]):
        _, cache = model.run_with_cache(toks)
    q, q0 = cache["q", 1], clean["q", 1]
    assert not torch.allclose(q[:, :, 2], q0[:, :, 2])
    others = [h for h in range(model.cfg.n_heads) if h != 2]
    torch.testing.assert_close(q[:, :, others], q0[:, :, others])
    torch.testing.assert_close(cache["k", 1], clean["k", 1])
    # hook_k_input is per key/value head (GQA): bumping kv head 0 moves the keys of that head only
    with model.hooks(fwd_hooks=[("blocks.0.hook_k_input", lambda x, hook: x + 1.0)]):
        _, cache = model.run_with_cache(toks)
    assert not torch.allclose(cache["k", 0], clean["k", 0])
    torch.testing.assert_close(cache["q", 0], clean["q", 0])


def test_hook_mlp_in_edit_changes_the_mlp_only():
    model = tiny("vanilla")
    model.set_use_hook_mlp_in(True)
    toks = tokens(1, 6)
    _, clean = model.run_with_cache(toks)
    with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_in", lambda x, hook: x * 0)]):
        _, cache = model.run_with_cache(toks)
    torch.testing.assert_close(cache["resid_mid", 0], clean["resid_mid", 0])  # the stream itself is untouched
    assert not torch.allclose(cache["mlp_out", 0], clean["mlp_out", 0])


def test_toggle_refusals():
    for name in ("factored", "sasp"):
        with pytest.raises(NotImplementedError, match="per-head attention inputs are not defined"):
            tiny(name).set_use_split_qkv_input(True)
    with pytest.raises(ValueError, match="attention-only"):
        tiny("vanilla", attn_only=True).set_use_hook_mlp_in(True)
    model = tiny("vanilla")
    model.cfg.use_attn_result = True  # flipped by hand, as some TL code does
    with pytest.raises(RuntimeError, match=r"call model.set_use_attn_result\(True\)"):
        model(tokens(1, 4))
    model.cfg.use_attn_result = False
    # attn_result and mlp_in are defined on factored / shaped models too
    for name in ("factored", "sasp"):
        m = tiny(name)
        ref = m(tokens(1, 5))
        m.set_use_attn_result(True)
        m.set_use_hook_mlp_in(True)
        logits, cache = m.run_with_cache(tokens(1, 5))
        close(logits, ref)
        close(cache["blocks.0.attn.hook_result"].sum(2), cache["attn_out", 0])


def test_str_token_helpers():
    model = tiny("vanilla")
    model.set_tokenizer(CharTokenizer())
    model.cfg.default_prepend_bos = False
    assert model.to_str_tokens("abc") == ["a", "b", "c"]
    assert model.to_str_tokens(torch.tensor([[1, 2]])) == ["a", "b"]
    assert model.to_str_tokens([1, 2, 3]) == ["a", "b", "c"]
    assert model.to_str_tokens(["ab", "c"]) == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="one sequence"):
        model.to_str_tokens(torch.ones(2, 3, dtype=torch.long))
    assert model.to_single_token("z") == 26
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("ab")
    dirs = model.tokens_to_residual_directions(torch.tensor([1, 2]))
    assert dirs.shape == (2, model.cfg.d_model)
    torch.testing.assert_close(model.tokens_to_residual_directions("a"), dirs[0])
