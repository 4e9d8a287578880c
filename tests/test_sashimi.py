"""SaShiMi-style Mamba U-Net: recurrent step == parallel forward through the pooling stages, causality, size,
checkpoints; the batched sampler for both audio architectures."""

from __future__ import annotations

import json

import pytest
import torch

from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.models.lm import MambaLM
from mamba_bio_audio.models.sashimi import PRESETS, SashimiConfig, SashimiLM, preset
from mamba_bio_audio.tasks.audio_generation import generate, load_audio_lm

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


def test_save_load_round_trip_and_foreign_folders(tmp_path):
    torch.manual_seed(4)
    model = randomized(SashimiLM(tiny(extra={"sample_rate": 8000, "encoding": "mulaw8"})).eval(), seed=5)
    model.save_pretrained(tmp_path / "m")
    loaded = SashimiLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert loaded.config == model.config
    assert isinstance(load_audio_lm(tmp_path / "m"), SashimiLM)
    (tmp_path / "run").mkdir()
    model.save_pretrained(tmp_path / "run" / "model")
    assert isinstance(load_audio_lm(tmp_path / "run"), SashimiLM)  # a training run folder works too
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_audio_lm(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_audio_lm(tmp_path / "empty")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_audio_lm(tmp_path / "m")


@pytest.mark.parametrize("arch", ["sashimi", "mamba-lm"])
def test_generate_is_seeded_and_scores_what_it_draws(arch):
    torch.manual_seed(6)
    if arch == "sashimi":
        model = SashimiLM(tiny()).eval()
    else:
        model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=256, d_state=4)).eval()
    a = generate(model, 3, 20, seed=7)
    b = generate(model, 3, 20, seed=7)
    assert a.tokens.shape == (3, 20) and a.tokens.dtype == torch.long
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.log_likelihood, b.log_likelihood)
    assert 0 <= a.tokens.min() and a.tokens.max() < 256
    # the log-likelihood is the model's own score of the drawn tokens (silence token in front)
    ids = torch.cat([torch.full((3, 1), 128), a.tokens], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).double(), -1).gather(-1, ids[:, 1:, None])[..., 0].sum(1)
    assert torch.allclose(logp, a.log_likelihood, rtol=1e-4)
    assert (a.bits_per_sample > 0).all()
    greedy = generate(model, 2, 10, temperature=0)
    assert torch.equal(greedy.tokens[0], greedy.tokens[1])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["sashimi", "mamba-lm"])
def test_cuda_graph_decode_equals_eager_decode(arch):
    torch.manual_seed(8)
    if arch == "sashimi":
        model = SashimiLM(tiny(n_layers=2)).cuda().eval()
    else:
        model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=256, d_state=8)).cuda().eval()
    eager = generate(model, 4, 70, seed=9, cuda_graph=False)
    graphed = generate(model, 4, 70, seed=9, cuda_graph=True)
    assert torch.equal(eager.tokens, graphed.tokens)
    assert torch.allclose(eager.log_likelihood, graphed.log_likelihood, rtol=1e-5)
