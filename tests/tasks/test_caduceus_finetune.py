"""Fine-tuning from a Caduceus checkpoint: the CaduceusClassifier (RC-invariant pooled features of an RCPS backbone,
a padded row's logits as alone, save / load), ``species train --init-from`` and ``dna classify train --init-from``
a tiny random CaduceusLM -> evaluate / predict (CPU), and on the GPU a few fine-tuning steps through the Triton
path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.models.caduceus import CaduceusLM, dna_caduceus_config, rc_ids
from mamba_bio_audio.models.caduceus_classifier import CaduceusClassifier

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")
SPECIES = ["--length", "64", "--batch-size", "4", "--val-per-species", "2"]


def _lm(rcps=True, d_model=16, seed=0) -> CaduceusLM:
    torch.manual_seed(seed)
    model = CaduceusLM(dna_caduceus_config(d_model, 2, rcps=rcps, d_state=4))
    with torch.no_grad():  # off the initialisation, so a weight not copied shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _classifier(rcps=True) -> CaduceusClassifier:
    lm = _lm(rcps)
    model = CaduceusClassifier(lm.config, num_classes=3, labels=["a", "b", "c"]).eval()
    model.backbone.load_state_dict(lm.backbone.state_dict())
    return model


def _bases(batch, seqlen, seed=0) -> torch.Tensor:
    return torch.randint(7, 11, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


# ---- the classifier -----------------------------------------------------------------------------------------------
def test_rcps_pooled_features_are_rc_invariant():
    model = _classifier(rcps=True)
    ids = _bases(3, 29)
    with torch.no_grad():
        features, rc = model.features(ids), model.features(rc_ids(ids, model.config.complement_ids()))
    torch.testing.assert_close(rc, features, rtol=1e-5, atol=1e-5)
    assert features.shape == (3, 16)


@pytest.mark.parametrize("rcps", [True, False])
def test_a_padded_row_gets_its_logits_alone(rcps):
    model = _classifier(rcps)
    ids = _bases(3, 20, seed=1)
    mask = torch.arange(20) < torch.tensor([20, 11, 5]).unsqueeze(1)
    with torch.no_grad():
        together = model(ids, mask)
        alone = torch.cat([model(ids[i:i + 1, :n]) for i, n in enumerate((20, 11, 5))])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="right padding"):
        model(ids, mask.flip(1))


def test_save_and_load_keep_the_weights_the_head_and_the_ties(tmp_path):
    model = _classifier()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["CaduceusClassifier"] and config["extra"]["classifier"]["num_classes"] == 3
    loaded = CaduceusClassifier.from_pretrained(tmp_path / "m").eval()
    assert loaded.labels == ["a", "b", "c"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    mixer = loaded.backbone.layers[1].mixer.submodule
    assert mixer.mamba_rev.out_proj.weight is mixer.mamba_fwd.out_proj.weight  # tied again after the load
    _lm().save_pretrained(tmp_path / "lm")
    with pytest.raises(Exception, match="not a classifier"):
        CaduceusClassifier.from_pretrained(tmp_path / "lm")


def test_build_classifier_takes_the_caduceus_backbone(tmp_path):
    from mamba_bio_audio.tasks.classify import build_model
    from mamba_bio_audio.tasks.species import build_classifier

    lm = _lm()
    lm.save_pretrained(tmp_path / "lm")
    model = build_classifier(["x", "y"], 64, init_from=tmp_path / "lm", pooling="mean")
    assert isinstance(model, CaduceusClassifier) and model.config.extra["dna"]["window"] == 64
    for name, tensor in lm.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    model.save_pretrained(tmp_path / "cls")  # a fine-tuned Caduceus classifier is a donor too (its head is new)
    again = build_model(["p", "q", "r"], 32, None, False, "mean", tmp_path / "cls")
    assert again.num_classes == 3 and again.labels == ["p", "q", "r"]
    for name, tensor in lm.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[name], tensor), name


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _classifier().train()
    ids, labels = _bases(2, 33, seed=3), torch.tensor([0, 2])

    def grads():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(ids), labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing = True
    assert model.backbone.gradient_checkpointing
    again = grads()
    assert plain.keys() == again.keys() and len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(again[name], grad, rtol=1e-6, atol=1e-7)


# ---- species and classify through the CLI -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def species_store(tmp_path_factory):
    from mamba_bio_audio.cli import main

    work = tmp_path_factory.mktemp("cad_species")
    write_synthetic_genomes(work / "genomes", n_species=2, strains=3, length=2_000, seed=2)
    with pytest.raises(SystemExit) as info:
        main(["species", "prepare", "--genomes", str(work / "genomes"), "--out", str(work / "store"),
              "--split-by", "strain"])
    assert info.value.code == 0
    return work / "store"


def test_species_train_evaluate_predict_from_a_caduceus(species_store, tmp_path, capsys):
    from mamba_bio_audio.tasks.species import load_classifier

    lm = _lm(d_model=16)
    lm.save_pretrained(tmp_path / "caduceus")
    out = tmp_path / "run"
    code, _, err = run(["species", "train", "--data", species_store, "--out", out, "--max-steps", "2",
                        "--init-from", tmp_path / "caduceus", "--device", "cpu", *SPECIES], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 <= metrics["val_accuracy"] <= 1 and metrics["d_model"] == 16
    model = load_classifier(out)
    assert isinstance(model, CaduceusClassifier)
    code, _, err = run(["species", "evaluate", "--checkpoint", out, "--data", species_store, "--out",
                        tmp_path / "ev", "--lengths", "64", "--per-species", "2"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= result["accuracy"] <= 1
    fasta = next((species_store.parent / "genomes").iterdir())
    code, _, err = run(["species", "predict", "--checkpoint", out, fasta, "--out", tmp_path / "p.tsv"], capsys)
    assert code == 0, err
    assert (tmp_path / "p.tsv").read_text().startswith("file\trecord")


def test_species_train_from_a_caduceus_refuses_another_preset(species_store, tmp_path, capsys):
    _lm().save_pretrained(tmp_path / "caduceus")
    code, _, err = run(["species", "train", "--data", species_store, "--out", tmp_path / "r", "--init-from",
                        tmp_path / "caduceus", "--preset", "tiny", "--device", "cpu", *SPECIES], capsys)
    assert_one_line_error(code, err, "drop --preset")
    assert not (tmp_path / "r").exists()


def test_classify_train_evaluate_predict_from_a_caduceus(tmp_path, capsys):
    from test_classify import make_rows, write_fixtures

    _lm(rcps=False).save_pretrained(tmp_path / "caduceus")  # a "ph" (non-RCPS) one here
    fixtures = write_fixtures(tmp_path / "in", make_rows())
    store, out = tmp_path / "store", tmp_path / "run"
    code, _, err = run(["dna", "classify", "prepare", fixtures["csv"], "--out", store, "--split-column", "split",
                        "--id-column", "id"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "classify", "train", "--data", store, "--out", out, "--max-steps", "2",
                        "--batch-size", "4", "--device", "cpu", "--init-from", tmp_path / "caduceus"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "classify", "evaluate", "--checkpoint", out, "--data", store, "--out",
                        tmp_path / "ev"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert result["n"] == 8 and 0 <= result["model"]["accuracy"] <= 1
    code, _, err = run(["dna", "classify", "predict", "--checkpoint", out, fixtures["csv"], "--out",
                        tmp_path / "p.tsv"], capsys)
    assert code == 0, err
    rows = (tmp_path / "p.tsv").read_text().splitlines()
    assert len(rows) == 49 and np.isclose(sum(float(x) for x in rows[1].split("\t")[-2:]), 1, atol=1e-5)
    code, _, err = run(["dna", "classify", "train", "--data", store, "--out", tmp_path / "packed", "--pack",
                        "--device", "cpu", "--init-from", tmp_path / "caduceus"], capsys)
    assert_one_line_error(code, err, "--pack needs a Mamba classifier")


# ---- GPU: the Triton path -----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_species_fine_tuning_from_a_caduceus_through_triton(species_store, tmp_path):
    from mamba_bio_audio.tasks.species import SpeciesSettings, plan_training, run_training

    lm = _lm(rcps=True, d_model=32)
    lm.save_pretrained(tmp_path / "caduceus")
    settings = SpeciesSettings(length=64, max_steps=4, batch_size=4, val_per_species=2, device="cuda",
                               init_from=str(tmp_path / "caduceus"), progress=False)
    plan = plan_training(species_store, settings)
    assert isinstance(plan.model, CaduceusClassifier)
    before = {k: v.detach().clone() for k, v in plan.model.backbone.state_dict().items()}
    metrics = run_training(plan, tmp_path / "run")
    assert metrics["steps"] == 4 and np.isfinite(metrics["val_accuracy"])
    model = plan.model.cuda().train()
    batch = {"input_ids": _bases(4, 64).cuda(), "label": torch.tensor([0, 1, 0, 1]).cuda()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = plan.task.compute_loss(batch)
    assert torch.isfinite(loss)
    after = model.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)  # the backbone was fine-tuned
