"""Pre-norm residual block and the Mamba backbone (embedding -> blocks -> final norm).

Follows mamba_ssm's ``Block`` / ``MixerModel`` exactly (names ``backbone.embedding``, ``backbone.layers.{i}.norm``,
``backbone.layers.{i}.mixer``, ``backbone.norm_f``), so its checkpoints give the same activations:

    residual = hidden + residual;  hidden = mixer(norm(residual))      (residual kept in fp32 if asked)
    output   = norm_f(hidden + residual)

Training at length recomputes instead of storing (``MambaConfig.checkpoint_level``, modules/recompute.py): the
same sums written as one residual stream, s_{i+1} = s_i + mixer_i(norm_i(s_i)) (:meth:`Block.residual_step`).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn

from mamba_bio_audio import ops
from mamba_bio_audio.config import CHECKPOINT_LEVELS, MambaConfig
from mamba_bio_audio.modules.mixer import Mamba
from mamba_bio_audio.modules.recompute import ResidualUnit, checkpoint_unit, recompute_unit


def make_norm(config: MambaConfig) -> nn.Module:
    if config.rms_norm:
        return nn.RMSNorm(config.d_model, eps=config.norm_epsilon)
    return nn.LayerNorm(config.d_model, eps=config.norm_epsilon)


def rms_norm_eps(norm: nn.RMSNorm) -> float:
    """The epsilon an nn.RMSNorm uses: its own, or (eps=None) the machine epsilon of its weight's dtype."""
    return norm.eps if norm.eps is not None else torch.finfo(norm.weight.dtype).eps


def add_norm(norm: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None, backend: str,
             residual_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(hidden + residual), hidden + residual): the pre-norm block's "add then norm".

    hidden, residual: (batch, seqlen, d_model); residual None for the first block. ``residual_dtype``: of the
    returned sum (None: the promoted dtype). An RMSNorm whose ``backend`` resolves to a kernel (CUDA tensors;
    ops.add_rms_norm) runs as one fused Triton pass, its output in the autocast dtype when autocast is on (the
    next layer is a matrix product that would cast it anyway); otherwise (or with MBA_FUSED_NORM=0) the add, a
    cast to the norm's dtype and the torch module, as mamba_ssm's unfused path does.
    """
    if (isinstance(norm, nn.RMSNorm) and hidden.dtype != torch.float64 and ops.fused_norm_enabled()
            and ops.resolve_backend(backend, "norm", hidden)[0] != "reference"):
        device = hidden.device.type
        out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else norm.weight.dtype
        return ops.add_rms_norm(hidden, residual, norm.weight, rms_norm_eps(norm), out_dtype, residual_dtype,
                                backend=backend)
    # the contiguous residual first: the sum takes the first operand's layout (a mixer's output is transposed)
    total = hidden if residual is None else residual + hidden
    if residual_dtype is not None and total.dtype != residual_dtype:
        total = total.to(residual_dtype)
    return norm(total.to(norm.weight.dtype)), total


class Block(nn.Module):
    """norm -> mixer, with the residual carried separately (mamba_ssm's "add then norm" order)."""

    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = make_norm(config)
        self.mixer = Mamba(config, layer_idx)

    def _residual_dtype(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype | None:
        """fp32 when the residual stream is kept in fp32 (fp64 stays fp64), else None (the promoted dtype)."""
        if not self.residual_in_fp32 or torch.float64 in (hidden.dtype, getattr(residual, "dtype", None)):
            return None
        return torch.float32

    def _add_norm(self, hidden, residual):
        return add_norm(self.norm, hidden, residual, self.mixer.backend, self._residual_dtype(hidden, residual))

    def residual_step(self, stream, carry=None, return_carry: bool = False, seq_idx=None):
        """stream (batch, seqlen, d_model) -> (stream + mixer(norm(stream)), carry): the residual stream entering
        the next block (mamba_ssm's hidden + residual after this block, the same operations in the same order).
        With ``return_carry`` the mixer runs as one segment (:meth:`Mamba.forward_segment`) from ``carry``;
        ``seq_idx`` (batch, seqlen): packed sequences (not with ``return_carry``)."""
        hidden, stream = add_norm(self.norm, stream, None, self.mixer.backend, self._residual_dtype(stream, None))
        if return_carry:
            if seq_idx is not None:
                raise ValueError("packed sequences (seq_idx) are not split into segments")
            out, carry = self.mixer.forward_segment(hidden, carry)
        elif seq_idx is not None:
            out = self.mixer(hidden, seq_idx=seq_idx)
        else:
            out = self.mixer(hidden)
        return stream + out, carry

    def forward(self, hidden, residual=None, state: dict | None = None, lengths=None, seq_idx=None):
        """hidden, residual: (batch, seqlen, d_model) -> (mixer output, new residual). ``lengths`` (batch,): real
        lengths of right-padded rows, for a bidirectional mixer; ``seq_idx`` (batch, seqlen): packed sequences
        (see ``Mamba.forward``). Each is passed to the mixer only when given."""
        hidden, residual = self._add_norm(hidden, residual)
        extra = {k: v for k, v in (("lengths", lengths), ("seq_idx", seq_idx)) if v is not None}
        return self.mixer(hidden, state, **extra), residual

    def forward_segment(self, hidden, residual, carry):
        """Like :meth:`forward` for one segment of a longer sequence; returns (output, residual, new carry)."""
        hidden, residual = self._add_norm(hidden, residual)
        out, carry = self.mixer.forward_segment(hidden, carry)
        return out, residual, carry

    def step(self, hidden, residual, state: dict):
        """hidden, residual: (batch, d_model) for one token. A selective mixer with an RMSNorm on the Triton
        backend runs the add, the norm, in_proj and the SSM as two kernels (``Mamba.block_step``)."""
        m = self.mixer
        if (m.selective and not m.bidirectional and isinstance(self.norm, nn.RMSNorm)
                and ops.fused_block_decode_ok(hidden, self.norm.weight, m.in_proj.weight, m.backend)):
            return m.block_step(hidden, residual, self.norm.weight, rms_norm_eps(self.norm),
                                self._residual_dtype(hidden, residual), state)
        hidden, residual = self._add_norm(hidden, residual)
        return m.step(hidden, state), residual


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
        self.checkpoint_level = config.checkpoint_level
        #: steps per recomputed segment at checkpoint level 2 (None: modules.recompute.segment_length decides)
        self.recompute_segment: int | None = None
        self.apply(partial(init_weights, n_layer=config.n_layer))

    @property
    def checkpoint_level(self) -> int:
        """0: keep activations; 1: recompute each block; 2: recompute each block in time segments (see
        ``MambaConfig.checkpoint_level``). Starts at the config's value; applies in train mode with autograd."""
        return self._checkpoint_level

    @checkpoint_level.setter
    def checkpoint_level(self, value: int) -> None:
        if value not in CHECKPOINT_LEVELS or isinstance(value, bool):
            raise ValueError(f"checkpoint_level must be one of {CHECKPOINT_LEVELS}, got {value!r}")
        self._checkpoint_level = int(value)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the backward recomputes activations; setting True chooses level 2 (or keeps a level already
        set), False level 0."""
        return self.checkpoint_level > 0

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.checkpoint_level = (self.checkpoint_level or 2) if value else 0

    def forward(self, input_ids: torch.Tensor, states: list[dict] | None = None,
                inputs_embeds: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """``states``: one dict per layer (see :meth:`Mamba.allocate_state`), filled with the prefill states.
        ``lengths`` (batch,): real lengths of right-padded rows, read by bidirectional mixers (``Mamba.forward``);
        with them every activation is kept (no recomputation). ``seq_idx`` (batch, seqlen) integers: sequences
        packed in each row, one run of equal values each, every one getting what it gets alone
        (``Mamba.forward``); recomputed at checkpoint level 1 (level 2 too: packed rows are not split in time)."""
        if (self.checkpoint_level and self.training and torch.is_grad_enabled() and states is None
                and lengths is None):
            return self._forward_recomputed(input_ids, inputs_embeds, seq_idx)
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, None if states is None else states[i], lengths, seq_idx)
        return self._final_norm(hidden, residual)

    def _final_norm(self, hidden, residual):
        """norm_f(hidden + residual) (batch, seqlen, d_model): fused like the blocks' norms (see add_norm)."""
        backend = self.layers[0].mixer.backend if len(self.layers) else "reference"
        return add_norm(self.norm_f, hidden, residual, backend)[0]

    def _forward_recomputed(self, input_ids, inputs_embeds, seq_idx=None):
        """The forward at checkpoint level 1 or 2: one unit per block over the residual stream, the embedding in
        the first unit (unless ``inputs_embeds``), norm_f in the last (modules/recompute.py). Packed rows
        (``seq_idx``) run at level 1."""
        x = input_ids if inputs_embeds is None else inputs_embeds
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            unit = ResidualUnit(layer, self.embedding if i == 0 and inputs_embeds is None else None,
                                self.norm_f if i == last else None, seq_idx)
            if self.checkpoint_level == 1 or seq_idx is not None:
                x = checkpoint_unit(unit, x)
            else:
                x = recompute_unit(unit, x, self.recompute_segment)
        return x

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
        return self._final_norm(hidden, residual), new_carries

    def step(self, input_ids: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """input_ids (batch,) -> final hidden state (batch, d_model); states advanced in place."""
        hidden = self.embedding(input_ids)
        residual = None
        for layer, state in zip(self.layers, states):
            hidden, residual = layer.step(hidden, residual, state)
        return self._final_norm(hidden, residual)

    def allocate_states(self, batch_size: int, device=None, dtype=None) -> list[dict]:
        return [layer.mixer.allocate_state(batch_size, device, dtype) for layer in self.layers]


class BackboneMixin:
    """For models holding a ``self.backbone`` (MambaBackbone): ``model.checkpoint_level = 0 | 1 | 2`` chooses how
    much of the activations the backward pass recomputes (``MambaConfig.checkpoint_level``);
    ``model.gradient_checkpointing = True`` is level 2, False level 0."""

    backbone: MambaBackbone

    @property
    def checkpoint_level(self) -> int:
        return self.backbone.checkpoint_level

    @checkpoint_level.setter
    def checkpoint_level(self, value: int) -> None:
        self.backbone.checkpoint_level = value

    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.backbone.gradient_checkpointing = bool(value)
