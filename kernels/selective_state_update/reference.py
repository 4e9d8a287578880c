"""One recurrent step of the selective scan in plain torch: the reference backend for decoding, runs anywhere.

    dt = softplus(dt + dt_bias) (or without softplus)
    state <- exp(dt A) state + dt B x          (fp32 arithmetic, fp64 for fp64 inputs; stored in state's dtype)
    out    = C . state + D x, times silu(z)    (from the unrounded state)

Same arguments and semantics as mamba_ssm's ``selective_state_update``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent step of the scan; ``state`` is updated in place (mamba_ssm's ``selective_state_update``).

    Args:
        state: (batch, dim, d_state), any float dtype; updated in place.
        x, dt: (batch, dim). z: (batch, dim) or None.
        A: (dim, d_state). B, C: (batch, d_state) or (batch, groups, d_state). D, dt_bias: (dim,) or None.
    Returns:
        out: (batch, dim) in x's dtype.
    """
    batch, dim, d_state = state.shape
    compute = torch.float64 if state.dtype == torch.float64 or x.dtype == torch.float64 else torch.float32
    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)

    def per_channel(X):  # (batch, d_state) or (batch, groups, d_state) -> (batch, dim, d_state)
        X = X.to(compute)
        if X.dim() == 2:
            return X[:, None, :]
        return X.repeat_interleave(dim // X.shape[1], dim=1)

    dA = torch.exp(dt[..., None] * A.to(compute))
    dBx = dt[..., None] * per_channel(B) * x.to(compute)[..., None]
    new_state = state.to(compute) * dA + dBx
    state.copy_(new_state.to(state.dtype))
    out = (new_state * per_channel(C)).sum(-1)
    if D is not None:
        out = out + x.to(compute) * D.to(compute)
    if z is not None:
        out = out * F.silu(z.to(compute))
    return out.to(x.dtype)
