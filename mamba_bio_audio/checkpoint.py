"""save_pretrained / from_pretrained: ``config.json`` + ``model.safetensors``, never a pickle.

State-dict names follow mamba_ssm's ``MambaLMHeadModel`` (``backbone.embedding.weight``,
``backbone.layers.{i}.mixer.*``, ``backbone.layers.{i}.norm.weight``, ``backbone.norm_f.weight``,
``lm_head.weight``), so ``state-spaces/mamba-*`` checkpoints load. A ``pytorch_model.bin`` is read only through
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from mamba_bio_audio.config import JsonConfig, MambaConfig
from mamba_bio_audio.errors import CheckpointError
from mamba_bio_audio.files import umask_mode

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"


def save_checkpoint(model: nn.Module, config: JsonConfig, directory: str | os.PathLike) -> Path:
    """Write config.json (``config.save``) and model.safetensors into ``directory`` atomically (temp folder, then
    rename); with ``config.tie_embeddings`` the LM head, shared with the embedding, is not written twice."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it owner-only
    try:
        config.save(tmp / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if getattr(config, "tie_embeddings", False):
            state.pop("lm_head.weight", None)  # shared with backbone.embedding.weight; re-tied on load
        save_file(state, str(tmp / SAFETENSORS_NAME), metadata={"format": "pt"})
        directory.mkdir(exist_ok=True)
        for name in (CONFIG_NAME, SAFETENSORS_NAME):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder (safetensors preferred); CheckpointError names what is wrong."""
    directory = Path(directory)
    st_path, bin_path = directory / SAFETENSORS_NAME, directory / PICKLE_NAME
    if st_path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{st_path}: corrupt or unreadable safetensors file ({e})") from None
    if bin_path.is_file():
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to read a user's file is reported in one line
            raise CheckpointError(f"{bin_path}: not a loadable weights-only torch file ({type(e).__name__})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{bin_path}: expected a flat dict of tensors")
        return state
    raise CheckpointError(f"{directory}: no {SAFETENSORS_NAME} (or {PICKLE_NAME}) found")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike,
                           tie_embeddings: bool) -> None:
    """Copy ``state`` into ``model``; every missing, unexpected or mis-shaped tensor ends in one CheckpointError."""
    expected = model.state_dict()
    state = dict(state)
    if tie_embeddings and "lm_head.weight" in expected and "lm_head.weight" not in state:
        if "backbone.embedding.weight" in state:
            state["lm_head.weight"] = state["backbone.embedding.weight"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (first: {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (first: {unexpected[0]})")
        raise CheckpointError(f"{source}: does not match the model config: " + "; ".join(parts))
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
        if not tensor.is_floating_point() and expected[name].is_floating_point():
            raise CheckpointError(f"{source}: tensor {name} has dtype {tensor.dtype}, expected a float tensor")
    model.load_state_dict(state, strict=True)
    if tie_embeddings and hasattr(model, "tie_weights"):
        model.tie_weights()


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``cls.from_pretrained(dir)`` for models built from a MambaConfig."""

    config: MambaConfig

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        return save_checkpoint(self, self.config, directory)

    @classmethod
    def _from_config(cls, config: MambaConfig):
        return cls(config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None):
        """Load a model saved by :meth:`save_pretrained` or by mamba_ssm (config.json + weights)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such checkpoint folder")
        config = MambaConfig.load(directory / CONFIG_NAME)
        model = cls._from_config(config)
        load_state_dict_strict(model, read_state_dict(directory), directory, config.tie_embeddings)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model
