"""MambaConfig: every hyper-parameter of a Mamba model, with a JSON round trip (:class:`JsonConfig`, which the
other models' configs share).

Field names follow mamba_ssm (``d_model``, ``n_layer``, ``vocab_size``, ``rms_norm``, ``residual_in_fp32``,
``pad_vocab_size_multiple``, ``tie_embeddings``; the mixer's ``d_state``, ``d_conv``, ``expand``, ``dt_rank``,
``dt_min``, ``dt_max`` ...). :meth:`MambaConfig.from_dict` also reads mamba_ssm's nested ``config.json``
(with ``ssm_cfg``), so ``state-spaces/mamba-*`` checkpoints load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.files import atomic_write_text

SSM_LAYERS = ("S6", "S4D")
CHECKPOINT_LEVELS = (0, 1, 2)
FUSED_INNER = ("keep", "triton", "lean", "all", "off")  # MambaConfig.fused_inner

# mamba_ssm config keys we accept and ignore: they only select fused kernels, which we choose ourselves.
_IGNORED_KEYS = {"fused_add_norm", "use_fast_path", "layer", "architectures", "model_type", "torch_dtype",
                 "transformers_version", "_name_or_path"}


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in the file ``path``; CheckpointError when missing, unreadable or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a config must be a JSON object")
    return data


class JsonConfig:
    """The JSON round trip of a dataclass config: ``to_dict`` / ``from_dict`` / ``to_json`` / ``from_json``, and
    ``save`` / ``load`` of one JSON object per file (written atomically).

    ``from_dict`` refuses unknown keys (UserError); ``load`` names the file in a CheckpointError when it is missing,
    unreadable, not a JSON object, or not a valid config. Subclasses override ``to_dict`` / ``from_dict`` to add or
    translate keys.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the config JSON atomically (temp file, then rename)."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        path = Path(path)
        data = read_json_object(path)
        try:
            return cls.from_dict(data)
        except (UserError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None


@dataclass
class MambaConfig(JsonConfig):
    """Hyper-parameters of a Mamba model.

    Attributes:
        d_model: width of the residual stream. n_layer: number of Mamba blocks.
        vocab_size: tokens of the LM (padded up to ``pad_vocab_size_multiple`` in the embedding).
        d_state: SSM state size N. d_conv: causal conv width. expand: d_inner = expand * d_model.
        dt_rank: rank of the Delta projection ("auto" = ceil(d_model / 16)).
        dt_min, dt_max, dt_init_floor, dt_scale, dt_init: the Delta initialisation (log-uniform in [dt_min, dt_max]).
        conv_bias, bias: biases of the conv and of the in/out projections.
        rms_norm: RMSNorm (True) or LayerNorm. norm_epsilon. residual_in_fp32: keep the residual stream in fp32.
        tie_embeddings: LM head shares the embedding matrix.
        ssm_layer: "S6" (selective: Delta, B, C from the input) or "S4D" (time-invariant, learned per channel).
        bidirectional: each mixer also runs on the reversed sequence with the same weights; outputs are summed.
        checkpoint_level: activation memory of training (train mode with autograd only; no effect on results):
            0 keeps every block's activations; 1 keeps one (batch, seqlen, d_model) tensor per block and recomputes
            each block in the backward pass (torch.utils.checkpoint); 2 also recomputes each block's backward in
            time segments, carrying its conv and SSM states, so the recomputed activations are one segment's
            (mamba_bio_audio.modules.recompute). ``model.gradient_checkpointing = True`` sets 2.
        fused_inner: in training, a selective mixer can run conv -> x_proj -> dt_proj -> scan as one autograd
            Function (modules/fused_inner.py): fewer autograd nodes and kernels (no cat of the in_proj output's
            gradient halves, no separate add), the same results up to float rounding. "keep": where the scan
            runs on Triton, keeping what the unfused mixer keeps; "triton": there, keeping neither the conv
            output nor delta for the backward (2 x d_inner values per token and layer) but recomputing them, as
            mamba_ssm's MambaInnerFn does, and running out_proj inside (no y kept: the scan's backward writes it
            again); "lean": as "triton", and its scan keeps only every 16th chunk-start state (the backward
            recomputes the rest; MBA_FUSED_SAVE_EVERY overrides 16): 0.86-0.89x mamba_ssm's training memory at
            1.13x its speed on an H100 (2026-12-08, results/train_variants_0158, with MBA_SCAN_RECOMPUTE=parallel;
            the default inline recompute was 0.8 % slower on the scan alone, without its buffer); "all": as
            "triton", and on the reference backend too, where it recomputes the whole inner graph (how CPU tests
            check it); "off": never. Default "keep" (1-2 % faster than "off" at the same memory on an H100,
            2026-12-07; 1.27-1.28x mamba_ssm's speed, graphed, at 1.95x its memory). Calls it cannot take
            (carried states, S4D, the "cuda" scan) run unfused.
    """

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 16
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    ssm_layer: str = "S6"
    bidirectional: bool = False
    checkpoint_level: int = 0
    fused_inner: str = "keep"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"MambaConfig.{name} must be a positive integer, got {value!r}")
        if self.ssm_layer not in SSM_LAYERS:
            raise UserError(f"MambaConfig.ssm_layer must be one of {SSM_LAYERS}, got {self.ssm_layer!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise UserError(f"MambaConfig.dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise UserError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.checkpoint_level not in CHECKPOINT_LEVELS or isinstance(self.checkpoint_level, bool):
            raise UserError(f"MambaConfig.checkpoint_level must be one of {CHECKPOINT_LEVELS}, got {self.checkpoint_level!r}")
        if self.fused_inner not in FUSED_INNER:
            raise UserError(f"MambaConfig.fused_inner must be one of {FUSED_INNER}, got {self.fused_inner!r}")
        if self.dt_init not in ("random", "constant"):
            raise UserError(f"MambaConfig.dt_init must be 'random' or 'constant', got {self.dt_init!r}")

    # ---- derived sizes ------------------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return ((self.vocab_size + m - 1) // m) * m

    # ---- serialisation ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MambaConfig:
        """Build from our flat dict, from mamba_ssm's nested one (``ssm_cfg``) or from transformers' Mamba config
        (``hidden_size``, ``state_size`` ...: :mod:`mamba_bio_audio.models.hf_layout`); unknown keys are an error."""
        from mamba_bio_audio.models.hf_layout import translate_config

        data = translate_config(data)
        ssm_cfg = data.pop("ssm_cfg", None) or {}
        if ssm_cfg.get("layer", "Mamba1") != "Mamba1":
            raise UserError(f"only Mamba1 layers are supported, the config asks for {ssm_cfg['layer']!r}")
        if data.pop("d_intermediate", 0):
            raise UserError("configs with an MLP after each mixer (d_intermediate > 0) are not supported")
        if data.pop("attn_layer_idx", None):
            raise UserError("hybrid configs with attention layers (attn_layer_idx) are not supported")
        data.pop("attn_cfg", None)
        merged = {**{k: v for k, v in ssm_cfg.items() if k != "layer"}, **data}
        return super().from_dict({k: v for k, v in merged.items() if k not in _IGNORED_KEYS})
