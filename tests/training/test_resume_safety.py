"""``--resume`` reads ``checkpoints/last.ckpt`` only with ``weights_only=True``: a planted pickle that would run code
is refused in one line (exit 2) and its code never runs, also under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``; a
truncated checkpoint is one line too; a resume with another ``--preset`` is refused before the run's config.yaml
is touched."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.errors import CheckpointError
from mamba_bio_audio.training.trainer import load_training_checkpoint

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--preset", "tiny", "--length", "64", "--batch-size", "4", "--val-per-species", "0",
         "--checkpoint-every", "1", "--device", "cpu"]


class Planted:
    """Unpickling this runs ``touch PATH`` (what an attacker's last.ckpt would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step `species train` run on tiny synthetic genomes (CPU, a few seconds)."""
    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("resume")
    write_synthetic_genomes(root / "genomes", n_species=2, strains=3, length=1_500, seed=0)
    for args in (["species", "prepare", "--genomes", root / "genomes", "--out", root / "store", "--split-by",
                  "strain"],
                 ["species", "train", "--data", root / "store", "--out", root / "run", "--max-steps", "2", *TRAIN]):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        assert info.value.code == 0
    return root


@pytest.fixture
def copy(run_dir, tmp_path):
    """A copy of the run to plant files in."""
    out = tmp_path / "run"
    shutil.copytree(run_dir / "run", out)
    return out


def plant(ckpt, side_effect):
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 2, "evil": Planted(side_effect)}, ckpt)


def test_our_checkpoint_loads_with_weights_only(run_dir):
    checkpoint = load_training_checkpoint(run_dir / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2 and checkpoint["state_dict"] and checkpoint["optimizer_states"]


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_a_planted_pickle_is_refused_and_never_runs(run_dir, copy, tmp_path, capsys, monkeypatch, force_unsafe):
    """Before: Lightning loaded last.ckpt with torch's default weights_only (False on torch 2.4/2.5 or under
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1): the pickle ran os.system and training went on with exit 0; on torch 2.14
    without the variable, a 69-line traceback."""
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    side_effect = tmp_path / "pwned"
    plant(copy / "checkpoints" / "last.ckpt", side_effect)
    code, _, err = run(["species", "train", "--data", run_dir / "store", "--out", copy, "--max-steps", "3",
                        "--resume", *TRAIN], capsys)
    assert_one_line_error(code, err, "last.ckpt", "refusing to load it")
    assert not side_effect.exists()
    with pytest.raises(CheckpointError):
        load_training_checkpoint(copy / "checkpoints" / "last.ckpt")
    assert not side_effect.exists()


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_a_truncated_checkpoint_is_one_line(run_dir, copy, capsys, keep):
    ckpt = copy / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    code, _, err = run(["species", "train", "--data", run_dir / "store", "--out", copy, "--max-steps", "3",
                        "--resume", *TRAIN], capsys)
    assert_one_line_error(code, err, "last.ckpt", "truncated or not a training checkpoint")


def test_resume_with_another_preset_is_refused_and_keeps_the_config(run_dir, copy, capsys):
    """Before: a traceback after the run's config.yaml was rewritten with the new preset (null -> paper-1.4m), so
    the README's `--config RUN/config.yaml --resume` then replayed the wrong options."""
    config = (copy / "config.yaml").read_bytes()
    code, _, err = run(["species", "train", "--data", run_dir / "store", "--out", copy, "--max-steps", "3",
                        "--resume", *TRAIN, "--preset", "paper-1.4m"], capsys)
    assert_one_line_error(code, err, "--preset paper-1.4m", "--resume")
    assert (copy / "config.yaml").read_bytes() == config


def test_resume_of_a_folder_that_is_not_a_run(run_dir, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("t")
    code, _, err = run(["species", "train", "--data", run_dir / "store", "--out", out, "--max-steps", "3",
                        "--resume", *TRAIN], capsys)
    assert_one_line_error(code, err, "not a run written by mba")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
