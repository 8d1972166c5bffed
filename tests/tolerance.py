"""Tolerances for comparing two float computations of the same numbers, on any CPU.

Two correct computations that add the same terms in another order (another CPU's vector
width, another thread count, a fused kernel, a KV cache, a batched instead of a one-row
forward, TransformerLens's or HF's code instead of ours) differ by rounding that scales with
the *largest* magnitudes involved, not with each element: an element near zero that came out
of cancelling large terms carries their rounding. An absolute tolerance such as 1e-5 is
therefore right for values near 1 and wrong for values near 80 (the tester's failure: 1.1e-5
on thoughts up to 78.5, 1.2 units in the last place of the largest value). So

    rtol = ulps * eps(dtype)        relative to each element
    atol = rtol * scale             scale: max |expected| unless given (the magnitudes involved)

with `eps(float32) = 1.2e-7`. Measured across the suite on three kinds of CPU kernels (this
machine's AVX-512, `ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2`, and the scalar
`ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE`), our own reorderings stay under ~10 units of
the largest value and comparisons against TransformerLens / HF under ~45; `SAME_CODE` (64) and
`OTHER_CODE` (256) leave a margin of 6x over those, and are still far below what a real bug
moves: one weight entry of thousands moved by 1% of the weights' std fails them
(`tests/test_tolerance.py` checks both directions).
"""

from __future__ import annotations

from typing import Optional

import torch

SAME_CODE = 64  # ulps: our two paths to the same numbers (fast vs explicit, cached vs not, batched vs alone)
OTHER_CODE = 256  # ulps: another library's code (TransformerLens, HF transformers), or differences of logits


def tol(expected, *, ulps: float = SAME_CODE, scale: Optional[float] = None,
        dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """`rtol` / `atol` for `torch.testing.assert_close(actual, expected, **tol(expected))`
    (`close` below says it shorter; `approx_tol` gives the same under `pytest.approx`'s names).

    `expected`: the reference tensor (or number); its dtype picks eps (float32 for Python
    numbers, or give `dtype`) and its largest finite magnitude is the default `scale`. Give
    `scale` when the numbers compared are small results of larger ones (a difference of
    logits, a gradient of a sum)."""
    t = torch.as_tensor(expected).detach()
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.float32
    rtol = ulps * torch.finfo(dtype).eps
    if scale is None:
        finite = t.float()[torch.isfinite(t.float())].abs()
        scale = float(finite.max()) if finite.numel() else 0.0
    return {"rtol": rtol, "atol": rtol * max(float(scale), torch.finfo(dtype).tiny)}


def approx_tol(expected, **kwargs) -> dict[str, float]:
    """The same tolerances under `pytest.approx`'s names: `pytest.approx(x, **approx_tol(x))`."""
    t = tol(expected, **kwargs)
    return {"rel": t["rtol"], "abs": t["atol"]}


def close(actual, expected, *, ulps: float = SAME_CODE, scale: Optional[float] = None,
          dtype: Optional[torch.dtype] = None, **kwargs) -> None:
    """`torch.testing.assert_close(actual, expected, **tol(expected, ulps=, scale=, dtype=), **kwargs)`."""
    torch.testing.assert_close(actual, expected, **tol(expected, ulps=ulps, scale=scale, dtype=dtype), **kwargs)
