"""save_pretrained / from_pretrained / push_to_hub: ``config.json`` + ``model.safetensors``, never a pickle.

State-dict names follow mamba_ssm's ``MambaLMHeadModel`` (``backbone.embedding.weight``,
``backbone.layers.{i}.mixer.*``, ``backbone.layers.{i}.norm.weight``, ``backbone.norm_f.weight``,
``lm_head.weight``), so ``state-spaces/mamba-*`` checkpoints load. transformers' ``MambaForCausalLM`` layout
(``state-spaces/mamba-*-hf``) is recognised from its config.json and translated on load
(:mod:`mamba_bio_audio.models.hf_layout`); ``save_pretrained(dir, layout="transformers")`` writes it. A
``from_pretrained`` source may be a Hugging Face Hub id ``org/name[@revision]`` (:mod:`mamba_bio_audio.hub`).
Weights are ``model.safetensors`` or safetensors shards (``model.safetensors.index.json``); a
``pytorch_model.bin`` (or its shards) is read only through ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from mamba_bio_audio.config import JsonConfig, MambaConfig, read_json_object
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.files import umask_mode

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def save_checkpoint(model: nn.Module, config: JsonConfig, directory: str | os.PathLike) -> Path:
    """Write config.json (``config.save``) and model.safetensors into ``directory`` atomically (temp folder, then
    rename); with ``config.tie_embeddings`` the LM head, shared with the embedding, is not written twice."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with backbone.embedding.weight; re-tied on load
    return write_checkpoint(directory, config.to_json() + "\n", state)


def write_checkpoint(directory: str | os.PathLike, config_json: str, state: dict[str, torch.Tensor]) -> Path:
    """Write ``config_json`` as config.json and ``state`` as model.safetensors into ``directory`` atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it owner-only
    try:
        (tmp / CONFIG_NAME).write_text(config_json)
        save_file(state, str(tmp / SAFETENSORS_NAME), metadata={"format": "pt"})
        directory.mkdir(exist_ok=True)
        for name in (CONFIG_NAME, SAFETENSORS_NAME):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder: model.safetensors, else the shards of model.safetensors.index.json, else
    pytorch_model.bin (or the shards of its index) read weights-only. CheckpointError names what is wrong."""
    directory = Path(directory)
    for name, index, read in ((SAFETENSORS_NAME, SAFETENSORS_INDEX, _read_safetensors),
                              (PICKLE_NAME, PICKLE_INDEX, _read_pickle)):
        if (directory / name).is_file():
            return read(directory / name)
        if (directory / index).is_file():
            state = {}
            for shard in shard_files(directory / index):
                state.update(read(shard))
            return state
    raise CheckpointError(f"{directory}: no {SAFETENSORS_NAME} (or {PICKLE_NAME}) found")


def shard_files(index: Path) -> list[Path]:
    """The shard files an index.json's ``weight_map`` names (each once, in order), all inside its folder."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a readable shard index ({type(e).__name__}: {e})") from None
    shards = []
    for name in names:
        shard = index.parent / str(name)
        if not isinstance(name, str) or Path(name).name != name or not shard.is_file():
            raise CheckpointError(f"{index}: names a shard {name!r} that is not a file beside it")
        shards.append(shard)
    return shards


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read a user's file is reported in one line
        raise CheckpointError(f"{path}: not a loadable weights-only torch file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors")
    return state


def read_config_dict(directory: str | os.PathLike) -> dict:
    """config.json of ``directory`` as a dict; CheckpointError when missing, unreadable or not an object."""
    return read_json_object(Path(directory) / CONFIG_NAME)


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


def load_backbone_weights(donor: nn.Module, model: nn.Module, source: str | os.PathLike,
                          hint: str = "") -> None:
    """Load ``donor.backbone``'s weights into ``model.backbone`` (fine-tuning from a pretrained model read from
    ``source``); a CheckpointError names ``source`` and the first tensor of ``model``'s backbone that the donor lacks
    or holds in another shape (``hint``, e.g. " (drop --preset ...)", appended to it)."""
    source_state, target = donor.backbone.state_dict(), model.backbone.state_dict()
    for name, tensor in target.items():
        if name not in source_state or source_state[name].shape != tensor.shape:
            got = tuple(source_state[name].shape) if name in source_state else "nothing"
            raise CheckpointError(f"{source}: pretrained tensor backbone.{name} has shape {got}, this classifier "
                                  f"needs {tuple(tensor.shape)}{hint}")
    model.backbone.load_state_dict(source_state)


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``cls.from_pretrained(dir or Hub id)`` / ``push_to_hub(repo_id)`` for models
    built from a MambaConfig."""

    config: MambaConfig

    def save_pretrained(self, directory: str | os.PathLike, layout: str = "mamba_ssm") -> Path:
        """Write config.json + model.safetensors: ``layout`` "mamba_ssm" (ours, the default) or "transformers"
        (``MambaForCausalLM``'s keys and names: ``transformers.MambaForCausalLM.from_pretrained(directory)`` then
        gives this model's logits; MambaLM only, and not for bidirectional, S4D or LayerNorm models)."""
        from mamba_bio_audio.models import hf_layout

        if layout not in hf_layout.LAYOUTS:
            raise UserError(f"layout must be one of {hf_layout.LAYOUTS}, got {layout!r}")
        if layout == "mamba_ssm":
            return save_checkpoint(self, self.config, directory)
        from mamba_bio_audio.models.lm import MambaLM

        if type(self) is not MambaLM:  # a classifier, or a MambaLM subclass with other mixers (SSMOnlyLM)
            raise UserError(f"the transformers layout is MambaForCausalLM's: a {type(self).__name__} cannot be "
                            f"exported to it (save it with layout='mamba_ssm')")
        config = hf_layout.config_to_transformers(self.config)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        state = hf_layout.state_dict_to_transformers(state, self.config)
        return write_checkpoint(directory, json.dumps(config, indent=2, sort_keys=True) + "\n", state)

    def push_to_hub(self, repo_id: str, *, layout: str = "mamba_ssm", private: bool | None = None,
                    revision: str | None = None, commit_message: str | None = None,
                    run_folder: str | os.PathLike | None = None) -> str:
        """Upload config.json, model.safetensors and a generated README.md model card (with the training config
        and metrics of ``run_folder`` when it has config.yaml / metrics.json) to the Hub model repository
        ``repo_id`` (created if missing; the token of ``HF_TOKEN``); returns the commit URL."""
        from mamba_bio_audio.publish import push_model

        return push_model(self, repo_id, layout=layout, private=private, revision=revision,
                          commit_message=commit_message, run_folder=run_folder)

    @classmethod
    def _from_config(cls, config: MambaConfig):
        return cls(config)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device=None, dtype=None):
        """Load a model saved by :meth:`save_pretrained`, by mamba_ssm or by transformers' ``MambaForCausalLM``
        (config.json + weights; the layout is read from config.json) from a folder or a Hub id
        ``org/name[@revision]`` (a local folder of that name wins)."""
        from mamba_bio_audio.hub import resolve
        from mamba_bio_audio.models import hf_layout

        directory = resolve(source)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no such checkpoint folder")
        data = read_config_dict(directory)
        try:
            config = MambaConfig.from_dict(data)
        except (UserError, TypeError, ValueError) as e:
            where = directory / CONFIG_NAME if Path(source) == directory else f"{source} ({CONFIG_NAME})"
            raise CheckpointError(f"{where}: {e}") from None
        model = cls._from_config(config)
        state = read_state_dict(directory)
        if hf_layout.is_transformers_config(data):
            state = hf_layout.state_dict_from_transformers(state, config)
        load_state_dict_strict(model, state, source, config.tie_embeddings)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model
