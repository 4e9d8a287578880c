"""The selective mixer between in_proj and out_proj as one autograd Function:

    x, z = halves of xz;  u = silu(conv(x));  dt, B, C = split(x_proj_weight @ u);  delta = dt_proj_weight @ dt
    A = -exp(A_log);  y = selective_scan(u, delta, A, B, C, D, z, delta_bias=dt_bias, delta_softplus=True, seq_idx)

One Function instead of the unfused mixer's dozen autograd nodes (a conv and a scan Function, three products,
splits, A's exp and neg, views), and its backward writes what the unfused one assembles: dx (the conv's) and dz
(the scan's) straight into the two halves of one in_proj output gradient (no cat of the two), dt_proj's and the
scan's dB, dC into one x_proj output gradient, and x_proj's input gradient added into the scan's du by one
``addmm_`` (no separate add), as mamba_ssm's ``MambaInnerFn`` does.

What it keeps (``MambaConfig.fused_inner``): "keep" keeps the conv output u and delta (batch, d_inner, seqlen)
as the unfused mixer does; "triton" keeps only its input xz (in_proj's output, alive anyway), x_dbl = x_proj_weight
@ u (dt_rank + 2 d_state rows, small) and the scan's chunk-start states, and recomputes u (the conv) and delta (one
product from x_dbl's dt rows) at the start of the backward, as mamba_ssm's ``MambaInnerFn`` at ``checkpoint_lvl=1``
does: 2 d_inner values per token and layer less for one more conv and product. Both run the Triton scan, and the
conv the unfused mixer would run (causal-conv1d's CUDA kernels under "auto" where installed, without seq_idx; else
Triton's); the recomputation uses the forward's dtypes, so it gives the tensors the forward had, and the gradients
are the unfused path's (same products, same dtypes; sums in another order at most).

On the reference backend the Function keeps only its inputs and recomputes the whole inner graph (plain
recomputation: correctness on any device, no speed claim; only with ``fused_inner="all"``). :func:`can_fuse` says
which calls it takes; the mixer runs the others (carried states, S4D, mamba_ssm's "cuda" scan) unfused. NOTES.md
beside this file: what is kept, by count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mamba_bio_audio import ops
from mamba_bio_audio.kernels.utils import empty_as
from mamba_bio_audio.modules.mixer import channel_major, columns, out_product, project


class Settings(NamedTuple):
    """What :class:`MambaInnerFn` needs besides tensors: dt_rank, d_state, the ops backend name for the conv
    and the scan, the scan's kernel module and tunables (Triton; None on the reference), the Triton conv's module
    (None on the reference) and whether to keep u and delta (``fused_inner="keep"``) rather than recompute them."""

    dt_rank: int
    d_state: int
    backend: str
    kernels: object | None
    tunables: object | None
    conv: object | None = None
    keep: bool = False


def can_fuse(mode: str, backend: str, like: torch.Tensor) -> bool:
    """Whether a call on tensors like ``like`` with the ops ``backend`` takes the fused path under
    ``MambaConfig.fused_inner`` = ``mode``: "keep", "triton" and "lean" when the scan resolves to Triton, "all" also on
    the reference, "off" never (mamba_ssm's "cuda" scan keeps its own tensors: never); none while the environment
    variable MBA_FUSED_INNER is "0" (:func:`ops.fused_inner_enabled`)."""
    if mode == "off" or not ops.fused_inner_enabled():
        return False
    return ops.resolve_backend(backend, "scan", like)[0] in (("triton", "reference") if mode == "all" else ("triton",))


def _split(x_dbl: torch.Tensor, s: Settings):
    return torch.split(x_dbl, [s.dt_rank, s.d_state, s.d_state], dim=1)


def _halves(xz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d_inner = xz.shape[1] // 2
    return xz[:, :d_inner], xz[:, d_inner:]


def _inner_reference(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, seq_idx, s):
    """The whole inner graph on the reference scan: y (batch, d_inner, seqlen)."""
    x, z = _halves(xz)
    u = ops.causal_conv1d_fn(x, conv_weight, conv_bias, activation="silu", backend=s.backend, seq_idx=seq_idx)
    dt, B, C = _split(project(x_proj_weight, u), s)
    return ops.selective_scan_fn(u, project(dt_proj_weight, dt), -torch.exp(A_log), B, C, D, z=z,
                                 delta_bias=dt_bias, delta_softplus=True, backend=s.backend, seq_idx=seq_idx)


class MambaInnerFn(torch.autograd.Function):
    """(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, out_proj_weight,
    out_proj_bias, seq_idx, settings) -> y, or out_proj's output.

    xz: (batch, 2 d_inner, seqlen), the channel-major view of in_proj's output (x its first d_inner channels,
    z the rest). conv_weight: (d_inner, d_conv); conv_bias: (d_inner,) or None. x_proj_weight: (dt_rank +
    2 d_state, d_inner). dt_proj_weight: (d_inner, dt_rank). A_log: (d_inner, d_state), A = -exp(A_log).
    D, dt_bias: (d_inner,). seq_idx: (batch, seqlen) integers or None.
    y: (batch, d_inner, seqlen) in xz's dtype (the compute dtype under autocast), channel-major.
    out_proj_weight (d_model, d_inner) and out_proj_bias (d_model,) or None (Triton path only): the Function
    returns out_proj.weight @ columns(y) (+ bias), (d_model, batch * seqlen), instead of y, and keeps no y for
    out_proj's weight gradient: the scan's backward writes y again from its saved states (``scan_backward(y_out=)``),
    d_inner values per token and layer less than an out_proj outside would keep.
    """

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, out_proj_weight,
                out_proj_bias, seq_idx, s):
        ctx.settings = s
        ctx.out_proj = out_proj_weight is not None
        if s.kernels is None:
            if ctx.out_proj:
                raise ValueError("MambaInnerFn: out_proj inside runs on the Triton scan only")
            device = xz.device.type
            ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
            ctx.save_for_backward(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias,
                                  seq_idx)
            return _inner_reference(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias,
                                    seq_idx, s)
        x, z = _halves(xz)
        reset = s.kernels.reset_exponents(seq_idx, xz.device) if seq_idx is not None else None
        conv_args = s.conv.conv_arguments(x, conv_weight, conv_bias, "silu", None, seq_idx)
        u = s.conv.conv_forward(*conv_args)
        x_dbl = project(x_proj_weight, u)  # under autocast: in its dtype, as the unfused mixer's product
        dt, B, C = _split(x_dbl, s)
        y, _, saved, ctx.scan_meta = s.kernels.scan_forward(u, project(dt_proj_weight, dt), -torch.exp(A_log), B, C,
                                                            D, z, dt_bias, None, reset, True, s.tunables)
        # saved = (u, delta, A, B, C, D, z, dt_bias, None, reset, states), as the scan laid them out
        kept = saved[:2] if s.keep else ()
        ctx.conv_launch = conv_args[5:]
        ctx.save_for_backward(xz, conv_args[1], conv_args[2], conv_args[4], x_proj_weight, dt_proj_weight, x_dbl,
                              out_proj_weight, out_proj_bias, *saved[2:], *kept)
        if not ctx.out_proj:
            return y
        return out_product(out_proj_weight, out_proj_bias, y)  # as the mixer's out_proj outside

    @staticmethod
    def backward(ctx, dy):
        s = ctx.settings
        if s.kernels is None:
            return _backward_reference(ctx, dy)
        (xz, conv_weight, conv_bias, seq_numbers, x_proj_weight, dt_proj_weight, x_dbl, out_proj_weight, out_proj_bias,
         *saved) = ctx.saved_tensors
        A, B, C, D, z, dt_bias, h0, reset, states, *kept = saved
        x, _ = _halves(xz)
        dt = _split(x_dbl, s)[0]
        cdt = x_dbl.dtype  # the products' dtype in the forward (autocast's, or the weights')
        w_dt = dt_proj_weight.to(cdt)
        batch, _, seqlen = xz.shape
        y = dout = None
        if ctx.out_proj:  # dy = out_proj.weight^T dout; y itself comes back from the scan's backward below
            dout = dy.to(cdt)
            dy = channel_major(out_proj_weight.to(cdt).t() @ dout, batch, seqlen)
            y = empty_as(dy)
        if kept:
            u, delta = kept
        else:  # the forward's u and delta again: the same kernels and products on the same inputs
            u = s.conv.conv_forward(x, conv_weight, conv_bias, None, seq_numbers, *ctx.conv_launch)
            delta = project(w_dt, dt)
            u, delta = s.kernels.prepare(u, delta, A, B, C, D, z, dt_bias, None, s.tunables.chunk_size)[1][:2]
        # one buffer for in_proj's output gradient: the scan writes dz into its second half, the conv dx into the first
        dxz = empty_as(xz)
        dx_out, dz_out = _halves(dxz)
        du, ddelta, dA, dB, dC, dD, _, ddt_bias, _ = s.kernels.scan_backward(
            dy, None, (u, delta, A, B, C, D, z, dt_bias, h0, reset, states), ctx.scan_meta, dz_out=dz_out, y_out=y)
        # delta = dt_proj_weight @ dt and x_dbl = x_proj_weight @ u, as autograd's product backwards would
        ddelta_cols = columns(ddelta)
        d_dt_proj = (ddelta_cols @ columns(dt).t()).to(dt_proj_weight.dtype)
        d_x_dbl = torch.empty(x_dbl.shape[1], batch * seqlen, device=x_dbl.device, dtype=cdt)
        torch.mm(w_dt.t(), ddelta_cols, out=d_x_dbl[:s.dt_rank])
        for rows, grad in ((slice(s.dt_rank, s.dt_rank + s.d_state), dB), (slice(s.dt_rank + s.d_state, None), dC)):
            d_x_dbl[rows].view(s.d_state, batch, seqlen).copy_(grad.transpose(0, 1))
        d_x_proj = (d_x_dbl @ columns(u).t()).to(x_proj_weight.dtype)
        columns(du).addmm_(x_proj_weight.to(cdt).t(), d_x_dbl)  # du += x_proj_weight^T d_x_dbl, in place
        _, d_conv_weight, d_conv_bias, _ = s.conv.conv_backward(du, None, x, conv_weight, conv_bias, None,
                                                                seq_numbers, *ctx.conv_launch, dx_out=dx_out)
        dA_log = dA * A  # A = -exp(A_log): dA/dA_log = A
        d_out_proj = d_out_bias = None
        if ctx.out_proj:
            d_out_proj = (dout @ columns(y).t()).to(out_proj_weight.dtype)
            if out_proj_bias is not None:
                d_out_bias = dout.sum(1).to(out_proj_bias.dtype)
        return (dxz, d_conv_weight, d_conv_bias, d_x_proj, d_dt_proj, dA_log, dD, ddt_bias, d_out_proj, d_out_bias,
                None, None)


def _conv_kernels(backend: str, like: torch.Tensor, seq_idx):
    """The conv's forward and backward for the Triton path of :class:`MambaInnerFn`: causal-conv1d's CUDA kernels
    where the ops ``backend`` resolves the conv to them (``"auto"`` with the package installed, as the unfused
    mixer would) and no seq_idx is given (the package reads it only with channel-last inputs), else the Triton
    conv (``kernels/causal_conv1d/triton_conv.py``). Both write dx into a given buffer."""
    import importlib

    if seq_idx is None and ops.resolve_backend(backend, "conv", like)[0] == "cuda":
        return _CausalConv1dPackage
    return importlib.import_module("mamba_bio_audio.kernels.causal_conv1d.triton_conv")


class _CausalConv1dPackage:
    """causal-conv1d's functions behind the Triton conv module's interface (``conv_arguments``,
    ``conv_forward``, ``conv_backward``), as mamba_ssm's ``MambaInnerFn`` calls them; no initial states, no
    seq_idx (:func:`_conv_kernels` routes those to Triton). Launch tunables do not apply (kept as placeholders)."""

    @staticmethod
    def conv_arguments(x, weight, bias=None, activation=None, initial_state=None, seq_idx=None):
        return (x, weight.contiguous(), bias.contiguous() if bias is not None else None, None, None,
                activation is not None, None, None, None)

    @staticmethod
    def conv_forward(x, weight, bias, initial_state, seq_idx, silu, *launch):
        from causal_conv1d.cpp_functions import causal_conv1d_fwd_function

        return causal_conv1d_fwd_function(x, weight, bias, None, None, None, silu)

    @staticmethod
    def conv_backward(dout, dfinal, x, weight, bias, initial_state, seq_idx, silu, *launch, dx_out=None):
        from causal_conv1d.cpp_functions import causal_conv1d_bwd_function

        dx, dweight, dbias, _ = causal_conv1d_bwd_function(x, weight, bias, dout, None, None, None, dx_out, False,
                                                           silu)
        return dx, dweight, dbias, None


def _backward_reference(ctx, dy):
    """The reference backend's backward: the inner graph recomputed from the saved inputs, then differentiated."""
    device, autocast_on, autocast_dtype = ctx.autocast
    inputs = list(ctx.saved_tensors)
    seq_idx = inputs.pop(8)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
        y = _inner_reference(*leaves, seq_idx, ctx.settings)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True))
    return (*(next(grads) if t is not None else None for t in leaves), None, None, None, None)


def mamba_inner(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias, seq_idx=None, *,
                dt_rank: int, backend: str = "auto", keep: bool = False, out_proj_weight=None,
                out_proj_bias=None, save_every: int | None = None) -> torch.Tensor:
    """The selective mixer from in_proj's output to the gated scan output as one autograd Function
    (:class:`MambaInnerFn`; arguments and result as there): y (batch, d_inner, seqlen), or with
    ``out_proj_weight`` (d_model, d_inner) (and ``out_proj_bias``) out_proj's output (batch, seqlen, d_model),
    the transposed view of a (d_model, batch * seqlen) product (out_proj inside the Function on the Triton path, no
    y kept; after it on the reference). ``backend``: the ops backend, whose scan must be
    Triton or the reference (:func:`can_fuse`). ``keep``: keep u and delta for the backward (Triton), else
    recompute them there. The Triton scan keeps every ``ops.fused_inner_save_every()``-th chunk-start state
    (environment variable MBA_FUSED_SAVE_EVERY), else every ``save_every``-th, else the scan's own choice; it
    computes softplus where MBA_SCAN_SOFTPLUS says (:func:`ops.scan_softplus_in_kernel`)."""
    batch, _, seqlen = xz.shape
    if xz.stride() != (seqlen, batch * seqlen, 1) and batch * seqlen > 1:
        # the backward writes dx, dz into halves of one buffer laid out like xz, and adds into du's columns in place
        raise ValueError("mamba_inner: xz must be the channel-major view (strides (seqlen, batch * seqlen, 1)) of a "
                         f"(2 d_inner, batch * seqlen) product, got strides {tuple(xz.stride())}")
    kernels = ops.selective_scan_kernels(backend, xz)
    tunables = conv = None
    if kernels is not None:
        conv = _conv_kernels(backend, xz, seq_idx)
        kernels.check_seq_idx(seq_idx, xz.shape[0], xz.shape[2])
        tunables = kernels.default_tunables(_halves(xz)[0], A_log.shape[1],
                                            save_every=ops.fused_inner_save_every() or save_every,
                                            softplus_in_kernel=ops.scan_softplus_in_kernel())
    settings = Settings(dt_rank, A_log.shape[1], backend, kernels, tunables, conv, keep and kernels is not None)
    inside = out_proj_weight is not None and kernels is not None
    out = MambaInnerFn.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A_log, D, dt_bias,
                             out_proj_weight if inside else None, out_proj_bias if inside else None, seq_idx, settings)
    if out_proj_weight is None:
        return out
    if not inside:
        out = out_product(out_proj_weight, out_proj_bias, out)
    return out.t().view(batch, seqlen, -1)
