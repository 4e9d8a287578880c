"""A selective Mamba block's decode step in plain torch, composed of the other ops' references: the semantics of
the fused decode kernels (``triton_decode.py``), and their test reference.

    mamba_decode_inner:  xc = silu(conv update of x);  dt, B, C = split(x_proj_weight @ xc)
                         y  = selective_state_update(ssm_state, xc, dt_proj_weight @ dt, A, B, C, D, z, dt_bias,
                                                     dt_softplus=True)
    mamba_block_decode:  normed, residual_out = add_rms_norm(hidden, residual, norm_weight, eps)
                         x, z = split(in_proj(normed));  y = mamba_decode_inner(x, z, ...)
                         [hidden_out = out_proj(y), when out_proj_weight is given]

Both states advance in place. Every intermediate is rounded where the unfused ops round it (the norm's output, x
and z in in_proj's dtype; x_proj's and dt_proj's outputs in x's dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamba_bio_audio.kernels.causal_conv1d.reference import causal_conv1d_update_ref
from mamba_bio_audio.kernels.rms_norm.reference import add_rms_norm_ref
from mamba_bio_audio.kernels.selective_state_update.reference import selective_state_update_ref


def mamba_decode_inner_ref(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D,
                           ssm_state):
    """One token through a selective mixer between in_proj and out_proj.

    Args:
        x, z: (batch, dim). conv_state: (batch, dim, state_len >= width - 1). conv_weight: (dim, width).
        conv_bias: (dim,) or None. x_proj_weight: (dt_rank + 2 d_state, dim). dt_proj_weight: (dim, dt_rank).
        dt_bias, D: (dim,) or None. A: (dim, d_state). ssm_state: (batch, dim, d_state).
    Returns:
        y: (batch, dim) in x's dtype.
    """
    d_state, dt_rank = ssm_state.shape[-1], dt_proj_weight.shape[1]
    xc = causal_conv1d_update_ref(x, conv_state, conv_weight, conv_bias, activation="silu")
    dt, B, C = torch.split(F.linear(xc, x_proj_weight), [dt_rank, d_state, d_state], dim=-1)
    return selective_state_update_ref(ssm_state, xc, F.linear(dt, dt_proj_weight), A, B, C, D, z, dt_bias, True)


def mamba_block_decode_ref(hidden, residual, norm_weight, eps, in_proj_weight, in_proj_bias, conv_state,
                           conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, ssm_state,
                           residual_dtype=None, out_proj_weight=None, out_proj_bias=None):
    """One token through a pre-norm selective block up to out_proj (through it, with ``out_proj_weight``).

    Args:
        hidden: (batch, d_model), the previous block's mixer output (the embedding for the first block).
        residual: (batch, d_model) or None (first block). norm_weight: (d_model,). eps: the norm's epsilon.
        in_proj_weight: (2 dim, d_model). in_proj_bias: (2 dim,) or None. The rest: as
        :func:`mamba_decode_inner_ref`. residual_dtype: of residual_out (default hidden and residual promoted).
        out_proj_weight: (d_model, dim) or None. out_proj_bias: (d_model,) or None.
    Returns:
        (y (batch, dim) in in_proj's dtype, the input of out_proj; residual_out (batch, d_model)), or with
        out_proj_weight (out_proj(y) (batch, d_model) in its dtype, residual_out).
    """
    normed, residual_out = add_rms_norm_ref(hidden, residual, norm_weight, eps, in_proj_weight.dtype, residual_dtype)
    x, z = F.linear(normed, in_proj_weight, in_proj_bias).chunk(2, dim=-1)
    y = mamba_decode_inner_ref(x, z, conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A,
                               D, ssm_state)
    if out_proj_weight is not None:
        return F.linear(y, out_proj_weight, out_proj_bias), residual_out
    return y, residual_out
