"""transformers' Mamba layout both ways: a random ``MambaForCausalLM`` saved by transformers loads here with the
same logits, ours exported with ``save_pretrained(layout="transformers")`` loads in transformers with ours, and
every model transformers cannot express is refused in one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.models import hf_layout

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter moved off its initialisation (ones, zeros, tied values) so a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _import_transformers():
    """transformers with its Mamba model, or a skip. transformers >= 5 imports the PyPI package ``kernels``; under
    ``python -m pytest`` the repository root is on sys.path and its ``kernels/`` folder (installed as
    ``mamba_bio_audio.kernels``) would shadow that package, so the root is left off sys.path for this import."""
    root = Path(__file__).resolve().parents[2]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != root]
    try:
        transformers = pytest.importorskip("transformers")
        pytest.importorskip("transformers.models.mamba.modeling_mamba")
    finally:
        sys.path[:] = saved
    return transformers


def _transformers_model(vocab_size=37, tie=True, use_bias=False, seed=0):
    transformers = _import_transformers()
    config = transformers.MambaConfig(vocab_size=vocab_size, hidden_size=24, state_size=8, num_hidden_layers=2,
                                      conv_kernel=3, expand=2, time_step_rank=3, use_bias=use_bias,
                                      use_conv_bias=True, layer_norm_epsilon=1e-5, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return _perturbed(transformers.MambaForCausalLM(config), seed)


@pytest.mark.parametrize("tie, use_bias", [(True, False), (False, True)])
def test_transformers_checkpoint_loads_with_the_same_logits(tmp_path, tie, use_bias):
    theirs = _transformers_model(tie=tie, use_bias=use_bias)
    theirs.save_pretrained(tmp_path / "hf")
    ours = MambaLM.from_pretrained(tmp_path / "hf").eval()
    c = ours.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.d_state, c.d_conv, c.expand, c.dt_rank, c.bias, c.tie_embeddings) \
        == (24, 2, 37, 8, 3, 2, 3, use_bias, tie)
    ids = torch.randint(0, 37, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs(ids).logits, ours(ids)
    assert got.shape == expected.shape == (2, 13, 37)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_hub_hf_config_with_mamba_ssm_keys_too_loads_in_transformers_layout(tmp_path):
    """The Hub's state-spaces/mamba-130m-hf config.json carries mamba_ssm's keys (d_model, n_layer, d_inner,
    ssm_cfg, rms_norm, fused_add_norm ...) beside transformers' (hidden_size, num_hidden_layers, state_size ...),
    and its weights are in transformers' layout (backbone.embeddings): it loads, with transformers' logits."""
    theirs = _transformers_model(tie=True)
    folder = tmp_path / "hf"
    theirs.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(d_model=config["hidden_size"], n_layer=config["num_hidden_layers"],
                  d_inner=config["intermediate_size"], ssm_cfg={}, rms_norm=True, fused_add_norm=True,
                  rescale_prenorm_residual=False, pad_vocab_size_multiple=1)
    (folder / "config.json").write_text(json.dumps(config))
    assert hf_layout.is_transformers_config(config)
    ours = MambaLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=0, atol=1e-5)


def test_layout_detection():
    assert hf_layout.is_transformers_config({"model_type": "mamba", "d_model": 8, "hidden_size": 8})
    assert hf_layout.is_transformers_config({"architectures": ["MambaForCausalLM"], "d_model": 8})
    assert hf_layout.is_transformers_config({"hidden_size": 8})
    assert not hf_layout.is_transformers_config({"d_model": 8, "n_layer": 2, "ssm_cfg": {}})  # mamba_ssm's own


@pytest.mark.parametrize("tie", [True, False])
def test_export_loads_in_transformers_with_our_logits(tmp_path, tie):
    transformers = _import_transformers()
    torch.manual_seed(0)
    ours = _perturbed(MambaLM(MambaConfig(**SMALL, tie_embeddings=tie, extra={"dna": {"window": 64}})), 2)
    assert ours.config.padded_vocab_size == 16  # the export drops the 4 padding rows
    folder = ours.save_pretrained(tmp_path / "export", layout="transformers")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "mamba" and saved["hidden_size"] == 16 and "d_model" not in saved
    theirs = transformers.MambaForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 12, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = ours(ids), theirs(ids).logits
    assert got.shape == expected.shape == (2, 11, 12)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    back = MambaLM.from_pretrained(folder)  # and back: the same config (padding, extra) and logits
    assert back.config == ours.config
    assert torch.equal(back(ids), ours(ids))


def test_export_names_and_vocab_rows(tmp_path):
    ours = MambaLM(MambaConfig(**SMALL))
    folder = ours.save_pretrained(tmp_path / "x", layout="transformers")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    assert "backbone.embeddings.weight" in state and "lm_head.weight" not in state  # tied: written once
    assert not any(k.startswith("backbone.embedding.") for k in state)
    assert state["backbone.embeddings.weight"].shape == (12, 16)
    assert set(state) == {hf_layout.EMBEDDING_HF + "weight" if k == "backbone.embedding.weight" else k
                          for k in ours.state_dict() if k != "lm_head.weight"}


def test_config_key_map():
    data = {"model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": 32,
            "num_hidden_layers": 3, "vocab_size": 50, "state_size": 8, "conv_kernel": 4, "expand": 2,
            "time_step_rank": "auto", "time_step_min": 0.002, "time_step_max": 0.2, "time_step_scale": 1.5,
            "time_step_floor": 1e-3, "time_step_init_scheme": "constant", "use_bias": True, "use_conv_bias": False,
            "layer_norm_epsilon": 1e-6, "residual_in_fp32": False, "tie_word_embeddings": False,
            "intermediate_size": 64, "hidden_act": "silu", "pad_token_id": 0, "initializer_range": 0.1,
            "use_cache": True, "dtype": "bfloat16", "rescale_prenorm_residual": False, "use_mambapy": False}
    c = MambaConfig.from_dict(data)
    assert (c.d_model, c.n_layer, c.vocab_size, c.d_state, c.d_conv, c.expand, c.dt_rank_value) == (32, 3, 50, 8, 4,
                                                                                                    2, 2)
    assert (c.dt_min, c.dt_max, c.dt_scale, c.dt_init_floor, c.dt_init) == (0.002, 0.2, 1.5, 1e-3, "constant")
    assert (c.bias, c.conv_bias, c.norm_epsilon, c.residual_in_fp32, c.tie_embeddings) == (True, False, 1e-6,
                                                                                          False, False)
    assert c.pad_vocab_size_multiple == 1 and c.padded_vocab_size == 50 and c.rms_norm
    again = MambaConfig.from_dict(hf_layout.config_to_transformers(c))
    assert again == c


@pytest.mark.parametrize("change, fragment", [
    ({"model_type": "mamba2"}, "only Mamba-1"),
    ({"model_type": "falcon_mamba"}, "only Mamba-1"),
    ({"hidden_act": "gelu"}, "only 'silu'"),
    ({"intermediate_size": 100}, "intermediate_size 100"),
    ({"model_type": "caduceus", "d_model": 16}, "a Caduceus checkpoint: load it with"),
])
def test_transformers_configs_we_cannot_run_are_refused(tmp_path, change, fragment):
    data = {"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 1, "vocab_size": 8, **change}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=fragment) as info:
        MambaLM.from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model, fragment", [
    (lambda: MambaLM(MambaConfig(**SMALL, bidirectional=True)), "bidirectional"),
    (lambda: MambaLM(MambaConfig(**SMALL, ssm_layer="S4D")), "S4D"),
    (lambda: MambaLM(MambaConfig(**SMALL, rms_norm=False)), "RMSNorm"),
    (lambda: MambaClassifier(MambaConfig(**SMALL), num_classes=2), "MambaClassifier cannot be exported"),
])
def test_export_refuses_what_transformers_cannot_express(tmp_path, model, fragment):
    with pytest.raises(UserError, match=fragment):
        model().save_pretrained(tmp_path / "x", layout="transformers")
    assert not (tmp_path / "x").exists()


def test_ssm_only_lm_is_not_exported(tmp_path):
    from mamba_bio_audio.models.ssm_only import SSMOnlyLM

    with pytest.raises(UserError, match="SSMOnlyLM cannot be exported"):
        SSMOnlyLM(MambaConfig(**SMALL)).save_pretrained(tmp_path / "x", layout="transformers")


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(UserError, match="layout must be one of"):
        MambaLM(MambaConfig(**SMALL)).save_pretrained(tmp_path / "x", layout="keras")


def test_sharded_transformers_checkpoint_loads(tmp_path):
    """Large -hf repositories ship safetensors shards and model.safetensors.index.json."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    ours = _perturbed(MambaLM(MambaConfig(**SMALL)), 4)
    folder = ours.save_pretrained(tmp_path / "one", layout="transformers")
    state = load_file(str(folder / "model.safetensors"))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(sharded / file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    ids = torch.randint(0, 12, (1, 9))
    assert torch.equal(MambaLM.from_pretrained(sharded)(ids), ours(ids))
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["backbone.norm_f.weight"] = "../elsewhere.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a file beside it"):
        MambaLM.from_pretrained(sharded)
