"""Caduceus models: RC equivariance as a property (RCPS, and Ph averaging for any model), BiMamba's tied in/out
projections, the checkpoint layout (tied tensors written once, either partner accepted), config refusals, and
equality with Caduceus' own modeling code on random weights (also on the PlantCaduceus config, saved by Caduceus'
code as its base ``Caduceus`` or its masked LM, and mapped to our DNA vocabulary).

The ``reference`` tests run Caduceus' code (``CADUCEUS_SRC``: a checkout of kuleshov-group/caduceus) on CPU with
mamba_ssm's modules (``MAMBA_SSM_SRC``: a checkout of state-spaces/mamba) whose CUDA scan and Triton norms are
swapped for mamba_ssm's own reference functions (``selective_scan_ref``, ``rms_norm_ref``, ``layer_norm_ref``);
without both checkouts, einops and transformers 4 (Caduceus' code predates transformers 5) it is skipped, e.g.

    pip install --target /tmp/tf4 --no-deps transformers==4.46.3 huggingface_hub==0.26.5 tokenizers==0.20.3 \
        einops requests urllib3 idna charset_normalizer certifi regex
    PYTHONPATH=/tmp/tf4 CADUCEUS_SRC=caduceus MAMBA_SSM_SRC=mamba pytest tests/models/test_caduceus.py
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.models.caduceus import CaduceusConfig, CaduceusLM, rc_average, rc_ids

pytestmark = pytest.mark.usefixtures("one_thread")

# Caduceus' character tokenizer: [CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK] A C G T N
COMPLEMENT = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 10, "8": 9, "9": 8, "10": 7, "11": 11}
SSM = {"d_state": 4, "d_conv": 4, "expand": 2, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1,
       "dt_init": "random", "dt_scale": 1.0, "dt_init_floor": 1e-4, "conv_bias": True, "bias": False,
       "use_fast_path": True}


def _config(**changes) -> CaduceusConfig:
    base = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "ssm_cfg": dict(SSM), "rms_norm": True,
            "residual_in_fp32": False, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
            "bidirectional": True, "bidirectional_strategy": "add", "bidirectional_weight_tie": True,
            "rcps": True, "complement_map": dict(COMPLEMENT)}
    return CaduceusConfig(**{**base, **changes})


def _model(seed=0, **changes) -> CaduceusLM:
    torch.manual_seed(seed)
    model = CaduceusLM(_config(**changes)).eval()
    with torch.no_grad():  # off the initialisation (ones, zeros), so a mis-wired tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def _ids(batch=2, seqlen=17, seed=0) -> torch.Tensor:
    return torch.randint(7, 12, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("strategy", ["add", "ew_multiply"])
def test_rcps_logits_are_rc_equivariant(fused, strategy):
    model = _model(fused_add_norm=fused, bidirectional_strategy=strategy)
    complement = model.config.complement_ids()
    ids = _ids()
    with torch.no_grad():
        logits, rc_logits = model(ids), model(rc_ids(ids, complement))
    assert logits.shape == (2, 17, 16)  # the padded vocabulary, as Caduceus' logits
    torch.testing.assert_close(rc_logits, logits.flip(1)[..., complement], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rc_logits, logits.flip(1), atol=1e-3)  # the complement matters


def test_the_fused_and_unfused_half_orders_are_different_models():
    fused, unfused = _model(0, fused_add_norm=True), _model(0, fused_add_norm=False)
    ids = _ids()
    with torch.no_grad():
        assert not torch.allclose(fused(ids), unfused(ids), atol=1e-3)


def test_ph_average_makes_a_plain_model_equivariant():
    model = _model(rcps=False, fused_add_norm=True)
    complement = model.config.complement_ids()
    ids = _ids()
    with torch.no_grad():
        plain, plain_rc = model(ids), model(rc_ids(ids, complement))
        averaged = rc_average(model, ids, complement)
        averaged_rc = rc_average(model, rc_ids(ids, complement), complement)
    assert not torch.allclose(plain_rc, plain.flip(1)[..., complement], atol=1e-3)
    torch.testing.assert_close(averaged_rc, averaged.flip(1)[..., complement], rtol=1e-5, atol=1e-5)


def test_bimamba_ties_only_the_projections():
    layer = _model(rcps=False).backbone.layers[0].mixer
    assert layer.mamba_rev.in_proj.weight is layer.mamba_fwd.in_proj.weight
    assert layer.mamba_rev.out_proj.weight is layer.mamba_fwd.out_proj.weight
    for name in ("conv1d.weight", "x_proj.weight", "dt_proj.weight", "A_log", "D"):
        fwd, rev = layer.mamba_fwd.get_parameter(name), layer.mamba_rev.get_parameter(name)
        assert fwd is not rev and not torch.equal(fwd, rev)
    untied = _model(rcps=False, bidirectional_weight_tie=False).backbone.layers[0].mixer
    assert untied.mamba_rev.in_proj.weight is not untied.mamba_fwd.in_proj.weight


@pytest.mark.parametrize("rcps, fused", [(True, True), (True, False), (False, True)])
def test_checkpoint_round_trip_and_names(tmp_path, rcps, fused):
    model = _model(rcps=rcps, fused_add_norm=fused)
    folder = model.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    sub = ".submodule" if rcps else ""
    assert f"caduceus.backbone.layers.0.mixer{sub}.mamba_fwd.in_proj.weight" in state
    assert f"caduceus.backbone.layers.0.mixer{sub}.mamba_rev.conv1d.weight" in state
    assert f"caduceus.backbone.layers.0.mixer{sub}.mamba_rev.in_proj.weight" not in state  # tied: once
    assert ("caduceus.backbone.layers.0.norm.submodule.weight" in state) == (rcps and not fused)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "caduceus"
    ids = _ids()
    with torch.no_grad():
        expected = model(ids)
        assert torch.equal(CaduceusLM.from_pretrained(folder)(ids), expected)
        # transformers may keep the other name of a tied pair: the reverse mixer's, and the head's
        for name, partner in model._tied_names().items():
            state[name] = state.pop(partner)
        save_file(state, str(folder / "model.safetensors"))
        loaded = CaduceusLM.from_pretrained(folder)
        assert torch.equal(loaded(ids), expected)
    assert loaded.backbone.layers[1].mixer.__class__.__name__ == ("RCPSWrapper" if rcps else "BiMamba")


def test_a_tied_pair_that_differs_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model()
    folder = model.save_pretrained(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    name, partner = next(iter(model._tied_names().items()))
    state[name] = state[partner] + 1
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="should be tied"):
        CaduceusLM.from_pretrained(folder)


@pytest.mark.parametrize("changes, fragment", [
    ({"complement_map": None}, "needs a complement_map"),
    ({"complement_map": {**COMPLEMENT, "7": 9}}, "map each token id"),
    ({"complement_map": {**COMPLEMENT, "1": 2, "2": 3, "3": 1}}, "its own inverse"),
    ({"bidirectional_strategy": "concat"}, "bidirectional_strategy"),
    ({"ssm_cfg": {**SSM, "layer": "Mamba2"}}, "only Mamba1"),
    ({"ssm_cfg": {**SSM, "headdim": 8}}, "unknown Caduceus ssm_cfg fields: headdim"),
])
def test_config_refusals(changes, fragment):
    with pytest.raises(UserError, match=fragment):
        _config(**changes)


def test_vocab_and_complement_are_padded_as_caduceus_does():
    config = _config()
    assert config.vocab_size == 16 and config.complement_map["15"] == 15
    assert config.complement_ids()[7:11].tolist() == [10, 9, 8, 7]


# ---- Caduceus' own code -------------------------------------------------------------------------------------------
def _function_source(path: Path, names: set[str]) -> str:
    tree = ast.parse(path.read_text())
    return "\n\n".join(ast.get_source_segment(path.read_text(), node) for node in tree.body
                       if isinstance(node, ast.FunctionDef) and node.name in names)


STUB_NORM = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

{functions}


def rms_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, **kwargs):
    out = rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm)
    if prenorm and residual_in_fp32:
        return out[0], out[1].float()
    return out


def layer_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6,
                  is_rms_norm=False, **kwargs):
    ref = rms_norm_ref if is_rms_norm else layer_norm_ref
    out = ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm)
    if prenorm and residual_in_fp32:
        return out[0], out[1].float()
    return out


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5, device=None, dtype=None, **kwargs):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=prenorm,
                           residual_in_fp32=residual_in_fp32)
'''


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Caduceus' package and mamba_ssm's modules, importable on CPU (see the module docstring)."""
    caduceus_src, mamba_src = os.environ.get("CADUCEUS_SRC"), os.environ.get("MAMBA_SSM_SRC")
    if not caduceus_src or not mamba_src:
        pytest.skip("set CADUCEUS_SRC and MAMBA_SSM_SRC to checkouts of Caduceus and mamba_ssm")
    pytest.importorskip("einops")
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("Caduceus' code needs transformers 4 (its tie_weights predates transformers 5)")
    caduceus_src, mamba_src = Path(caduceus_src), Path(mamba_src)
    root = tmp_path_factory.mktemp("reference")
    files = {
        "mamba_ssm/__init__.py": "",
        "mamba_ssm/modules/__init__.py": "",
        "mamba_ssm/modules/mamba_simple.py": (mamba_src / "mamba_ssm/modules/mamba_simple.py").read_text(),
        "mamba_ssm/modules/block.py": (mamba_src / "mamba_ssm/modules/block.py").read_text(),
        "mamba_ssm/ops/__init__.py": "",
        "mamba_ssm/ops/triton/__init__.py": "",
        "mamba_ssm/ops/selective_scan_interface.py": (
            "import torch\nimport torch.nn.functional as F\nfrom einops import rearrange, repeat\n\n"
            + _function_source(mamba_src / "mamba_ssm/ops/selective_scan_interface.py", {"selective_scan_ref"})
            + "\n\nselective_scan_fn = selective_scan_ref\nmamba_inner_fn = None\n"),
        "mamba_ssm/ops/triton/layer_norm.py": STUB_NORM.format(functions=_function_source(
            mamba_src / "mamba_ssm/ops/triton/layer_norm.py", {"layer_norm_ref", "rms_norm_ref"})),
        "caduceus/__init__.py": "",
    }
    for name in ("configuration_caduceus.py", "modeling_caduceus.py", "modeling_rcps.py"):
        files[f"caduceus/{name}"] = (caduceus_src / "caduceus" / name).read_text()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    repo = str(Path(__file__).resolve().parents[2])
    saved = sys.path[:]
    sys.path[:] = [str(root)] + [p for p in sys.path if str(Path(p or os.getcwd()).resolve()) != repo]
    try:
        from caduceus.configuration_caduceus import CaduceusConfig as TheirConfig
        from caduceus.modeling_caduceus import CaduceusForMaskedLM
    finally:
        sys.path[:] = saved
    return TheirConfig, CaduceusForMaskedLM


@pytest.mark.parametrize("rcps, fused, strategy", [(True, True, "add"), (True, False, "add"),
                                                   (False, True, "add"), (True, True, "ew_multiply")])
def test_same_logits_as_caduceus_code(reference, tmp_path, rcps, fused, strategy):
    their_config_cls, their_model_cls = reference
    fields = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "ssm_cfg": dict(SSM), "rms_norm": True,
              "residual_in_fp32": False, "fused_add_norm": fused, "pad_vocab_size_multiple": 8,
              "bidirectional": True, "bidirectional_strategy": strategy, "bidirectional_weight_tie": True,
              "rcps": rcps, "complement_map": {int(k): v for k, v in COMPLEMENT.items()}}  # as its tokenizer's
    torch.manual_seed(0)
    theirs = their_model_cls(their_config_cls(**fields)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    # transformers refuses safetensors with Caduceus' shared tensors: a weights-only pytorch_model.bin then
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=False)
    ours = CaduceusLM.from_pretrained(tmp_path / "theirs").eval()
    ids = _ids()
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("saved_as", ["CaduceusForMaskedLM", "Caduceus"])
def test_plantcaduceus_as_caduceus_code_saves_it(reference, tmp_path, saved_as):
    """Caduceus' own code on the PlantCaduceus config (tests/models/test_real_hub_configs.py's fixture): its
    state_dict names are the fixture's; transformers' ``save_pretrained`` of the class the published config names
    (``Caduceus``: architectures ["Caduceus"], pytorch_model.bin) or of the masked LM loads here with its logits;
    mapped to our vocabulary, it gives the logits of the same bases."""
    import sys

    from test_real_hub_configs import PLANTCADUCEUS_TOKENIZER, plantcaduceus_config, plantcaduceus_state

    from mamba_bio_audio.models.caduceus import to_dna_vocabulary

    their_config_cls, their_lm_cls = reference
    config = plantcaduceus_config()
    torch.manual_seed(0)
    theirs = their_lm_cls(their_config_cls(**config)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    assert set(theirs.state_dict()) == set(plantcaduceus_state(config))
    assert set(theirs.caduceus.state_dict()) == set(plantcaduceus_state(config, base_model=True))
    module = theirs if saved_as == "CaduceusForMaskedLM" else theirs.caduceus
    assert type(module).__name__ == saved_as and type(module) is getattr(sys.modules[their_lm_cls.__module__],
                                                                          saved_as)
    folder = tmp_path / "theirs"
    module.save_pretrained(folder, safe_serialization=False)
    assert json.loads((folder / "config.json").read_text())["architectures"] == [saved_as]
    (folder / "tokenizer.json").write_text(PLANTCADUCEUS_TOKENIZER)
    ours = CaduceusLM.from_pretrained(folder).eval()
    seq = "ACGTTGCAAGGCATTACGTAGC"
    plant_ids = torch.tensor([[{"A": 3, "C": 4, "G": 5, "T": 6}[b] for b in seq]])
    with torch.no_grad():
        expected = theirs(input_ids=plant_ids).logits
        torch.testing.assert_close(ours(plant_ids), expected, rtol=0, atol=1e-5)
        mapped = to_dna_vocabulary(ours, folder, folder)
        hyena_ids = torch.tensor([[{"A": 7, "C": 8, "G": 9, "T": 10}[b] for b in seq]])
        torch.testing.assert_close(mapped(hyena_ids)[..., 7:11], expected[..., 3:7], rtol=0, atol=1e-5)


# ---- GPU: the Triton scan, conv and fused add-norm ------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("rcps", [True, False])
def test_gpu_triton_path_matches_the_cpu_reference(rcps):
    model = _model(rcps=rcps, fused_add_norm=True)
    ids = _ids(batch=2, seqlen=300)
    with torch.no_grad():
        expected = model(ids)
        got = model.cuda()(ids.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    if rcps:
        complement = model.config.complement_ids()
        with torch.no_grad():
            rc = model(rc_ids(ids, complement).cuda()).cpu()
        torch.testing.assert_close(rc, got.flip(1)[..., complement], rtol=1e-3, atol=1e-3)
