"""models/layer_norm.py: the one-pass LayerNorm backward equals autograd through F.layer_norm.
On CPU the op is the torch reference; `DEVICES` is widened so the model path runs it here too
(the Triton kernel against this reference: tests/test_layer_norm_cuda.py)."""

import pytest
import torch
import torch.nn.functional as F

from models import layer_norm as ln
from models import presets
from models.norm import Norm


def _autograd_grads(x, w, b, dy, eps=1e-5):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    F.layer_norm(x, x.shape[-1:], w, b, eps).backward(dy)
    return x.grad, w.grad, (b.grad if b is not None else None)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 12), (2, 3, 5), (1, 1)])
def test_reference_grad_matches_autograd_fp64(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    w = torch.randn(shape[-1], dtype=torch.float64)
    b = torch.randn(shape[-1], dtype=torch.float64) if bias else None
    dy = torch.randn(*shape, dtype=torch.float64)
    _, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], w, b, 1e-5)
    d = shape[-1]
    dx, dw, db = torch.ops.models.layer_norm_grad(dy.reshape(-1, d), x.reshape(-1, d), w, mean.reshape(-1), rstd.reshape(-1))
    ref_dx, ref_dw, ref_db = _autograd_grads(x, w, b, dy)
    torch.testing.assert_close(dx.view(shape), ref_dx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dw, ref_dw, rtol=1e-10, atol=1e-10)
    if bias:
        torch.testing.assert_close(db, ref_db, rtol=1e-10, atol=1e-10)


def test_function_gradcheck(monkeypatch):
    monkeypatch.setattr(ln, "DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ln.layer_norm(x, w, b, 1e-5), (x, w, b))


def test_autocast_semantics(monkeypatch):
    """Under autocast: fp32 math like F.layer_norm; `low_precision_out` returns the autocast dtype
    with the values a matmul would cast to, and the gradients match F.layer_norm's."""
    monkeypatch.setattr(ln, "DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    x = torch.randn(4, 16, requires_grad=True)
    w, b = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.layer_norm(x, (16,), w, b, 1e-5)
        fp32 = ln.layer_norm(x, w, b, 1e-5)
        low = ln.layer_norm(x, w, b, 1e-5, low_precision_out=True)
    assert plain.dtype == fp32.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(fp32, plain, rtol=0, atol=0)
    assert torch.equal(low, plain.to(torch.bfloat16))
    dy = torch.randn(4, 16)
    grads = [torch.autograd.grad(out, (x, w, b), dy.to(out.dtype)) for out in (plain, fp32)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eval_and_off_device_take_f_layer_norm(monkeypatch):
    calls = []
    monkeypatch.setattr(ln._LayerNorm, "apply", lambda *a: calls.append(a))
    x, w = torch.randn(2, 8, requires_grad=True), torch.ones(8, requires_grad=True)
    ln.layer_norm(x, w, None, 1e-5)  # CPU is not in DEVICES
    monkeypatch.setattr(ln, "DEVICES", ("cuda", "cpu"))
    with torch.no_grad():
        ln.layer_norm(x, w, None, 1e-5)
    ln.layer_norm(x.detach(), w.detach(), None, 1e-5)
    assert calls == []
    ln.layer_norm(x, w, None, 1e-5)
    assert len(calls) == 1


@pytest.mark.parametrize(("preset", "compiled"), [("vanilla", False), ("vanilla", True), ("sasp", False),
                                                  ("gptj", False), ("factored", False)])
def test_model_step_matches_plain_layer_norm(monkeypatch, preset, compiled):
    """A training step of a whole model (bf16 autocast) gives the same loss and gradients with
    the one-pass backward as with F.layer_norm; compiled too (the op is opaque to inductor)."""
    torch.manual_seed(0)
    model = presets.make(preset, "tiny", d_vocab=64, n_ctx=16)
    tokens = torch.randint(0, 64, (2, 16))

    used, backward_calls = [], []
    apply, reference = ln._LayerNorm.apply, ln._layer_norm_grad_reference

    def spy_apply(*args):  # eager only: torch.compile traces Function.apply itself
        used.append(args[-1])  # out_dtype
        return apply(*args)

    def spy_reference(*args):  # what the op runs on CPU, compiled or not
        backward_calls.append(args[0].dtype)  # the incoming gradient's dtype
        return reference(*args)

    monkeypatch.setattr(ln._LayerNorm, "apply", spy_apply)
    monkeypatch.setattr(ln, "_layer_norm_grad_reference", spy_reference)

    def step(fused):
        monkeypatch.setattr(ln, "DEVICES", ("cuda", "cpu") if fused else ("cuda",))
        model.zero_grad(set_to_none=True)
        fn = torch.compile(lambda t: model(t, return_type="loss")) if compiled else (lambda t: model(t, return_type="loss"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(tokens)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch._dynamo.reset()
    loss_plain, grads_plain = step(False)
    torch._dynamo.reset()
    loss_fused, grads_fused = step(True)
    torch._dynamo.reset()
    n_norms = sum(isinstance(m, Norm) for m in model.modules())
    assert len(backward_calls) == n_norms > 0  # every norm took the one-pass backward, once
    # bf16 out (so bf16 gradients in) for the blocks' norms, which feed only projections --
    # not ln_final, nor sasp's ln1 (identity values)
    assert backward_calls.count(torch.bfloat16) == (0 if preset == "sasp" else n_norms - 1)
    assert len(used) == (0 if compiled else n_norms)
    torch.testing.assert_close(loss_fused, loss_plain, rtol=1e-6, atol=1e-6)
    assert grads_fused.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_fused[name], grads_plain[name], rtol=2e-2, atol=2e-3, msg=name)
