"""HookedTransformer semantics, each checked against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import PRESETS, VOCAB, build, tiny, tokens
from tolerance import OTHER_CODE, approx_tol, close
from models import HookedTransformer, ModelConfig, presets
from models.positions import Rotary, alibi_slopes

pytestmark = pytest.mark.equivalence  # run again on other CPU kernels (Makefile `test`)



# ------------------------------------------------------------------ reference forward
def _norm(x, w, b, kind, eps):
    if kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return x if b is None else x + b


def _rope(x, pos, rotary_dim, theta, interleaved):
    """Rotate channel pairs by pos * theta^(-2i/r): written from the RoFormer formula."""
    out = x.clone()
    half = rotary_dim // 2
    for i in range(half):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
        ang = pos[:, None].double() * theta ** (-2.0 * i / rotary_dim)  # (pos, 1)
        c, s = ang.cos().float(), ang.sin().float()
        xa, xb = x[..., a], x[..., b]  # (pos, head)
        out[..., a] = xa * c - xb * s
        out[..., b] = xb * c + xa * s
    return out


@torch.no_grad()
def reference_logits(model: HookedTransformer, toks: torch.Tensor) -> torch.Tensor:
    """Plain-torch forward of a standard-stream sequential/parallel model from TL weight views."""
    cfg = model.cfg
    assert cfg.stream == "standard" and cfg.block != "shaped"
    T = toks.shape[1]
    pos = torch.arange(T)
    x = model.W_E[toks]
    if cfg.positional == "learned":
        x = x + model.W_pos[pos]
    act = {"gelu": F.gelu, "gelu_new": lambda u: F.gelu(u, approximate="tanh"), "relu": F.relu,
           "geglu": F.gelu, "swiglu": F.silu}[cfg.ffn]
    causal = torch.ones(T, T).tril().bool()
    for l, blk in enumerate(model.blocks):
        ln = lambda u, n: u if cfg.norm == "none" else _norm(u, n.w, n.b, cfg.norm, cfg.norm_eps)
        h = ln(x, blk.ln1)
        q = torch.einsum("bpm,hmd->bphd", h, model.W_Q[l]) + model.b_Q[l]
        k = torch.einsum("bpm,hmd->bphd", h, model.W_K[l]) + model.b_K[l]
        v = torch.einsum("bpm,hmd->bphd", h, model.W_V[l]) + model.b_V[l]
        if cfg.positional == "rope":
            q = _rope(q, pos, cfg.rotary_dim, cfg.rope_theta, cfg.rope_interleaved)
            k = _rope(k, pos, cfg.rotary_dim, cfg.rope_theta, cfg.rope_interleaved)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)
        if cfg.positional == "alibi":
            slopes = alibi_slopes(cfg.n_heads)
            scores = scores - slopes[:, None, None] * (pos[:, None] - pos[None, :]).float()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        attn_out = torch.einsum("bqhd,hdm->bqm", z, model.W_O[l]) + model.b_O[l]
        if cfg.attn_only:
            x = x + attn_out
            continue
        h2 = ln(x + attn_out, blk.ln2) if cfg.block == "sequential" else h
        pre = h2 @ model.W_in[l] + model.b_in[l]
        if cfg.gated:
            post = act(h2 @ model.W_gate[l] + blk.mlp.fc_in.bias[: cfg.d_mlp] if blk.mlp.fc_in.bias is not None
                       else h2 @ model.W_gate[l]) * pre
        else:
            post = act(pre)
        mlp_out = post @ model.W_out[l] + model.b_out[l]
        x = x + attn_out + mlp_out
    if cfg.norm != "none":
        x = _norm(x, model.ln_final.w, model.ln_final.b, cfg.norm, cfg.norm_eps)
    logits = x @ model.W_U
    return logits if model.b_U is None else logits + model.b_U


@pytest.mark.parametrize(
    "name, fields",
    [
        ("vanilla", dict(tie_embeddings=False, unembed_bias=True)),
        ("vanilla-rms-relu-alibi", dict(norm="rmsnorm", ffn="relu", positional="alibi", n_heads=8, d_model=64)),
        ("gqa-rope-geglu", dict(positional="rope", ffn="geglu", n_kv_heads=2, rope_theta=100.0)),
        ("interleaved-partial-parallel", dict(positional="rope", rope_interleaved=True, rope_fraction=0.5,
                                              block="parallel", ffn="gelu_new", attn_bias=False)),
        ("attn-only-none", dict(attn_only=True, positional="none", norm="none")),
    ],
)
def test_reference_forward(name, fields):
    model = build(**fields)
    toks = tokens(2, 10)
    close(model(toks), reference_logits(model, toks))


@pytest.mark.parametrize("name", ["vanilla", "math-compact", "llama-like", "gptj"])
def test_reference_forward_presets(name):
    model = tiny(name)
    toks = tokens(2, 10)
    close(model(toks), reference_logits(model, toks))


# ------------------------------------------------------------------ components
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm"])
def test_norm_vs_manual(kind):
    from models.norm import Norm

    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=8, norm=kind, norm_eps=1e-3)
    norm = Norm(cfg)
    with torch.no_grad():
        norm.w.normal_()
        if norm.b is not None:
            norm.b.normal_()
    x = torch.randn(3, 5, 16) * 3 + 1
    if kind == "rmsnorm":
        manual = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-3) * norm.w
    else:
        manual = F.layer_norm(x, (16,), norm.w, norm.b, 1e-3)
    close(norm(x), manual)  # fused path
    seen = {}
    norm.hook_scale.add_hook(lambda t, hook: seen.__setitem__("scale", t))
    close(norm(x), manual)  # hooked path
    centred = x - x.mean(-1, keepdim=True) if kind == "layernorm" else x
    close(seen["scale"], torch.sqrt((centred**2).mean(-1, keepdim=True) + 1e-3))
    norm.hook_scale.remove_hooks()


def _rotary(dim=16, fraction=1.0, interleaved=False, theta=10000.0):
    cfg = ModelConfig(n_layers=1, d_model=dim * 2, n_heads=2, d_vocab=8, positional="rope",
                      rope_fraction=fraction, rope_interleaved=interleaved, rope_theta=theta)
    return Rotary(cfg)


def _rot(rot, x, positions):
    cos, sin = rot.angles(torch.tensor([positions]))
    return rot(x, cos, sin)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rotary_relative_position_invariance(interleaved, fraction):
    rot = _rotary(fraction=fraction, interleaved=interleaved, theta=100.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    dots = []
    for shift in (0, 3, 17, 40):
        qr, kr = _rot(rot, q, [5 + shift]), _rot(rot, k, [2 + shift])
        dots.append(float((qr * kr).sum()))
    # |q.k| <= |q| |k|: the magnitudes the rounding of a dot product scales with
    assert dots == pytest.approx([dots[0]] * 4, **approx_tol(dots[0], scale=float(q.norm() * k.norm()))), dots
    # a different offset gives a different dot product (the rotation is not trivial)
    assert abs(float((_rot(rot, q, [9]) * _rot(rot, k, [2])).sum()) - dots[0]) > 1e-3
    # norms preserved; channels past rotary_dim untouched
    out = _rot(rot, q, [7])
    close(out.norm(), q.norm())
    r = rot.rotary_dim
    assert torch.equal(out[..., r:], q[..., r:])
    assert r == int(16 * fraction)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rotary_interleaved_is_half_split_permuted(fraction):
    half, inter = _rotary(fraction=fraction), _rotary(fraction=fraction, interleaved=True)
    r = half.rotary_dim
    # half-split pairs (i, i + r/2) <-> interleaved pairs (2i, 2i + 1)
    perm = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, 16)])
    x = torch.randn(2, 6, 3, 16)
    positions = list(range(6))
    torch.testing.assert_close(_rot(half, x[..., perm], positions), _rot(inter, x, positions)[..., perm])
    assert not torch.allclose(_rot(half, x, positions), _rot(inter, x, positions))


def test_rotary_matches_formula():
    rot = _rotary(theta=50.0)
    x = torch.randn(1, 5, 2, 16)
    pos = torch.arange(5)
    close(_rot(rot, x, pos.tolist()), _rope(x[0], pos, 16, 50.0, False)[None])


def test_alibi_slopes_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    # Press et al.: closest power of two (4) gives 2^-2..2^-8 step 2, then every other slope of 8
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))


def test_alibi_bias_in_scores():
    model = build(positional="alibi", n_heads=8, d_model=64)
    toks = tokens(1, 7)
    _, cache = model.run_with_cache(toks)
    q, k = cache["q", 0], cache["k", 0]
    plain = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    diff = (cache["attn_scores", 0] - plain)[0]
    i = torch.arange(7)
    expected = -alibi_slopes(8)[:, None, None] * (i[:, None] - i[None, :]).float()
    mask = (i[:, None] >= i[None, :])
    close(diff[:, mask], expected[:, mask], scale=float(plain[0][:, mask].abs().max()))  # a difference of scores
    assert torch.isinf(cache["attn_scores", 0][0][:, ~mask]).all()


# ------------------------------------------------------------------ factored stream
@pytest.mark.parametrize("value", ["identity", "channel_mix", "modulated"])
@pytest.mark.parametrize("out_proj", [False, True])
def test_factored_streams(value, out_proj):
    model = build(stream="factored", factored_value=value, factored_out_proj=out_proj, n_layers=3)
    toks = tokens(2, 9)
    logits, cache = model.run_with_cache(toks)
    c = lambda n, l: cache[f"blocks.{l}.hook_{n}"]
    emb = cache["hook_embed"] + cache["hook_pos_embed"]
    torch.testing.assert_close(c("xt_pre", 0), emb)
    assert torch.equal(c("xe_pre", 0), torch.zeros_like(emb))
    for l in range(3):
        close(c("xt_mid", l) - c("xt_pre", l), c("attn_out", l), scale=float(c("xt_mid", l).abs().max()))
        assert torch.equal(c("xe_mid", l), c("xe_pre", l))  # attention never writes xe
        assert torch.equal(c("xt_post", l), c("xt_mid", l))  # the MLP never writes xt
        close(c("xe_post", l) - c("xe_mid", l), c("mlp_out", l), scale=float(c("xe_post", l).abs().max()))
        torch.testing.assert_close(c("resid_pre", l), c("xt_pre", l) + c("xe_pre", l))
        torch.testing.assert_close(c("resid_mid", l), c("xt_mid", l) + c("xe_mid", l))
        torch.testing.assert_close(c("resid_post", l), c("xt_post", l) + c("xe_post", l))
        if l < 2:
            assert torch.equal(c("xt_pre", l + 1), c("xt_post", l))
    # values are read from xt (not from ln1(resid)): identity -> v == xt split into heads
    if value == "identity":
        torch.testing.assert_close(cache["blocks.1.attn.hook_v"], c("xt_pre", 1).view(2, 9, 4, 8))
    final = c("xt_post", 2) + c("xe_post", 2)
    close(logits, model.unembed_resid(model.ln_final(final)))


def test_factored_resid_patch_refused_xt_patch_works():
    model = build(stream="factored", factored_value="channel_mix")
    toks = tokens(1, 6)
    for name in ("resid_pre", "resid_mid", "resid_post"):
        with pytest.raises(RuntimeError, match=rf"blocks\.1\.hook_{name} is a read-only view.*hook_xt_"):
            model.run_with_hooks(toks, fwd_hooks=[(f"blocks.1.hook_{name}", lambda t, hook: t * 0)])
    clean = model(toks)
    patched = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_xt_pre", lambda t, hook: t * 0)])
    assert patched.shape == clean.shape and not torch.allclose(patched, clean)
    # zeroing xt removes attention's values in that layer: attn_out reads only xt
    _, cache = model.run_with_cache(toks)
    seen = {}
    model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_xt_pre", lambda t, hook: t * 0),
                                          ("blocks.1.attn.hook_v", lambda t, hook: seen.setdefault("v", t))])
    assert torch.equal(seen["v"], torch.zeros_like(seen["v"]))
    # a read-only hook (returns None) on hook_resid_* is fine
    model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", lambda t, hook: None)])


# ------------------------------------------------------------------ parallel / shaped blocks
def test_gptj_parallel_block():
    model = tiny("gptj")
    toks = tokens(2, 8)
    _, cache = model.run_with_cache(toks)
    for l, blk in enumerate(model.blocks):
        torch.testing.assert_close(
            cache["resid_post", l], cache["resid_pre", l] + cache["attn_out", l] + cache["mlp_out", l])
        h = cache[f"blocks.{l}.ln1.hook_normalized"]
        torch.testing.assert_close(blk.mlp(h), cache["mlp_out", l])  # the MLP reads ln1
        q = torch.einsum("bpm,hmd->bphd", h, model.W_Q[l]) + model.b_Q[l]
        torch.testing.assert_close(q, cache["q", l])  # so does attention
        assert f"blocks.{l}.hook_resid_mid" not in cache.cache_dict


def test_shaped_init_is_identity():
    torch.manual_seed(0)
    model = presets.make("sasp", "tiny", d_vocab=VOCAB).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.alpha.copy_(torch.linspace(0.5, 2.0, model.cfg.n_heads))
    toks = tokens(2, 9)
    _, cache = model.run_with_cache(toks)
    eye = torch.eye(9)
    for l, blk in enumerate(model.blocks):
        expected = blk.attn.alpha[None, :, None, None] * eye
        close(cache["pattern", l], expected.expand_as(cache["pattern", l]))


def test_shaped_pattern_formula():
    model = tiny("sasp")
    toks = tokens(2, 9)
    _, cache = model.run_with_cache(toks)
    T = 9
    causal = torch.ones(T, T).tril()
    C = causal / causal.sum(-1, keepdim=True)
    for l, blk in enumerate(model.blocks):
        a, b, g = (p.detach()[None, :, None, None] for p in (blk.attn.alpha, blk.attn.beta, blk.attn.gamma))
        assert not torch.allclose(b, g)
        soft = cache["attn_scores", l].softmax(-1)
        expected = a * torch.eye(T) + b * soft - g * C
        close(cache["pattern", l], expected)
        close(cache["pattern", l].sum(-1), (a + b - g).squeeze(-1).expand(2, -1, T))
        # identity values: v is ln1(resid) split into heads; no skip connection
        torch.testing.assert_close(cache["v", l], cache[f"blocks.{l}.ln1.hook_normalized"].view(2, T, 4, 16))
        torch.testing.assert_close(cache["resid_post", l], cache["attn_out", l] + cache["mlp_out", l])


# ------------------------------------------------------------------ loss and padding
def test_loss_matches_manual_cross_entropy():
    model = tiny("vanilla")
    toks = tokens(3, 10)
    logits = model(toks)
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), toks[:, 1:].reshape(-1))
    close(model(toks, return_type="loss"), manual)
    labels = toks.clone()
    labels[0, 4:7] = -100
    labels[2, 1] = -100
    keep = labels[:, 1:] != -100
    per = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1).clamp(min=0),
                          reduction="none").view(3, 9)
    torch.testing.assert_close(model(toks, return_type="loss", labels=labels), per[keep].mean())
    out = model(toks, return_type="both", labels=labels)
    torch.testing.assert_close(out.logits, logits)
    per_tok = model(toks, return_type="loss", labels=labels, loss_per_token=True)
    assert per_tok.shape == (3, 9)
    close(per_tok[keep], per[keep])
    assert torch.equal(per_tok[~keep], torch.zeros_like(per_tok[~keep]))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_loss_equals_unpadded(side):
    model = tiny("math-compact")
    a, b = tokens(1, 8, seed=1)[0], tokens(1, 5, seed=2)[0]
    pad = torch.zeros(3, dtype=torch.long)
    row_b = torch.cat([pad, b]) if side == "left" else torch.cat([b, pad])
    batch = torch.stack([a, row_b])
    mask = batch != -1
    mask[1] = torch.cat([torch.zeros(3), torch.ones(5)]).bool() if side == "left" else torch.cat([torch.ones(5), torch.zeros(3)]).bool()
    per = model(batch, return_type="loss", attention_mask=mask, loss_per_token=True)
    alone_a = model(a[None], return_type="loss", loss_per_token=True)[0]
    alone_b = model(b[None], return_type="loss", loss_per_token=True)[0]
    close(per[0], alone_a)
    got_b = per[1, 3:] if side == "left" else per[1, :4]
    close(got_b, alone_b)
    rest = per[1, :3] if side == "left" else per[1, 4:]
    assert torch.equal(rest, torch.zeros_like(rest)), "targets on/after padding must not be scored"
    mean = model(batch, return_type="loss", attention_mask=mask)
    close(mean, torch.cat([alone_a, alone_b]).mean())


@pytest.mark.parametrize("name", PRESETS)
def test_padding_left_and_right_match_unpadded(name):
    model = tiny(name)
    seqs = [tokens(1, n, seed=n)[0] for n in (9, 4, 6)]
    W = 9
    alone = [model(s[None])[0] for s in seqs]
    for side in ("left", "right"):
        batch = torch.zeros(3, W, dtype=torch.long)
        mask = torch.zeros(3, W, dtype=torch.bool)
        for i, s in enumerate(seqs):
            sl = slice(W - len(s), W) if side == "left" else slice(0, len(s))
            batch[i, sl], mask[i, sl] = s, True
        logits = model(batch, attention_mask=mask)
        assert torch.isfinite(logits).all()
        for i, s in enumerate(seqs):
            close(logits[i][mask[i]], alone[i], msg=f"{name} {side} row {i}")


def test_attention_mask_shape_error():
    model = tiny("vanilla")
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(tokens(2, 5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="return_type"):
        model(tokens(2, 5), return_type="probs")


def test_learned_positions_past_n_ctx():
    model = tiny("vanilla", n_ctx=8)
    with pytest.raises(ValueError, match="n_ctx=8"):
        model(tokens(1, 9))


# ------------------------------------------------------------------ bookkeeping
@pytest.mark.parametrize("name", PRESETS)
def test_num_params(name):
    model = tiny(name)
    total = sum(p.numel() for _, p in model.named_parameters())
    assert model.get_num_params(non_embedding=False) == total
    cfg = model.cfg
    emb = cfg.d_vocab * cfg.d_model
    if not cfg.tie_embeddings:
        emb += cfg.d_vocab * cfg.d_model
    if cfg.positional == "learned":
        emb += cfg.n_ctx * cfg.d_model
    assert model.get_num_params(non_embedding=True) == total - emb
    assert model.get_num_params() == total - emb


def test_num_params_explicit_count():
    m = HookedTransformer(ModelConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, d_vocab=10, n_ctx=4,
                                      tie_embeddings=True))
    per_layer = (8 * 24 + 24) + (8 * 8 + 8) + (8 * 16 + 16) + (16 * 8 + 8) + 2 * (8 + 8)
    assert m.get_num_params(non_embedding=True) == per_layer + 16  # + ln_final
    assert m.get_num_params(non_embedding=False) == per_layer + 16 + 10 * 8 + 4 * 8


@pytest.mark.parametrize("name", ["vanilla", "factored", "sasp", "llama-like"])
def test_gradient_checkpointing_same_loss_and_grads(name):
    toks = tokens(2, 10)
    grads, losses = [], []
    for ckpt in (False, True):
        model = tiny(name).train()
        model.set_gradient_checkpointing(ckpt)
        loss = model(toks, return_type="loss")
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("name", ["vanilla", "llama-like", "factored-alibi", "sasp"])
def test_torch_compile_same_logits(backend, name):
    torch._dynamo.reset()
    model = tiny(name)
    toks = tokens(2, 10)
    expected = model(toks)
    compiled = torch.compile(model, backend=backend)
    close(compiled(toks), expected)


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    model = tiny("llama-like")
    toks = tokens(2, 10)
    expected = model(toks)
    compiled = torch.compile(model)
    close(compiled(toks), expected, ulps=OTHER_CODE)  # inductor writes its own kernels


@pytest.mark.parametrize("name", ["vanilla", "sasp", "factored", "gptj"])
def test_dropout_train_vs_eval(name):
    model = tiny(name, dropout=0.3)
    toks = tokens(2, 10)
    model.train()
    torch.manual_seed(1)
    a = model(toks)
    b = model(toks)
    assert not torch.allclose(a, b), "dropout in train mode must change outputs"
    model.eval()
    c, d = model(toks), model(toks)
    assert torch.equal(c, d)
    # eval-mode dropout model == same weights with dropout 0
    ref = tiny(name, dropout=0.0)
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(ref(toks), c)


def test_cfg_tracks_device_and_dtype():
    model = tiny("vanilla")
    assert model.cfg.dtype == torch.float32 and model.cfg.device == torch.device("cpu")
    model.double()
    assert model.cfg.dtype == torch.float64
    assert model(tokens(1, 4)).dtype == torch.float64
