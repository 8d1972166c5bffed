"""The training loss: unembedding and next-token cross-entropy as one autograd function.

For a GPT-2 vocabulary the (tokens, 50,257) logits are the largest tensor of a training step
(1.6 GB in bf16 at 16 x 1024). The usual path reads them three times and writes them twice:
the matmul writes them, the loss reads them, the loss backward reads them again and writes
their gradient. `unembed_cross_entropy` computes the per-token loss *and* the gradient of the
logits (softmax minus one-hot) in the forward pass, in one kernel that reads each row twice
and writes the gradient once (on an H100 both reads come from HBM: 1.32x the compiled
`F.cross_entropy` forward + backward, not the 2x an L2-resident second read would give; see
benchmarks/NOTES_model_speed.md); the backward is then two matmuls with
the per-token upstream gradient folded into their inputs and outputs (cheap, (tokens, d_model)
sized). The saved tensor is the gradient instead of the logits, so memory is unchanged.

A vocabulary of at least `VOCAB_PAD_MIN` tokens is padded to a multiple of `VOCAB_ALIGN`
(50,257 -> 50,304) with zero rows in the unembedding: the matmul and the kernel's rows are
then aligned; the kernel ignores the padded columns (they get no probability and no gradient),
so loss and gradients are exactly those of the unpadded model.

On CUDA the kernel is Triton; elsewhere (and as the reference the CUDA tests compare with) it
is `_xent_grad_reference`. Without gradients (evaluation) no gradient is computed at all.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

IGNORE_INDEX = -100
VOCAB_ALIGN = 64  # 1 turns the padding off (a benchmark diagnostic)
VOCAB_PAD_MIN = 4096

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None


def unembed_cross_entropy(
    x: Float[torch.Tensor, "n d_model"],
    W_U: Float[torch.Tensor, "d_vocab d_model"],
    b_U: Optional[Float[torch.Tensor, "d_vocab"]],
    targets: Int[torch.Tensor, "n"],
) -> Float[torch.Tensor, "n"]:
    """Per-token cross-entropy (fp32; fp64 for fp64 inputs) of the logits `x @ W_U.T + b_U` against `targets`;
    a target of -100 gives loss 0 and no gradient. Under autocast the matmuls run in the
    autocast dtype and the loss is reduced in fp32 (as `F.cross_entropy(logits.float())`)."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    x, W_U = x.to(dtype), W_U.to(dtype)
    b_U = b_U.to(dtype) if b_U is not None else None
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, W_U, b_U))
    if not needs_grad:
        logits = F.linear(x, W_U, b_U)
        return F.cross_entropy(_at_least_fp32(logits), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return _UnembedCrossEntropy.apply(x, W_U, b_U, targets)


class _UnembedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_U, b_U, targets):
        vocab = W_U.shape[0]
        pad = -vocab % VOCAB_ALIGN if vocab >= VOCAB_PAD_MIN else 0
        W = F.pad(W_U, (0, 0, 0, pad)) if pad else W_U
        b = F.pad(b_U, (0, pad)) if (pad and b_U is not None) else b_U
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x, W, b)
        loss, grad_logits = torch.ops.models.xent_grad(logits, targets, vocab)
        ctx.save_for_backward(x, W, grad_logits)
        ctx.vocab, ctx.has_bias = vocab, b_U is not None
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        x, W, grad_logits = ctx.saved_tensors
        g = grad_loss.to(x.dtype)[:, None]  # (n, 1): folded into the matmuls' (n, d_model) sides
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_logits @ W) * g
        if ctx.needs_input_grad[1]:
            grad_W = (grad_logits.T @ (x * g))[: ctx.vocab]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = (g[:, 0] @ grad_logits)[: ctx.vocab]
        return grad_x, grad_W, grad_b, None


# ---------------------------------------------------------------------------- the kernel
@torch.library.custom_op("models::xent_grad", mutates_args=())
def xent_grad(
    logits: torch.Tensor, targets: torch.Tensor, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (n,) in fp32 or fp64, d loss / d logits (n, padded vocab) in the logits' dtype) of the
    per-token cross-entropy over the first `vocab` columns; padded columns get gradient 0."""
    return _xent_grad_reference(logits, targets, vocab)


@xent_grad.register_fake
def _(logits, targets, vocab):
    return logits.new_empty(logits.shape[0], dtype=_at_least_fp32(logits).dtype), torch.empty_like(logits)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _xent_grad_reference(logits, targets, vocab):
    real = _at_least_fp32(logits[:, :vocab])
    lse = real.logsumexp(-1)
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)[:, None]
    loss = torch.where(valid, lse - real.gather(1, safe)[:, 0], 0.0)
    grad = torch.exp(real - lse[:, None])
    grad.scatter_add_(1, safe, torch.full_like(safe, -1.0, dtype=grad.dtype))
    grad = grad * valid[:, None]
    return loss, F.pad(grad, (0, logits.shape[1] - vocab)).to(logits.dtype)


# Launch shape of the CUDA kernel (one program per row): columns per chunk, warps per program.
# `benchmarks/bench_model.py --loss-kernel --loss-kernel-sweep` measures the choices; on an
# H100 at 16,384 x 50,304 they span 1.75-1.9 ms (persistent grids and a per-row running max,
# also tried, were no faster: the notes in benchmarks/NOTES_model_speed.md).
KERNEL_CONFIG = dict(block=4096, num_warps=8)

if triton is not None:

    @triton.jit
    def _xent_grad_kernel(logits_ptr, grad_ptr, targets_ptr, loss_ptr, row_stride, vocab, n_cols,
                          IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        # One program per row: an online log-sum-exp, then a second read that writes
        # softmax - onehot (zero for an ignored target and for the padded columns).
        row = tl.program_id(0).to(tl.int64)
        src = logits_ptr + row * row_stride
        dst = grad_ptr + row * row_stride
        offs = tl.arange(0, BLOCK)
        # running max and sum per lane (no reduction inside the loop), combined at the end
        run_max = tl.full([BLOCK], -1e30, tl.float32)  # finite: masked lanes give exp(-inf) = 0
        run_sum = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + offs
            v = tl.load(src + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(run_max, v)
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(v - new_max)
            run_max = new_max
        row_max = tl.max(run_max, axis=0)
        lse = row_max + tl.log(tl.sum(run_sum * tl.exp(run_max - row_max), axis=0))
        target = tl.load(targets_ptr + row)
        valid = target != IGNORE
        scale = tl.where(valid, 1.0, 0.0)
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            v = tl.load(src + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            p = tl.exp(v - lse)
            p = tl.where(cols == target, p - 1.0, p) * scale
            tl.store(dst + cols, p.to(grad_ptr.dtype.element_ty), mask=cols < n_cols)
        target_logit = tl.load(src + tl.where(valid, target, 0)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - target_logit, 0.0))

    @xent_grad.register_kernel("cuda")
    def _xent_grad_cuda(logits, targets, vocab):
        if logits.dtype == torch.float64:  # the kernel reduces in fp32
            return _xent_grad_reference(logits, targets, vocab)
        logits = logits.contiguous()
        n, n_cols = logits.shape
        loss = torch.empty(n, device=logits.device, dtype=torch.float32)
        grad = torch.empty_like(logits)
        if n:
            _xent_grad_kernel[(n,)](logits, grad, targets.contiguous(), loss, n_cols, vocab, n_cols,
                                    IGNORE=IGNORE_INDEX, BLOCK=KERNEL_CONFIG["block"],
                                    num_warps=KERNEL_CONFIG["num_warps"])
        return loss, grad
