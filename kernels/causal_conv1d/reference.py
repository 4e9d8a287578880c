"""Depthwise causal 1-D convolution in torch: the reference for the Triton and causal-conv1d paths.

Same arguments and semantics as the causal-conv1d package's ``causal_conv1d_fn`` / ``causal_conv1d_update``.

Packed sequences (``seq_idx`` (batch, seqlen), one contiguous run of equal values per sequence): a tap whose input
position belongs to another sequence than the output step's contributes zero, so the window never reaches across
a boundary. The W - 1 initial_state positions count as the row's first sequence's; final_state keeps only the
row's last sequence's inputs (zeros in the place of earlier sequences' ones), so it continues that sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamba_bio_audio.kernels.selective_scan.naive import check_seq_idx, sequence_numbers

ACTIVATIONS = (None, "silu", "swish")


def check_activation(activation):
    """A ValueError unless ``activation`` is one of ACTIVATIONS."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _padded_numbers(seq_idx: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sequence number of each x position (batch, seqlen), that of each xp position (batch, width - 1 +
    seqlen)); initial_state's positions count as the first sequence's. Numbers, not the ids themselves, so that
    a sequence is one run whatever the ids."""
    numbers = sequence_numbers(seq_idx)
    return numbers, torch.cat([numbers[:, :1].expand(-1, width - 1), numbers], dim=1)


def tap_masks(seq_idx: torch.Tensor, width: int) -> list[torch.Tensor]:
    """Per tap k, (batch, 1, seqlen) bool: whether xp[t + k] (x position t + k - (width - 1)) is in the sequence of
    output step t."""
    seqlen = seq_idx.shape[1]
    numbers, padded = _padded_numbers(seq_idx, width)
    return [(padded[:, k:k + seqlen] == numbers)[:, None, :] for k in range(width)]


def final_state_mask(seq_idx: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, 1, width - 1) bool: which of the last width - 1 xp positions are in the row's last sequence
    (seqlen >= 1)."""
    numbers, padded = _padded_numbers(seq_idx, width)
    return (padded[:, padded.shape[1] - (width - 1):] == numbers[:, -1:])[:, None, :]


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                      seq_idx=None):
    """out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x_padded[b, d, t + k]), x left-padded by width - 1.

    Args:
        x: (batch, dim, seqlen). weight: (dim, width). bias: (dim,) or None.
        initial_state: (batch, dim, width - 1): the inputs before x (zeros when None).
        activation: None | "silu" | "swish".
        seq_idx: (batch, seqlen) integers or None: packed sequences (module docstring); taps never cross a
            change of value.
    Returns:
        out (batch, dim, seqlen) in x's dtype; with return_final_state also final_state
        (batch, dim, width - 1): the last width - 1 inputs (initial_state included), to continue the sequence
        (with seq_idx: the row's last sequence, earlier sequences' inputs zeroed).
    """
    check_activation(activation)
    dtype_in = x.dtype
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    check_seq_idx(seq_idx, batch, seqlen)
    masks = tap_masks(seq_idx, width) if seq_idx is not None and seqlen > 0 else None
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    if initial_state is None:
        prev = xc.new_zeros(batch, dim, width - 1)
    else:
        prev = initial_state.to(compute)
    xp = torch.cat([prev, xc], dim=-1)  # (batch, dim, width - 1 + seqlen)
    w, b = weight.to(compute), bias.to(compute) if bias is not None else None
    low = _autocast_dtype(x.device.type) if compute == torch.float32 else None
    if low is not None:  # as F.conv1d under autocast: low-precision inputs and output, float32 accumulation
        xr, w, b = (t.to(low).to(compute) if t is not None else None for t in (xp, w, b))
        out = _depthwise_causal(xr, w, b, seqlen, masks).to(low).to(compute)
    else:
        out = _depthwise_causal(xp, w, b, seqlen, masks)
    if activation is not None:
        out = F.silu(out)
    out = out.to(dtype_in)
    if not return_final_state:
        return out
    final_state = xp[:, :, xp.shape[-1] - (width - 1):]
    if masks is not None:
        final_state = final_state * final_state_mask(seq_idx, width)
    return out, final_state.to(dtype_in)


def _autocast_dtype(device_type: str):
    """The autocast dtype when autocast is on for ``device_type`` (F.conv1d would run in it), else None."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _depthwise_causal(xp, weight, bias, seqlen, masks=None):
    """(batch, dim, seqlen): bias[d] + sum_k weight[d, k] * xp[b, d, t + k] for xp (batch, dim, width - 1 + seqlen);
    with ``masks`` (:func:`tap_masks`), tap k only where masks[k].

    As ``width`` shifted multiply-adds rather than ``F.conv1d(groups=dim)``, whose CPU backward is orders of
    magnitude slower for a depthwise kernel this narrow.
    """
    width = weight.shape[1]

    def tap(k):
        return xp[:, :, k: k + seqlen] if masks is None else xp[:, :, k: k + seqlen] * masks[k]

    out = tap(0) * weight[:, :1]
    for k in range(1, width):
        out = torch.addcmul(out, tap(k), weight[:, k: k + 1])
    if bias is not None:
        out = out + bias[:, None]
    return out


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """One (or a few) decode steps; ``conv_state`` is updated in place.

    Args:
        x: (batch, dim) or (batch, dim, seqlen) new inputs.
        conv_state: (batch, dim, state_len) with state_len >= width - 1: the latest inputs, oldest first.
        weight: (dim, width). bias: (dim,) or None.
    Returns:
        out with x's shape and dtype.
    """
    check_activation(activation)
    unsqueeze = x.dim() == 2
    if unsqueeze:
        x = x.unsqueeze(-1)
    seqlen = x.shape[-1]
    width = weight.shape[1]
    state_len = conv_state.shape[-1]
    xp = torch.cat([conv_state.to(x.dtype), x], dim=-1)  # (batch, dim, state_len + seqlen)
    conv_state.copy_(xp[:, :, -state_len:])
    out = causal_conv1d_ref(xp[:, :, state_len - (width - 1):], weight, bias, activation)[:, :, -seqlen:]
    return out.squeeze(-1) if unsqueeze else out
