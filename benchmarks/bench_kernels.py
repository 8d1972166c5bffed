"""Kernel micro-benchmarks behind `bench_model.py --loss-kernel` / `--ln-kernel`: each of our
Triton kernels alone against what inductor generates for the same work, and (with `--*-sweep`)
its launch shapes, the fastest kept for the training steps of the same run.

    python benchmarks/bench_model.py --ln-kernel --ln-kernel-sweep --variants ours_compiled,ours_plain_ln_compiled
"""

from __future__ import annotations

import itertools
import json
import time

import torch
import torch.nn.functional as F

from models import layer_norm as our_layer_norm
from models import loss as our_loss


def ms_per_call(fn, steps: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round((time.perf_counter() - t0) / steps * 1000, 4)


def loss_kernel(args, device, dtype) -> dict:
    """The loss alone on (batch x seq, padded vocabulary) logits: our fused kernel (loss and
    logit gradient in one pass) vs the anchor's compiled `F.cross_entropy(logits.float())`
    forward + backward (which reads the logits twice and writes their gradient once)."""
    n, vocab = args.batch * args.seq, args.vocab
    width = vocab + (-vocab % our_loss.VOCAB_ALIGN)
    g = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(n, width, device=device, generator=g) * 2).to(dtype)
    targets = torch.randint(0, vocab, (n,), device=device, generator=g)

    def ours():
        return torch.ops.models.xent_grad(logits, targets, vocab)

    @torch.compile
    def anchor_loss(x):
        return F.cross_entropy(x.float(), targets, ignore_index=-1)

    def anchor():
        x = logits.detach().requires_grad_()
        anchor_loss(x).backward()
        return x.grad

    def ms(fn):
        return ms_per_call(fn, args.steps, device)

    out = {"shape": [n, width], "dtype": str(dtype), "kernel_config": dict(our_loss.KERNEL_CONFIG)}
    out["ours_fused_ms"], out["anchor_compiled_fwd_bwd_ms"] = ms(ours), ms(anchor)
    if device.type == "cuda" and args.loss_kernel_sweep:  # launch shapes of our kernel
        default, sweep = dict(our_loss.KERNEL_CONFIG), {}
        for block in (2048, 4096, 8192):
            for warps in (4, 8, 16):
                config = dict(block=block, num_warps=warps)
                our_loss.KERNEL_CONFIG.update(config)
                sweep[json.dumps(config)] = ms(ours)
        out["sweep_ms"] = dict(sorted(sweep.items(), key=lambda kv: kv[1]))
        our_loss.KERNEL_CONFIG.update(json.loads(min(sweep, key=sweep.get)))
        out["kept_for_the_run"] = dict(our_loss.KERNEL_CONFIG)  # the training steps below use it
        out["ours_fused_ms_best"] = ms(ours)
        out["default_config"] = default
    loss, grad = ours()
    ref_x = logits[:64].detach().float().requires_grad_()
    ref = F.cross_entropy(ref_x[:, :vocab], targets[:64], reduction="none")
    ref.sum().backward()
    out["max_abs_loss_diff"] = float((loss[:64] - ref.detach()).abs().max())
    out["max_abs_grad_diff"] = float((grad[:64].float() - ref_x.grad).abs().max())
    out["ratio"] = out["anchor_compiled_fwd_bwd_ms"] / out["ours_fused_ms"]
    return out


def layer_norm_kernel(args, device, dtype, d_model: int) -> dict:
    """A block's LayerNorm under autocast, forward + backward, on (batch x seq, d_model) fp32
    rows with a `dtype` output and gradient: ours (`models.layer_norm`, one-pass backward) vs
    inductor's compiled `F.layer_norm(...).to(dtype)`, both `torch.compile`d; and our backward
    op alone. Launch shapes with `--ln-kernel-sweep` (CUDA)."""
    n, d = args.batch * args.seq, d_model
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=g).requires_grad_()
    w = (1 + 0.1 * torch.randn(d, device=device, generator=g)).requires_grad_()
    b = (0.1 * torch.randn(d, device=device, generator=g)).requires_grad_()
    dy = torch.randn(n, d, device=device, generator=g).to(dtype)

    @torch.compile
    def plain(x, w, b):
        return F.layer_norm(x, (d,), w, b, 1e-5).to(dtype)

    @torch.compile
    def ours(x, w, b):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return our_layer_norm.layer_norm(x, w, b, 1e-5, low_precision_out=True)

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(x, w, b), (x, w, b), dy)

    _, mean, rstd = torch.native_layer_norm(x.detach(), (d,), w.detach(), b.detach(), 1e-5)
    mean, rstd = mean.view(-1), rstd.view(-1)

    def backward_op():
        return torch.ops.models.layer_norm_grad(dy, x.detach(), w.detach(), mean, rstd)

    out = {"shape": [n, d], "x_dtype": "float32", "grad_dtype": str(dtype)}
    if device.type == "cuda" and args.ln_kernel_sweep:
        default, sweep = dict(our_layer_norm.KERNEL_CONFIG), {}
        for rows, warps, per_sm in itertools.product((1, 2, 4, 8), (4, 8), (2, 4, 8)):
            config = dict(rows=rows, num_warps=warps, programs_per_sm=per_sm)
            our_layer_norm.KERNEL_CONFIG.update(config)
            sweep[json.dumps(config)] = ms_per_call(backward_op, args.steps * 4, device)
        out["sweep_backward_op_ms"] = dict(sorted(sweep.items(), key=lambda kv: kv[1]))
        our_layer_norm.KERNEL_CONFIG.update(json.loads(min(sweep, key=sweep.get)))
        out["kept_for_the_run"] = dict(our_layer_norm.KERNEL_CONFIG)  # the training steps use it
        out["default_config"] = default
    out["kernel_config"] = dict(our_layer_norm.KERNEL_CONFIG)
    out["ours_backward_op_ms"] = ms_per_call(backward_op, args.steps * 4, device)
    out["ours_compiled_fwd_bwd_ms"] = ms_per_call(fwd_bwd(ours), args.steps * 4, device)
    out["inductor_compiled_fwd_bwd_ms"] = ms_per_call(fwd_bwd(plain), args.steps * 4, device)
    out["ratio"] = out["inductor_compiled_fwd_bwd_ms"] / out["ours_compiled_fwd_bwd_ms"]
    got, want = fwd_bwd(ours)(), fwd_bwd(plain)()
    out["max_abs_grad_diff"] = {k: float((a.float() - c.float()).abs().max()) for k, a, c in zip("xwb", got, want)}
    return out
