"""The Triton LayerNorm backward on CUDA (skipped without a GPU): dx, dw, db equal the reference
op, and a compiled bf16-autocast training step gives F.layer_norm's gradients.

    python -m pytest -q tests/test_layer_norm_cuda.py      # on a CUDA machine
"""

from __future__ import annotations

import pytest
import torch

from models import layer_norm as ln
from models import presets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONFIGS = [dict(), dict(rows=1, num_warps=4, programs_per_sm=8), dict(rows=8, num_warps=8, programs_per_sm=2)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize(("x_dtype", "dy_dtype"), [(torch.float32, torch.bfloat16), (torch.float32, torch.float32),
                                                   (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize(("n", "d"), [(16384, 768), (37, 100), (1, 1), (5, 4096), (3000, 64)])
def test_triton_kernel_matches_reference(n, d, x_dtype, dy_dtype, config, monkeypatch):
    monkeypatch.setattr(ln, "KERNEL_CONFIG", {**ln.KERNEL_CONFIG, **config})
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(n, d, device="cuda", generator=g) * 3 + 1).to(x_dtype)
    w = torch.randn(d, device="cuda", generator=g)
    b = torch.randn(d, device="cuda", generator=g)
    _, mean, rstd = torch.native_layer_norm(x, (d,), w.to(x_dtype), b.to(x_dtype), 1e-5)
    dy = torch.randn(n, d, device="cuda", generator=g).to(dy_dtype)
    dx, dw, db = torch.ops.models.layer_norm_grad(dy, x, w, mean.view(-1), rstd.view(-1))
    ref_dx, ref_dw, ref_db = ln._layer_norm_grad_reference(dy.double(), x.double(), w.double(),
                                                           mean.view(-1), rstd.view(-1))
    assert dx.dtype == x_dtype and dw.dtype == db.dtype == torch.float32
    tol = dict(atol=1e-4, rtol=1e-4) if x_dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(dx.double(), ref_dx, **tol)
    scale = max(1.0, n ** 0.5)  # column sums over n rows: fp32 summation-order error grows with n
    torch.testing.assert_close(dw.double(), ref_dw.to(torch.float64), atol=1e-4 * scale, rtol=1e-4)
    torch.testing.assert_close(db.double(), ref_db.to(torch.float64), atol=1e-4 * scale, rtol=1e-4)


def test_non_contiguous_gradient():
    x = torch.randn(64, 96, device="cuda")
    w = torch.randn(96, device="cuda")
    _, mean, rstd = torch.native_layer_norm(x, (96,), w, None, 1e-5)
    dy = torch.randn(96, 64, device="cuda").T  # a transposed view
    got = torch.ops.models.layer_norm_grad(dy, x, w, mean.view(-1), rstd.view(-1))
    want = ln._layer_norm_grad_reference(dy, x, w, mean.view(-1), rstd.view(-1))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_training_step_matches_f_layer_norm(compiled, monkeypatch):
    torch.manual_seed(0)
    model = presets.make("vanilla", "small", d_vocab=512, n_ctx=128).cuda()
    tokens = torch.randint(0, 512, (4, 128), device="cuda")

    def step(fused):
        monkeypatch.setattr(ln, "FUSED_BACKWARD", fused)
        torch._dynamo.reset()
        model.zero_grad(set_to_none=True)
        fn = torch.compile(lambda t: model(t, return_type="loss")) if compiled else (lambda t: model(t, return_type="loss"))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(tokens)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_plain, grads_plain = step(False)
    loss_fused, grads_fused = step(True)
    torch._dynamo.reset()
    torch.testing.assert_close(loss_fused, loss_plain, atol=1e-5, rtol=1e-5)
    for name, g in grads_plain.items():
        rel = (grads_fused[name] - g).norm() / g.norm().clamp(min=1e-12)
        assert rel < 2e-2, (name, float(rel))
