"""SaShiMi-style multi-scale U-Net of Mamba blocks: the Mamba paper's SC09 backbone, with a recurrent sampler.

Layout for ``pools=(4, 4)`` (three stages, at rates L, L/4, L/16), widths D -> 2D -> 4D (``expand=2``)::

    tokens (B, L) -> embedding (B, L, D)
    stage 0 (L, D):     down blocks -> skip0 -> DownPool -> stage 1 ... -> UpPool -> + skip0 -> up blocks
    stage 1 (L/4, 2D):  down blocks -> skip1 -> DownPool -> stage 2 ... -> UpPool -> + skip1 -> up blocks
    stage 2 (L/16, 4D): centre blocks
    -> final RMSNorm -> head -> logits (B, L, 256)

Each outer stage holds ``n_layers`` pre-norm residual Mamba blocks (:class:`~mamba_bio_audio.modules.block.Block`)
on its down path and ``n_layers`` on its up path (SaShiMi's ``unet=True``; ``unet=False`` drops the down-path
blocks), the centre ``n_layers``. SaShiMi adds a skip after every layer of the U-Net; here one skip per stage joins
the down path to the up path at the same rate (the blocks are residual anyway). With D = 64, 8 blocks and
``expand=2`` the model has 6.25 M parameters (the paper: 6.1 M); D stays 64 at the top, widths double per level.

Causality. A pooled position ``j`` of a stage with pool factor ``p`` is a linear map of the ``p`` inputs
``x[p j - p + 1 .. p j]``: the input is shifted right by ``p - 1`` (zeros in front) before the strided reshape,
so the coarse stage never sees a sample after ``p j``. Its output at ``j`` is expanded (UpPool: one linear map,
reshaped) into the ``p`` fine positions ``p j .. p j + p - 1``, all at or after ``p j``. So the logits at position
``t`` depend on the tokens ``<= t`` only. (SaShiMi pools ``x[p j .. p j + p - 1]`` and shifts the up-pooled output
by one coarse step instead; the shift here gives each fine position the coarse summary that ends at the most
recent pooled sample, one coarse step fresher, at the same cost.)

Recurrent generation (:meth:`SashimiLM.step`): stage ``k`` works once every ``prod(pools[:k])`` samples, so the
work per sample is constant on average. Each stage keeps, besides its blocks' conv/SSM states, a buffer of its
last ``p`` block outputs (the DownPool window) and the ``p`` fine vectors of the last UpPool output; at time ``t``
the stage reads slot ``t mod p``. The only control flow is on the Python counter ``state["t"]``, never on data, so
the schedule repeats every ``prod(pools)`` samples (:attr:`SashimiLM.step_period`), and all state tensors are
updated in place: :class:`mamba_bio_audio.generation.cuda_graph.GraphedStep` captures one CUDA graph per phase.

Packed rows (``SashimiLM.forward(ids, seq_idx=)``): several clips in one row, each one run of equal ``seq_idx``
values, get exactly the logits each gets alone, provided every clip starts at a multiple of ``S = prod(pools)``
(:attr:`SashimiConfig.stride`); so each clip but a row's last must be ``S``-aligned in length: pad it at its end
with any tokens under its own ``seq_idx`` (causality keeps its real positions' logits) and drop those logits.
Given that, at every level a clip starts on a pooled position, and

- the blocks of each stage restart their conv and scan where the sequence changes (the mixers' ``seq_idx``);
- DownPool zeroes the window inputs from another sequence: the window ending at a clip's first sample ``s``
  would reach ``p - 1`` samples back into the previous clip, where alone there are the zeros in front;
- the coarse level's ``seq_idx`` is the fine one at the pooled positions ``p j`` (a window's last sample);
- UpPool needs nothing: coarse ``j`` feeds the fine ``p j .. p j + p - 1``, all in the clip that holds ``p j``
  since the next clip starts at a multiple of ``p`` after it.

A clip starting elsewhere would share a pooled window with its neighbour at the coarse levels: refused
(:class:`~mamba_bio_audio.errors.UserError`). No recurrent state is kept for packed rows (:meth:`SashimiLM.step`
runs one clip per row).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio.checkpoint import (
    CONFIG_NAME,
    load_state_dict_strict,
    read_state_dict,
    save_checkpoint,
)
from mamba_bio_audio.config import JsonConfig, MambaConfig
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.modules.block import Block, init_weights, make_norm
from mamba_bio_audio.modules.packing import sequence_runs
from mamba_bio_audio.ops import resolve_seq_idx

ARCHITECTURE = "sashimi"


@dataclass
class SashimiConfig(JsonConfig):
    """Hyper-parameters of :class:`SashimiLM` (``config.json`` carries ``"architecture": "sashimi"``).

    Attributes:
        d_model: width of the top stage (rate L). n_layers: Mamba blocks per path per stage.
        pools: pool factor of each level (``(4, 4)``: stages at L, L/4, L/16). expand: width factor per level.
        unet: also put ``n_layers`` blocks on the down path of the outer stages (SaShiMi's ``unet``).
        vocab_size: 256 for 8-bit audio. d_state, d_conv, mamba_expand, dt_rank: each Mamba mixer's settings.
        rms_norm, norm_epsilon, residual_in_fp32: as in :class:`~mamba_bio_audio.config.MambaConfig`.
        extra: free-form metadata saved with the model (the recipes store sample_rate, encoding, clip_samples).
    """

    d_model: int = 64
    n_layers: int = 8
    pools: tuple[int, ...] = (4, 4)
    expand: int = 2
    unet: bool = True
    vocab_size: int = 256
    d_state: int = 16
    d_conv: int = 4
    mamba_expand: int = 2
    dt_rank: int | str = "auto"
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    tie_embeddings = False  # read by save_checkpoint; the head is separate

    def __post_init__(self) -> None:
        self.pools = tuple(self.pools)
        for name in ("d_model", "n_layers", "expand", "vocab_size", "d_state", "d_conv", "mamba_expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"SashimiConfig.{name} must be a positive integer, got {value!r}")
        if not all(isinstance(p, int) and p >= 2 for p in self.pools):
            raise UserError(f"SashimiConfig.pools must be integers >= 2, got {self.pools!r}")

    @property
    def stride(self) -> int:
        """Samples per step of the innermost stage: ``prod(pools)``; the parallel forward pads to a multiple."""
        return math.prod(self.pools)

    def stage_config(self, level: int) -> MambaConfig:
        """The MambaConfig of the blocks of stage ``level`` (width ``d_model * expand ** level``)."""
        return MambaConfig(d_model=self.d_model * self.expand**level, n_layer=max(1, self.n_layers),
                           vocab_size=self.vocab_size, d_state=self.d_state, d_conv=self.d_conv,
                           expand=self.mamba_expand, dt_rank=self.dt_rank, rms_norm=self.rms_norm,
                           norm_epsilon=self.norm_epsilon, residual_in_fp32=self.residual_in_fp32,
                           tie_embeddings=False)

    # ---- serialisation (JsonConfig, plus the architecture key) ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, **dataclasses.asdict(self), "pools": list(self.pools)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SashimiConfig:
        data = dict(data)
        if data.pop("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise UserError("not a SaShiMi config (architecture is not 'sashimi')")
        return super().from_dict(data)


# ---- pooling ------------------------------------------------------------------------------------------------
class DownPool(nn.Module):
    """Causal pooling by ``pool``: ``(batch, seqlen, d_in) -> (batch, seqlen / pool, d_out)``.

    Position ``j`` is ``linear(concat(x[pool*j - pool + 1], ..., x[pool*j]))`` (zeros before the start). With
    ``runs`` (batch, seqlen), the packed sequences' numbers, inputs of another sequence than ``x[pool*j]``'s count
    as zeros too (as before the start of a sequence alone).
    """

    def __init__(self, d_in: int, d_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(d_in * pool, d_out)

    def forward(self, x: torch.Tensor, runs: torch.Tensor | None = None) -> torch.Tensor:
        batch, seqlen, dim = x.shape
        x = F.pad(x, (0, 0, self.pool - 1, 0))[:, :seqlen]  # shift right by pool - 1
        if runs is not None:
            source = F.pad(runs, (self.pool - 1, 0), value=-1)[:, :seqlen]  # the run of each shifted input
            owner = runs[:, :: self.pool].repeat_interleave(self.pool, dim=1)  # the run of the window's last sample
            x = x.masked_fill((source != owner).unsqueeze(-1), 0)
        return self.linear(x.reshape(batch, seqlen // self.pool, self.pool * dim))

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """``window: (batch, pool, d_in)``, the last ``pool`` inputs, oldest first -> ``(batch, d_out)``."""
        return self.linear(window.reshape(window.shape[0], -1))


class UpPool(nn.Module):
    """Expansion by ``pool``: ``(batch, n, d_in) -> (batch, n * pool, d_out)``; coarse ``j`` feeds fine
    ``pool*j .. pool*j + pool - 1`` (causal given :class:`DownPool`'s shift)."""

    def __init__(self, d_in: int, d_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.d_out = d_out
        self.linear = nn.Linear(d_in, d_out * pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        return self.linear(x).reshape(batch, n * self.pool, self.d_out)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (batch, d_in) -> (batch, pool, d_out)``: the next ``pool`` fine vectors."""
        return self.linear(x).reshape(x.shape[0], self.pool, self.d_out)


# ---- stages ---------------------------------------------------------------------------------------------------
class BlockStack(nn.Module):
    """``n`` pre-norm residual Mamba blocks on one residual stream: ``(batch, seqlen, d) -> (batch, seqlen, d)``;
    ``seq_idx`` (batch, seqlen): packed sequences, passed to every mixer."""

    def __init__(self, config: MambaConfig, n: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(config, i) for i in range(n))

    def forward(self, x: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, seq_idx=seq_idx)
        return hidden if residual is None else (hidden + residual).to(x.dtype)

    def step(self, x: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """One position: ``x: (batch, d) -> (batch, d)``; ``states`` advanced in place."""
        hidden, residual = x, None
        for layer, state in zip(self.layers, states):
            hidden, residual = layer.step(hidden, residual, state)
        return hidden if residual is None else (hidden + residual).to(x.dtype)

    def allocate_states(self, batch_size: int, device, dtype) -> list[dict]:
        return [layer.mixer.allocate_state(batch_size, device, dtype) for layer in self.layers]


class Stage(nn.Module):
    """One rate of the U-Net, holding the coarser stages inside it (recursively); the innermost is the centre.

    ``forward: (batch, seqlen, d) -> (batch, seqlen, d)`` with ``seqlen`` a multiple of ``prod(pools[level:])``;
    ``runs`` (batch, seqlen): packed sequences' numbers, each starting at a multiple of ``prod(pools[level:])``
    (the inner stage gets them at the pooled positions).
    """

    def __init__(self, config: SashimiConfig, level: int = 0):
        super().__init__()
        mamba = config.stage_config(level)
        inner = level < len(config.pools)
        d = mamba.d_model
        self.down = BlockStack(mamba, config.n_layers if inner and config.unet else 0)
        self.up = BlockStack(mamba, config.n_layers)
        self.pool = self.inner = self.unpool = None
        if inner:
            p = config.pools[level]
            self.pool = DownPool(d, d * config.expand, p)
            self.inner = Stage(config, level + 1)
            self.unpool = UpPool(d * config.expand, d, p)
        depth = len(self.down.layers) + len(self.up.layers)
        for stack in (self.down, self.up):
            stack.apply(partial(init_weights, n_layer=max(1, depth)))

    def forward(self, x: torch.Tensor, runs: torch.Tensor | None = None) -> torch.Tensor:
        skip = self.down(x, runs)
        if self.inner is None:
            return self.up(skip, runs)
        inner_runs = None if runs is None else runs[:, :: self.pool.pool]
        return self.up(self.unpool(self.inner(self.pool(skip, runs), inner_runs)) + skip, runs)

    def allocate_state(self, batch_size: int, device, dtype) -> dict:
        """Zero states: the blocks' conv/SSM states, ``window`` (batch, pool, d) of recent down-path outputs,
        ``upsampled`` (batch, pool, d) of the fine vectors of the last coarse step, and the inner stage's."""
        state = {"down": self.down.allocate_states(batch_size, device, dtype),
                 "up": self.up.allocate_states(batch_size, device, dtype)}
        if self.inner is not None:
            d, p = self.unpool.d_out, self.pool.pool
            state["window"] = torch.zeros(batch_size, p, d, device=device, dtype=dtype)
            state["upsampled"] = torch.zeros(batch_size, p, d, device=device, dtype=dtype)
            state["inner"] = self.inner.allocate_state(batch_size, device, dtype)
        return state

    def step(self, x: torch.Tensor, state: dict, t: int) -> torch.Tensor:
        """Position ``t`` of this stage's rate: ``x: (batch, d) -> (batch, d)``; ``state`` advanced in place.

        The inner stage steps when ``t`` is a multiple of the pool factor (its position ``t // pool``), reading
        the window that ends at ``t``; its UpPool output then serves positions ``t .. t + pool - 1``.
        """
        skip = self.down.step(x, state["down"])
        if self.inner is None:
            return self.up.step(skip, state["up"])
        window = state["window"]
        window.copy_(torch.cat([window[:, 1:], skip[:, None]], dim=1))
        phase = t % self.pool.pool
        if phase == 0:
            coarse = self.inner.step(self.pool.step(window), state["inner"], t // self.pool.pool)
            state["upsampled"].copy_(self.unpool.step(coarse))
        return self.up.step(state["upsampled"][:, phase] + skip, state["up"])


# ---- the language model -------------------------------------------------------------------------------------------
class SashimiLM(nn.Module):
    """Token ids ``(batch, seqlen)`` -> next-token logits ``(batch, seqlen, vocab_size)``; see the module docstring.

    Same interface as :class:`~mamba_bio_audio.models.lm.MambaLM` for training and sampling: ``forward``,
    ``allocate_inference_cache``, ``step``, ``save_pretrained`` / ``from_pretrained``.
    """

    def __init__(self, config: SashimiConfig):
        super().__init__()
        self.config = config
        top = config.stage_config(0)
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.stage = Stage(config, 0)
        self.norm_f = make_norm(top)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids: (batch, seqlen)`` -> logits ``(batch, seqlen, vocab_size)``.

        Any ``seqlen`` works: the hidden states are padded at the end to a multiple of ``config.stride`` and the
        result cut back (padding after the last position cannot change earlier, causal, outputs).

        ``seq_idx`` (batch, seqlen) integers: several clips packed in each row, each one run of equal values
        starting at a multiple of ``config.stride``; each gets the logits it gets alone (module docstring).
        ``cu_seqlens`` (n + 1,) integers, instead of seq_idx: n clips packed into one row (batch 1), cumulative
        lengths from 0 to seqlen (:func:`~mamba_bio_audio.ops.resolve_seq_idx`), each cu_seqlens[k] < seqlen a
        multiple of the stride.
        """
        seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, *input_ids.shape[:2], input_ids.device)
        seqlen = input_ids.shape[1]
        hidden = self.embedding(input_ids)
        pad = -seqlen % self.config.stride
        runs = None if seq_idx is None else self._packed_runs(seq_idx, input_ids.shape, pad)
        if pad:
            hidden = F.pad(hidden, (0, 0, 0, pad))
        hidden = self.stage(hidden, runs)[:, :seqlen]
        return self.lm_head(self.norm_f(hidden.to(self.norm_f.weight.dtype)))

    def _packed_runs(self, seq_idx: torch.Tensor, shape: torch.Size, pad: int) -> torch.Tensor:
        """(batch, seqlen + pad) int32 run numbers of ``seq_idx`` (the end padding joins the last sequence), after
        checking that every sequence starts at a multiple of the stride."""
        if tuple(seq_idx.shape) != tuple(shape):
            raise UserError(f"seq_idx must have the shape of input_ids {tuple(shape)}, got {tuple(seq_idx.shape)}")
        runs = sequence_runs(seq_idx.to(self.embedding.weight.device))
        stride = self.config.stride
        starts = (runs[:, 1:] != runs[:, :-1]).nonzero()
        misaligned = starts[(starts[:, 1] + 1) % stride != 0]
        if len(misaligned):
            row, position = misaligned[0].tolist()
            raise UserError(f"packed sequences must start at multiples of the stride {stride} (prod(pools)); "
                            f"row {row} has one starting at position {position + 1}: pad each sequence but a "
                            f"row's last to a multiple of {stride} (any tokens, its own seq_idx)")
        return torch.cat([runs, runs[:, -1:].expand(-1, pad)], dim=1) if pad else runs

    @property
    def step_period(self) -> int:
        """:meth:`step` does the same work every ``step_period`` samples (``prod(pools)``): the CUDA-graph period."""
        return self.config.stride

    def allocate_inference_cache(self, batch_size: int, device=None, dtype=None) -> dict:
        """Zero recurrent state for :meth:`step`, at time ``t = 0`` (a nested dict of tensors plus ``"t"``)."""
        device = device or self.embedding.weight.device
        dtype = dtype or self.embedding.weight.dtype
        return {"t": 0, "stage": self.stage.allocate_state(batch_size, device, dtype)}

    def step(self, input_ids: torch.Tensor, state: dict) -> torch.Tensor:
        """One sample per sequence: ``input_ids: (batch,)`` -> logits ``(batch, vocab_size)``; state advanced.

        Gives the logits :meth:`forward` gives at position ``state["t"]`` (before the call) of the same sequence.
        """
        hidden = self.stage.step(self.embedding(input_ids), state["stage"], state["t"])
        state["t"] += 1
        return self.lm_head(self.norm_f(hidden.to(self.norm_f.weight.dtype)))

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (with ``"architecture": "sashimi"``) and ``model.safetensors``, atomically."""
        return save_checkpoint(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> SashimiLM:
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such checkpoint folder")
        config = SashimiConfig.load(directory / CONFIG_NAME)
        model = cls(config)
        load_state_dict_strict(model, read_state_dict(directory), directory, tie_embeddings=False)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model


PRESETS = {
    # the paper's SC09 model: D = 64 at L, 128 at L/4, 256 at L/16; 8 blocks per path per stage; 6.25 M parameters
    "paper-6m": SashimiConfig(),
    # CPU tests and smoke runs
    "tiny": SashimiConfig(d_model=16, n_layers=1, d_state=4, mamba_expand=2),
}


def preset(name: str, **overrides) -> SashimiConfig:
    """A fresh copy of a preset config (``PRESETS``), with field overrides."""
    if name not in PRESETS:
        raise UserError(f"unknown SaShiMi preset {name!r} (expected one of {', '.join(sorted(PRESETS))})")
    overrides.setdefault("extra", {})
    return dataclasses.replace(PRESETS[name], **overrides)
