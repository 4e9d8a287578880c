"""Training stops cleanly on a real SIGTERM / SIGINT (``kill``) of a CPU ``mba species train`` in a subprocess: a
resumable checkpoint at the next step, metrics.json with ``stopped_by``, exit 143 / 130, one line on stderr; and
``--resume`` then ends with the same weights, bit for bit, as a run that was never stopped.

Before: SIGTERM exited 0 and saved nothing; SIGINT exited 1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from mamba_bio_audio.cli import main
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

STEPS = 12
# a checkpoint every step tells the test that training is under way (the handlers are set at its start)
TRAIN = ["--preset", "tiny", "--length", "64", "--batch-size", "4", "--val-per-species", "0",
         "--checkpoint-every", "1", "--device", "cpu", "--max-steps", str(STEPS)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    write_synthetic_genomes(root / "genomes", n_species=2, strains=3, length=1_500, seed=0)
    with pytest.raises(SystemExit) as info:
        main(["species", "prepare", "--genomes", str(root / "genomes"), "--out", str(root / "store"),
              "--split-by", "strain"])
    assert info.value.code == 0
    return root / "store"


def mba(args, stderr_path, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    with open(stderr_path, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "mamba_bio_audio", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=err, env=env, text=True, **kw)


def train_and_signal(store, out, tmp_path, signum):
    """Start a run, wait until its first training step is under way, send ``signum``; (exit code, stderr)."""
    err = tmp_path / f"{out.name}.stderr"
    proc = mba(["species", "train", "--data", store, "--out", out, *TRAIN], err)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("step*.ckpt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, err.read_text()
    proc.send_signal(signum)
    proc.communicate(timeout=300)
    return proc.returncode, err.read_text()


def last_line(stderr: str) -> list[str]:
    """stderr lines that are not progress: a terminal's bar redraws, or (stderr is a file here) the plain progress
    lines of training.progress.LineProgress."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not line.lstrip().startswith(("Epoch", "Training", "Validation", "\x1b"))
            and not re.match(r"(training: (steps|from step) \d+|step \d+(/\d+ \(\d+%\))?[: ])", line)]


def test_sigterm_saves_stops_143_and_resume_is_bit_identical(store, tmp_path):
    stopped = tmp_path / "stopped"
    code, stderr = train_and_signal(store, stopped, tmp_path, signal.SIGTERM)
    assert code == 143, stderr
    lines = last_line(stderr)
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume" in lines[0], stderr
    assert "Traceback" not in stderr
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["stopped_by"] == "SIGTERM" and 1 <= metrics["global_step"] < STEPS
    assert (stopped / "checkpoints" / "last.ckpt").is_file()

    resume = mba(["species", "train", "--data", store, "--out", stopped, *TRAIN, "--resume"],
                 tmp_path / "resume.stderr")
    reference = tmp_path / "reference"
    whole = mba(["species", "train", "--data", store, "--out", reference, *TRAIN], tmp_path / "whole.stderr")
    assert resume.wait(timeout=600) == 0, (tmp_path / "resume.stderr").read_text()
    assert whole.wait(timeout=600) == 0, (tmp_path / "whole.stderr").read_text()
    assert "stopped_by" not in json.loads((stopped / "metrics.json").read_text())
    got = load_file(stopped / "model" / "model.safetensors")
    want = load_file(reference / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].equal(want[name]), name


def test_sigint_saves_stops_130(store, tmp_path):
    out = tmp_path / "run"
    code, stderr = train_and_signal(store, out, tmp_path, signal.SIGINT)
    assert code == 130, stderr
    assert "stopped by SIGINT" in last_line(stderr)[-1] and "Traceback" not in stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_by"] == "SIGINT" and metrics["global_step"] >= 1
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_a_resumed_run_keeps_one_last_checkpoint(store, tmp_path):
    """last.ckpt written outside Lightning's ModelCheckpoint (at the end of fit, or by a stop) is the one the
    resumed run's periodic saves replace: before, they went to last-v1.ckpt and last.ckpt stayed at the resume
    point, so a hard kill then restarted from there."""
    base = ["species", "train", "--data", store, "--out", tmp_path / "run", "--preset", "tiny", "--length", "64",
            "--batch-size", "4", "--val-per-species", "0", "--device", "cpu"]
    for extra in (["--max-steps", "3", "--checkpoint-every", "1000"],
                  ["--max-steps", "6", "--checkpoint-every", "1", "--resume"]):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in base + extra])
        assert info.value.code == 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
