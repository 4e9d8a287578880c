"""``--resume`` of species train, dna classify train, dna pretrain and the synthetic tasks continues the run as it
was: options not given take the run's saved values (config.yaml keeps them, ``preset`` included), a planning
option given with another value is a one-line error, and config.yaml is not rewritten before the checks pass.
``dna pretrain --genomes/--bed`` under an external launcher is refused before anything is written."""

from __future__ import annotations

import json

import pytest
import yaml

from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIES = ["--length", "32", "--device", "cpu", "--val-per-species", "0", "--batch-size", "4"]


def config_of(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def genomes(work):
    write_synthetic_genomes(work / "genomes", n_species=2, strains=3, length=1_000, seed=0)
    return work / "genomes"


@pytest.fixture(scope="module")
def store(genomes, work):
    from mamba_bio_audio.cli import main

    with pytest.raises(SystemExit) as info:
        main(["species", "prepare", "--genomes", str(genomes), "--out", str(work / "store"), "--split-by", "strain"])
    assert info.value.code == 0
    return work / "store"


def species_run(store, out, capsys, *extra):
    return run(["species", "train", "--data", store, "--out", out, *SPECIES, *extra], capsys)


# ---- species train ------------------------------------------------------------------------------------------------
def test_species_resume_without_preset_keeps_it_and_resumes_again(store, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = species_run(store, out, capsys, "--preset", "tiny", "--max-steps", "1")
    assert code == 0, err
    code, _, err = species_run(store, out, capsys, "--max-steps", "2", "--resume")
    assert code == 0, err
    assert config_of(out)["preset"] == "tiny" and config_of(out)["max_steps"] == 2
    code, _, err = species_run(store, out, capsys, "--max-steps", "3", "--resume")
    assert code == 0, err
    code, _, err = species_run(store, out, capsys, "--max-steps", "4", "--resume", "--preset", "tiny")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_species_resume_takes_a_saved_flag_and_a_saved_null_preset_is_not_recorded(store, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = species_run(store, out, capsys, "--preset", "tiny", "--max-steps", "1", "--bidirectional",
                               "--rc-prob", "0.25")
    assert code == 0, err
    config = config_of(out)
    (out / "config.yaml").write_text(yaml.safe_dump({**config, "preset": None}))  # as an earlier resume wrote it
    code, _, err = species_run(store, out, capsys, "--max-steps", "2", "--resume", "--preset", "tiny")
    assert code == 0, err  # the bidirectional model of the checkpoint, not a one-way one
    config = config_of(out)
    assert config["bidirectional"] is True and config["rc_prob"] == 0.25 and config["preset"] == "tiny"


@pytest.mark.parametrize("extra, fragments", [
    (["--batch-size", "2"], ["--batch-size 2", "with --batch-size 4"]),
    (["--seed", "7"], ["--seed 7", "with --seed 0"]),
    (["--rc-prob", "0.1"], ["--rc-prob 0.1", "with --rc-prob 0.5"]),
    (["--lr", "0.5"], ["--lr 0.5", "with --lr "]),
    (["--accumulate", "2"], ["--accumulate 2", "with --accumulate 1"]),
    (["--warmup-min-length", "16"], ["--warmup-min-length 16", "without --warmup-min-length"]),
    (["--pooling", "last"], ["--pooling last", "with --pooling mean"]),
    (["--preset", "paper-1.4m"], ["--preset paper-1.4m", "with --preset tiny"]),
])
def test_species_resume_with_another_planning_option_is_one_line(store, work, tmp_path, capsys, extra, fragments):
    out = species_first_run(store, work, capsys)
    before = (out / "config.yaml").read_bytes()
    code, _, err = run(["species", "train", "--data", store, "--out", out, "--length", "32", "--device", "cpu",
                        "--val-per-species", "0", "--resume", *(["--batch-size", "4"] if "--batch-size" not in extra
                                                                 else []), *extra], capsys)
    assert_one_line_error(code, err, *fragments, str(out), "--resume continues it as it was")
    assert (out / "config.yaml").read_bytes() == before


def test_species_resume_with_other_data_or_init_from_is_one_line(store, work, tmp_path, capsys):
    import shutil

    out = species_first_run(store, work, capsys)
    before = (out / "config.yaml").read_bytes()
    other = tmp_path / "store2"
    shutil.copytree(store, other)
    code, _, err = species_run(other, out, capsys, "--resume")
    assert_one_line_error(code, err, f"--data {other}", f"with --data {store}", str(out))
    code, _, err = species_run(store, out, capsys, "--resume", "--init-from", work / "species-first")
    assert_one_line_error(code, err, "--init-from", "leave --init-from out")
    code, _, err = species_run(store, out, capsys, "--resume", "--max-steps", "1", "--num-workers", "0",
                               "--checkpoint-every", "7", "--device", "cpu")
    assert code == 0, err  # run-time options may differ
    assert (out / "config.yaml").read_bytes() != before and config_of(out)["checkpoint_every"] == 7


def species_first_run(store, work, capsys):
    """A fresh copy of a finished one-step tiny species run (module-scoped training, copied per test)."""
    import shutil
    import uuid

    from mamba_bio_audio.cli import main

    source = work / "species-first"
    if not source.exists():
        with pytest.raises(SystemExit) as info:
            main(["species", "train", "--data", str(store), "--out", str(source), *SPECIES, "--preset", "tiny",
                  "--max-steps", "1"])
        assert info.value.code == 0
        capsys.readouterr()
    out = work / f"copy-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, out)
    return out


# ---- dna classify train -------------------------------------------------------------------------------------------
def write_csv(path, n_labels: int, n=24):
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = "abc"[i % n_labels]
        rows.append(f"s{i},{''.join(rng.choice(list('ACGT'), 12 + i % 5))},{label},{'test' if i % 8 == 7 else 'train'}")
    path.write_text("id,sequence,label,split\n" + "\n".join(rows) + "\n")
    return path


def classify_store(tmp_path, capsys, n_labels: int, name="store"):
    code, _, err = run(["dna", "classify", "prepare", write_csv(tmp_path / f"{name}.csv", n_labels), "--out",
                        tmp_path / name, "--split-column", "split", "--id-column", "id", "--overwrite"], capsys)
    assert code == 0, err
    return tmp_path / name


CLASSIFY = ["--batch-size", "4", "--device", "cpu", "--val-every", "100"]


def test_classify_resume_keeps_preset_and_options(tmp_path, capsys):
    store = classify_store(tmp_path, capsys, 2)
    out = tmp_path / "run"
    args = ["dna", "classify", "train", "--data", store, "--out", out, *CLASSIFY]
    code, _, err = run([*args, "--preset", "tiny", "--max-steps", "1", "--class-weights"], capsys)
    assert code == 0, err
    code, _, err = run([*args, "--max-steps", "2", "--resume"], capsys)
    assert code == 0, err
    config = config_of(out)
    assert config["preset"] == "tiny" and config["class_weights"] is True and config["max_steps"] == 2
    assert json.loads((out / "metrics.json").read_text())["class_weights"] is not None
    code, _, err = run([*args, "--max-steps", "3", "--resume", "--preset", "tiny"], capsys)
    assert code == 0, err
    before = (out / "config.yaml").read_bytes()
    for extra, fragments in [(["--lr", "0.5"], ["--lr 0.5", "with --lr"]),
                             (["--seed", "3"], ["--seed 3", "with --seed 0"]),
                             (["--bidirectional"], ["--bidirectional", "with --unidirectional"]),
                             (["--init-from", store], ["--init-from", "leave --init-from out"])]:
        code, _, err = run([*args, "--resume", *extra], capsys)
        assert_one_line_error(code, err, *fragments)
        assert (out / "config.yaml").read_bytes() == before


def test_classify_resume_on_a_store_with_other_classes_leaves_config_alone(tmp_path, capsys):
    store = classify_store(tmp_path, capsys, 2)
    out = tmp_path / "run"
    args = ["dna", "classify", "train", "--data", store, "--out", out, *CLASSIFY, "--preset", "tiny"]
    code, _, err = run([*args, "--max-steps", "1"], capsys)
    assert code == 0, err
    before = (out / "config.yaml").read_bytes()
    classify_store(tmp_path, capsys, 3)  # the same path, prepared again with three labels
    code, _, err = run([*args, "--max-steps", "2", "--resume"], capsys)
    assert_one_line_error(code, err, "does not fit the model", "[2", "[3")
    assert (out / "config.yaml").read_bytes() == before


# ---- dna pretrain -------------------------------------------------------------------------------------------------
PRETRAIN = ["--length", "32", "--batch-size", "4", "--val-per-species", "0", "--device", "cpu"]


def test_pretrain_resume_takes_the_saved_source_and_refuses_changes(genomes, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["dna", "pretrain", "--genomes", genomes, "--out", out, "--max-steps", "1", *PRETRAIN,
                        "--preset", "paper-1.4m"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "pretrain", "--out", out, "--max-steps", "2", "--resume", *PRETRAIN], capsys)
    assert code == 0, err  # --genomes, --preset (not the default tiny) and everything else as the run had them
    config = config_of(out)
    assert config["genomes"] == str(genomes) and config["max_steps"] == 2 and config["preset"] == "paper-1.4m"
    before = (out / "config.yaml").read_bytes()
    for extra, fragments in [(["--model-type", "mamba"], ["--model-type mamba", "without --model-type"]),
                             (["--lr", "0.5"], ["--lr 0.5", "with --lr"]),
                             (["--data", out / "store"], [f"--data {out / 'store'}", "without --data"]),
                             (["--preset", "tiny"], ["--preset tiny", "with --preset paper-1.4m"]),
                             (["--no-rcps"], ["--no-rcps", "with --rcps"])]:
        code, _, err = run(["dna", "pretrain", "--out", out, "--resume", *PRETRAIN, *extra], capsys)
        assert_one_line_error(code, err, *fragments, str(out))
        assert (out / "config.yaml").read_bytes() == before


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"SLURM_NTASKS": "4"}])
def test_pretrain_preparing_a_store_under_a_launcher_is_refused(genomes, tmp_path, capsys, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run(["dna", "pretrain", "--genomes", genomes, "--out", tmp_path / "r", "--max-steps", "1",
                        *PRETRAIN], capsys)
    assert_one_line_error(code, err, "--genomes", f"launcher of {next(iter(env.values()))} processes",
                          "mba species prepare", "--data STORE")
    (tmp_path / "g.fa").write_text(">chr1\n" + "ACGT" * 100 + "\n")
    (tmp_path / "a.bed").write_text("chr1\t0\t200\ttrain\n")
    code, _, err = run(["dna", "pretrain", "--bed", tmp_path / "a.bed", "--fasta", tmp_path / "g.fa", "--out",
                        tmp_path / "r", "--max-steps", "1", *PRETRAIN], capsys)
    assert_one_line_error(code, err, "--bed", "launcher", "--data STORE")
    assert not (tmp_path / "r").exists()


# ---- synthetic ----------------------------------------------------------------------------------------------------
def test_synthetic_resume_of_another_model_leaves_config_alone(micro_presets, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["synthetic", "induction-heads", "--out", out, "--device", "cpu", "--max-steps", "1"], capsys)
    assert code == 0, err
    before = (out / "config.yaml").read_bytes()
    code, _, err = run(["synthetic", "induction-heads", "--out", out, "--device", "cpu", "--max-steps", "2",
                        "--resume", "--arch", "no-gate"], capsys)
    assert_one_line_error(code, err, "trained another model", "no-gate")
    assert (out / "config.yaml").read_bytes() == before
    code, _, err = run(["synthetic", "induction-heads", "--out", out, "--device", "cpu", "--max-steps", "2",
                        "--resume"], capsys)
    assert code == 0, err
