"""The loaders against the config.json text of the real public checkpoints, shrunk only in sizes: each fixture keeps
the published key set and value types, and writes weights under the published tensor names and file formats
(random values, shapes implied by the config), built from the authors' code rather than from ours.

- ``state-spaces/mamba-130m-hf`` and ``state-spaces/mamba-2.8b-hf`` (transformers' ``MambaForCausalLM``; the 130m
  config also carries mamba_ssm's keys, the 2.8b one only some of them): loaded through
  ``MambaLM.from_pretrained`` (a folder and the Hub id from an offline cache), config values read from
  transformers' keys, logits equal to transformers' own ``MambaForCausalLM`` on the same folder.
- ``state-spaces/mamba-130m`` (mamba_ssm's ``MambaLMHeadModel``: config.json + pytorch_model.bin, the head stored
  beside the embedding it is tied to), as mamba_ssm 1.x wrote it and with mamba_ssm 2.x's extra keys: the same
  tensors give the same logits as the -hf conversion of them.
- ``kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16`` (RCPS) and ``caduceus-ph_*`` (not RCPS)
  (``CaduceusForMaskedLM`` saved by transformers 4.38: tied tensors written once, the complement-map buffers
  stored): loaded through ``CaduceusLM.from_pretrained``, every file tensor landing in the tensor of that name,
  and a Caduceus-ph fine-tuned by ``mba dna classify train --init-from`` for one step. Unshrunk, these fixtures
  have the published config.json and model.safetensors byte sizes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hf_layout import _import_transformers

from mamba_bio_audio import MambaLM
from mamba_bio_audio.models.caduceus import CaduceusLM

from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

# ---- the published config.json texts ------------------------------------------------------------------------------
# state-spaces/mamba-130m-hf config.json, as copied in NVIDIA-NeMo/Megatron-Bridge
# tests/unit_tests/models/mamba/test_mamba_bridge.py (``mamba_130m_config_dict``; the same key set, without
# vocab_size and transformers_version, is pasted with "_name_or_path": "state-spaces/mamba-130m-hf" in other public
# repositories). Both transformers' keys and mamba_ssm's (d_model, n_layer, d_inner, ssm_cfg, rms_norm ...).
MAMBA_130M_HF = """{
  "architectures": ["MambaForCausalLM"],
  "bos_token_id": 0,
  "conv_kernel": 4,
  "d_inner": 1536,
  "d_model": 768,
  "eos_token_id": 0,
  "expand": 2,
  "fused_add_norm": true,
  "hidden_act": "silu",
  "hidden_size": 768,
  "initializer_range": 0.1,
  "intermediate_size": 1536,
  "layer_norm_epsilon": 1e-05,
  "model_type": "mamba",
  "n_layer": 24,
  "num_hidden_layers": 24,
  "pad_token_id": 0,
  "pad_vocab_size_multiple": 8,
  "rescale_prenorm_residual": false,
  "residual_in_fp32": true,
  "rms_norm": true,
  "ssm_cfg": {},
  "state_size": 16,
  "time_step_floor": 0.0001,
  "time_step_init_scheme": "random",
  "time_step_max": 0.1,
  "time_step_min": 0.001,
  "time_step_rank": 48,
  "time_step_scale": 1.0,
  "torch_dtype": "float32",
  "transformers_version": "4.39.0.dev0",
  "use_bias": false,
  "use_cache": true,
  "use_conv_bias": true,
  "vocab_size": 50280
}"""

# state-spaces/mamba-2.8b-hf config.json, from confucianfighter/mamba-2.8b-hf-breakdown
# mamba_ssm/modules/mamba_2.8b.json (and its README.md): n_layer, rms_norm, fused_add_norm ... but no d_model,
# d_inner or ssm_cfg. (The 370m, 790m and 1.4b -hf configs were not found; one of these two key sets is expected.)
MAMBA_2P8B_HF = """{
  "architectures": ["MambaForCausalLM"],
  "bos_token_id": 0,
  "conv_kernel": 4,
  "eos_token_id": 0,
  "expand": 2,
  "fused_add_norm": true,
  "hidden_act": "silu",
  "hidden_size": 2560,
  "initializer_range": 0.1,
  "intermediate_size": 5120,
  "layer_norm_epsilon": 1e-05,
  "model_type": "mamba",
  "n_layer": 64,
  "num_hidden_layers": 64,
  "pad_token_id": 0,
  "pad_vocab_size_multiple": 8,
  "rescale_prenorm_residual": false,
  "residual_in_fp32": true,
  "rms_norm": true,
  "state_size": 16,
  "time_step_floor": 0.0001,
  "time_step_init_scheme": "random",
  "time_step_max": 0.1,
  "time_step_min": 0.001,
  "time_step_rank": 160,
  "time_step_scale": 1.0,
  "torch_dtype": "float32",
  "transformers_version": "4.39.0.dev0",
  "use_bias": false,
  "use_cache": true,
  "use_conv_bias": true,
  "vocab_size": 50280
}"""

# state-spaces/mamba-130m config.json: mamba_ssm 1.x's ``MambaLMHeadModel.save_pretrained`` dumps its MambaConfig
# dataclass (d_model, n_layer, vocab_size, ssm_cfg, rms_norm, residual_in_fp32, fused_add_norm,
# pad_vocab_size_multiple: mamba_ssm/models/config_mamba.py of the 1.x releases, e.g. as vendored in
# cyjie429/RawBMamba); the values as LaurentMazare/mamba.rs src/constants.rs reads them from
# https://huggingface.co/state-spaces/mamba-130m/blob/main/config.json (d_model 768, n_layer 24, vocab 50277,
# pad multiple 8).
MAMBA_130M = """{"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": true,
 "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8}"""
# mamba_ssm 2.x's MambaConfig adds these keys (mamba_ssm/models/config_mamba.py of 2.x, e.g. as vendored in
# Chris-Hornet-Dong/prompt-tuning-mamba); a Mamba-1 model saved by mamba_ssm 2.x carries them.
MAMBA_SSM_2X_KEYS = {"d_intermediate": 0, "attn_layer_idx": [], "attn_cfg": {}, "tie_embeddings": True}

# kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16 config.json (transformers 4.38.1), as a public
# setup script writes it verbatim beside the downloaded weights; the keys are those of
# kuleshov-group/caduceus caduceus/configuration_caduceus.py (CaduceusConfig) plus PretrainedConfig's. The
# caduceus-ph_seqlen-1k_d_model-256_n_layer-4_lr-8e-3 config.json has the same byte size (1375) with n_layer 4 and
# rcps false: the same key set (its size and values are pinned in a public oracle script for that revision).
CADUCEUS_PS_131K = """{
  "architectures": ["CaduceusForMaskedLM"],
  "auto_map": {
    "AutoConfig": "configuration_caduceus.CaduceusConfig",
    "AutoModel": "modeling_caduceus.Caduceus",
    "AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_caduceus.CaduceusForSequenceClassification"
  },
  "bidirectional": true,
  "bidirectional_strategy": "add",
  "bidirectional_weight_tie": true,
  "complement_map": {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 10, "8": 9, "9": 8, "10": 7,
                     "11": 11, "12": 12, "13": 13, "14": 14, "15": 15},
  "d_model": 256,
  "fused_add_norm": true,
  "initializer_cfg": {"initializer_range": 0.02, "n_residuals_per_layer": 1, "rescale_prenorm_residual": true},
  "model_type": "caduceus",
  "n_layer": 16,
  "norm_epsilon": 1e-05,
  "pad_vocab_size_multiple": 8,
  "rcps": true,
  "residual_in_fp32": false,
  "rms_norm": true,
  "ssm_cfg": {"bias": false, "conv_bias": true, "d_conv": 4, "d_state": 16, "dt_init": "random",
              "dt_init_floor": 0.0001, "dt_max": 0.1, "dt_min": 0.001, "dt_rank": "auto", "dt_scale": 1.0,
              "expand": 2, "use_fast_path": true},
  "torch_dtype": "float32",
  "transformers_version": "4.38.1",
  "vocab_size": 16
}"""

D_MODEL, N_LAYER, VOCAB = 16, 2, 48  # the sizes shrunk to; everything else as published


# ---- Mamba weights under the published names ----------------------------------------------------------------------
def _mixer_shapes(d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int, conv_bias: bool = True,
                  bias: bool = False) -> dict[str, tuple[int, ...]]:
    """One Mamba-1 mixer's tensors: mamba_ssm's mamba_simple.py ``Mamba`` and transformers'
    models/mamba/modeling_mamba.py ``MambaMixer`` name them alike (in_proj, conv1d, x_proj, dt_proj, A_log, D,
    out_proj)."""
    shapes = {"in_proj.weight": (2 * d_inner, d_model), "conv1d.weight": (d_inner, 1, d_conv),
              "x_proj.weight": (dt_rank + 2 * d_state, d_inner), "dt_proj.weight": (d_inner, dt_rank),
              "dt_proj.bias": (d_inner,), "A_log": (d_inner, d_state), "D": (d_inner,),
              "out_proj.weight": (d_model, d_inner)}
    if conv_bias:
        shapes["conv1d.bias"] = (d_inner,)
    if bias:
        shapes["in_proj.bias"], shapes["out_proj.bias"] = (2 * d_inner,), (d_model,)
    return shapes


def _random(shape, g: torch.Generator, name: str) -> torch.Tensor:
    """Random values of a sensible scale: norms near 1, A_log near log(1..N), the rest small."""
    if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if name.endswith("A_log"):
        return torch.log(torch.arange(1, shape[-1] + 1).float()).expand(shape) + 0.1 * torch.randn(shape, generator=g)
    return 0.2 * torch.randn(shape, generator=g)


def mamba_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of a Mamba LM of a (shrunk) published -hf config, under mamba_ssm's names
    (``backbone.embedding.weight`` with the vocabulary padded to ``pad_vocab_size_multiple``, layers, norm_f; no
    head: tied)."""
    g = torch.Generator().manual_seed(seed)
    d, n, inner = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    m = config["pad_vocab_size_multiple"]
    rows = math.ceil(config["vocab_size"] / m) * m
    names = {"backbone.embedding.weight": (rows, d)}
    for i in range(n):
        for k, shape in _mixer_shapes(d, inner, config["state_size"], config["conv_kernel"],
                                      config["time_step_rank"], config["use_conv_bias"], config["use_bias"]).items():
            names[f"backbone.layers.{i}.mixer.{k}"] = shape
        names[f"backbone.layers.{i}.norm.weight"] = (d,)
    names["backbone.norm_f.weight"] = (d,)
    return {name: _random(shape, g, name) for name, shape in names.items()}


def shrunk_hf_config(text: str) -> dict:
    """A published -hf config.json with the sizes shrunk (every key kept, every value type kept)."""
    config = json.loads(text)
    inner = config["expand"] * D_MODEL
    config.update(hidden_size=D_MODEL, num_hidden_layers=N_LAYER, intermediate_size=inner, vocab_size=VOCAB,
                  time_step_rank=math.ceil(D_MODEL / 16))
    for key, value in (("d_model", D_MODEL), ("n_layer", N_LAYER), ("d_inner", inner)):
        if key in config:
            config[key] = value
    return config


def write_hf_checkpoint(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """A state-spaces/mamba-*-hf repository's model files: config.json + model.safetensors in transformers' names
    (``backbone.embeddings.weight``; the head tied, not written)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {name.replace("backbone.embedding.", "backbone.embeddings."): t for name, t in tensors.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_mamba_ssm_checkpoint(folder: Path, config_text: str, tensors: dict[str, torch.Tensor],
                               extra_keys: dict | None = None) -> Path:
    """A state-spaces/mamba-* repository's model files: config.json + pytorch_model.bin, the state_dict of
    mamba_ssm's MambaLMHeadModel as its save_pretrained writes it (``torch.save``; ``lm_head.weight`` stored, the
    same storage as ``backbone.embedding.weight``)."""
    config = json.loads(config_text)
    config.update(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB - 3, **(extra_keys or {}))  # 45 -> padded 48
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    state = dict(tensors)
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline (tests/test_hub.py's ``add_to_cache`` lays repositories out in it)."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # org/name must not exist as a local folder
    return cache


def _ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("text", [MAMBA_130M_HF, MAMBA_2P8B_HF], ids=["mamba-130m-hf", "mamba-2.8b-hf"])
def test_published_hf_config_loads_with_transformers_logits(tmp_path, text):
    transformers = _import_transformers()
    config = shrunk_hf_config(text)
    folder = write_hf_checkpoint(tmp_path / "hf", config, mamba_tensors(config))
    ours = MambaLM.from_pretrained(folder).eval()
    c = ours.config
    # transformers' keys are the ones read (d_model / n_layer, where present, agree here by construction)
    assert (c.d_model, c.n_layer, c.vocab_size, c.d_state, c.d_conv, c.expand, c.dt_rank) == (16, 2, 48, 16, 4, 2, 1)
    assert (c.bias, c.conv_bias, c.rms_norm, c.residual_in_fp32, c.tie_embeddings) == (False, True, True, True, True)
    assert (c.norm_epsilon, c.dt_min, c.dt_max, c.dt_init_floor, c.dt_init, c.pad_vocab_size_multiple) == \
        (1e-5, 0.001, 0.1, 1e-4, "random", 8)
    theirs, info = transformers.MambaForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids = _ids(48)
    with torch.no_grad():
        expected, got = theirs.eval()(ids).logits, ours(ids)
    assert got.shape == expected.shape == (2, 13, 48)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_hf_config_values_come_from_transformers_keys_where_the_mamba_ssm_ones_disagree(tmp_path):
    """The 130m-hf config holds both spellings; transformers' are the ones its weights follow."""
    config = shrunk_hf_config(MAMBA_130M_HF)
    tensors = mamba_tensors(config)
    config.update(d_model=999, n_layer=7, d_inner=5)  # stale mamba_ssm values must not be read
    assert MambaLM.from_pretrained(write_hf_checkpoint(tmp_path / "hf", config, tensors)).config.d_model == 16


@pytest.mark.parametrize("extra_keys", [None, MAMBA_SSM_2X_KEYS], ids=["mamba_ssm-1.x", "mamba_ssm-2.x"])
def test_published_mamba_ssm_checkpoint_matches_its_hf_conversion(tmp_path, extra_keys):
    """state-spaces/mamba-130m (vocab 50277 padded to 50280 rows, pytorch_model.bin) and its -hf conversion
    (vocab_size 50280, model.safetensors) hold the same tensors: the two load to the same logits."""
    hf_config = shrunk_hf_config(MAMBA_130M_HF)
    tensors = mamba_tensors(hf_config)
    ssm = MambaLM.from_pretrained(write_mamba_ssm_checkpoint(tmp_path / "ssm", MAMBA_130M, tensors, extra_keys))
    c = ssm.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.padded_vocab_size, c.rms_norm, c.residual_in_fp32) == \
        (16, 2, 45, 48, True, True)
    assert (c.d_state, c.d_conv, c.expand, c.dt_rank_value, c.tie_embeddings) == (16, 4, 2, 1, True)
    state = ssm.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name
    assert ssm.lm_head.weight is ssm.backbone.embedding.weight
    hf = MambaLM.from_pretrained(write_hf_checkpoint(tmp_path / "hf", hf_config, tensors))
    ids = _ids(45)
    with torch.no_grad():
        torch.testing.assert_close(ssm.eval()(ids)[..., :45], hf.eval()(ids)[..., :45], rtol=0, atol=1e-6)


def test_published_layouts_load_by_hub_id_from_the_cache(tmp_path, hub_cache):
    """The Hub ids themselves, served offline from a cache holding the published file sets (config.json +
    model.safetensors for -hf, config.json + pytorch_model.bin for mamba_ssm's)."""
    from test_hub import add_to_cache

    cache = hub_cache
    config = shrunk_hf_config(MAMBA_130M_HF)
    tensors = mamba_tensors(config)
    add_to_cache(cache, "state-spaces/mamba-130m-hf", write_hf_checkpoint(tmp_path / "f-hf", config, tensors))
    add_to_cache(cache, "state-spaces/mamba-130m", write_mamba_ssm_checkpoint(tmp_path / "f", MAMBA_130M, tensors))
    hf, ssm = MambaLM.from_pretrained("state-spaces/mamba-130m-hf"), MambaLM.from_pretrained("state-spaces/mamba-130m")
    ids = _ids(45)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids)[..., :45], ssm.eval()(ids)[..., :45], rtol=0, atol=1e-6)


# ---- Caduceus -----------------------------------------------------------------------------------------------------
def shrunk_caduceus_config(rcps: bool, **changes) -> dict:
    """The published Caduceus config.json, sizes shrunk (d_model, n_layer); ``rcps`` false for a "ph" model."""
    config = json.loads(CADUCEUS_PS_131K)
    config.update(d_model=D_MODEL, n_layer=N_LAYER, rcps=rcps, **changes)
    return config


def caduceus_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """What transformers 4.38's ``save_pretrained`` writes for kuleshov-group/caduceus' ``CaduceusForMaskedLM``
    (caduceus/modeling_caduceus.py, caduceus/modeling_rcps.py): ``caduceus.backbone.embeddings.word_embeddings``
    (``.embedding.weight`` and the ``complement_map`` buffer under RCPS), per layer a ``BiMambaWrapper`` mixer
    (``.submodule`` inside ``RCPSWrapper`` under RCPS) of ``mamba_fwd`` / ``mamba_rev`` and a ``norm``, then
    ``norm_f``; tensors sharing storage are written once (the first name: ``mamba_rev``'s in/out projections,
    tied to ``mamba_fwd``'s, and the LM head, tied to the embedding, are left out); an RCPS head keeps its
    ``lm_head.complement_map`` buffer."""
    g = torch.Generator().manual_seed(seed)
    ssm, d = config["ssm_cfg"], config["d_model"]
    inner, rank = ssm["expand"] * d, math.ceil(d / 16)
    mixer = _mixer_shapes(d, inner, ssm["d_state"], ssm["d_conv"], rank, ssm["conv_bias"], ssm["bias"])
    rcps = config["rcps"]
    prefix = "caduceus.backbone."
    names = {prefix + "embeddings.word_embeddings." + ("embedding.weight" if rcps else "weight"):
             (config["vocab_size"], d)}
    for i in range(config["n_layer"]):
        layer = f"{prefix}layers.{i}.mixer." + ("submodule." if rcps else "")
        for k, shape in mixer.items():
            names[layer + "mamba_fwd." + k] = shape
        for k, shape in mixer.items():
            if not k.startswith(("in_proj.", "out_proj.")):
                names[layer + "mamba_rev." + k] = shape
        names[f"{prefix}layers.{i}.norm.weight"] = (d,)
    names[prefix + "norm_f.weight"] = (d,)
    state = {name: _random(shape, g, name) for name, shape in names.items()}
    if rcps:
        cmap = torch.tensor([config["complement_map"][str(i)] for i in range(config["vocab_size"])])
        state[prefix + "embeddings.word_embeddings.complement_map"] = cmap
        state["lm_head.complement_map"] = cmap.clone()
    return state


def write_caduceus_checkpoint(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("rcps", [True, False], ids=["caduceus-ps", "caduceus-ph"])
def test_published_caduceus_checkpoint_loads(tmp_path, rcps):
    config = shrunk_caduceus_config(rcps)
    state = caduceus_tensors(config)
    model = CaduceusLM.from_pretrained(write_caduceus_checkpoint(tmp_path / "c", config, state)).eval()
    c = model.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.rcps, c.bidirectional, c.bidirectional_strategy) == \
        (16, 2, 16, rcps, True, "add")
    assert (c.bidirectional_weight_tie, c.fused_add_norm, c.rms_norm, c.residual_in_fp32, c.norm_epsilon) == \
        (True, True, True, False, 1e-5)
    assert c.ssm_cfg["d_state"] == 16 and c.ssm_cfg["dt_rank"] == "auto" and c.tie_word_embeddings
    assert c.complement_map == json.loads(CADUCEUS_PS_131K)["complement_map"]
    ours = model.state_dict()
    for name, tensor in state.items():  # each file tensor in the tensor of that name
        assert torch.equal(ours[name], tensor), name
    layer = model.backbone.layers[1].mixer
    mixer = layer.submodule if rcps else layer
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight  # the ties remade
    assert mixer.mamba_rev.out_proj.weight is mixer.mamba_fwd.out_proj.weight
    head = model.lm_head.lm_head if rcps else model.lm_head
    assert head.weight is model.backbone.embeddings.word_embeddings.weight
    ids = torch.randint(7, 11, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 9, 16) and torch.isfinite(logits).all()


@pytest.mark.parametrize("rcps, n_layer, safetensors_bytes", [(False, 4, 7_746_792), (True, 16, 30_937_760)],
                         ids=["caduceus-ph_seqlen-1k_d_model-256_n_layer-4", "caduceus-ps_seqlen-131k"])
def test_fixtures_at_the_published_sizes_have_the_published_byte_sizes(rcps, n_layer, safetensors_bytes):
    """Unshrunk, the fixtures are the published files to the byte: config.json as transformers writes it (sorted,
    indent 2) is 1375 bytes and model.safetensors has the published size, for both checkpoints (sizes pinned, per
    Hub revision, in a public Caduceus oracle script: ph-1k 9865108985311772704c2ece0bac082153a6167b, ps-131k
    d89eeb853136ea64da7feb3d0c8e909771b17ae6). So the key set, the tensor names, shapes and dtypes, and which tied
    tensors are left out are the published ones."""
    from safetensors.torch import save

    config = json.loads(CADUCEUS_PS_131K)
    config.update(rcps=rcps, n_layer=n_layer)
    assert len((json.dumps(config, indent=2, sort_keys=True) + "\n").encode()) == 1375
    state = {name: torch.zeros_like(t) for name, t in caduceus_tensors(config).items()}
    assert len(save(state, metadata={"format": "pt"})) == safetensors_bytes


def test_caduceus_config_of_the_current_code_loads(tmp_path):
    """kuleshov-group/caduceus caduceus/configuration_caduceus.py now also has ``gradient_checkpointing_stride``
    (written by its save_pretrained): a training-memory setting that a load ignores."""
    config = shrunk_caduceus_config(True, gradient_checkpointing_stride=1)
    folder = write_caduceus_checkpoint(tmp_path / "c", config, caduceus_tensors(config))
    assert CaduceusLM.from_pretrained(folder).config.rcps


@pytest.mark.parametrize("by_hub_id", [False, True], ids=["folder", "hub-id"])
def test_classify_train_init_from_a_published_caduceus(tmp_path, capsys, request, by_hub_id):
    """``mba dna classify train --init-from`` a Caduceus-ph checkpoint in the published format (a folder, or its
    Hub id served offline from a cache), one step."""
    config = shrunk_caduceus_config(False)
    state = caduceus_tensors(config)
    folder = write_caduceus_checkpoint(tmp_path / "caduceus-ph", config, state)
    if by_hub_id:
        from test_hub import add_to_cache

        folder = "kuleshov-group/caduceus-ph_seqlen-1k_d_model-256_n_layer-4_lr-8e-3"
        add_to_cache(request.getfixturevalue("hub_cache"), folder, tmp_path / "caduceus-ph")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = "ab"[i % 2]
        bases = list("GGCCA") if label == "a" else list("AATTG")
        rows.append(f"s{i},{''.join(rng.choice(bases, rng.integers(6, 30)))},{label},"
                    f"{'test' if i % 12 in (10, 11) else 'train'}\n")
    csv = tmp_path / "seqs.csv"
    csv.write_text("id,sequence,label,split\n" + "".join(rows))
    store, out = tmp_path / "store", tmp_path / "run"
    code, _, err = run(["dna", "classify", "prepare", csv, "--out", store, "--split-column", "split",
                        "--id-column", "id"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "classify", "train", "--data", store, "--out", out, "--max-steps", "1",
                        "--batch-size", "4", "--device", "cpu", "--init-from", folder], capsys)
    assert code == 0, err
    from mamba_bio_audio.tasks.caduceus_init import load_caduceus_classifier
    from mamba_bio_audio.tasks.windows import model_dir

    trained = load_caduceus_classifier(model_dir(out))
    assert trained.config.d_model == 16 and trained.config.n_layer == 2 and not trained.config.rcps
    # the backbone started from the checkpoint: after one step the embedding is still near the file's
    start = state["caduceus.backbone.embeddings.word_embeddings.weight"]
    moved = (trained.backbone.embeddings.word_embeddings.weight.detach() - start).abs().max()
    assert moved < 0.05, moved


def test_fixture_key_sets_are_the_published_ones():
    """The shrinking changes values only: every published key is kept, with its value's type."""
    for text, shrunk in ((MAMBA_130M_HF, shrunk_hf_config(MAMBA_130M_HF)),
                         (MAMBA_2P8B_HF, shrunk_hf_config(MAMBA_2P8B_HF)),
                         (CADUCEUS_PS_131K, shrunk_caduceus_config(True))):
        published = json.loads(text)
        assert set(shrunk) == set(published)
        assert all(type(shrunk[k]) is type(published[k]) for k in published)
