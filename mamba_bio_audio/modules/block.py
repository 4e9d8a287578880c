"""Pre-norm residual block and the Mamba backbone (embedding -> blocks -> final norm).

Follows mamba_ssm's ``Block`` / ``MixerModel`` exactly (names ``backbone.embedding``, ``backbone.layers.{i}.norm``,
``backbone.layers.{i}.mixer``, ``backbone.norm_f``), so its checkpoints give the same activations:

    residual = hidden + residual;  hidden = mixer(norm(residual))      (residual kept in fp32 if asked)
    output   = norm_f(hidden + residual)
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.modules.mixer import Mamba


def make_norm(config: MambaConfig) -> nn.Module:
    if config.rms_norm:
        return nn.RMSNorm(config.d_model, eps=config.norm_epsilon)
    return nn.LayerNorm(config.d_model, eps=config.norm_epsilon)


class Block(nn.Module):
    """norm -> mixer, with the residual carried separately (mamba_ssm's "add then norm" order)."""

    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = make_norm(config)
        self.mixer = Mamba(config, layer_idx)

    def _add_norm(self, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32 and residual.dtype != torch.float64:
            residual = residual.float()
        return hidden, residual

    def forward(self, hidden, residual=None, state: dict | None = None):
        """hidden, residual: (batch, seqlen, d_model) -> (mixer output, new residual)."""
        hidden, residual = self._add_norm(hidden, residual)
        return self.mixer(hidden, state), residual

    def forward_segment(self, hidden, residual, carry):
        """Like :meth:`forward` for one segment of a longer sequence; returns (output, residual, new carry)."""
        hidden, residual = self._add_norm(hidden, residual)
        out, carry = self.mixer.forward_segment(hidden, carry)
        return out, residual, carry

    def step(self, hidden, residual, state: dict):
        """hidden, residual: (batch, d_model) for one token."""
        hidden, residual = self._add_norm(hidden, residual)
        return self.mixer.step(hidden, state), residual


def init_weights(module: nn.Module, n_layer: int, initializer_range: float = 0.02) -> None:
    """mamba_ssm's initialisation: zero Linear biases (except dt_proj's), N(0, 0.02) embeddings, and the
    out_proj of every block rescaled by 1/sqrt(n_layer) (GPT-2's prenorm-residual scheme)."""
    if isinstance(module, nn.Linear):
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if isinstance(module, Mamba):
        nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            module.out_proj.weight /= math.sqrt(n_layer)


class MambaBackbone(nn.Module):
    """input_ids (batch, seqlen) -> hidden states (batch, seqlen, d_model)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        self.gradient_checkpointing = False
        self.apply(partial(init_weights, n_layer=config.n_layer))

    def forward(self, input_ids: torch.Tensor, states: list[dict] | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``states``: one dict per layer (see :meth:`Mamba.allocate_state`), filled with the prefill states."""
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for i, layer in enumerate(self.layers):
            state = None if states is None else states[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and state is None:
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, state)
        residual = hidden if residual is None else hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def forward_segment(self, input_ids: torch.Tensor, carries: list | None = None):
        """One segment of a long sequence: input_ids (batch, seqlen) and the previous segment's carries (one per
        layer, None at the start) -> (hidden (batch, seqlen, d_model), carries for the next segment).
        Gradients flow through the carries, so chaining segments gives the gradients of one pass."""
        hidden = self.embedding(input_ids)
        residual = None
        new_carries = []
        for i, layer in enumerate(self.layers):
            carry = None if carries is None else carries[i]
            hidden, residual, carry = layer.forward_segment(hidden, residual, carry)
            new_carries.append(carry)
        residual = hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype)), new_carries

    def step(self, input_ids: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """input_ids (batch,) -> final hidden state (batch, d_model); states advanced in place."""
        hidden = self.embedding(input_ids)
        residual = None
        for layer, state in zip(self.layers, states):
            hidden, residual = layer.step(hidden, residual, state)
        residual = hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def allocate_states(self, batch_size: int, device=None, dtype=None) -> list[dict]:
        return [layer.mixer.allocate_state(batch_size, device, dtype) for layer in self.layers]


class BackboneMixin:
    """For models holding a ``self.backbone`` (MambaBackbone): ``model.gradient_checkpointing = True`` recomputes
    each block in the backward pass (activation checkpointing)."""

    backbone: MambaBackbone

    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.backbone.gradient_checkpointing = bool(value)
