"""``mba species``: prepare -> train -> evaluate -> predict on tiny synthetic genomes (CPU, a few steps), resume,
and one-line errors with exit code 2 for bad inputs, leaving no output behind."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import yaml

from mamba_bio_audio.cli import main
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

from helpers import assert_one_line_error
from helpers import run_cli as run

TRAIN = ["--preset", "tiny", "--length", "64", "--batch-size", "4", "--val-per-species", "2",
         "--checkpoint-every", "1", "--device", "cpu"]




@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("species")


@pytest.fixture(scope="module")
def genomes(work):
    write_synthetic_genomes(work / "genomes", n_species=3, strains=3, length=3_000, seed=0)
    return work / "genomes"


@pytest.fixture(scope="module")
def store(genomes, work):
    with pytest.raises(SystemExit) as info:
        main(["species", "prepare", "--genomes", str(genomes), "--out", str(work / "store"), "--split-by", "strain"])
    assert info.value.code == 0
    return work / "store"


@pytest.fixture(scope="module")
def trained(store, work):
    out = work / "run"
    with pytest.raises(SystemExit) as info:
        main(["species", "train", "--data", str(store), "--out", str(out), "--max-steps", "2", *TRAIN])
    assert info.value.code == 0
    return out


def test_prepare_holds_out_whole_strains(store):
    index = json.loads((store / "index.json").read_text())
    assert index["meta"]["species"] == ["synth_00", "synth_01", "synth_02"]
    for species in index["meta"]["species"]:
        splits = {r["split"]: r["strain"] for r in index["records"] if r["species"] == species}
        assert sorted(splits) == ["test", "train", "val"] and len(set(splits.values())) == 3


def test_train_writes_model_config_and_metrics(trained):
    for name in ("config.yaml", "metrics.json", "model/config.json", "model/model.safetensors",
                 "checkpoints/last.ckpt"):
        assert (trained / name).is_file(), name
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["length"] == 64 and config["max_steps"] == 2 and config["batch_size"] == 4
    model_config = json.loads((trained / "model" / "config.json").read_text())
    assert model_config["vocab_size"] == 12
    assert model_config["extra"]["classifier"]["labels"] == ["synth_00", "synth_01", "synth_02"]
    assert model_config["extra"]["dna"]["window"] == 64
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["val_windows"] == 6 and metrics["preset"] == "tiny"


def test_evaluate_scores_model_and_baseline_on_the_same_windows(trained, store, work, capsys):
    out = work / "eval"
    code, stdout, err = run(["species", "evaluate", "--checkpoint", trained, "--data", store, "--lengths", "64,128",
                             "--per-species", "4", "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["length"] for r in metrics["per_length"]] == [64, 128]
    first = metrics["per_length"][0]
    assert metrics["accuracy"] == first["accuracy"] and metrics["confusion_matrix"] == first["confusion_matrix"]
    for row in metrics["per_length"]:
        matrix = np.array(row["confusion_matrix"])
        assert matrix.shape == (3, 3) and matrix.sum() == row["windows"] == 12
        assert (matrix.sum(axis=1) == 4).all()  # 4 windows of each true species
        assert np.trace(matrix) / 12 == pytest.approx(row["accuracy"])
        assert np.array(row["baseline_confusion_matrix"]).sum() == 12 and 0 <= row["baseline_accuracy"] <= 1
    assert metrics["baseline"]["k"] == 6 and metrics["chance"] == pytest.approx(1 / 3)
    assert (out / "accuracy_vs_length.png").stat().st_size > 1000
    assert "6-mer LR" in stdout
    again = run(["species", "evaluate", "--checkpoint", trained, "--data", store, "--lengths", "64,128",
                 "--per-species", "4", "--out", work / "eval2", "--device", "cpu"], capsys)
    assert again[0] == 0
    assert json.loads((work / "eval2" / "metrics.json").read_text())["per_length"][0]["confusion_matrix"] == \
        first["confusion_matrix"]  # fixed windows: the same scores every time


def test_predict_per_record_and_per_window(trained, genomes, work, capsys):
    fasta = [genomes / "synth_00.fa", genomes / "synth_01.fa"]
    code, _, err = run(["species", "predict", "--checkpoint", trained, *fasta, "--out", work / "preds.tsv",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    header, *rows = [line.split("\t") for line in (work / "preds.tsv").read_text().splitlines()]
    assert header == ["file", "record", "length", "windows", "predicted", "p_synth_00", "p_synth_01", "p_synth_02"]
    assert len(rows) == 6  # 3 strains (records) per file
    for row in rows:
        assert sum(float(p) for p in row[5:]) == pytest.approx(1, abs=1e-4)
        assert row[4] in header[5:][int(np.argmax([float(p) for p in row[5:]]))]
    code, _, err = run(["species", "predict", "--checkpoint", trained / "model", fasta[0], "--window", "100",
                        "--max-windows", "5", "--out", work / "windows.tsv", "--device", "cpu"], capsys)
    assert code == 0, err
    header, *rows = [line.split("\t") for line in (work / "windows.tsv").read_text().splitlines()]
    assert header[:4] == ["file", "record", "start", "end"] and len(rows) == 15
    assert all(int(r[3]) - int(r[2]) == 100 for r in rows)
    assert all(sum(float(p) for p in r[5:]) == pytest.approx(1, abs=1e-4) for r in rows)
    again = ["species", "predict", "--checkpoint", trained, fasta[0], "--out", work / "windows.tsv", "--device", "cpu"]
    code, _, err = run(again, capsys)  # an existing file: only with --overwrite
    assert_one_line_error(code, err, "windows.tsv", "--overwrite")
    assert len((work / "windows.tsv").read_text().splitlines()) == 16
    code, _, err = run([*again, "--overwrite"], capsys)
    assert code == 0, err
    assert len((work / "windows.tsv").read_text().splitlines()) == 4  # now per record: 3 records


def test_resume_continues_the_run(trained, store, work, capsys):
    out = work / "resumed"
    shutil.copytree(trained, out)
    code, _, err = run(["species", "train", "--data", store, "--out", out, "--max-steps", "3", *TRAIN], capsys)
    assert_one_line_error(code, err, "already holds a training run", "--resume")
    code, _, err = run(["species", "train", "--data", store, "--out", out, "--max-steps", "3", "--resume", *TRAIN],
                       capsys)
    assert code == 0, err
    import torch

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert json.loads((out / "metrics.json").read_text())["max_steps"] == 3


def test_warmup_checkpointing_and_bidirectional(store, work, capsys):
    out = work / "warm"
    code, stdout, err = run(["species", "train", "--data", store, "--out", out, "--length", "128", "--max-steps", "3",
                             "--batch-size", "2", "--warmup-min-length", "32", "--warmup-stage-steps", "1",
                             "--checkpoint-activations", "--bidirectional", "--pooling", "mean",
                             "--val-per-species", "0",
                             "--device", "cpu"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sequence_length_warmup"]["stages"] == [
        {"from_step": 0, "length": 32}, {"from_step": 1, "length": 64}, {"from_step": 2, "length": 128}]
    assert metrics["checkpoint_activations"] and metrics["bidirectional"] and "val_accuracy" not in metrics
    assert "32 from step 0, 64 from step 1, 128 from step 2" in stdout
    logged = (out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    seqlens = [row.split(",")[logged[0].split(",").index("train/seqlen")] for row in logged[1:]]
    assert {float(x) for x in seqlens if x} == {32.0, 64.0}  # logged while folded; the last stage is unfolded
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["bidirectional"] is True and config["extra"]["classifier"]["pooling"] == "mean"


# ---- bad input ----------------------------------------------------------------------------------------------------
def _genomes_with(tmp_path, name: str, content: bytes):
    folder = tmp_path / "genomes"
    folder.mkdir()
    (folder / "good.fa").write_text(">g1\n" + "ACGT" * 50 + "\n")
    (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.fa", b"", "empty file"),
    ("noheader.fa", b"ACGTACGT\n", "no FASTA header"),
    ("corrupt.fa.gz", gzip.compress(b">x\nACGT\n" * 100)[:-30] + b"\0" * 5, "corrupt gzip"),
    ("dup.fa", b">a\nACGT\n>a\nACGT\n", "duplicate record id 'a'"),
    ("bad.fa", b">r\nACGTXACGT\n", "invalid character 'X'"),
])
def test_bad_genome_files_fail_in_one_line_and_write_nothing(tmp_path, capsys, name, content, fragment):
    genomes = _genomes_with(tmp_path, name, content)
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", tmp_path / "store"], capsys)
    assert_one_line_error(code, err, name, fragment)
    assert not (tmp_path / "store").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["genomes"]  # no temporary leftovers either


def test_window_longer_than_every_record_fails_before_writing(store, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["species", "train", "--data", store, "--out", out, "--length", "100000", "--device", "cpu"],
                       capsys)
    assert_one_line_error(code, err, str(store), "has no train record of at least 100000 tokens")
    assert not out.exists()


def test_missing_store_and_non_checkpoints(store, trained, tmp_path, capsys):
    code, _, err = run(["species", "train", "--data", tmp_path / "nope", "--out", tmp_path / "r", "--length", "64"],
                       capsys)
    assert_one_line_error(code, err, "nope", "not a token store")
    assert not (tmp_path / "r").exists()
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "config.json").write_text("{not json")
    for checkpoint, fragment in [(tmp_path / "missing", "no such run or model folder"),
                                 (store, "not a run folder"),
                                 (tmp_path / "notrun", "not a readable JSON config")]:
        code, _, err = run(["species", "evaluate", "--checkpoint", checkpoint, "--data", store, "--lengths", "64",
                            "--out", tmp_path / "ev"], capsys)
        assert_one_line_error(code, err, str(checkpoint), fragment)
        code, _, err = run(["species", "predict", "--checkpoint", checkpoint, tmp_path / "x.fa",
                            "--out", tmp_path / "p.tsv"], capsys)
        assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "ev").exists() and not (tmp_path / "p.tsv").exists()


def test_predict_bad_fasta_writes_no_tsv(trained, tmp_path, capsys):
    (tmp_path / "good.fa").write_text(">a\n" + "ACGT" * 40 + "\n")
    (tmp_path / "empty.fa").write_text("")
    code, _, err = run(["species", "predict", "--checkpoint", trained, tmp_path / "good.fa", tmp_path / "empty.fa",
                        "--out", tmp_path / "p.tsv", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "empty.fa", "empty file")
    assert not (tmp_path / "p.tsv").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--warmup-min-length", "48"], "power of two"),
    (["--preset", "huge"], "--preset"),
    (["--length", "1"], "--length"),
])
def test_bad_training_flags(store, tmp_path, capsys, args, fragment):
    code, _, err = run(["species", "train", "--data", store, "--out", tmp_path / "r", "--length", "64",
                        "--device", "cpu", *args], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


def test_a_runs_config_starts_a_new_run(trained, store, tmp_path, capsys):
    """`--config RUN/config.yaml --out NEW` trains a new run with the same options, also from the config of a
    resumed run (which records resume: true): --resume and --overwrite come from the command line only."""
    import yaml

    config = yaml.safe_load((trained / "config.yaml").read_text())
    config["resume"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run(["species", "train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "new",
                        "--max-steps", "1"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "new" / "metrics.json").read_text())["steps"] == 1


def test_a_resume_does_not_fit_the_probe_again(store, monkeypatch):
    """The checkpoint's weights replace the head on --resume: the probe is not fitted again (nor its time taken
    from the budget twice)."""
    from mamba_bio_audio.tasks import species

    def probe(*args, **kwargs):
        raise AssertionError("probed on resume")

    monkeypatch.setattr(species, "_probe_head", probe)
    settings = species.SpeciesSettings(length=64, preset="tiny", batch_size=4, max_steps=2, device="cpu",
                                       head_init="probe", val_per_species=0)
    plan = species.plan_training(store, settings, resume=True)
    assert "probe" not in plan.summary
    with pytest.raises(AssertionError, match="probed on resume"):
        species.plan_training(store, settings)
