"""The one place that chooses a compute backend for the Mamba ops. Models call these functions only.

Backends:
    "reference"  torch code that runs on any device (the ``reference.py`` of each op folder under kernels/)
    "triton"     fused Triton kernels (GPU; also CPU tensors under TRITON_INTERPRET=1, which is how CI tests them)
    "cuda"       the compiled mamba_ssm / causal-conv1d extensions, when installed (benchmarks, comparisons)
    "auto"       triton for CUDA tensors when the kernels import, else reference; the environment variable
                 MBA_BACKEND (auto|reference|triton|cuda) overrides "auto". A CUDA run that falls back to the
                 reference warns once.

docs/kernels.md describes the kernels, the backends and the environment variables read here.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

from mamba_bio_audio.kernels.causal_conv1d.reference import causal_conv1d_ref, causal_conv1d_update_ref
from mamba_bio_audio.kernels.rms_norm.reference import add_rms_norm_ref
from mamba_bio_audio.kernels.selective_scan.naive import sequence_numbers
from mamba_bio_audio.kernels.selective_scan.reference import selective_scan_chunked
from mamba_bio_audio.kernels.selective_state_update.reference import selective_state_update_ref

BACKENDS = ("auto", "reference", "triton", "cuda")
ENV_VAR = "MBA_BACKEND"

_TRITON_MODULES = {
    "scan": ("mamba_bio_audio.kernels.selective_scan.function", "selective_scan_triton"),
    "step": ("mamba_bio_audio.kernels.selective_state_update.triton_step", "selective_state_update_triton"),
    "conv": ("mamba_bio_audio.kernels.causal_conv1d.triton_conv", "causal_conv1d_triton"),
    "conv_update": ("mamba_bio_audio.kernels.causal_conv1d.triton_conv", "causal_conv1d_update_triton"),
    "norm": ("mamba_bio_audio.kernels.rms_norm.triton_norm", "add_rms_norm_triton"),
    "decode": ("mamba_bio_audio.kernels.mamba_decode.triton_decode", "mamba_decode_inner_triton"),
    "block_decode": ("mamba_bio_audio.kernels.mamba_decode.triton_decode", "mamba_block_decode_triton"),
}
_CUDA_MODULES = {
    "scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "step": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "conv": ("causal_conv1d", "causal_conv1d_fn"),
    "conv_update": ("causal_conv1d", "causal_conv1d_update"),
    "norm": _TRITON_MODULES["norm"],  # no compiled norm exists (mamba_ssm's own fused norm is Triton too)
}


@functools.cache
def _load(module: str, name: str):
    """The named function, or None when its module cannot be imported here."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - a missing or broken optional extension only disables its backend
        return None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _warn_fallback(op: str) -> None:
    warnings.warn(
        f"mamba_bio_audio: no fast kernel for '{op}' on CUDA tensors here; using the slow torch reference",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_backend(backend: str, op: str, tensor: torch.Tensor):
    """(backend name, function) for ``op`` in ("scan", "step", "conv", "conv_update", "norm"); None function =
    reference."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if tensor.is_cuda:
            if op.startswith("conv") and _load(*_CUDA_MODULES[op]) is not None:
                return "cuda", _load(*_CUDA_MODULES[op])
            fn = _load(*_TRITON_MODULES[op])
            if fn is not None:
                return "triton", fn
            _warn_fallback(op)
        return "reference", None
    if backend == "reference":
        return "reference", None
    table = _TRITON_MODULES if backend == "triton" else _CUDA_MODULES
    fn = _load(*table[op])
    if fn is None:
        raise RuntimeError(f"backend '{backend}' for '{op}' is not available here ({table[op][0]} did not import)")
    if backend == "triton" and not tensor.is_cuda and not triton_interpreting():
        raise RuntimeError("backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
    return backend, fn


def resolve_seq_idx(seq_idx, cu_seqlens, batch: int, seqlen: int, device=None, allow_empty: bool = True):
    """The packed-sequence numbering of a (batch, seqlen) input, given as ``seq_idx`` or as ``cu_seqlens``.

    ``cu_seqlens`` is the flash-attention / mamba_ssm varlen convention: an integer tensor (n + 1,) of cumulative
    sequence lengths, 0 = cu_seqlens[0] <= cu_seqlens[1] <= ... <= cu_seqlens[n] = seqlen, for n sequences packed
    end to end in one row (batch must be 1); sequence k holds positions cu_seqlens[k] .. cu_seqlens[k + 1] - 1.
    A repeated value is a zero-length sequence: it holds no position and changes nothing (``allow_empty=False``
    refuses it, for callers that must return one result per sequence). Reading the values syncs a CUDA tensor
    with the host once.

    Args:
        seq_idx: (batch, seqlen) integers or None, returned as given. cu_seqlens: (n + 1,) integers or None.
        batch, seqlen: the input's. device: of the result (default cu_seqlens').
    Returns:
        seq_idx as given; or (1, seqlen) int32, sequence k's positions numbered k; or None when both are None.
    Raises:
        ValueError: both given; cu_seqlens not a 1-D integer tensor of at least 2 values, not starting at 0, not
            ending at seqlen, decreasing (or, without ``allow_empty``, repeating), or batch != 1.
    """
    if cu_seqlens is None:
        return seq_idx
    if seq_idx is not None:
        raise ValueError("pass seq_idx or cu_seqlens, not both")
    if not torch.is_tensor(cu_seqlens) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise ValueError("cu_seqlens must be a 1-D integer tensor (n + 1,) of cumulative sequence lengths, n >= 1")
    if batch != 1:
        raise ValueError(f"cu_seqlens packs sequences into one row: batch must be 1, got {batch}")
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    lengths = cu.diff()
    if int(cu[0]) != 0 or int(cu[-1]) != seqlen:
        raise ValueError(f"cu_seqlens must start at 0 and end at seqlen {seqlen}, got {int(cu[0])} .. {int(cu[-1])}")
    if bool((lengths < 0).any()):
        raise ValueError("cu_seqlens must be non-decreasing")
    if not allow_empty and bool((lengths == 0).any()):
        raise ValueError("cu_seqlens holds a zero-length sequence (a repeated value); every sequence needs a token")
    numbers = torch.repeat_interleave(torch.arange(lengths.numel(), dtype=torch.int32), lengths)
    return numbers.unsqueeze(0).to(device if device is not None else cu_seqlens.device)


def selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, initial_state=None, backend="auto", seq_idx=None, cu_seqlens=None,
):
    """The selective scan (S6), drop-in compatible with mamba_ssm's ``selective_scan_fn``, plus ``initial_state``
    and packed sequences (``seq_idx`` or ``cu_seqlens``).

        h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t . h_t + D u_t,   out = y * silu(z)
        dt = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias

    Args:
        u, delta: (batch, dim, seqlen). z: (batch, dim, seqlen) or None.
        A: (dim, d_state), real (negative for a stable scan).
        B, C: (dim, d_state) fixed, (batch, d_state, seqlen) or (batch, groups, d_state, seqlen) input-dependent.
        D, delta_bias: (dim,) or None. initial_state: (batch, dim, d_state) or None (zeros).
        backend: "auto" | "reference" | "triton" | "cuda".
        seq_idx: (batch, seqlen) integers (any integer dtype) or None: several sequences packed in a row,
            each one contiguous run of equal values (e.g. 0, 0, 0, 1, 1, 2, ...). The state is reset to zero
            before every step t where seq_idx[b, t] != seq_idx[b, t - 1], so each sequence gives exactly what it
            gives alone. initial_state is the state before the row's first sequence; last_state is the final
            state of the row's last sequence. Not on the "cuda" backend (mamba_ssm's Mamba-1 scan has none).
        cu_seqlens: (n + 1,) integers or None, instead of seq_idx for n sequences packed into one row (batch 1):
            cumulative lengths 0 = cu_seqlens[0] <= ... <= cu_seqlens[n] = seqlen (:func:`resolve_seq_idx`; a
            zero-length sequence changes nothing). Exactly what the equivalent seq_idx gives; both: ValueError.
    Returns:
        out (batch, dim, seqlen) in u's dtype, or (out, last_state) with last_state (batch, dim, d_state) float32.
    Gradients flow to every tensor input, initial_state included, and through last_state.
    """
    seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, u.shape[0], u.shape[-1], u.device)
    name, fn = resolve_backend(backend, "scan", u)
    if name == "reference":
        return selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, seq_idx=seq_idx
        )
    if name == "cuda":
        if initial_state is not None:
            raise ValueError("backend 'cuda' (mamba_ssm) has no initial_state; use 'triton' or 'reference'")
        if seq_idx is not None:
            raise ValueError("backend 'cuda' (mamba_ssm) has no seq_idx (packed sequences); use 'triton' or "
                             "'reference'")
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, seq_idx,
              softplus_in_kernel=scan_softplus_in_kernel())


SCAN_SOFTPLUS_ENV = "MBA_SCAN_SOFTPLUS"


def scan_softplus_in_kernel() -> bool:
    """Where the Triton scan computes dt = softplus(delta + delta_bias): the environment variable
    MBA_SCAN_SOFTPLUS, "pass" (default: one elementwise pass into an fp32 buffer the size of delta, in forward
    and backward) or "kernel" (inside the scan kernels: no buffer; ``selective_scan_triton``'s
    ``softplus_in_kernel``)."""
    value = os.environ.get(SCAN_SOFTPLUS_ENV, "pass")
    if value not in ("pass", "kernel"):
        raise ValueError(f"{SCAN_SOFTPLUS_ENV} must be 'pass' or 'kernel', got {value!r}")
    return value == "kernel"


def selective_scan_kernels(backend: str, tensor: torch.Tensor):
    """The Triton scan's module (kernels/selective_scan/function.py: ``scan_forward`` / ``scan_backward``, which
    leave the saving of tensors to the caller, ``default_tunables``, ``reset_exponents``, ``check_seq_idx``) when
    ``backend`` resolves to Triton for the scan of tensors like ``tensor``, else None. For callers that fuse
    the scan into a larger autograd Function (modules/fused_inner.py)."""
    if resolve_backend(backend, "scan", tensor)[0] != "triton":
        return None
    return importlib.import_module(_TRITON_MODULES["scan"][0])


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, backend="auto", dt_proj_weight=None,
):
    """One decode step of the scan; ``state`` (batch, dim, d_state) is updated in place.

    Args:
        x: (batch, dim). z: (batch, dim) or None. A: (dim, d_state).
        dt: (batch, dim); or, with ``dt_proj_weight`` (dim, dt_rank), the low-rank (batch, dt_rank) that it
            projects (dt @ dt_proj_weight.T; the Triton step fuses this product).
        B, C: (batch, d_state) or (batch, groups, d_state). D, dt_bias: (dim,) or None.
    Returns:
        out: (batch, dim) in x's dtype.
    """
    name, fn = resolve_backend(backend, "step", x)
    if name == "triton":
        return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_proj_weight)
    if dt_proj_weight is not None:
        dt = torch.nn.functional.linear(dt, dt_proj_weight)
    if name == "reference":
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def causal_conv1d_fn(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                     backend="auto", seq_idx=None, cu_seqlens=None):
    """Depthwise causal conv1d: the causal-conv1d package on CUDA when installed, else Triton, else torch.

    Args:
        x: (batch, dim, seqlen). weight: (dim, width). bias: (dim,) or None. activation: None | "silu" | "swish".
        initial_state: (batch, dim, width - 1) or None.
        seq_idx: (batch, seqlen) integers or None: packed sequences, each one contiguous run of equal values; a tap
            whose input lies in another sequence than the output step contributes zero (initial_state counts as
            the row's first sequence's), and final_state holds only the row's last sequence's inputs. "auto"
            takes the Triton kernel for it on CUDA; "cuda" (the package) takes it only without initial_state and
            final_state.
        cu_seqlens: (n + 1,) integers or None, instead of seq_idx for n sequences packed into one row (batch 1):
            cumulative lengths from 0 to seqlen (:func:`resolve_seq_idx`); both: ValueError.
    Returns:
        out (batch, dim, seqlen), and final_state (batch, dim, width - 1) when return_final_state.
    """
    seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, x.shape[0], x.shape[-1], x.device)
    name, fn = resolve_backend(backend, "conv", x)
    if seq_idx is not None and name == "cuda":
        if backend == "auto":
            name, fn = resolve_backend("triton", "conv", x)
        elif initial_state is not None or return_final_state:
            raise ValueError("backend 'cuda' (causal-conv1d) takes seq_idx only without initial_state and "
                             "final_state; use 'triton' or 'reference'")
        else:  # the package reads seq_idx with channel-last x only
            return fn(x.transpose(1, 2).contiguous().transpose(1, 2), weight, bias,
                      seq_idx=sequence_numbers(seq_idx), activation=activation)
    if name == "reference":
        return causal_conv1d_ref(x, weight, bias, activation, initial_state, return_final_state, seq_idx)
    if name == "triton":
        return fn(x, weight, bias, activation, initial_state, return_final_state, seq_idx)
    if name == "cuda":
        if initial_state is None and not return_final_state:
            return fn(x, weight, bias, activation=activation)
        # the package wants channel-last memory when states are involved
        x_cl = x.transpose(1, 2).contiguous().transpose(1, 2)
        init = None if initial_state is None else initial_state.transpose(1, 2).contiguous().transpose(1, 2)
        return fn(x_cl, weight, bias, initial_states=init, return_final_states=return_final_state,
                  activation=activation)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend="auto"):
    """Decode step(s) of the causal conv; ``conv_state`` (batch, dim, state_len >= width - 1) updated in place.

    Args:
        x: (batch, dim) or (batch, dim, seqlen). weight: (dim, width). bias: (dim,) or None.
    Returns:
        out with x's shape.
    """
    name, fn = resolve_backend(backend, "conv_update", x)
    if name == "reference":
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
    return fn(x, conv_state, weight, bias, activation)


def fused_norm_enabled() -> bool:
    """Whether the blocks may use the fused add + RMSNorm kernel: unless the environment variable MBA_FUSED_NORM
    is "0" (for A/B measurements; the unfused path is the torch reference)."""
    return os.environ.get("MBA_FUSED_NORM", "1") != "0"


def add_rms_norm(x, residual, weight, eps, out_dtype=None, residual_dtype=None, backend="auto"):
    """Fused ``residual_out = x + residual`` and ``out = rmsnorm(residual_out) * weight`` (the pre-norm block's
    "add then norm"; mamba_ssm's ``rms_norm_fn`` with ``prenorm=True``). fp64 inputs always take the reference.

    Args:
        x: (..., d), any strides. residual: like x, or None (x alone is the residual stream). weight: (d,).
        out_dtype: of ``out`` (default x's). residual_dtype: of ``residual_out`` (default x and residual promoted).
    Returns:
        (out, residual_out), both (..., d).
    """
    name, fn = resolve_backend(backend, "norm", x)
    if name == "reference" or torch.float64 in (x.dtype, weight.dtype):
        return add_rms_norm_ref(x, residual, weight, eps, out_dtype, residual_dtype)
    return fn(x, residual, weight, eps, out_dtype, residual_dtype)


def _env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name`` (``default`` when unset); a ValueError naming it otherwise."""
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


FUSED_DECODE_ENV = "MBA_FUSED_DECODE_MAX_BATCH"


def fused_decode_max_batch() -> int:
    """Largest batch that :func:`mamba_decode_inner` runs through the two fused kernels (larger batches take
    the unfused Triton ops, whose x_proj is one cuBLAS product instead of per-row partial products): the
    environment variable MBA_FUSED_DECODE_MAX_BATCH, default 8 (docs/kernels.md: why 8)."""
    return _env_int(FUSED_DECODE_ENV, 8)


def mamba_decode_inner(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                       ssm_state, backend="auto"):
    """One token through a selective mixer between in_proj and out_proj; both states advance in place:

        xc = silu(conv update of x);  dt, B, C = split(x_proj_weight @ xc);  dt = dt_proj_weight @ dt
        y  = selective_state_update(ssm_state, xc, dt, A, B, C, D, z, dt_bias, dt_softplus=True)

    Two fused Triton kernels when ``backend`` resolves to Triton and the batch is at most
    :func:`fused_decode_max_batch` (kernels/mamba_decode/triton_decode.py), else the ops above one by one (the
    Triton ones, the reference, or mamba_ssm's and causal-conv1d's kernels for "cuda").

    Args:
        x, z: (batch, dim). conv_state: (batch, dim, state_len). conv_weight: (dim, width). conv_bias: (dim,)
        or None. x_proj_weight: (dt_rank + 2 d_state, dim). dt_proj_weight: (dim, dt_rank). dt_bias, D: (dim,)
        or None. A: (dim, d_state). ssm_state: (batch, dim, d_state).
    Returns:
        y: (batch, dim) in x's dtype.
    """
    if resolve_backend(backend, "step", x)[0] == "triton" and x.shape[0] <= fused_decode_max_batch():
        return _load(*_TRITON_MODULES["decode"])(x, z, conv_state, conv_weight, conv_bias, x_proj_weight,
                                                 dt_proj_weight, dt_bias, A, D, ssm_state)
    d_state, dt_rank = ssm_state.shape[-1], dt_proj_weight.shape[1]
    xc = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, activation="silu", backend=backend)
    dt, B, C = torch.split(torch.nn.functional.linear(xc, x_proj_weight), [dt_rank, d_state, d_state], dim=-1)
    if x.shape[0] > fused_dt_proj_max_batch():  # one GEMM instead of every row re-reading dt_proj.weight
        return selective_state_update(ssm_state, xc, torch.nn.functional.linear(dt, dt_proj_weight), A, B, C, D,
                                      z=z, dt_bias=dt_bias, dt_softplus=True, backend=backend)
    return selective_state_update(ssm_state, xc, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                  backend=backend, dt_proj_weight=dt_proj_weight)


def fused_inner_enabled() -> bool:
    """Whether mixers may take the fused inner path (modules/fused_inner.py, as ``MambaConfig.fused_inner``
    allows): unless the environment variable MBA_FUSED_INNER is "0" (for A/B measurements of one model)."""
    return os.environ.get("MBA_FUSED_INNER", "1") != "0"


FUSED_SAVE_EVERY_ENV = "MBA_FUSED_SAVE_EVERY"
LEAN_SAVE_EVERY = 16  # MambaConfig.fused_inner="lean": the fused mixer's scan keeps every 16th chunk-start state


def fused_inner_save_every() -> int | None:
    """Chunks between the chunk-start states that the fused mixer's scan keeps for the backward
    (modules/fused_inner.py; the scan's ``save_every``): the environment variable MBA_FUSED_SAVE_EVERY, a
    positive integer; unset or 0: the scan's own choice (1 unless a call's states would pass 1 GiB). Larger
    values cut those states (4 d_state / (chunk_size save_every) bytes per channel and step) for one more
    pass over the scan's inputs in the backward."""
    value = _env_int(FUSED_SAVE_EVERY_ENV, 0)
    if value < 0:
        raise ValueError(f"{FUSED_SAVE_EVERY_ENV} must be a positive integer (or 0: the scan's choice), got {value}")
    return value or None


FUSED_OUT_PROJ_INSIDE_ENV = "MBA_FUSED_OUT_PROJ_INSIDE"


def fused_out_proj_inside(keep: bool) -> bool:
    """Whether the fused mixer (modules/fused_inner.py) runs out_proj inside its Function, keeping no y for
    out_proj's weight gradient (the scan's backward writes y again: one more store there). The environment
    variable MBA_FUSED_OUT_PROJ_INSIDE: "1" always, "0" never, unset or "auto": where u and delta are recomputed
    (``fused_inner`` "triton" / "all", the memory-lean modes), not with "keep" (the speed mode: on one H100 on
    2026-12-08 its graphed step read 1.23x mamba_ssm's with y recomputed, against 1.27-1.28x with y kept on
    2026-12-07, on another machine: not yet compared on one)."""
    value = (os.environ.get(FUSED_OUT_PROJ_INSIDE_ENV) or "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError(f"{FUSED_OUT_PROJ_INSIDE_ENV} must be 0, 1 or auto, got {value!r}")
    return value == "1" or (value == "auto" and not keep)


FUSED_DT_PROJ_ENV = "MBA_FUSED_DT_PROJ_MAX_BATCH"


def fused_dt_proj_max_batch() -> int:
    """Largest batch whose unfused decode step projects the low-rank dt inside the state update
    (``dt_proj_weight=``): the environment variable MBA_FUSED_DT_PROJ_MAX_BATCH, default 256. Inside, every
    (batch row, channel block) program reads its rows of dt_proj.weight, so at large batches one cuBLAS product
    is cheaper."""
    return _env_int(FUSED_DT_PROJ_ENV, 256)


FUSED_BLOCK_DECODE_ENV = "MBA_FUSED_BLOCK_DECODE_MAX_BATCH"
#: Largest d_model the block-head kernel takes (each program holds 2 x 8 rows of in_proj.weight in registers).
MAX_FUSED_BLOCK_D_MODEL = 2048


def fused_block_decode_max_batch() -> int:
    """Largest batch whose decode step runs as :func:`mamba_block_decode`'s two kernels: the environment
    variable MBA_FUSED_BLOCK_DECODE_MAX_BATCH, default 2 (0: never). Each batch row's programs re-read their
    rows of in_proj.weight, so the gain at batch 1 turns into a loss as the batch grows."""
    return _env_int(FUSED_BLOCK_DECODE_ENV, 2)


def fused_block_decode_ok(hidden: torch.Tensor, norm_weight: torch.Tensor, in_proj_weight: torch.Tensor,
                          backend: str = "auto") -> bool:
    """Whether a block's decode step may run as :func:`mamba_block_decode` (two Triton kernels from the
    residual add to out_proj): Triton backend, batch <= both :func:`fused_block_decode_max_batch` and
    :func:`fused_decode_max_batch`, the fused norm enabled, d_model <= MAX_FUSED_BLOCK_D_MODEL, no autocast,
    and the norm and in_proj in one dtype (not fp64)."""
    return (fused_norm_enabled() and hidden.dim() == 2
            and hidden.shape[0] <= min(fused_block_decode_max_batch(), fused_decode_max_batch())
            and hidden.shape[1] <= MAX_FUSED_BLOCK_D_MODEL
            and norm_weight.dtype == in_proj_weight.dtype != torch.float64 and hidden.dtype != torch.float64
            and not torch.is_autocast_enabled(hidden.device.type)
            and resolve_backend(backend, "step", hidden)[0] == "triton")


FUSED_OUT_PROJ_ENV = "MBA_FUSED_OUT_PROJ_MAX_BATCH"


def fused_out_proj_max_batch() -> int:
    """Largest batch whose fused block step (:func:`mamba_block_decode`) also runs out_proj inside its second
    kernel: the environment variable MBA_FUSED_OUT_PROJ_MAX_BATCH, default 2 (the block step's own limit; 0:
    never; it applies only where the block step is fused, :func:`fused_block_decode_max_batch`). Each batch row's
    programs read their columns of out_proj.weight, so, as for the block head, the saved launch is worth it at
    small batches only. With PDL, 0.331 ms per token at batch 1 against 0.440 without either (90.7 M model, one
    H100, 2026-12-07, results/bench_generate_2233.md)."""
    return _env_int(FUSED_OUT_PROJ_ENV, 2)


def fused_out_proj_ok(hidden: torch.Tensor) -> bool:
    """Whether a fused block step (:func:`fused_block_decode_ok`) may run out_proj inside it: batch <=
    :func:`fused_out_proj_max_batch`, and ``torch.use_deterministic_algorithms`` off (its fp32 sums are atomic
    adds in a run-dependent order)."""
    return hidden.shape[0] <= fused_out_proj_max_batch() and not torch.are_deterministic_algorithms_enabled()


def out_proj_scratch(batch: int, d_model: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The zeroed scratch a block step with out_proj fused needs (kernels/mamba_decode/triton_decode.py): "acc"
    (batch, d_model) fp32 and "count" (batch,) int32, left at zero by every step, so one per layer serves all its
    steps (``Mamba.block_step`` keeps it in the layer's decode state)."""
    return {"acc": torch.zeros(batch, d_model, device=like.device, dtype=torch.float32),
            "count": torch.zeros(batch, device=like.device, dtype=torch.int32)}


def mamba_block_decode(hidden, residual, norm_weight, eps, in_proj_weight, in_proj_bias, conv_state, conv_weight,
                       conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, residual_dtype=None,
                       backend="auto", out_proj_weight=None, out_proj_bias=None, out_scratch=None):
    """One token through a pre-norm selective block up to out_proj (through it, with ``out_proj_weight``); both
    states advance in place:

        normed, residual_out = add_rms_norm(hidden, residual, norm_weight, eps)   (normed in in_proj's dtype)
        x, z = split(in_proj(normed));  y = mamba_decode_inner(x, z, ...)
        [hidden_out = out_proj(y)]

    Two Triton kernels when :func:`fused_block_decode_ok` (kernels/mamba_decode/triton_decode.py), out_proj
    inside the second one when ``out_scratch`` (:func:`out_proj_scratch`) is given too (else cuBLAS after them);
    otherwise the ops above one by one.

    Args:
        hidden: (batch, d_model), the previous block's mixer output (the embedding for the first block).
        residual: (batch, d_model) or None. norm_weight: (d_model,). in_proj_weight: (2 dim, d_model).
        in_proj_bias: (2 dim,) or None. The rest: as :func:`mamba_decode_inner`. residual_dtype: of residual_out.
        out_proj_weight: (d_model, dim) or None. out_proj_bias: (d_model,) or None.
    Returns:
        (y (batch, dim), the input of out_proj; residual_out (batch, d_model)), or with out_proj_weight
        (out_proj(y) (batch, d_model), residual_out).
    """
    if fused_block_decode_ok(hidden, norm_weight, in_proj_weight, backend):
        if out_proj_weight is not None and out_scratch is not None:  # out_proj inside the second kernel
            return _load(*_TRITON_MODULES["block_decode"])(
                hidden, residual, norm_weight, eps, in_proj_weight, in_proj_bias, conv_state, conv_weight,
                conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, residual_dtype=residual_dtype,
                out_proj_weight=out_proj_weight, out_proj_bias=out_proj_bias, out_scratch=out_scratch)
        y, residual_out = _load(*_TRITON_MODULES["block_decode"])(
            hidden, residual, norm_weight, eps, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias,
            x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state, residual_dtype=residual_dtype)
    else:
        normed, residual_out = add_rms_norm(hidden, residual, norm_weight, eps, in_proj_weight.dtype,
                                            residual_dtype, backend=backend)
        x, z = torch.nn.functional.linear(normed, in_proj_weight, in_proj_bias).chunk(2, dim=-1)
        y = mamba_decode_inner(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A,
                               D, ssm_state, backend=backend)
    if out_proj_weight is not None:
        y = torch.nn.functional.linear(y, out_proj_weight, out_proj_bias)
    return y, residual_out
