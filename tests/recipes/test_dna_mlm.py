"""``mba dna pretrain --objective mlm`` (a Caduceus, masked-LM as Caduceus) on tiny synthetic genomes, then
``species train --init-from`` the run; the pairings that cannot learn are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from mamba_bio_audio.cli import main
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

from helpers import assert_one_line_error
from helpers import run_cli as run

SMALL = ["--length", "64", "--batch-size", "4", "--val-per-species", "2", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def genomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlm") / "genomes"
    write_synthetic_genomes(folder, n_species=3, strains=3, length=3_000, seed=1)
    return folder


@pytest.fixture(scope="module")
def pretrained(genomes):
    out = genomes.parent / "pretrained"
    with pytest.raises(SystemExit) as info:
        main(["dna", "pretrain", "--genomes", str(genomes), "--split-by", "strain", "--out", str(out),
              "--objective", "mlm", "--max-steps", "3", *SMALL])
    assert info.value.code == 0
    return out


def test_mlm_pretraining_saves_a_caduceus_and_reports_the_masked_loss(pretrained):
    from mamba_bio_audio.models.caduceus import CaduceusLM

    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["objective"] == "mlm" and metrics["model_type"] == "caduceus" and metrics["rcps"] is True
    assert metrics["steps"] == 3
    # 6 val windows of 64 bases, about 15% of them masked
    assert 20 < metrics["val_tokens"] < 100 and 1 < metrics["val_perplexity"] < 16
    assert metrics["val_bits_per_base"] == pytest.approx(metrics["val_loss"] / 0.6931471805599453)
    config = json.loads((pretrained / "model" / "config.json").read_text())
    assert config["model_type"] == "caduceus" and config["architectures"] == ["CaduceusForMaskedLM"]
    assert config["rcps"] is True and config["vocab_size"] == 16 and "extra" not in config
    model = CaduceusLM.from_pretrained(pretrained / "model")
    assert model.config.d_model == 64 and model.config.n_layer == 2  # the tiny preset's shape


def test_species_train_from_the_mlm_run(pretrained, genomes, capsys):
    from mamba_bio_audio.models.caduceus import CaduceusLM
    from mamba_bio_audio.tasks.species import load_classifier

    out = genomes.parent / "finetuned"
    code, _, err = run(["species", "train", "--data", pretrained / "store", "--out", out, "--max-steps", "1",
                        "--init-from", pretrained, *SMALL], capsys)
    assert code == 0, err
    model = load_classifier(out)
    assert type(model).__name__ == "CaduceusClassifier" and model.labels == ["synth_00", "synth_01", "synth_02"]
    lm = CaduceusLM.from_pretrained(pretrained / "model")
    changed = [not torch.equal(t, model.backbone.state_dict()[n]) for n, t in lm.backbone.state_dict().items()]
    assert any(changed)  # fine-tuned from it


@pytest.mark.parametrize("args, message", [
    (["--objective", "mlm", "--model-type", "mamba"], "--objective mlm needs a bidirectional model"),
    (["--model-type", "caduceus"], "--objective clm needs a causal model"),
    (["--objective", "mlm", "--pack"], "--pack needs a MambaLM"),
])
def test_pairings_that_cannot_learn_are_one_line(genomes, tmp_path, capsys, args, message):
    code, _, err = run(["dna", "pretrain", "--genomes", genomes, "--out", tmp_path / "r", *args, *SMALL], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "r").exists()
