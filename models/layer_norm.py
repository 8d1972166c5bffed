"""LayerNorm for training steps on CUDA: a backward that computes dx, dw and db in one pass.

Compiled, the plain `F.layer_norm` backward costs inductor three memory passes per norm at
GPT-2-small shape: dx (fused with the residual-gradient add), then the weight and bias gradients
as column sums over all tokens in separate reduction kernels that re-read x and dy at about half
of HBM bandwidth, then a cast of the residual gradient to bf16 for the next matmul. Here the
backward is one Triton kernel (`models::layer_norm_grad`): each program walks a slice of rows,
writes dx and keeps running column sums of dy * x_hat and dy, which a tiny sum over programs
finishes. Inductor still fuses the forward (residual add + normalisation) and the residual
gradient add + cast around it.

A norm whose output only feeds matmuls (`low_precision_out`, the blocks' ln1 / ln2) returns it in
the autocast dtype: the matmul would cast it anyway (same values), and the gradient then arrives
in bf16, half the bytes to read. `ln_final` keeps fp32 (its output can be a continuous thought).

Taken only when it pays: on CUDA, with gradients, `d_model <= MAX_D`; elsewhere `F.layer_norm`.
Off CUDA (and as the reference the CUDA tests compare with) the op is
`_layer_norm_grad_reference`. Hooks are unaffected: an observed norm hook takes the explicit path
in `models.norm` before this is reached.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

FUSED_BACKWARD = True  # False: plain F.layer_norm everywhere (a benchmark diagnostic)
DEVICES = ("cuda",)  # where the one-pass backward is used (tests add "cpu" to run the reference)
MAX_D = 8192  # one row lives in registers


def layer_norm(
    x: Float[torch.Tensor, "... d"],
    weight: Float[torch.Tensor, "d"],
    bias: Optional[Float[torch.Tensor, "d"]],
    eps: float,
    low_precision_out: bool = False,
) -> Float[torch.Tensor, "... d"]:
    """`F.layer_norm(x, (d,), weight, bias, eps)`, autocast semantics included (computed in fp32);
    with `low_precision_out` the result is returned in the autocast dtype (the same values a
    matmul reading it under autocast would see)."""
    device = x.device.type
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not (FUSED_BACKWARD and device in DEVICES and needs_grad and x.shape[-1] <= MAX_D):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    if not torch.is_autocast_enabled(device):
        return _LayerNorm.apply(x, weight, bias, eps, x.dtype)
    out_dtype = torch.get_autocast_dtype(device) if low_precision_out else torch.float32
    with torch.autocast(device, enabled=False):  # autocast runs layer_norm in fp32
        b = bias.float() if bias is not None else None
        return _LayerNorm.apply(x.float(), weight.float(), b, eps, out_dtype)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        out, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        d = x.shape[-1]
        dx, dw, db = torch.ops.models.layer_norm_grad(
            grad_out.reshape(-1, d), x.reshape(-1, d), weight, mean.reshape(-1), rstd.reshape(-1)
        )
        return dx.view(x.shape), dw, (db if ctx.has_bias else None), None, None


# ---------------------------------------------------------------------------- the kernel
@torch.library.custom_op("models::layer_norm_grad", mutates_args=())
def layer_norm_grad(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dw and db in weight's dtype) of `native_layer_norm` over (n, d) rows,
    given its saved per-row `mean` and `rstd` (n,)."""
    return _layer_norm_grad_reference(grad_out, x, weight, mean, rstd)


@layer_norm_grad.register_fake
def _(grad_out, x, weight, mean, rstd):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _layer_norm_grad_reference(grad_out, x, weight, mean, rstd):
    acc = torch.promote_types(x.dtype, torch.float32)
    dy, w = grad_out.to(acc), weight.to(acc)
    x_hat = (x.to(acc) - mean.to(acc)[:, None]) * rstd.to(acc)[:, None]
    w_dy = dy * w
    c1 = (x_hat * w_dy).mean(-1, keepdim=True)
    c2 = w_dy.mean(-1, keepdim=True)
    dx = (w_dy - x_hat * c1 - c2) * rstd.to(acc)[:, None]
    return dx.to(x.dtype), (dy * x_hat).sum(0).to(weight.dtype), dy.sum(0).to(weight.dtype)


# Launch shape: rows per tile, warps per program, programs per SM (each program walks a
# contiguous slice of rows and keeps its column sums in registers).
KERNEL_CONFIG = dict(rows=4, num_warps=8, programs_per_sm=4)

if triton is not None:

    @triton.jit
    def _layer_norm_grad_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr,
                                n_rows, d, rows_per_program, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < d
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([ROWS, BLOCK_D], tl.float32)
        db = tl.zeros([ROWS, BLOCK_D], tl.float32)
        first = pid * rows_per_program
        last = tl.minimum(first + rows_per_program, n_rows)
        for start in range(first, last, ROWS):
            rows = start + tl.arange(0, ROWS)
            row_ok = rows < last
            mask = row_ok[:, None] & col_ok[None, :]
            offs = rows.to(tl.int64)[:, None] * d + cols[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            w_dy = dy * w[None, :]
            c1 = tl.sum(x_hat * w_dy, axis=1) / d
            c2 = tl.sum(w_dy, axis=1) / d
            dx = (w_dy - (x_hat * c1[:, None] + c2[:, None])) * rstd[:, None]
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * x_hat
            db += dy
        tl.store(dw_ptr + pid * d + cols, tl.sum(dw, axis=0), mask=col_ok)
        tl.store(db_ptr + pid * d + cols, tl.sum(db, axis=0), mask=col_ok)

    _SM_COUNT: dict[int, int] = {}

    @layer_norm_grad.register_kernel("cuda")
    def _layer_norm_grad_cuda(grad_out, x, weight, mean, rstd):
        if x.dtype == torch.float64:  # the kernel accumulates in fp32
            return _layer_norm_grad_reference(grad_out, x, weight, mean, rstd)
        grad_out, x = grad_out.contiguous(), x.contiguous()
        n, d = x.shape
        dx = torch.empty_like(x)
        if n == 0:
            return dx, torch.zeros_like(weight), torch.zeros_like(weight)
        index = x.device.index or 0
        if index not in _SM_COUNT:
            _SM_COUNT[index] = torch.cuda.get_device_properties(x.device).multi_processor_count
        rows = KERNEL_CONFIG["rows"]
        programs = min(triton.cdiv(n, rows), _SM_COUNT[index] * KERNEL_CONFIG["programs_per_sm"])
        rows_per_program = triton.cdiv(triton.cdiv(n, programs), rows) * rows
        programs = triton.cdiv(n, rows_per_program)
        dw = torch.empty(programs, d, device=x.device, dtype=torch.float32)
        db = torch.empty(programs, d, device=x.device, dtype=torch.float32)
        _layer_norm_grad_kernel[(programs,)](
            grad_out, x, weight.contiguous(), mean.contiguous(), rstd.contiguous(),
            dx, dw, db, n, d, rows_per_program,
            ROWS=rows, BLOCK_D=triton.next_power_of_2(d), num_warps=KERNEL_CONFIG["num_warps"],
        )
        return dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)
