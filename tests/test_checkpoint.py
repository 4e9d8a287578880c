"""save_pretrained / from_pretrained: round trip, mamba_ssm key layout, and every bad checkpoint named."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM
from mamba_bio_audio.errors import CheckpointError

CFG = {"d_model": 16, "n_layer": 2, "vocab_size": 10, "d_state": 4}


def test_round_trip_same_logits(tmp_path):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(**CFG))
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MambaLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 10, (2, 9))
    assert torch.equal(model(ids), loaded(ids))
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


def test_classifier_round_trip_keeps_head(tmp_path):
    model = MambaClassifier(MambaConfig(**CFG), num_classes=3, pooling="mean", labels=["a", "b", "c"])
    model.save_pretrained(tmp_path / "c")
    loaded = MambaClassifier.from_pretrained(tmp_path / "c")
    assert (loaded.num_classes, loaded.pooling, loaded.labels) == (3, "mean", ["a", "b", "c"])
    ids = torch.randint(0, 10, (2, 7))
    assert torch.equal(model(ids), loaded(ids))


def test_key_layout_is_mamba_ssm():
    keys = set(MambaLM(MambaConfig(**CFG)).state_dict())
    expected = {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight"}
    for i in range(2):
        p = f"backbone.layers.{i}."
        expected |= {p + "norm.weight", p + "mixer.A_log", p + "mixer.D", p + "mixer.in_proj.weight",
                     p + "mixer.conv1d.weight", p + "mixer.conv1d.bias", p + "mixer.x_proj.weight",
                     p + "mixer.dt_proj.weight", p + "mixer.dt_proj.bias", p + "mixer.out_proj.weight"}
    assert keys == expected


def test_mamba_ssm_style_checkpoint_loads(tmp_path):
    """A folder as mamba_ssm writes it: nested config.json and a torch-saved pytorch_model.bin with both tied keys."""
    torch.manual_seed(1)
    model = MambaLM(MambaConfig(**CFG))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "d_model": 16, "n_layer": 2, "vocab_size": 10, "ssm_cfg": {"d_state": 4}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = MambaLM.from_pretrained(folder)
    ids = torch.randint(0, 10, (1, 8))
    assert torch.equal(model(ids), loaded(ids))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    MambaConfig(**CFG).save(folder / "config.json")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"backbone.embedding.weight": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        MambaLM.from_pretrained(folder)


@pytest.mark.parametrize("damage, message", [
    ("no_folder", "no such checkpoint folder"),
    ("no_weights", "no model.safetensors"),
    ("no_config", "no such config file"),
    ("bad_json", "not a readable JSON config"),
    ("corrupt", "corrupt or unreadable safetensors"),
    ("mismatch", "does not match the model config"),
    ("bad_field", "unknown MambaConfig fields"),
    ("shape", "has shape"),
])
def test_bad_checkpoints_raise_one_named_error(tmp_path, damage, message):
    folder = tmp_path / "ck"
    MambaLM(MambaConfig(**CFG)).save_pretrained(folder)
    if damage == "no_folder":
        folder = tmp_path / "missing"
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "bad_json":
        (folder / "config.json").write_text("{not json")
    elif damage == "corrupt":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "mismatch":
        MambaConfig(**{**CFG, "n_layer": 3}).save(folder / "config.json")
    elif damage == "bad_field":
        (folder / "config.json").write_text(json.dumps({**CFG, "colour": "red"}))
    elif damage == "shape":
        MambaConfig(**{**CFG, "d_state": 8}).save(folder / "config.json")
    with pytest.raises(CheckpointError, match=message) as info:
        MambaLM.from_pretrained(folder)
    assert "\n" not in str(info.value)
