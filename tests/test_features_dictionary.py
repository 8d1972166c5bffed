"""interp.features dictionaries: config validation, shapes, gradients, the sparse decode against
the dense one, straight-through estimators, AuxK, the decoder-norm constraint, compile, and
recovery of a known sparse dictionary from synthetic data (the test that can fail)."""

from __future__ import annotations

import pytest
import torch

from interp import features
from interp.features import DictionaryConfig, DictionaryError
from interp.features.dictionary import sparse_decode

ARCHS = {
    "relu": {},
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "jumprelu": {},
    "matryoshka": {"k": 3, "matryoshka_widths": [32, 64]},
}
KINDS = ["sae", "transcoder", "skip"]


def make(arch: str, kind: str = "sae", d_in: int = 16, d_sae: int = 64, **over) -> features.SparseDictionary:
    cfg = dict(arch=arch, d_in=d_in, d_sae=d_sae, hook_name="blocks.0.hook_resid_pre", **ARCHS[arch])
    if kind != "sae":
        cfg.update(out_hook_name="blocks.0.hook_mlp_out", d_out=12, skip=kind == "skip")
    cfg.update(over)
    return features.make(cfg)


def test_registry_and_config_round_trip():
    assert sorted(features.ARCHITECTURES) == sorted(ARCHS)
    sae = make("matryoshka", "skip")
    again = DictionaryConfig.from_dict(sae.cfg.to_dict())
    assert again == sae.cfg and again.d_out == 12


@pytest.mark.parametrize("bad, message", [
    (dict(arch="nope"), "unknown architecture"),
    (dict(arch="topk", k=64), "k=64: must be < d_sae=64"),
    (dict(arch="topk", k=None), "needs k"),
    (dict(arch="relu", k=4), "has no k"),
    (dict(arch="topk", k=4, skip=True), "for transcoders"),
    (dict(arch="relu", d_out=8), "d_out must equal d_in"),
    (dict(arch="matryoshka", k=4, matryoshka_widths=[32, 16, 64]), "strictly increasing"),
    (dict(arch="matryoshka", k=4, matryoshka_widths=[16, 32]), "last width must be d_sae=64"),
    (dict(arch="relu", normalize="whiten"), "normalize"),
    (dict(arch="relu", l1_coeff=-1.0), "l1_coeff"),
    (dict(arch="relu", colour="red"), "unknown key(s) ['colour']"),
])
def test_config_errors_name_the_field(bad, message):
    cfg = dict(arch="relu", d_in=16, d_sae=64, hook_name="h")
    cfg.update(bad)
    with pytest.raises(DictionaryError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        DictionaryConfig.from_dict(cfg)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_gradients(arch, kind):
    torch.manual_seed(0)
    sae = make(arch, kind)
    x = torch.randn(2, 5, 16)
    z = sae.encode(x)
    assert z.shape == (2, 5, 64) and (z >= 0).all()
    assert sae.decode(z).shape == (2, 5, sae.cfg.d_out)
    x_hat, z2 = sae(x)
    assert x_hat.shape == (2, 5, sae.cfg.d_out) and torch.equal(z, z2)
    if arch in ("topk",):
        assert ((z > 0).sum(-1) <= 3).all()

    x, t = torch.randn(32, 16), torch.randn(32, sae.cfg.d_out)
    sae.init_from_data(x, t if kind != "sae" else None)
    out = sae.training_forward(x, t if kind != "sae" else x, fired=torch.arange(64) % 2 == 0)
    assert out.loss.ndim == 0 and out.x_hat.shape == t.shape and out.active.shape == (64,)
    assert out.active.dtype == torch.bool and out.l0.ndim == 0 and "mse" in out.parts and "fvu" in out.parts
    out.loss.backward()
    for name, p in sae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{arch}/{kind}: no gradient reaches {name}"


@pytest.mark.parametrize("kind", ["sae", "skip"])
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_sparse_decode_equals_dense(arch, kind):
    """Training's embedding_bag decode == the dense z @ W_dec on the same selected latents (fp32)."""
    torch.manual_seed(1)
    sae = make(arch, kind, d_in=16, d_sae=96, **({"matryoshka_widths": [20, 50, 96]} if arch == "matryoshka" else {}))
    x = torch.randn(40, 16) * 3
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
        x_s, t = sae._scaled(x, x)
        pre = sae._encoder_in(x_s) @ sae.W_enc + sae.b_enc
        if arch == "topk":
            vals, idx = pre.topk(3, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        else:
            vals, latents, offsets, tokens = sae.batch_topk(pre)
            z = torch.zeros_like(pre).index_put((tokens, latents), vals)
            assert torch.equal(z.flatten().topk(3 * 40).values.sort().values, vals.sort().values)
        dense = z @ sae.W_dec + sae.b_dec
        if sae.W_skip is not None:
            dense = dense + x_s @ sae.W_skip
        out = sae.training_forward(x, torch.zeros(40, sae.cfg.d_out) if kind != "sae" else x)
    scale = dense.abs().max()
    torch.testing.assert_close(out.x_hat * sae.scale_out, dense, rtol=1e-5, atol=1e-6 * float(scale))
    if arch == "topk":
        vals2, idx2 = sae.encode_sparse(x)
        torch.testing.assert_close(sparse_decode(vals2, idx2, sae.W_dec), z @ sae.W_dec, rtol=1e-5, atol=1e-5)


def test_jumprelu_straight_through_gradients():
    """d/dtheta sum(z) = -(theta/eps) * #{|pre - theta| < eps/2}; d/dtheta L0 = -(1/eps) * #."""
    from interp.features.jumprelu import jumprelu, step

    theta = torch.tensor([0.5, 1.0], requires_grad=True)
    pre = torch.tensor([[0.49, 0.2], [0.52, 1.04], [0.9, 2.0]])
    eps = 0.1
    (g,) = torch.autograd.grad(jumprelu(pre, theta, eps).sum(), theta)
    torch.testing.assert_close(g, torch.tensor([-(0.5 / eps) * 2, -(1.0 / eps) * 1]))
    (g,) = torch.autograd.grad(step(pre, theta, eps).sum(), theta)
    torch.testing.assert_close(g, torch.tensor([-2 / eps, -1 / eps]))
    assert torch.equal(jumprelu(pre, theta, eps), pre * (pre > theta))


def test_auxk_trains_dead_latents_only_when_given():
    torch.manual_seed(0)
    sae = make("topk")
    x = torch.randn(64, 16)
    assert float(sae.training_forward(x, x).parts["aux"]) == 0.0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:32] = True  # latents 0..31 dead
    out = sae.training_forward(x, x, fired=~dead)
    assert float(out.parts["aux"]) > 0
    pre = sae._encoder_in(x) @ sae.W_enc + sae.b_enc
    sae.auxk_loss(pre, x.float(), ~dead, sae.W_dec).backward()
    col = sae.W_enc.grad.abs().sum(0)
    assert (col[:32] > 0).any() and (col[32:] == 0).all()


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_decoder_rows_stay_unit_norm_and_grad_is_tangent(arch):
    torch.manual_seed(0)
    sae = make(arch)
    x = torch.randn(64, 16)
    sae.training_forward(x, x).loss.backward()
    along = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert along.abs().max() < 1e-5 * sae.W_dec.grad.abs().max()
    torch.optim.SGD(sae.parameters(), lr=0.5).step()
    sae.after_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))


def test_batchtopk_threshold_is_learned_and_used_at_inference():
    torch.manual_seed(0)
    sae = make("batchtopk").train()
    assert float(sae.threshold) < 0
    x = torch.randn(256, 16)
    out = sae.training_forward(x, x)
    sae.after_step()
    kept = sae.batch_topk(sae._encoder_in(sae._scaled(x, x)[0]) @ sae.W_enc + sae.b_enc)[0]
    assert float(sae.threshold) == pytest.approx(float(kept[kept > 0].min().detach()))
    first = float(sae.threshold)
    sae.training_forward(x * 2, x * 2)
    sae.after_step()
    assert first < float(sae.threshold) < 2 * first + 1e-6  # an EMA step towards the new batch's minimum
    l0 = (sae.encode(x) > 0).sum(-1).float().mean()
    assert 1.0 <= float(l0) <= 6.0  # about k = 3 per token at inference
    assert float(out.l0) == pytest.approx(3.0)


def _synthetic(n_feat: int = 32, d: int = 16, seed: int = 0):
    """A known unit-norm dictionary D and samples with ~3 active features of magnitude 0.5-1.5."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_feat, d, generator=g)
    D /= D.norm(dim=-1, keepdim=True)

    def sample(n: int) -> torch.Tensor:
        active = torch.rand(n, n_feat, generator=g) < 3 / n_feat
        return (active * (torch.rand(n, n_feat, generator=g) + 0.5)) @ D

    return D, sample


def fit(sae, sample, steps: int = 500, lr: float = 1e-2, batch: int = 256):
    """A minimal training loop for these tests (the library's trainer is features.train)."""
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sae.init_from_data(sample(2048))
    since = torch.zeros(sae.cfg.d_sae)
    for _ in range(steps):
        x = sample(batch)
        out = sae.training_forward(x, x, fired=since < 20 * batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        sae.after_step()
        since = torch.where(out.active, torch.zeros_like(since), since + batch)
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_recovers_a_known_dictionary(arch):
    torch.manual_seed(0)
    D, sample = _synthetic()
    over = {"l1_coeff": 1.0} if arch == "relu" else {}
    sae = fit(make(arch, **over), sample)
    W = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    best = (D @ W.T).max(-1).values  # each true feature's closest decoder row
    assert best.min() > 0.9, f"{arch}: true features recovered only to cos {best.min():.3f}"
    with torch.no_grad():
        x = sample(4096)
        x_hat, z = sae(x)
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.25, f"{arch}: fraction of variance unexplained {fvu:.3f}"
    assert float((z > 0).sum(-1).float().mean()) < 10


@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_compiles_fullgraph(arch):
    """Dynamo captures the whole training step's forward in one graph (no .item(), no
    data-dependent branches); the eager backend keeps this cheap on CPU."""
    torch._dynamo.reset()
    sae = make(arch, "skip" if arch == "topk" else "sae")
    x, t = torch.randn(32, 16), torch.randn(32, sae.cfg.d_out)
    t = t if sae.cfg.is_transcoder else x
    fired = torch.arange(64) % 3 != 0
    compiled = torch.compile(sae.training_forward, fullgraph=True, backend="eager")
    out = compiled(x, t, fired)
    ref = sae.training_forward(x, t, fired)
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_compiles_through_aot_autograd(arch):
    torch._dynamo.reset()
    sae = make(arch)
    x = torch.randn(32, 16)
    compiled = torch.compile(sae.training_forward, fullgraph=True, backend="aot_eager")
    out = compiled(x, x, torch.arange(64) % 3 != 0)
    out.loss.backward()
    assert all(p.grad is not None for p in sae.parameters())
