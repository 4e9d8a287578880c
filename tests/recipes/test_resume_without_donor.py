"""``--resume`` of a fine-tuning run (``dna classify train`` / ``species train --init-from DONOR``) needs only the
run folder: the model is rebuilt from the run's own record (architecture.json), the donor is neither read nor
required, the checkpoint's steps are not trained again, and metrics.json keeps naming the donor (and, for species,
the first part's pretrain_overlap). A missing donor on a fresh run is still a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.training.module import MambaTask

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIFY = ["--batch-size", "4", "--device", "cpu", "--val-every", "100", "--checkpoint-every", "1"]
SPECIES = ["--length", "64", "--batch-size", "4", "--val-per-species", "0", "--device", "cpu",
           "--checkpoint-every", "1"]


@pytest.fixture
def steps_trained(monkeypatch):
    """How many training steps the commands run in this test take (a resume must not retrain the checkpoint's)."""
    count = [0]
    original = MambaTask.training_step

    def counting(self, batch, batch_idx):
        count[0] += 1
        return original(self, batch, batch_idx)

    monkeypatch.setattr(MambaTask, "training_step", counting)
    return count


def as_if_killed(out):
    """The run folder of a run killed after its last checkpoint: no model/, metrics.json as the signal left it."""
    shutil.rmtree(out / "model")
    (out / "metrics.json").write_text(json.dumps({"stopped_by": "SIGTERM", "global_step": 2}) + "\n")


def write_csv(path, n=24):
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [f"s{i},{''.join(rng.choice(list('ACGT'), 12 + i % 5))},{'ab'[i % 2]},{'test' if i % 8 == 7 else 'train'}"
            for i in range(n)]
    path.write_text("id,sequence,label,split\n" + "\n".join(rows) + "\n")
    return path


# ---- dna classify train -------------------------------------------------------------------------------------------
def test_classify_resume_after_the_donor_moved(tmp_path, capsys, steps_trained):
    store = tmp_path / "store"
    code, _, err = run(["dna", "classify", "prepare", write_csv(tmp_path / "seqs.csv"), "--out", store,
                        "--split-column", "split", "--id-column", "id"], capsys)
    assert code == 0, err
    train = ["dna", "classify", "train", "--data", store, *CLASSIFY]
    donor = tmp_path / "donor"
    code, _, err = run([*train, "--out", donor, "--preset", "tiny", "--max-steps", "1"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    code, _, err = run([*train, "--out", out, "--init-from", donor, "--max-steps", "2", "--bidirectional"], capsys)
    assert code == 0, err
    first = json.loads((out / "metrics.json").read_text())
    assert first["init_from"] == str(donor) and first["steps"] == 2
    record = json.loads((out / "architecture.json").read_text())
    assert record["init_from"] == str(donor) and record["model"]["bidirectional"] is True
    as_if_killed(out)
    donor.rename(tmp_path / "donor-moved")
    steps_trained[0] = 0
    code, _, err = run([*train, "--out", out, "--max-steps", "3", "--resume"], capsys)
    assert code == 0, err
    assert steps_trained[0] == 1  # from the checkpoint's step 2, not from the start
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["init_from"] == str(donor) and metrics["bidirectional"] is True
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["init_from"] == str(donor) and config["max_steps"] == 3
    assert (out / "model" / "config.json").is_file()

    # a run begun before architecture.json existed: an earlier part's model/ gives the shape
    (out / "architecture.json").unlink()
    steps_trained[0] = 0
    code, _, err = run([*train, "--out", out, "--max-steps", "4", "--resume"], capsys)
    assert code == 0, err
    assert steps_trained[0] == 1 and json.loads((out / "metrics.json").read_text())["init_from"] == str(donor)
    assert json.loads((out / "architecture.json").read_text())["init_from"] == str(donor)  # recorded again

    # the checks of a resume stay: --init-from given again, and a fresh run from a missing donor
    code, _, err = run([*train, "--out", out, "--resume", "--init-from", tmp_path / "donor-moved"], capsys)
    assert_one_line_error(code, err, "--init-from", "leave --init-from out")
    code, _, err = run([*train, "--out", tmp_path / "fresh", "--init-from", donor, "--max-steps", "1"], capsys)
    assert_one_line_error(code, err, str(donor))
    assert not (tmp_path / "fresh" / "checkpoints").exists()


def test_classify_resume_from_a_caduceus_after_the_donor_was_deleted(tmp_path, capsys, steps_trained):
    """A Caduceus donor of the tiny preset's shape (d_model 64, 2 layers): config.yaml records preset tiny, which a
    Caduceus refuses; the resume builds the CaduceusClassifier from the run's record instead."""
    import torch

    from mamba_bio_audio.models.caduceus import CaduceusLM, dna_caduceus_config
    from mamba_bio_audio.tasks.species import load_classifier

    torch.manual_seed(0)
    donor = tmp_path / "caduceus"
    CaduceusLM(dna_caduceus_config(64, 2, rcps=True, d_state=4)).save_pretrained(donor)
    store = tmp_path / "store"
    code, _, err = run(["dna", "classify", "prepare", write_csv(tmp_path / "seqs.csv"), "--out", store,
                        "--split-column", "split", "--id-column", "id"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    train = ["dna", "classify", "train", "--data", store, "--out", out, *CLASSIFY]
    code, _, err = run([*train, "--init-from", donor, "--max-steps", "2"], capsys)
    assert code == 0, err
    as_if_killed(out)
    shutil.rmtree(donor)
    steps_trained[0] = 0
    code, _, err = run([*train, "--max-steps", "3", "--resume"], capsys)
    assert code == 0, err
    assert steps_trained[0] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["init_from"] == str(donor) and metrics["d_model"] == 64
    assert type(load_classifier(out)).__name__ == "CaduceusClassifier"


def test_classify_resume_with_an_unreadable_record_is_one_line(tmp_path, capsys):
    store = tmp_path / "store"
    code, _, err = run(["dna", "classify", "prepare", write_csv(tmp_path / "seqs.csv"), "--out", store,
                        "--split-column", "split", "--id-column", "id"], capsys)
    assert code == 0, err
    train = ["dna", "classify", "train", "--data", store, "--out", tmp_path / "run", *CLASSIFY, "--preset", "tiny"]
    code, _, err = run([*train, "--max-steps", "1"], capsys)
    assert code == 0, err
    before = (tmp_path / "run" / "config.yaml").read_bytes()
    (tmp_path / "run" / "architecture.json").write_text("{not json")
    code, _, err = run([*train, "--max-steps", "2", "--resume"], capsys)
    assert_one_line_error(code, err, "architecture.json")
    assert (tmp_path / "run" / "config.yaml").read_bytes() == before


# ---- species train from a dna pretrain run ------------------------------------------------------------------------
def test_species_resume_after_the_pretrained_donor_was_deleted(tmp_path, capsys, steps_trained):
    genomes = tmp_path / "genomes"
    write_synthetic_genomes(genomes, n_species=3, strains=3, length=3_000, seed=1)
    donor = tmp_path / "pretrained"
    code, _, err = run(["dna", "pretrain", "--genomes", genomes, "--split-by", "strain", "--out", donor,
                        "--max-steps", "1", *SPECIES], capsys)
    assert code == 0, err
    store = tmp_path / "species_store"  # split by record: held-out records the donor pretrained on
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", store, "--split-by", "record",
                        "--seed", "3"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    train = ["species", "train", "--data", store, "--out", out, *SPECIES]
    code, _, err = run([*train, "--init-from", donor, "--max-steps", "2"], capsys)
    assert code == 0, err
    overlap = json.loads((out / "metrics.json").read_text())["pretrain_overlap"]
    assert overlap["overlap_bases"] > 0
    as_if_killed(out)
    shutil.rmtree(donor)
    steps_trained[0] = 0
    code, _, err = run([*train, "--max-steps", "3", "--resume"], capsys)
    assert code == 0, err
    assert steps_trained[0] == 1 and "was pretrained on" not in err  # the donor was not read again
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["init_from"] == str(donor) and metrics["pretrain_overlap"] == overlap
    assert metrics["preset"] == "tiny"  # the donor's shape, as in the first part
