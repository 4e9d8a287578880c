"""Residual add + RMSNorm in Triton: one pass forward, one pass backward (autograd Function).

Semantics of :mod:`mamba_bio_audio.kernels.rms_norm.reference`. Rows are the M = batch * seqlen tokens, columns
the d features. Forward, per row (fp32):

    r = x + residual;  rstd = 1 / sqrt(mean(r^2) + eps);  out = r * rstd * weight
    stores: residual_out (r, in residual_dtype, (M, d) contiguous), out (out_dtype, (M, d) contiguous), rstd (M,)

Backward, with xhat = r * rstd and g = dout * weight:

    dr = rstd * (g - xhat * mean(g * xhat)) + dresidual_out;   dweight = sum_rows dout * xhat
    dx = dr (x's dtype), dresidual = dr (residual's dtype)

Why a kernel: unfused, the block runs an add, a cast, the norm and a cast again, forward and backward, each a
full pass over (M, d); and a mixer's output arrives transposed (a view of ``out_proj.weight @ y``, features
major), which the elementwise kernels walk slowly. Here x, residual and the incoming gradients are read through
their strides (a token-major or feature-major (M, d) view both load coalesced), and everything is written once.
Each program owns BLOCK_M whole rows (BLOCK_N >= d), so the row reductions stay in registers. dweight is summed
per program and then over programs with torch.sum (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba_bio_audio.kernels import utils

MAX_D = 16384  # one row must fit a program's registers (BLOCK_N = next power of two >= d)


@triton.jit
def _rows(pid, M, BLOCK_M: tl.constexpr, BIG: tl.constexpr):
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    return rows, rows < M, rows.to(tl.int64) if BIG else rows


@triton.jit
def _fwd_kernel(X, R, W, OUT, RES_OUT, RSTD, M, d, sxm, sxd, srm, srd, eps,
                HAS_RES: tl.constexpr, STORE_RES: tl.constexpr, BIG: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows, rmask, r64 = _rows(tl.program_id(0), M, BLOCK_M, BIG)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < d
    c64 = cols.to(tl.int64) if BIG else cols
    mask = rmask[:, None] & cmask[None, :]
    r = tl.load(X + r64[:, None] * sxm + c64[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(R + r64[:, None] * srm + c64[None, :] * srd, mask=mask, other=0.0).to(tl.float32)
    dense = r64[:, None] * d + c64[None, :]
    if STORE_RES:
        tl.store(RES_OUT + dense, r.to(RES_OUT.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=1) / d + eps)
    tl.store(RSTD + rows, rstd, mask=rmask)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(OUT + dense, (r * rstd[:, None] * w[None, :]).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(DOUT, DRES_OUT, R, W, RSTD, DX, DRES, DW_PART, M, d, rows_per_program,
                sdm, sdd, sgm, sgd, srm, srd,
                HAS_DRES_OUT: tl.constexpr, STORE_DRES: tl.constexpr, BIG: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < d
    c64 = cols.to(tl.int64) if BIG else cols
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program
    for start in range(first, first + rows_per_program, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = (rows < M) & (rows < first + rows_per_program)
        r64 = rows.to(tl.int64) if BIG else rows
        mask = rmask[:, None] & cmask[None, :]
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = tl.load(R + r64[:, None] * srm + c64[None, :] * srd, mask=mask, other=0.0).to(tl.float32)
        xhat = xhat * rstd[:, None]
        dout = tl.load(DOUT + r64[:, None] * sdm + c64[None, :] * sdd, mask=mask, other=0.0).to(tl.float32)
        g = dout * w[None, :]
        c = tl.sum(g * xhat, axis=1) / d
        dr = (g - xhat * c[:, None]) * rstd[:, None]
        if HAS_DRES_OUT:
            dr += tl.load(DRES_OUT + r64[:, None] * sgm + c64[None, :] * sgd, mask=mask, other=0.0).to(tl.float32)
        dense = r64[:, None] * d + c64[None, :]
        tl.store(DX + dense, dr.to(DX.dtype.element_ty), mask=mask)
        if STORE_DRES:
            tl.store(DRES + dense, dr.to(DRES.dtype.element_ty), mask=mask)
        dw += tl.sum(dout * xhat, axis=0)
    tl.store(DW_PART + pid * d + cols, dw, mask=cmask)


def _rows_view(t: torch.Tensor) -> torch.Tensor:
    """(..., d) -> an (M, d) view with its own strides (a copy only when the leading dims cannot merge)."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return t.reshape(-1, t.shape[-1])


def _launch_shape(d: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for rows of d features: about 8K elements per program."""
    block_n = utils.next_power_of_2(d)
    block_m = max(1, min(64, 8192 // block_n))
    return block_m, block_n, 8 if block_n >= 2048 else 4


def _is_big(*tensors: torch.Tensor | None) -> bool:
    """Whether some offset may pass 2^31 (then the kernels index in int64)."""
    return any(t is not None and t.numel() and sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= 2**31
               for t in tensors)


class _AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, out_dtype, residual_dtype, keep_input):
        shape, d = x.shape, x.shape[-1]
        x2 = _rows_view(x)
        r2 = _rows_view(residual) if residual is not None else None
        M = x2.shape[0]
        out = utils.empty(M, d, like=x, dtype=out_dtype)
        # keep_input: residual is None and x already is the residual stream; r = x is read back from x
        res_out = None if keep_input else utils.empty(M, d, like=x, dtype=residual_dtype)
        rstd = utils.empty(M, like=x, dtype=torch.float32)
        block_m, block_n, warps = _launch_shape(d)
        if M:
            src = r2 if r2 is not None else x2
            _fwd_kernel[(utils.cdiv(M, block_m),)](
                x2, src, weight, out, res_out if res_out is not None else out, rstd, M, d, *x2.stride(),
                *src.stride(), eps, HAS_RES=r2 is not None, STORE_RES=res_out is not None,
                BIG=_is_big(x2, r2, out), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
        saved = x2 if keep_input else res_out
        ctx.save_for_backward(saved, weight, rstd)
        ctx.shape, ctx.has_residual = shape, residual is not None
        ctx.x_dtype = x.dtype
        ctx.residual_dtype = residual.dtype if residual is not None else None
        ctx.set_materialize_grads(False)
        out = out.view(shape)
        if keep_input:
            return out
        return out, res_out.view(shape)

    @staticmethod
    def backward(ctx, dout, dres_out=None):
        saved, weight, rstd = ctx.saved_tensors
        M, d = saved.shape
        if dout is None:
            dout = torch.zeros(M, d, device=saved.device, dtype=torch.float32)
        d2 = _rows_view(dout)
        g2 = _rows_view(dres_out) if dres_out is not None else None
        dx = utils.empty(M, d, like=saved, dtype=ctx.x_dtype)
        separate = ctx.has_residual and ctx.residual_dtype != ctx.x_dtype
        dres = utils.empty(M, d, like=saved, dtype=ctx.residual_dtype) if separate else None
        block_m, block_n, warps = _launch_shape(d)
        programs = max(1, min(utils.cdiv(M, block_m), _programs(saved.device)))
        rows_per_program = utils.cdiv(utils.cdiv(M, programs), block_m) * block_m
        programs = max(1, utils.cdiv(M, rows_per_program))
        dw_part = utils.empty(programs, d, like=saved, dtype=torch.float32)
        if M:
            gsrc = g2 if g2 is not None else d2
            _bwd_kernel[(programs,)](
                d2, gsrc, saved, weight, rstd, dx, dres if dres is not None else dx, dw_part, M, d,
                rows_per_program, *d2.stride(), *gsrc.stride(), *saved.stride(),
                HAS_DRES_OUT=g2 is not None, STORE_DRES=dres is not None, BIG=_is_big(d2, g2, saved),
                BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
            dweight = dw_part.sum(0).to(weight.dtype)
        else:
            dweight = torch.zeros_like(weight)
        dx = dx.view(ctx.shape)
        dresidual = None
        if ctx.has_residual:
            dresidual = dres.view(ctx.shape) if dres is not None else dx
        return dx, dresidual, dweight, None, None, None, None


def _programs(device: torch.device) -> int:
    """Backward programs: a few per SM on a GPU (dweight partial rows stay few), 4 under the interpreter."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                        out_dtype: torch.dtype | None = None, residual_dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``residual_out = x + residual``, ``out = rmsnorm(residual_out) * weight``; differentiable.

    Args:
        x: (..., d), any strides (e.g. a mixer output that is a transposed view). residual: like x, or None.
        weight: (d,). eps: added to the mean square.
        out_dtype: dtype of ``out`` (default x's). residual_dtype: of ``residual_out`` (default: x and
            residual promoted).
    Returns:
        (out, residual_out), both (..., d), contiguous. When residual is None and x already has
        residual_dtype, residual_out is x itself (nothing copied).
    """
    if x.shape[-1] > MAX_D:
        raise ValueError(f"add_rms_norm_triton: at most {MAX_D} features per row, got {x.shape[-1]}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if residual_dtype is None:
        residual_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    out_dtype = out_dtype or x.dtype
    if residual is None and x.dtype == residual_dtype:
        return _AddRMSNormFn.apply(x, None, weight, eps, out_dtype, residual_dtype, True), x
    return _AddRMSNormFn.apply(x, residual, weight, eps, out_dtype, residual_dtype, False)
