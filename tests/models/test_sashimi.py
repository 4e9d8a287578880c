"""SaShiMi-style Mamba U-Net: recurrent step == parallel forward through the pooling stages, causality, size,
checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.models.sashimi import PRESETS, SashimiConfig, SashimiLM, preset

from conftest import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> SashimiConfig:
    return preset("tiny", **overrides)


def randomized(model: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """Add noise to every parameter so that no path is trivially zero (e.g. freshly zeroed biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def stepped_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seqlen, vocab) from one recurrent step per position."""
    state = model.allocate_inference_cache(ids.shape[0], dtype=torch.float64)
    return torch.stack([model.step(ids[:, t], state) for t in range(ids.shape[1])], dim=1)


@pytest.mark.parametrize("seqlen", [16, 37, 64, 5])
@pytest.mark.parametrize("cfg", [tiny(), tiny(unet=False), tiny(pools=(2, 3, 2), n_layers=2, expand=1)],
                         ids=["unet", "no-unet", "three-levels"])
def test_recurrent_step_equals_parallel_forward(cfg, seqlen):
    torch.manual_seed(0)
    model = randomized(SashimiLM(cfg).double().eval(), seed=1)
    ids = torch.randint(0, 256, (2, seqlen))
    with torch.no_grad():
        parallel = torch.log_softmax(model(ids), dim=-1)
        recurrent = torch.log_softmax(stepped_logits(model, ids), dim=-1)
    assert parallel.shape == (2, seqlen, 256)
    assert rel_err(recurrent - recurrent.mean(-1, keepdim=True), parallel - parallel.mean(-1, keepdim=True)) < 1e-8
    assert rel_err(recurrent, parallel) < 1e-8


def test_logits_at_t_depend_only_on_inputs_up_to_t():
    torch.manual_seed(2)
    model = randomized(SashimiLM(tiny()).double().eval(), seed=3)
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        base = model(ids)
        for s in (0, 3, 4, 15, 16, 17, 31, 39):
            changed = ids.clone()
            changed[0, s] = (changed[0, s] + 101) % 256
            out = model(changed)
            assert torch.equal(out[:, :s], base[:, :s]), f"position < {s} saw the change at {s}"
            assert not torch.allclose(out[:, s], base[:, s]), f"position {s} ignores its own input"


def test_paper_preset_has_about_six_million_parameters():
    model = SashimiLM(PRESETS["paper-6m"])
    n = sum(p.numel() for p in model.parameters())
    assert 5.8e6 < n < 6.5e6, n
    widths = [model.stage.down.layers[0].mixer.d_model, model.stage.inner.down.layers[0].mixer.d_model,
              model.stage.inner.inner.up.layers[0].mixer.d_model]
    assert widths == [64, 128, 256]
    assert len(model.stage.down.layers) == len(model.stage.up.layers) == len(model.stage.inner.inner.up.layers) == 8
    assert model.stage.inner.inner.inner is None and len(model.stage.inner.inner.down.layers) == 0


def test_config_json_round_trip_and_bad_configs(tmp_path):
    cfg = tiny(pools=(2, 4), extra={"sample_rate": 8000})
    again = SashimiConfig.from_json(cfg.to_json())
    assert again == cfg and again.pools == (2, 4) and again.stride == 8
    assert json.loads(cfg.to_json())["architecture"] == "sashimi"
    with pytest.raises(UserError, match="pools"):
        SashimiConfig(pools=(1,))
    with pytest.raises(UserError, match="unknown SashimiConfig fields: colour"):
        SashimiConfig.from_dict({"colour": 1})
    with pytest.raises(UserError, match="unknown SaShiMi preset"):
        preset("huge")


def test_save_load_round_trip_and_a_corrupt_checkpoint(tmp_path):
    torch.manual_seed(4)
    model = randomized(SashimiLM(tiny(extra={"sample_rate": 8000, "encoding": "mulaw8"})).eval(), seed=5)
    model.save_pretrained(tmp_path / "m")
    loaded = SashimiLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert loaded.config == model.config
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        SashimiLM.from_pretrained(tmp_path / "m")
