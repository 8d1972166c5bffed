"""The Triton loss kernel on CUDA (skipped without a GPU): same loss and logit gradient as the
reference implementation, and a compiled bf16 training step of a GPT-2-vocabulary model gives
the gradients of the logits + `F.cross_entropy` path.

    python -m pytest -q tests/test_fused_loss_cuda.py      # on a CUDA machine
"""

from __future__ import annotations

import pytest
import torch

from models import loss as fused
from models import presets

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


CONFIGS = [dict(), dict(block=2048, num_warps=4), dict(block=8192, num_warps=16)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab,width", [(50257, 50304), (50257, 50257), (4100, 4160), (65, 65), (5000, 5000)])
def test_triton_kernel_matches_reference(dtype, vocab, width, config, monkeypatch):
    monkeypatch.setattr(fused, "KERNEL_CONFIG", {**fused.KERNEL_CONFIG, **config})
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(37, width, device="cuda", generator=g) * 4).to(dtype)
    logits[:, vocab:] = 50.0  # padded columns must be ignored whatever they hold
    targets = torch.randint(0, vocab, (37,), device="cuda", generator=g)
    targets[[0, 5, 9]] = torch.tensor([-100, 0, vocab - 1], device="cuda")
    loss, grad = torch.ops.models.xent_grad(logits, targets, vocab)
    ref_loss, ref_grad = fused._xent_grad_reference(logits, targets, vocab)
    assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=2e-5)
    tol = 1e-6 if dtype == torch.float32 else 4e-3  # bf16: one rounding of the stored gradient
    torch.testing.assert_close(grad.float(), ref_grad.float(), atol=tol, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert torch.all(grad[0] == 0) and torch.all(grad[:, vocab:] == 0)


def test_compiled_bf16_step_matches_logits_path():
    torch.manual_seed(0)
    model = presets.make("vanilla", "tiny", d_vocab=50257, n_ctx=64).cuda().train()
    toks = torch.randint(0, 50257, (4, 64), device="cuda")
    grads = {}
    for name, fn in (("plain", lambda t: model.loss_fn(model(t, return_type="logits"), t)),
                     ("fused", torch.compile(lambda t: model(t, return_type="loss")))):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(toks)
        loss.backward()
        grads[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (l_plain, g_plain), (l_fused, g_fused) = grads["plain"], grads["fused"]
    torch.testing.assert_close(l_fused, l_plain, atol=2e-3, rtol=1e-3)
    for n in g_plain:  # bf16 matmuls on both sides: compare directions and sizes
        a, b = g_fused[n].flatten().float(), g_plain[n].flatten().float()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999, n
        assert abs(a.norm() / b.norm() - 1) < 0.02, n
