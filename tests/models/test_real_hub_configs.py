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
- ``kuleshov-group/PlantCaduceus_l20`` / ``_l24`` / ``_l28`` / ``_l32`` (RCPS Caduceus on plant genomes: config.json
  naming the base ``Caduceus`` class, ``pytorch_model.bin`` of a whole state_dict with tied tensors sharing storage,
  and GPN's 8-token lower-casing ``tokenizer.json``): loaded under either model's names, its vocabulary mapped to
  our DNA tokenizer's by token name (the mapped model computes the checkpoint's function of the same bases) or
  refused in one line, fine-tuned by ``classify train`` and ``species train --init-from`` (folder and Hub id).
  Unshrunk, the config.json, tokenizer.json and pytorch_model.bin have the published sizes.
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


def caduceus_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """name -> shape of each parameter of a ``CaduceusForMaskedLM`` of ``config``, each tied one once (see
    :func:`caduceus_tensors`)."""
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
    return names


def caduceus_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """What transformers 4.38's ``save_pretrained`` writes for kuleshov-group/caduceus' ``CaduceusForMaskedLM``
    (caduceus/modeling_caduceus.py, caduceus/modeling_rcps.py): ``caduceus.backbone.embeddings.word_embeddings``
    (``.embedding.weight`` and the ``complement_map`` buffer under RCPS), per layer a ``BiMambaWrapper`` mixer
    (``.submodule`` inside ``RCPSWrapper`` under RCPS) of ``mamba_fwd`` / ``mamba_rev`` and a ``norm``, then
    ``norm_f``; tensors sharing storage are written once (the first name: ``mamba_rev``'s in/out projections,
    tied to ``mamba_fwd``'s, and the LM head, tied to the embedding, are left out); an RCPS head keeps its
    ``lm_head.complement_map`` buffer."""
    g = torch.Generator().manual_seed(seed)
    state = {name: _random(shape, g, name) for name, shape in caduceus_shapes(config).items()}
    if config["rcps"]:
        cmap = torch.tensor([config["complement_map"][str(i)] for i in range(config["vocab_size"])])
        state["caduceus.backbone.embeddings.word_embeddings.complement_map"] = cmap
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
                         (CADUCEUS_PS_131K, shrunk_caduceus_config(True)),
                         (PLANTCADUCEUS_L24, plantcaduceus_config())):
        published = json.loads(text)
        assert set(shrunk) == set(published)
        assert all(type(shrunk[k]) is type(published[k]) for k in published)


# ---- PlantCaduceus ------------------------------------------------------------------------------------------------
# kuleshov-group/PlantCaduceus_l24 config.json (1,429 bytes; https://huggingface.co/kuleshov-group/PlantCaduceus_l24
# blame/main/config.json, commit e6b01d1 "PlantCaduceus_l24"). PlantCaduceus_l20's (commit ae54ca6, also 1,429 bytes)
# is the same text with d_model 384 and n_layer 20; _l28 and _l32 (1.43 kB) have d_model 768 / 1024 and n_layer 28 /
# 32 (their model cards: "28 layers, 768 hidden size", "32 layers, 1024 hidden size"). Beside what Caduceus' own
# configs have: "_name_or_path", "pad_token_id" -100, "architectures" ["Caduceus"] (the base model class), an
# auto_map into yairschiff/caduceus_base, residual_in_fp32 true, and GPN's 8-token vocabulary (below).
PLANTCADUCEUS_L24 = """{
  "_name_or_path": "yairschiff/caduceus_base",
  "architectures": ["Caduceus"],
  "auto_map": {
    "AutoConfig": "yairschiff/caduceus_base--configuration_caduceus.CaduceusConfig",
    "AutoModel": "yairschiff/caduceus_base--modeling_caduceus.Caduceus",
    "AutoModelForMaskedLM": "yairschiff/caduceus_base--modeling_caduceus.CaduceusForMaskedLM",
    "AutoModelForSequenceClassification": "yairschiff/caduceus_base--modeling_caduceus.CaduceusForSequenceClassification"
  },
  "bidirectional": true,
  "bidirectional_strategy": "add",
  "bidirectional_weight_tie": true,
  "complement_map": {"0": 0, "1": 1, "2": 2, "3": 6, "4": 5, "5": 4, "6": 3, "7": 7},
  "d_model": 512,
  "fused_add_norm": true,
  "initializer_cfg": {"initializer_range": 0.02, "n_residuals_per_layer": 1, "rescale_prenorm_residual": true},
  "model_type": "caduceus",
  "n_layer": 24,
  "norm_epsilon": 1e-05,
  "pad_token_id": -100,
  "pad_vocab_size_multiple": 8,
  "rcps": true,
  "residual_in_fp32": true,
  "rms_norm": true,
  "ssm_cfg": {"bias": false, "conv_bias": true, "d_conv": 4, "d_state": 16, "dt_init": "random",
              "dt_init_floor": 0.0001, "dt_max": 0.1, "dt_min": 0.001, "dt_rank": "auto", "dt_scale": 1.0,
              "expand": 2, "use_fast_path": true},
  "torch_dtype": "float32",
  "transformers_version": "4.37.2",
  "vocab_size": 8
}"""
PLANTCADUCEUS_SIZES = {"l20": (384, 20), "l24": (512, 24), "l28": (768, 28), "l32": (1024, 32)}

# Its tokenizer.json (1,117 bytes; .../PlantCaduceus_l24/blame/208dd61/tokenizer.json, the same file in every
# PlantCaduceus repository): songlab/tokenizer-dna-mlm's (GPN) vocabulary, a Lowercase normalizer, one token per
# character (BPE without merges); an N becomes [UNK]. PlantCaduceus' src/zero_shot_score.py reads the logits of
# tokenizer.get_vocab()[nc] for nc in "acgt".
PLANTCADUCEUS_TOKENIZER = """{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {
      "id": 0,
      "content": "[PAD]",
      "single_word": false,
      "lstrip": false,
      "rstrip": false,
      "normalized": false,
      "special": true
    },
    {
      "id": 1,
      "content": "[MASK]",
      "single_word": false,
      "lstrip": false,
      "rstrip": false,
      "normalized": false,
      "special": true
    },
    {
      "id": 2,
      "content": "[UNK]",
      "single_word": false,
      "lstrip": false,
      "rstrip": false,
      "normalized": false,
      "special": true
    }
  ],
  "normalizer": {
    "type": "Lowercase"
  },
  "pre_tokenizer": {
    "type": "Whitespace"
  },
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "BPE",
    "dropout": null,
    "unk_token": "[UNK]",
    "continuing_subword_prefix": null,
    "end_of_word_suffix": null,
    "fuse_unk": false,
    "byte_fallback": false,
    "vocab": {
      "[PAD]": 0,
      "[MASK]": 1,
      "[UNK]": 2,
      "a": 3,
      "c": 4,
      "g": 5,
      "t": 6
    },
    "merges": []
  }
}"""
# hyena-12 id -> PlantCaduceus id of the same token: [CLS] [SEP] [BOS] -> [UNK], [MASK] [PAD] [RESERVED] [UNK],
# A C G T -> a c g t, N -> [UNK] (what its tokenizer makes of an N)
HYENA_TO_PLANT = [2, 2, 2, 1, 0, 2, 2, 3, 4, 5, 6, 2]


def plantcaduceus_config(name: str = "l24", shrunk: bool = True) -> dict:
    """A PlantCaduceus config.json dict: the published text, sizes of ``name``, shrunk to D_MODEL / N_LAYER."""
    config = json.loads(PLANTCADUCEUS_L24)
    d_model, n_layer = (D_MODEL, N_LAYER) if shrunk else PLANTCADUCEUS_SIZES[name]
    config.update(d_model=d_model, n_layer=n_layer)
    return config


def plantcaduceus_state(config: dict, base_model: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state_dict a PlantCaduceus pytorch_model.bin holds: ``torch.save`` of a module's state_dict (pickle
    imports OrderedDict, FloatStorage, LongStorage, _rebuild_tensor_v2, as the Hub lists them), so every name is
    there and tied tensors share one storage (mamba_rev's in/out projections are mamba_fwd's; the LM head is the
    embedding): ``CaduceusForMaskedLM``'s (``caduceus.backbone.*``, ``lm_head.*``), or with ``base_model`` the
    ``Caduceus`` class its config names (``backbone.*``, no head). Which of the two the files hold is not
    published; both load."""
    from collections import OrderedDict

    state = caduceus_tensors(config, seed)
    for name in list(state):
        if ".mamba_fwd.in_proj." in name or ".mamba_fwd.out_proj." in name:
            state[name.replace(".mamba_fwd.", ".mamba_rev.")] = state[name]
    embedding = "caduceus.backbone.embeddings.word_embeddings." + ("embedding.weight" if config["rcps"] else "weight")
    state["lm_head.lm_head.weight" if config["rcps"] else "lm_head.weight"] = state[embedding]
    if base_model:
        state = {name[len("caduceus."):]: t for name, t in state.items() if name.startswith("caduceus.")}
    return OrderedDict(sorted(state.items()))


def write_plantcaduceus_checkpoint(folder: Path, config: dict, state: dict[str, torch.Tensor],
                                   tokenizer: str | None = PLANTCADUCEUS_TOKENIZER) -> Path:
    """A PlantCaduceus repository's model files: config.json, pytorch_model.bin, tokenizer.json."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    torch.save(state, folder / "pytorch_model.bin")
    if tokenizer is not None:
        (folder / "tokenizer.json").write_text(tokenizer)
    return folder


@pytest.mark.parametrize("base_model", [False, True], ids=["CaduceusForMaskedLM-names", "Caduceus-names"])
def test_published_plantcaduceus_checkpoint_loads(tmp_path, base_model):
    config = plantcaduceus_config()
    state = plantcaduceus_state(config, base_model)
    model = CaduceusLM.from_pretrained(write_plantcaduceus_checkpoint(tmp_path / "p", config, state)).eval()
    c = model.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.rcps, c.residual_in_fp32, c.fused_add_norm) == \
        (16, 2, 8, True, True, True)
    assert c.complement_map == {"0": 0, "1": 1, "2": 2, "3": 6, "4": 5, "5": 4, "6": 3, "7": 7}
    ours = model.state_dict()
    for name, tensor in state.items():  # each file tensor in the tensor of that name
        assert torch.equal(ours[name if not base_model else "caduceus." + name], tensor), name
    assert set(ours) - {"caduceus." + n for n in state} - set(state) == \
        ({"lm_head.lm_head.weight", "lm_head.complement_map"} if base_model else set())
    mixer = model.backbone.layers[1].mixer.submodule
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    assert model.lm_head.lm_head.weight is model.backbone.embeddings.word_embeddings.weight
    ids = torch.randint(3, 7, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 9, 8) and torch.isfinite(logits).all()


@pytest.mark.parametrize("rcps", [True, False], ids=["published", "rcps-false"])
def test_plantcaduceus_vocabulary_is_mapped_to_the_dna_tokenizer_by_token_name(tmp_path, rcps):
    """Its a c g t (ids 3-6) become our A C G T (7-10), N and the tokens it lacks its [UNK]: the mapped model on our
    ids computes what the checkpoint computes on its own ids for the same bases."""
    from mamba_bio_audio.data_prep.dna.tokenizer import encode
    from mamba_bio_audio.models.caduceus import dna_caduceus_config, to_dna_vocabulary

    config = plantcaduceus_config()
    config["rcps"] = rcps
    folder = write_plantcaduceus_checkpoint(tmp_path / "p", config, plantcaduceus_state(config))
    plant = CaduceusLM.from_pretrained(folder).eval()
    mapped = to_dna_vocabulary(plant, folder, folder)
    assert mapped is not plant and (mapped.config.vocab_size, mapped.config.d_model) == (16, 16)
    assert mapped.config.complement_map == dna_caduceus_config(16, 1).complement_map
    rows, old = mapped.backbone.embeddings.word_embeddings.weight, plant.backbone.embeddings.word_embeddings.weight
    torch.testing.assert_close(rows[:12], old[HYENA_TO_PLANT], rtol=0, atol=0)
    assert not rows[12:].any()
    seq = "ACGTTGCAANGGCATTACG"
    ours = torch.from_numpy(encode(seq).astype(np.int64)).unsqueeze(0)
    theirs = torch.tensor([[{"A": 3, "C": 4, "G": 5, "T": 6, "N": 2}[b] for b in seq]])
    with torch.no_grad():
        torch.testing.assert_close(mapped.backbone(ours), plant.backbone(theirs), rtol=0, atol=0)
        torch.testing.assert_close(mapped(ours)[..., 7:11], plant(theirs)[..., 3:7], rtol=1e-6, atol=1e-6)
    assert mapped.lm_head(torch.zeros(1, 16 * (2 if rcps else 1))).shape == (1, 16)
    skipped = {k for k in plant.state_dict() if "word_embeddings" in k or k.startswith("lm_head")}
    for name, tensor in plant.state_dict().items():  # every other tensor as loaded
        if name not in skipped:
            assert torch.equal(mapped.state_dict()[name], tensor), name


@pytest.mark.parametrize("problem", ["no tokenizer.json", "swapped bases", "no base", "id past vocab"])
def test_a_plantcaduceus_vocabulary_that_cannot_be_mapped_is_refused(tmp_path, problem):
    from mamba_bio_audio.errors import CheckpointError
    from mamba_bio_audio.models.caduceus import to_dna_vocabulary

    tokenizer = {"no tokenizer.json": None,
                 "swapped bases": PLANTCADUCEUS_TOKENIZER.replace('"a": 3', '"a": 4').replace('"c": 4', '"c": 3'),
                 "no base": PLANTCADUCEUS_TOKENIZER.replace('"g": 5,', '"x": 5,'),
                 "id past vocab": PLANTCADUCEUS_TOKENIZER.replace('"[UNK]": 2,', '"[UNK]": 2, "n": 9,')}[problem]
    config = plantcaduceus_config()
    folder = write_plantcaduceus_checkpoint(tmp_path / "p", config, plantcaduceus_state(config), tokenizer)
    expected = {"no tokenizer.json": "no tokenizer.json beside it", "swapped bases": "complement_map sends",
                "no base": "no token for the base G", "id past vocab": "outside the model's vocab_size 8"}[problem]
    with pytest.raises(CheckpointError, match=expected) as e:
        to_dna_vocabulary(CaduceusLM.from_pretrained(folder), folder, folder)
    assert "\n" not in str(e.value) and str(folder) in str(e.value)


@pytest.mark.parametrize("name", list(PLANTCADUCEUS_SIZES))
def test_plantcaduceus_fixtures_at_the_published_sizes(name):
    """Unshrunk, the config.json is the published one's size (1,429 bytes; _l32's 1,430, "1.43 kB"), the parameters
    the model cards' 20M / 40M / 112M / 225M, and the fixture's pytorch_model.bin the Hub's 83.6 MB (_l20) and
    175 MB (_l24) (_l32's 902 MB from its parameter bytes, the file too big to write here): that size needs the tied
    tensors stored once (untied, _l20's would be 154 MB). The tokenizer.json is the published 1,117 bytes."""
    import io

    config = plantcaduceus_config(name, shrunk=False)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    assert len(text.encode()) == (1430 if name == "l32" else 1429)
    assert len(PLANTCADUCEUS_TOKENIZER.encode()) == 1117
    params = sum(math.prod(shape) for shape in caduceus_shapes(config).values())
    assert round(params / 1e6) == {"l20": 21, "l24": 44, "l28": 112, "l32": 225}[name]
    megabytes = {"l20": 83.6, "l24": 175.0, "l32": 902.0}.get(name)
    if name in ("l20", "l24"):
        buffer = io.BytesIO()
        torch.save(plantcaduceus_state(config), buffer)
        assert round(buffer.tell() / 1e6, 1 if name == "l20" else 0) == megabytes
    elif name == "l32":
        assert round((4 * params + 150_000) / 1e6) == megabytes  # + l24's 149 kB of zip and pickle records


def test_plantcaduceus_hub_download_asks_for_its_tokenizer(tmp_path, monkeypatch):
    """Online, a Caduceus repository's tokenizer.json is fetched with its weights (a second snapshot), a Mamba
    repository's is not."""
    from mamba_bio_audio import hub

    calls = []

    class FakeHub:
        @staticmethod
        def snapshot_download(repo_id, revision=None, allow_patterns=(), cache_dir=None, local_files_only=False):
            calls.append((repo_id, tuple(allow_patterns)))
            return str(tmp_path / repo_id.split("/")[1])

    monkeypatch.setattr(hub, "_hub", lambda: FakeHub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = plantcaduceus_config()
    write_plantcaduceus_checkpoint(tmp_path / "PlantCaduceus_l20", config, plantcaduceus_state(config))
    hf = shrunk_hf_config(MAMBA_130M_HF)
    write_hf_checkpoint(tmp_path / "mamba-130m-hf", hf, mamba_tensors(hf))
    hub.download("kuleshov-group/PlantCaduceus_l20")
    hub.download("state-spaces/mamba-130m-hf")
    assert [patterns for _, patterns in calls] == [
        (*["config.json"], *hub.WEIGHT_PATTERNS), ("config.json", *hub.PICKLE_PATTERNS),
        ("config.json", *hub.PICKLE_PATTERNS, "tokenizer.json"), ("config.json", *hub.WEIGHT_PATTERNS)]


def _classify_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = "ab"[i % 2]
        bases = list("GGCCA") if label == "a" else list("AATTG")
        rows.append(f"s{i},{''.join(rng.choice(bases, rng.integers(6, 30)))},{label},"
                    f"{'test' if i % 12 in (10, 11) else 'train'}\n")
    csv = tmp_path / "seqs.csv"
    csv.write_text("id,sequence,label,split\n" + "".join(rows))
    return csv


@pytest.mark.parametrize("by_hub_id", [False, True], ids=["folder", "hub-id"])
def test_classify_train_init_from_plantcaduceus(tmp_path, capsys, request, by_hub_id):
    """``mba dna classify train --init-from`` a PlantCaduceus checkpoint (a folder, or kuleshov-group/PlantCaduceus_l20
    served offline from a cache), one step: the classifier reads our tokenizer's ids with the checkpoint's rows."""
    config = plantcaduceus_config()
    state = plantcaduceus_state(config)
    folder = write_plantcaduceus_checkpoint(tmp_path / "plant", config, state)
    if by_hub_id:
        from test_hub import add_to_cache

        folder = "kuleshov-group/PlantCaduceus_l20"
        add_to_cache(request.getfixturevalue("hub_cache"), folder, tmp_path / "plant")
    store, out = tmp_path / "store", tmp_path / "run"
    code, _, err = run(["dna", "classify", "prepare", _classify_csv(tmp_path), "--out", store, "--split-column",
                        "split", "--id-column", "id"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "classify", "train", "--data", store, "--out", out, "--max-steps", "1",
                        "--batch-size", "4", "--device", "cpu", "--init-from", folder], capsys)
    assert code == 0, err
    from mamba_bio_audio.tasks.caduceus_init import load_caduceus_classifier
    from mamba_bio_audio.tasks.windows import model_dir

    trained = load_caduceus_classifier(model_dir(out))
    c = trained.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.rcps, c.residual_in_fp32) == (16, 2, 16, True, True)
    start = state["caduceus.backbone.embeddings.word_embeddings.embedding.weight"][HYENA_TO_PLANT]
    moved = (trained.backbone.embeddings.word_embeddings.weight.detach()[:12] - start).abs().max()
    assert moved < 0.05, moved


def test_classify_train_init_from_plantcaduceus_without_its_tokenizer_is_one_line(tmp_path, capsys):
    from helpers import assert_one_line_error

    config = plantcaduceus_config()
    folder = write_plantcaduceus_checkpoint(tmp_path / "plant", config, plantcaduceus_state(config), None)
    store = tmp_path / "store"
    code, _, err = run(["dna", "classify", "prepare", _classify_csv(tmp_path), "--out", store, "--split-column",
                        "split", "--id-column", "id"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "classify", "train", "--data", store, "--out", tmp_path / "run", "--max-steps", "1",
                        "--device", "cpu", "--init-from", folder], capsys)
    assert_one_line_error(code, err, "no tokenizer.json beside it", str(folder))


def test_species_train_init_from_plantcaduceus_hub_id(tmp_path, capsys, hub_cache):
    """``mba species train --init-from kuleshov-group/PlantCaduceus_l32`` (the published format, shrunk), offline."""
    from test_hub import add_to_cache

    from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
    from mamba_bio_audio.tasks.species import load_classifier

    config = plantcaduceus_config("l32")
    state = plantcaduceus_state(config, seed=3)
    add_to_cache(hub_cache, "kuleshov-group/PlantCaduceus_l32",
                 write_plantcaduceus_checkpoint(tmp_path / "plant", config, state))
    write_synthetic_genomes(tmp_path / "genomes", n_species=2, strains=3, length=2_000, seed=2)
    code, _, err = run(["species", "prepare", "--genomes", tmp_path / "genomes", "--out", tmp_path / "store",
                        "--split-by", "strain"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    code, _, err = run(["species", "train", "--data", tmp_path / "store", "--out", out, "--max-steps", "1",
                        "--length", "64", "--batch-size", "4", "--val-per-species", "2", "--device", "cpu",
                        "--init-from", "kuleshov-group/PlantCaduceus_l32"], capsys)
    assert code == 0, err
    model = load_classifier(out)
    assert model.config.vocab_size == 16 and model.config.residual_in_fp32
    start = state["caduceus.backbone.embeddings.word_embeddings.embedding.weight"][HYENA_TO_PLANT]
    assert (model.backbone.embeddings.word_embeddings.weight.detach()[:12] - start).abs().max() < 0.05

