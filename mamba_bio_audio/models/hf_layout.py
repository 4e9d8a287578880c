"""transformers' Mamba layout (``MambaForCausalLM``) to ours and back: config keys and weight names.

Ours follows mamba_ssm's ``MambaLMHeadModel``; transformers' differs in the config keys (``hidden_size`` for
``d_model``, ``state_size`` for ``d_state`` ...), in one weight name (``backbone.embeddings`` for
``backbone.embedding``) and in the vocabulary: its embedding has exactly ``vocab_size`` rows, ours
``padded_vocab_size``. Import pads the extra rows with zeros (never read: ids are below ``vocab_size`` and the
logits are cut to it), export drops them, so both models give the same logits.

A config.json is in transformers' layout when it names the Mamba model type or architecture, or has
``model_type`` or ``hidden_size`` and no ``d_model`` (:func:`is_transformers_config`); :meth:`MambaConfig.from_dict`
reads it through :func:`translate_config`.
"""

from __future__ import annotations

from typing import Any

import torch

from mamba_bio_audio.errors import UserError

LAYOUTS = ("mamba_ssm", "transformers")
"""``save_pretrained(layout=...)``: ours (mamba_ssm's names, the default) or transformers' ``MambaForCausalLM``."""

MODEL_TYPE = "mamba"
ARCHITECTURE = "MambaForCausalLM"
OUR_KEY = "mamba_bio_audio"  # our fields transformers has no name for (``extra``), kept in an exported config.json

# transformers key -> our key, for the keys that carry the same value
_SAME_VALUE = {
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layer",
    "vocab_size": "vocab_size",
    "state_size": "d_state",
    "conv_kernel": "d_conv",
    "expand": "expand",
    "time_step_rank": "dt_rank",
    "time_step_min": "dt_min",
    "time_step_max": "dt_max",
    "time_step_scale": "dt_scale",
    "time_step_floor": "dt_init_floor",
    "time_step_init_scheme": "dt_init",
    "use_bias": "bias",
    "use_conv_bias": "conv_bias",
    "layer_norm_epsilon": "norm_epsilon",
    "residual_in_fp32": "residual_in_fp32",
    "tie_word_embeddings": "tie_embeddings",
    "pad_vocab_size_multiple": "pad_vocab_size_multiple",
}

EMBEDDING_HF, EMBEDDING_OURS = "backbone.embeddings.", "backbone.embedding."
_VOCAB_ROWS = ("backbone.embedding.weight", "lm_head.weight")


def is_transformers_config(data: dict[str, Any]) -> bool:
    """True for a transformers config.json: ``model_type`` "mamba" or the ``MambaForCausalLM`` architecture, or
    (older files) ``model_type`` / ``hidden_size`` without ``d_model``. The Hub's ``state-spaces/mamba-*-hf``
    configs carry mamba_ssm's keys (``d_model``, ``n_layer``, ``ssm_cfg``) beside transformers' own; their weights
    are in transformers' layout, and transformers' keys are the ones read."""
    if data.get("model_type") == MODEL_TYPE or ARCHITECTURE in (data.get("architectures") or []):
        return True
    return "d_model" not in data and ("model_type" in data or "hidden_size" in data)


def translate_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json dict as MambaConfig reads it: transformers' translated (:func:`config_from_transformers`),
    ours and mamba_ssm's as they are; a Caduceus config is a UserError naming the class that loads it."""
    if data.get("model_type") == "caduceus":
        raise UserError("a Caduceus checkpoint: load it with mamba_bio_audio.models.caduceus.CaduceusLM")
    return config_from_transformers(data) if is_transformers_config(data) else dict(data)


def config_from_transformers(data: dict[str, Any]) -> dict[str, Any]:
    """A transformers ``MambaConfig`` dict -> our flat MambaConfig dict (``pad_vocab_size_multiple`` 1 unless given).

    Keys that do not change the computation (token ids, ``initializer_range``, ``use_cache``, generation and
    framework settings) are dropped. A UserError names a model type other than Mamba-1 (``mamba2``,
    ``falcon_mamba``), an activation other than SiLU, or an ``intermediate_size`` other than expand * hidden_size.
    """
    model_type = data.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise UserError(f"a transformers config of model_type {model_type!r}; only Mamba-1 ('{MODEL_TYPE}') loads")
    if data.get("hidden_act", "silu") != "silu":
        raise UserError(f"a transformers Mamba config with hidden_act {data['hidden_act']!r}; only 'silu' is supported")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in data]
    if missing:
        raise UserError(f"a transformers Mamba config without {', '.join(missing)}")
    out = {ours: data[hf] for hf, ours in _SAME_VALUE.items() if hf in data}
    out.setdefault("pad_vocab_size_multiple", 1)
    expand = out.get("expand", 2)
    inner = data.get("intermediate_size")
    if inner is not None and inner != expand * data["hidden_size"]:
        raise UserError(f"a transformers Mamba config with intermediate_size {inner} != expand * hidden_size "
                        f"({expand} * {data['hidden_size']})")
    ours = data.get(OUR_KEY) or {}
    if ours.get("extra"):
        out["extra"] = ours["extra"]
    return out


def config_to_transformers(config) -> dict[str, Any]:
    """Our MambaConfig -> a transformers ``MambaConfig`` dict (config.json of ``MambaForCausalLM``).

    A UserError for what transformers' Mamba cannot express: a bidirectional model, the S4D layer, LayerNorm.
    """
    if config.bidirectional:
        raise UserError("a bidirectional model has no transformers MambaForCausalLM equivalent; export refused")
    if config.ssm_layer != "S6":
        raise UserError(f"the {config.ssm_layer} layer has no transformers MambaForCausalLM equivalent; export refused")
    if not config.rms_norm:
        raise UserError("transformers' Mamba uses RMSNorm only; a LayerNorm model (rms_norm false) cannot be exported")
    out = {hf: getattr(config, ours) for hf, ours in _SAME_VALUE.items()}
    out.update(model_type=MODEL_TYPE, architectures=[ARCHITECTURE], hidden_act="silu",
               intermediate_size=config.d_inner)
    if config.extra:
        out[OUR_KEY] = {"extra": config.extra}
    return out


def state_dict_from_transformers(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """transformers' tensor names -> ours; the embedding (and an untied head) padded with zero rows to
    ``config.padded_vocab_size``."""
    out = {}
    for name, tensor in state.items():
        if name.startswith(EMBEDDING_HF):
            name = EMBEDDING_OURS + name[len(EMBEDDING_HF):]
        out[name] = tensor
    for name in _VOCAB_ROWS:
        tensor = out.get(name)
        if tensor is not None and tensor.dim() == 2 and tensor.shape[0] < config.padded_vocab_size:
            pad = tensor.new_zeros(config.padded_vocab_size - tensor.shape[0], tensor.shape[1])
            out[name] = torch.cat([tensor, pad])
    return out


def state_dict_to_transformers(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Our tensor names -> transformers'; the vocabulary rows cut to ``config.vocab_size``; a tied head is not
    written (transformers re-ties it from the embedding)."""
    out = {}
    for name, tensor in state.items():
        if name in _VOCAB_ROWS:
            if name == "lm_head.weight" and config.tie_embeddings:
                continue
            tensor = tensor[: config.vocab_size]
        if name.startswith(EMBEDDING_OURS):
            name = EMBEDDING_HF + name[len(EMBEDDING_OURS):]
        out[name] = tensor.contiguous()
    return out
