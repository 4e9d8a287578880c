"""Residual add + RMSNorm in plain torch: the semantics the Triton kernels implement, and the test reference.

    residual_out = x + residual                      (x alone when residual is None), in residual_dtype
    out          = residual_out * rstd * weight,     rstd = 1 / sqrt(mean(residual_out^2 over the last dim) + eps)

The sum and the norm are computed in fp32 (fp64 for fp64 inputs) from the unrounded sum; ``out`` is then cast to
``out_dtype``.
"""

from __future__ import annotations

import torch


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                     out_dtype: torch.dtype | None = None, residual_dtype: torch.dtype | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: (..., d) (any strides). weight: (d,). Returns (out, residual_out), both (..., d):
    out in ``out_dtype`` (default x's dtype), residual_out in ``residual_dtype`` (default: the promoted dtype of
    x and residual)."""
    compute = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
    total = x.to(compute) if residual is None else x.to(compute) + residual.to(compute)
    rstd = torch.rsqrt(total.square().mean(-1, keepdim=True) + eps)
    out = (total * rstd * weight.to(compute)).to(out_dtype or x.dtype)
    if residual_dtype is None:
        residual_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    return out, total.to(residual_dtype)
