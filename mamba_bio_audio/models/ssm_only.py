"""The SSM layer alone, without the Mamba block's convolution and gate: the paper's "No gate" ablation rows.

    Mamba mixer:     in_proj -> (x, z);  x -> conv -> SiLU -> scan -> * SiLU(z) -> out_proj
    SSMOnlyMixer:    in_proj -> x;       x ->                 scan ->              out_proj

The scan is the same S6 (Delta, B, C from the input through ``x_proj``/``dt_proj``) or S4D (per-channel Delta, B,
C) as :class:`~mamba_bio_audio.modules.mixer.Mamba`, with the same parameters and initialisation (inherited), and
runs through :func:`mamba_bio_audio.ops.selective_scan_fn`. :class:`SSMOnlyLM` is a :class:`MambaLM` (pre-norm
residual blocks, final norm, tied head) whose mixers are SSM-only; its ``forward_segment`` (long sequences in
segments, as in metrics/synthetic.py) carries the SSM state alone, a 1-tuple per layer.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio import ops
from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.models.lm import MambaLM
from mamba_bio_audio.modules.block import init_weights
from mamba_bio_audio.modules.mixer import Mamba


class SSMOnlyMixer(Mamba):
    """in_proj -> S6 or S4D scan -> out_proj (no conv, no gate). Shapes: (batch, seqlen, d_model) in and out."""

    def __init__(self, config: MambaConfig, layer_idx: int | None = None):
        super().__init__(config, layer_idx)
        if self.bidirectional:
            raise ValueError("SSMOnlyMixer is causal only (bidirectional=False)")
        self.in_proj = nn.Linear(config.d_model, self.d_inner, bias=config.bias)
        del self.conv1d

    def _scan_params(self, x: torch.Tensor) -> dict:
        """x (batch, d_inner, seqlen) -> keyword arguments of the scan (A, B, C, D, delta, delta_bias)."""
        delta, B, C, delta_bias = self._delta_B_C(x)
        return {"delta": delta, "A": -torch.exp(self.A_log.float()), "B": B, "C": C, "D": self.D.float(),
                "delta_bias": delta_bias}

    def forward(self, hidden_states: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """hidden_states (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        With ``state`` (from :meth:`allocate_state`), its ``ssm_state`` (batch, d_inner, d_state) receives the
        state after the last position (prefill).
        """
        x = self.in_proj(hidden_states).transpose(1, 2)  # (batch, d_inner, seqlen)
        y = ops.selective_scan_fn(x, **self._scan_params(x), delta_softplus=True,
                                  return_last_state=state is not None, backend=self.backend)
        if state is not None:
            y, last_state = y
            state["ssm_state"].copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def forward_segment(self, hidden_states: torch.Tensor, carry: tuple | None = None):
        """One segment of a longer sequence: hidden_states (batch, seqlen, d_model) and the previous segment's
        carry (``(ssm_state,)``, (batch, d_inner, d_state) fp32; None at the start) -> (output, carry for the
        next segment). Gradients flow into the carry (there is no conv state to pass)."""
        x = self.in_proj(hidden_states).transpose(1, 2)  # (batch, d_inner, seqlen)
        y, last_state = ops.selective_scan_fn(x, **self._scan_params(x), delta_softplus=True, return_last_state=True,
                                              initial_state=None if carry is None else carry[0],
                                              backend=self.backend)
        return self.out_proj(y.transpose(1, 2)), (last_state,)

    def carries_state(self, like: torch.Tensor) -> bool:
        """Segments can carry the state unless the scan backend is mamba_ssm's (no initial state)."""
        return ops.resolve_backend(self.backend, "scan", like)[0] != "cuda"

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Zero ``ssm_state`` (batch, d_inner, d_state), fp32 (fp64 for fp64 models); there is no conv state."""
        state = super().allocate_state(batch_size, device, dtype)
        del state["conv_state"]
        return state

    def step(self, hidden_states: torch.Tensor, state: dict) -> torch.Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); ``state`` is advanced in place."""
        x = self.in_proj(hidden_states)  # (batch, d_inner)
        if self.selective:
            dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt, dt_bias = F.linear(dt, self.dt_proj.weight), self.dt_proj.bias.float()
        else:
            # per-channel B, C are "groups" of one channel each
            dt, dt_bias = torch.zeros_like(x), self.dt_bias.float()
            B = self.B.float().expand(x.shape[0], -1, -1)
            C = self.C.float().expand(x.shape[0], -1, -1)
        y = ops.selective_state_update(state["ssm_state"], x, dt, -torch.exp(self.A_log.float()), B, C,
                                       self.D.float(), dt_bias=dt_bias, dt_softplus=True, backend=self.backend)
        return self.out_proj(y)


class SSMOnlyLM(MambaLM):
    """A :class:`MambaLM` whose mixers are :class:`SSMOnlyMixer`: input_ids (batch, seqlen) -> logits
    (batch, seqlen, vocab_size). Same ``forward`` / ``step`` / ``allocate_inference_cache`` / ``save_pretrained``;
    load with ``SSMOnlyLM.from_pretrained``."""

    def __init__(self, config: MambaConfig):
        super().__init__(config)
        for i, layer in enumerate(self.backbone.layers):
            layer.mixer = SSMOnlyMixer(config, i)
            layer.mixer.apply(partial(init_weights, n_layer=config.n_layer))
