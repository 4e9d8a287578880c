"""Model behaviour: initialisation, parallel forward vs recurrent steps, generation, classifier pooling."""

from __future__ import annotations

import math

import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.generation.sampling import filter_logits

from conftest import rel_err


def tiny(**kw) -> MambaConfig:
    return MambaConfig(**{"d_model": 24, "n_layer": 2, "vocab_size": 11, "d_state": 8, **kw})


def test_initialisation_follows_the_paper():
    cfg = tiny(n_layer=4, dt_min=0.002, dt_max=0.05)
    model = MambaLM(cfg)
    mixer = model.backbone.layers[0].mixer
    assert torch.allclose(-torch.exp(mixer.A_log), -torch.arange(1, 9).float().expand(cfg.d_inner, 8))
    assert torch.equal(mixer.D, torch.ones(cfg.d_inner))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001
    assert getattr(mixer.A_log, "_no_weight_decay", False) and getattr(mixer.D, "_no_weight_decay", False)
    # out_proj: kaiming-uniform bound 1/sqrt(fan_in), then / sqrt(n_layer)
    bound = 1 / math.sqrt(cfg.d_inner) / math.sqrt(cfg.n_layer)
    w = mixer.out_proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert model.backbone.embedding.weight.shape[0] == 16  # 11 padded to a multiple of 8


@pytest.mark.parametrize("ssm_layer", ["S6", "S4D"])
def test_recurrent_steps_equal_parallel_forward(ssm_layer):
    torch.manual_seed(0)
    model = MambaLM(tiny(ssm_layer=ssm_layer)).double().eval()
    ids = torch.randint(0, 11, (3, 21))
    with torch.no_grad():
        full = model(ids)
        states = model.allocate_inference_cache(3, dtype=torch.float64)
        pieces = [model(ids[:, :6], states=states)]  # prefill from a prompt
        pieces += [model.step(ids[:, t], states)[:, None] for t in range(6, 21)]
    assert full.shape == (3, 21, 11)
    assert rel_err(torch.cat(pieces, 1), full) < 1e-10


def test_short_prompt_prefill_pads_conv_state():
    torch.manual_seed(1)
    model = MambaLM(tiny(d_conv=4)).double().eval()
    ids = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        full = model(ids)
        states = model.allocate_inference_cache(2, dtype=torch.float64)
        pieces = [model(ids[:, :2], states=states)] + [model.step(ids[:, t], states)[:, None] for t in range(2, 9)]
    assert rel_err(torch.cat(pieces, 1), full) < 1e-10


def test_greedy_generate_equals_repeated_argmax():
    torch.manual_seed(2)
    model = MambaLM(tiny()).eval()
    prompt = torch.randint(0, 11, (2, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_sampling_is_seeded_and_respects_filters():
    torch.manual_seed(3)
    model = MambaLM(tiny()).eval()
    prompt = torch.randint(0, 11, (4, 3))
    a = model.generate(prompt, 20, temperature=1.0, top_k=3, seed=7)
    b = model.generate(prompt, 20, temperature=1.0, top_k=3, seed=7)
    assert torch.equal(a, b) and a.shape == (4, 23)
    assert model.training is False
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, :2]).all()
    kept = filter_logits(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), top_p=0.7)
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)[0, 3])  # the best token always survives


def test_classifier_pooling_honours_mask():
    torch.manual_seed(4)
    model = MambaClassifier(tiny(), num_classes=3).eval()
    ids = torch.randint(0, 11, (2, 10))
    padded = torch.cat([ids, torch.full((2, 5), 4)], 1)
    mask = torch.cat([torch.ones(2, 10, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        assert rel_err(model(padded, mask), model(ids)) < 1e-6  # causal: padding after the end changes nothing
        mean_model = MambaClassifier(tiny(), num_classes=3, pooling="mean").eval()
        mean_model.load_state_dict(model.state_dict())
        assert rel_err(mean_model(padded, mask), mean_model(ids)) < 1e-6
    assert model(ids).shape == (2, 3)


def test_bidirectional_sees_the_future_and_cannot_step():
    torch.manual_seed(5)
    uni = MambaClassifier(tiny(), num_classes=2, pooling="mean").eval()
    bi = MambaClassifier(tiny(bidirectional=True), num_classes=2, pooling="mean").eval()
    ids = torch.randint(0, 11, (1, 12))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 11
    with torch.no_grad():
        h_bi = bi.backbone(ids)[0, 0]
        h_bi2 = bi.backbone(changed)[0, 0]
        h_uni = uni.backbone(ids)[0, 0]
        h_uni2 = uni.backbone(changed)[0, 0]
    assert torch.equal(h_uni, h_uni2)  # causal: the first position ignores the last token
    assert not torch.allclose(h_bi, h_bi2)
    with pytest.raises(ValueError, match="bidirectional"):
        lm = MambaLM(tiny(bidirectional=True))
        lm.step(ids[:, 0], lm.allocate_inference_cache(1))


def test_config_round_trip_and_mamba_ssm_format(tmp_path):
    cfg = tiny(ssm_layer="S4D", bidirectional=True, dt_rank=3)
    assert MambaConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert MambaConfig.load(tmp_path / "c.json") == cfg
    hf = {"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
          "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
    loaded = MambaConfig.from_dict(hf)
    assert loaded.padded_vocab_size == 50280 and loaded.d_inner == 1536 and loaded.dt_rank_value == 48
    with pytest.raises(UserError, match="unknown"):
        MambaConfig.from_dict({"d_model": 8, "wings": 2})
    with pytest.raises(UserError, match="Mamba1"):
        MambaConfig.from_dict({"ssm_cfg": {"layer": "Mamba2"}})
    with pytest.raises(UserError, match="ssm_layer"):
        MambaConfig(ssm_layer="S5")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(6)
    model = MambaLM(tiny())
    ids = torch.randint(0, 11, (2, 16))
    model(ids).square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing = True
    model.train()
    model(ids).square().mean().backward()
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref[n]) < 1e-6, n
