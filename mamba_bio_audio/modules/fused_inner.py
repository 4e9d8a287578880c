"""The selective mixer between in_proj and out_proj as one autograd Function that keeps less for the backward:

    u = silu(conv(x));  dt, B, C = split(x_proj_weight @ u);  delta = dt_proj_weight @ dt
    y = selective_scan(u, delta, A, B, C, D, z, delta_bias=dt_bias, delta_softplus=True, seq_idx)

The unfused mixer keeps the conv output u and delta (batch, d_inner, seqlen) each for the backward (x_proj's
product and the scan save u, the scan saves delta). :class:`MambaInnerFn` keeps only its inputs x and z (halves
of in_proj's output, alive anyway), x_dbl = x_proj_weight @ u (dt_rank + 2 d_state rows, small) and the scan's
chunk-start states, and recomputes u (the conv, with its autograd graph) and delta (one product from x_dbl's dt
rows) at the start of the backward, as mamba_ssm's ``MambaInnerFn`` at ``checkpoint_lvl=1`` does. The
recomputation runs the same operations under the forward's autocast state, so it gives the tensors the forward
had, and the gradients are the unfused path's (same products, same dtypes; the sums in another order at most).

On the reference backend the Function keeps only its inputs and recomputes the whole inner graph (plain
recomputation: correctness on any device, no speed claim; only with ``fused_inner="all"``). :func:`can_fuse` says
which calls it takes; the mixer runs the others (carried states, S4D, mamba_ssm's "cuda" scan) unfused. NOTES.md beside this file: what is kept,
by count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mamba_bio_audio import ops
from mamba_bio_audio.modules.mixer import columns, project


class Settings(NamedTuple):
    """What :class:`MambaInnerFn` needs besides tensors: dt_rank, d_state, the ops backend name for the conv
    and the scan, and the scan's kernel module and tunables (Triton; None on the reference)."""

    dt_rank: int
    d_state: int
    backend: str
    kernels: object | None
    tunables: object | None


def can_fuse(mode: str, backend: str, like: torch.Tensor) -> bool:
    """Whether a call on tensors like ``like`` with the ops ``backend`` takes the fused path under
    ``MambaConfig.fused_inner`` = ``mode``: "triton" when the scan resolves to Triton, "all" also on the
    reference, "off" never (mamba_ssm's "cuda" scan keeps its own tensors: never); none while the environment
    variable MBA_FUSED_INNER is "0" (:func:`ops.fused_inner_enabled`)."""
    if mode == "off" or not ops.fused_inner_enabled():
        return False
    return ops.resolve_backend(backend, "scan", like)[0] in (("triton",) if mode == "triton" else ("triton", "reference"))


def _conv(x, conv_weight, conv_bias, seq_idx, s: Settings) -> torch.Tensor:
    return ops.causal_conv1d_fn(x, conv_weight, conv_bias, activation="silu", backend=s.backend, seq_idx=seq_idx)


def _split(x_dbl: torch.Tensor, s: Settings):
    return torch.split(x_dbl, [s.dt_rank, s.d_state, s.d_state], dim=1)


def _inner_reference(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx, s):
    """The whole inner graph on the reference scan: y (batch, d_inner, seqlen)."""
    u = _conv(x, conv_weight, conv_bias, seq_idx, s)
    dt, B, C = _split(project(x_proj_weight, u), s)
    return ops.selective_scan_fn(u, project(dt_proj_weight, dt), A, B, C, D, z=z, delta_bias=dt_bias,
                                 delta_softplus=True, backend=s.backend, seq_idx=seq_idx)


class MambaInnerFn(torch.autograd.Function):
    """(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx, settings) -> y.

    x, z: (batch, d_inner, seqlen), channel-major halves of in_proj's output. conv_weight: (d_inner, d_conv);
    conv_bias: (d_inner,) or None. x_proj_weight: (dt_rank + 2 d_state, d_inner). dt_proj_weight: (d_inner,
    dt_rank). A: (d_inner, d_state). D, dt_bias: (d_inner,). seq_idx: (batch, seqlen) integers or None.
    y: (batch, d_inner, seqlen) in x's dtype (the compute dtype under autocast).
    """

    @staticmethod
    def forward(ctx, x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx, s):
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.settings = s
        if s.kernels is None:
            ctx.save_for_backward(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx)
            return _inner_reference(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias,
                                    seq_idx, s)
        reset = s.kernels.reset_exponents(seq_idx, x.device) if seq_idx is not None else None
        u = _conv(x, conv_weight, conv_bias, seq_idx, s)
        x_dbl = project(x_proj_weight, u)
        dt, B, C = _split(x_dbl, s)
        y, _, saved, ctx.scan_meta = s.kernels.scan_forward(u, project(dt_proj_weight, dt), A, B, C, D, z, dt_bias,
                                                            None, reset, True, s.tunables)
        # u and delta (saved[0], saved[1]) are dropped here; A, D, dt_bias as the scan laid them out
        _, _, A, _, _, D, _, dt_bias, _, reset, states = saved
        ctx.save_for_backward(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx,
                              x_dbl, reset, states)
        return y

    @staticmethod
    def backward(ctx, dy):
        s = ctx.settings
        device, autocast_on, autocast_dtype = ctx.autocast
        if s.kernels is None:
            return _backward_reference(ctx, dy)
        x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx, x_dbl, reset, states \
            = ctx.saved_tensors
        leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, conv_weight, conv_bias)]
        with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            u = _conv(*leaves, seq_idx, s)  # with the conv's graph, for the gradients of x and its weights
        dt, B, C = _split(x_dbl, s)
        cdt = x_dbl.dtype  # the products' dtype in the forward (autocast's, or the weights')
        with torch.no_grad():
            w_dt = dt_proj_weight.to(cdt)
            delta = project(w_dt, dt)
            _, laid_out = s.kernels.prepare(u.detach(), delta, A, B, C, D, z, dt_bias, None, s.tunables.chunk_size)
            saved = (*laid_out, reset, states)
            du, ddelta, dA, dB, dC, dD, dz, ddt_bias, _ = s.kernels.scan_backward(dy, None, saved, ctx.scan_meta)
            # delta = dt_proj_weight @ dt and x_dbl = x_proj_weight @ u, as autograd's product backwards would
            ddelta_cols = columns(ddelta)
            d_dt_proj = (ddelta_cols @ columns(dt).t()).to(dt_proj_weight.dtype)
            d_x_dbl = torch.cat([w_dt.t() @ ddelta_cols, columns(dB), columns(dC)])  # dB, dC in x_dbl's dtype
            d_x_proj = (d_x_dbl @ columns(u).t()).to(x_proj_weight.dtype)
            batch, d_inner, seqlen = du.shape
            du.add_((x_proj_weight.to(cdt).t() @ d_x_dbl).view(d_inner, batch, seqlen).transpose(0, 1))
        wanted = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(u, wanted, du))
        dx, d_conv_weight, d_conv_bias = (next(grads) if t is not None else None for t in leaves)
        return dx, dz, d_conv_weight, d_conv_bias, d_x_proj, d_dt_proj, dA, dD, ddt_bias, None, None


def _backward_reference(ctx, dy):
    """The reference backend's backward: the inner graph recomputed from the saved inputs, then differentiated."""
    device, autocast_on, autocast_dtype = ctx.autocast
    inputs = list(ctx.saved_tensors)
    seq_idx = inputs.pop(9)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
        y = _inner_reference(*leaves, seq_idx, ctx.settings)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True))
    return (*(next(grads) if t is not None else None for t in leaves), None, None)


def mamba_inner(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx=None, *,
                dt_rank: int, backend: str = "auto") -> torch.Tensor:
    """The selective mixer from in_proj's halves to the gated scan output, keeping less for the backward
    (:class:`MambaInnerFn`; arguments and result as there). ``backend``: the ops backend, whose scan must be
    Triton or the reference (:func:`can_fuse`). The Triton scan keeps every ``ops.fused_inner_save_every()``-th
    chunk-start state (environment variable MBA_FUSED_SAVE_EVERY; default: the scan's own choice) and computes
    softplus where MBA_SCAN_SOFTPLUS says (:func:`ops.scan_softplus_in_kernel`)."""
    kernels = ops.selective_scan_kernels(backend, x)
    tunables = None
    if kernels is not None:
        kernels.check_seq_idx(seq_idx, x.shape[0], x.shape[2])
        tunables = kernels.default_tunables(x, A.shape[1], save_every=ops.fused_inner_save_every(),
                                            softplus_in_kernel=ops.scan_softplus_in_kernel())
    settings = Settings(dt_rank, A.shape[1], backend, kernels, tunables)
    return MambaInnerFn.apply(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias, seq_idx,
                              settings)
