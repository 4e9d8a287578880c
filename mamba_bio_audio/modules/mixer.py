"""The Mamba mixer: in_proj -> causal conv -> SiLU -> selective scan (S6) or time-invariant scan (S4D) -> gate -> out_proj.

Parameter names follow mamba_ssm's ``Mamba`` module so its checkpoints load: ``in_proj``, ``conv1d``, ``x_proj``,
``dt_proj``, ``A_log``, ``D``, ``out_proj``. The S4D ablation replaces ``x_proj``/``dt_proj`` by per-channel
parameters ``dt_bias``, ``B``, ``C`` (Delta, B, C no longer depend on the input).

Shapes: hidden_states (batch, seqlen, d_model); inside, x and z (batch, d_inner, seqlen).

Layout (as mamba_ssm's fused path): the projections run as single matrix products over all (batch, time)
columns, ``W @ X`` with X a (features, batch * seqlen) matrix, and the tensors between them are channel-major
views (batch, channels, seqlen) of those products, strides (seqlen, batch * seqlen, 1): x and z (halves of the
in_proj product), the conv output, delta, B and C (views of the x_proj product), and the scan output y. The
Triton conv and scan index that layout directly, and out_proj reads y as a matrix, so no (batch, d_inner, seqlen)
tensor is copied in the forward or the backward (the gradient reaching the scan from out_proj is channel-major
too). For batch 1 the layout is plain contiguous.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio import ops
from mamba_bio_audio.config import MambaConfig


def _fp32(p: torch.Tensor) -> torch.Tensor:
    """SSM parameters enter the scan in fp32 (fp64 models keep fp64, for exact tests)."""
    return p if p.dtype == torch.float64 else p.float()


def columns(x: torch.Tensor) -> torch.Tensor:
    """x (batch, channels, seqlen) -> (channels, batch * seqlen): a view when x is channel-major."""
    return x.transpose(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2])


def channel_major(matrix: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(channels, batch * seqlen) -> the (batch, channels, seqlen) view, strides (seqlen, batch * seqlen, 1)."""
    return matrix.view(matrix.shape[0], batch, seqlen).transpose(0, 1)


def project(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (out, in) @ x (batch, in, seqlen) -> (batch, out, seqlen), channel-major, by one matrix product."""
    return channel_major(weight @ columns(x), x.shape[0], x.shape[2])


def out_product(weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """out_proj of y (batch, d_inner, seqlen): weight @ columns(y) (+ bias), (d_model, batch * seqlen) in the
    product's dtype (autocast's under autocast)."""
    out = weight @ columns(y)
    return out + bias.to(out.dtype)[:, None] if bias is not None else out


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y with softplus(y) = x (x > 0)."""
    return x + torch.log(-torch.expm1(-x))


def init_dt(config: MambaConfig, d_inner: int) -> torch.Tensor:
    """Delta at initialisation: log-uniform in [dt_min, dt_max], floored at dt_init_floor. Shape (d_inner,)."""
    log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
    dt = torch.exp(torch.rand(d_inner) * (log_max - log_min) + log_min)
    return dt.clamp(min=config.dt_init_floor)


def flip_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (batch, seqlen, ...) with the first ``lengths[b]`` positions of each row b reversed, the rest (right
    padding) left in place; its own inverse."""
    positions = torch.arange(x.shape[1], device=x.device)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (batch, seqlen)
    return x.gather(1, index.view(*index.shape, *(1,) * (x.dim() - 2)).expand_as(x))


class Mamba(nn.Module):
    """One Mamba mixer (the paper's Figure 3 block without the norm and residual)."""

    def __init__(self, config: MambaConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.d_model = config.d_model
        self.d_inner = d_inner = config.d_inner
        self.d_state = d_state = config.d_state
        self.d_conv = config.d_conv
        self.dt_rank = dt_rank = config.dt_rank_value
        self.selective = config.ssm_layer == "S6"
        self.bidirectional = config.bidirectional
        self.backend = "auto"  # ops backend for this layer; "auto" picks per device

        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1,
                                bias=config.conv_bias)
        dt = init_dt(config, d_inner)
        if self.selective:
            self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
            dt_init_std = dt_rank ** -0.5 * config.dt_scale
            if config.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            with torch.no_grad():
                self.dt_proj.bias.copy_(inverse_softplus(dt))
            self.dt_proj.bias._no_reinit = True
        else:
            # S4D-real with Delta, B, C learned per channel (time-invariant): the paper's S4 ablation.
            self.dt_bias = nn.Parameter(inverse_softplus(dt))
            self.B = nn.Parameter(torch.ones(d_inner, d_state))
            self.C = nn.Parameter(torch.randn(d_inner, d_state) * d_state ** -0.5)
            self.dt_bias._no_weight_decay = True
        # S4D-real initialisation: A_n = -(n + 1), stored as log(-A) so A stays negative.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)

    # ---- parallel (training / prefill / segments) -----------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, state: dict | None = None,
                lengths: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        With ``state`` (a dict holding ``conv_state`` (batch, d_inner, d_conv) and ``ssm_state``
        (batch, d_inner, d_state)), the states after the last position are written into it (prefill).
        ``lengths`` (batch,): real lengths of right-padded rows. Only the reverse direction of a bidirectional
        mixer needs them: it reads each row backwards from its own last real token (:func:`flip_within`), so
        padding never reaches a real position (the causal direction sees right padding only after them).
        ``seq_idx`` (batch, seqlen) integers: several sequences packed in each row, each one run of equal values;
        the conv and the scan restart where the value changes (ops.selective_scan_fn), so each sequence gets
        what it gets alone. The reverse direction reads the row reversed with seq_idx reversed alike: packed
        sequences are independent, so that is each sequence read backwards within its own span.
        """
        if seq_idx is not None and state is not None:
            raise ValueError("prefill states are not kept for packed sequences (seq_idx)")
        if not self.bidirectional:
            return self._forward_one_direction(hidden_states, state, seq_idx=seq_idx)[0]
        if state is not None:
            raise ValueError("a bidirectional mixer has no recurrent state (it sees the whole sequence)")
        forward = self._forward_one_direction(hidden_states, seq_idx=seq_idx)[0]
        if lengths is None:
            flipped_idx = seq_idx.flip(1) if seq_idx is not None else None
            backward = self._forward_one_direction(hidden_states.flip(1), seq_idx=flipped_idx)[0].flip(1)
        else:
            flipped_idx = flip_within(seq_idx, lengths) if seq_idx is not None else None
            backward = flip_within(self._forward_one_direction(flip_within(hidden_states, lengths),
                                                               seq_idx=flipped_idx)[0], lengths)
        return forward + backward

    def forward_segment(self, hidden_states: torch.Tensor, carry: tuple | None = None):
        """One segment of a longer sequence, differentiable through the states passed between segments.

        Args:
            hidden_states: (batch, seqlen, d_model).
            carry: None at the sequence start, else the previous segment's (conv inputs (batch, d_inner,
                d_conv - 1), ssm state (batch, d_inner, d_state) fp32).
        Returns:
            (output (batch, seqlen, d_model), carry for the next segment). Gradients flow into ``carry``.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional mixer cannot be split into causal segments")
        out, new_carry = self._forward_one_direction(hidden_states, carry=carry, return_carry=True)
        return out, new_carry

    def carries_state(self, like: torch.Tensor) -> bool:
        """Whether :meth:`forward_segment` can split this mixer's forward into causal segments for tensors like
        ``like``: a causal mixer using Mamba's own forward, and a scan backend that takes an initial state
        (mamba_ssm's "cuda" scan does not)."""
        return (not self.bidirectional and type(self).forward is Mamba.forward
                and ops.resolve_backend(self.backend, "scan", like)[0] != "cuda")

    def _in_proj_product(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states (batch, seqlen, d_model) -> in_proj's (2 d_inner, batch * seqlen) product (+ bias)."""
        batch, seqlen, _ = hidden_states.shape
        xz = self.in_proj.weight @ hidden_states.reshape(batch * seqlen, -1).t()
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        return xz

    def _in_proj(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states (batch, seqlen, d_model) -> x, z (batch, d_inner, seqlen): channel-major views of the
        halves of one (2 d_inner, batch * seqlen) product."""
        batch, seqlen, _ = hidden_states.shape
        # split, not two slices: its backward is one cat of the two gradients, where slicing would zero a
        # (2 d_inner, batch * seqlen) buffer, copy each gradient into it and add the two
        x, z = torch.split(self._in_proj_product(hidden_states), self.d_inner)
        return channel_major(x, batch, seqlen), channel_major(z, batch, seqlen)

    def _out_proj(self, y: torch.Tensor) -> torch.Tensor:
        """y (batch, d_inner, seqlen) channel-major -> (batch, seqlen, d_model), a transposed view of
        out_proj.weight @ columns(y): its backward hands the scan a channel-major gradient."""
        batch, _, seqlen = y.shape
        return out_product(self.out_proj.weight, self.out_proj.bias, y).t().view(batch, seqlen, -1)

    def _forward_one_direction(self, hidden_states, state=None, carry=None, return_carry=False, seq_idx=None):
        batch, seqlen, _ = hidden_states.shape
        if self._fuses_inner(hidden_states, state, carry, return_carry):
            from mamba_bio_audio.modules.fused_inner import mamba_inner  # it imports this module's helpers

            xz = channel_major(self._in_proj_product(hidden_states), batch, seqlen)  # (batch, 2 d_inner, seqlen)
            keep = self.config.fused_inner == "keep"
            inside = ops.fused_out_proj_inside(keep)  # out_proj in the Function: no y kept for it
            out = mamba_inner(xz, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.x_proj.weight,
                              self.dt_proj.weight, _fp32(self.A_log), _fp32(self.D), _fp32(self.dt_proj.bias), seq_idx,
                              dt_rank=self.dt_rank, backend=self.backend, keep=keep,
                              out_proj_weight=self.out_proj.weight if inside else None,
                              out_proj_bias=self.out_proj.bias if inside else None,
                              save_every=ops.LEAN_SAVE_EVERY if self.config.fused_inner == "lean" else None)
            return (out if inside else self._out_proj(out)), None
        x, z = self._in_proj(hidden_states)  # (batch, d_inner, seqlen) each
        if state is not None:
            state["conv_state"].copy_(F.pad(x, (self.d_conv - seqlen, 0)) if seqlen < self.d_conv
                                      else x[:, :, -self.d_conv:])
        conv_init, ssm_init = carry if carry is not None else (None, None)
        A = -torch.exp(_fp32(self.A_log))  # (d_inner, d_state)
        x = ops.causal_conv1d_fn(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu",
                                 initial_state=conv_init, return_final_state=return_carry, backend=self.backend,
                                 seq_idx=seq_idx)
        if return_carry:
            x, conv_final = x
        delta, B, C, delta_bias = self._delta_B_C(x)
        y = ops.selective_scan_fn(
            x, delta, A, B, C, _fp32(self.D), z=z, delta_bias=delta_bias, delta_softplus=True,
            return_last_state=state is not None or return_carry, initial_state=ssm_init, backend=self.backend,
            seq_idx=seq_idx,
        )
        new_carry = None
        if state is not None or return_carry:
            y, last_state = y
            if state is not None:
                state["ssm_state"].copy_(last_state)
            if return_carry:
                new_carry = (conv_final, last_state)
        return self._out_proj(y), new_carry

    def _fuses_inner(self, hidden_states: torch.Tensor, state, carry, return_carry: bool) -> bool:
        """Whether this forward runs conv -> scan as one Function (modules/fused_inner.py): training (autograd
        on) of a selective mixer, no states carried in or out, a non-empty sequence, and a scan backend that
        ``MambaConfig.fused_inner`` fuses."""
        if not (self.selective and torch.is_grad_enabled() and state is None and carry is None and not return_carry
                and hidden_states.shape[1] > 0 and self.config.fused_inner != "off"):
            return False
        from mamba_bio_audio.modules.fused_inner import can_fuse

        return can_fuse(self.config.fused_inner, self.backend, hidden_states)

    def _delta_B_C(self, x: torch.Tensor):
        """x (batch, d_inner, seqlen) -> delta (batch, d_inner, seqlen), B, C (batch, d_state, seqlen) (S6) or
        (d_inner, d_state) (S4D), delta_bias (d_inner,) fp32. delta, B, C are channel-major (B, C views of one product)."""
        if not self.selective:
            return torch.zeros_like(x), _fp32(self.B), _fp32(self.C), _fp32(self.dt_bias)
        x_dbl = project(self.x_proj.weight, x)  # (batch, dt_rank + 2 * d_state, seqlen)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = project(self.dt_proj.weight, dt)  # (batch, d_inner, seqlen); bias: delta_bias, in fp32
        return delta, B, C, _fp32(self.dt_proj.bias)

    # ---- recurrent (decode) --------------------------------------------------------------------------------
    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Zero states for :meth:`step`: conv (batch, d_inner, d_conv), ssm (batch, d_inner, d_state) in fp32 (fp64 for fp64)."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return {
            "conv_state": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            "ssm_state": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype),
        }

    def step(self, hidden_states: torch.Tensor, state: dict) -> torch.Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); ``state`` is advanced in place."""
        if self.bidirectional:
            raise ValueError("a bidirectional mixer cannot decode step by step")
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (batch, d_inner) each
        params = self._step_params()
        if self.selective:  # conv, x_proj, dt_proj and the state update: two fused kernels on Triton
            y = ops.mamba_decode_inner(x, z, state["conv_state"], self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                       self.x_proj.weight, self.dt_proj.weight, params["dt_bias"], params["A"],
                                       params["D"], state["ssm_state"], backend=self.backend)
            return self.out_proj(y)
        x = ops.causal_conv1d_update(x, state["conv_state"], self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                     activation="silu", backend=self.backend)
        # S4D: per-channel B, C are "groups" of one channel each
        batch = x.shape[0]
        B = params["B"].expand(batch, -1, -1)
        C = params["C"].expand(batch, -1, -1)
        y = ops.selective_state_update(state["ssm_state"], x, torch.zeros_like(x), params["A"], B, C, params["D"],
                                       z=z, dt_bias=params["dt_bias"], dt_softplus=True, backend=self.backend)
        return self.out_proj(y)

    def block_step(self, hidden: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                   eps: float, residual_dtype: torch.dtype | None, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-norm block's step from its inputs (selective mixers): hidden, residual (batch, d_model) ->
        (this mixer's output, hidden + residual); the residual add, the block's RMSNorm (norm_weight, eps),
        in_proj, conv, x_proj, dt_proj and the state update as ``ops.mamba_block_decode`` (two Triton kernels),
        out_proj inside the second where ``ops.fused_out_proj_ok`` (its fp32 scratch, ``ops.out_proj_scratch``,
        kept in ``state["out_proj_scratch"]``), else after them."""
        params = self._step_params()
        scratch = None
        if ops.fused_out_proj_ok(hidden):
            scratch = state.get("out_proj_scratch")
            if scratch is None or scratch["acc"].shape != (hidden.shape[0], self.out_proj.out_features) \
                    or scratch["acc"].device != hidden.device:
                scratch = state["out_proj_scratch"] = ops.out_proj_scratch(hidden.shape[0],
                                                                           self.out_proj.out_features, hidden)
        return ops.mamba_block_decode(
            hidden, residual, norm_weight, eps, self.in_proj.weight, self.in_proj.bias, state["conv_state"],
            self.conv1d.weight.squeeze(1), self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            params["dt_bias"], params["A"], params["D"], state["ssm_state"], residual_dtype=residual_dtype,
            backend=self.backend, out_proj_weight=self.out_proj.weight, out_proj_bias=self.out_proj.bias,
            out_scratch=scratch)

    def _step_params(self) -> dict:
        return self.decode_params if self.use_decode_params else self._ssm_params()

    # Decoding reads A = -exp(A_log) and the fp32 copies of D, dt_bias (and S4D's B, C) from persistent buffers
    # (``decode_params``) that :meth:`refresh_decode_params` fills in place: inside a captured CUDA graph they
    # cost no kernels per step (3-5 per layer otherwise), and a refresh after an in-place weight update reaches
    # the graph. ``generation.Decoder`` turns ``use_decode_params`` on around its steps and refreshes before each
    # generation.
    use_decode_params = False
    decode_params: dict | None = None

    def _ssm_params(self) -> dict:
        """The scan's parameters in fp32 (fp64 models keep fp64): A (d_inner, d_state), D, dt_bias (d_inner,),
        and for S4D B, C (d_inner, d_state)."""
        params = {"A": -torch.exp(_fp32(self.A_log)), "D": _fp32(self.D)}
        if self.selective:
            params["dt_bias"] = _fp32(self.dt_proj.bias)
        else:
            params.update(dt_bias=_fp32(self.dt_bias), B=_fp32(self.B), C=_fp32(self.C))
        return params

    @torch.no_grad()
    def refresh_decode_params(self) -> None:
        """(Re)compute ``decode_params`` from the current weights, in place when they exist already."""
        fresh = self._ssm_params()
        if self.decode_params is None or any(self.decode_params[k].shape != v.shape
                                             or self.decode_params[k].device != v.device
                                             or self.decode_params[k].dtype != v.dtype for k, v in fresh.items()):
            self.decode_params = {k: v.clone() for k, v in fresh.items()}
        else:
            for k, v in fresh.items():
                self.decode_params[k].copy_(v)


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Make every Mamba mixer in ``model`` use ``backend`` ("auto" | "reference" | "triton" | "cuda"); returns model."""
    if backend not in ops.BACKENDS:
        raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
    for module in model.modules():
        if isinstance(module, Mamba):
            module.backend = backend
    return model
