"""`mba audio train --short-files pack` end to end on a small folder of recordings (CPU, tiny SaShiMi): the files
shorter than the window are packed into rows, the longer ones give windows; the run resumes; a warm-up that would
cut packed rows off the model's stride is one line with exit code 2."""

from __future__ import annotations

import json

import pytest
from test_audio import RATE, write_recordings

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("audio_pack")
    write_recordings(root / "rec")  # 1,200 .. 3,200 samples at 8 kHz
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in ["audio", "prepare", "--from", root / "rec", "--out", root / "store",
                               "--sample-rate", RATE, "--val-fraction", "0.2", "--test-fraction", "0.2"]])
    assert info.value.code == 0
    return root / "store"


def train_args(store, out, *extra):
    return ["audio", "train", "--data", store, "--out", out, "--preset", "tiny", "--window", "2048",
            "--short-files", "pack", "--max-steps", "3", "--batch-size", "2", "--val-windows", "2", "--device",
            "cpu", *extra]


def test_train_packs_short_files(store, tmp_path, capsys):
    index = json.loads((store / "index.json").read_text())
    train_lengths = [r["length"] for r in index["records"] if r["split"] == "train"]
    short = [n for n in train_lengths if n < 2048]
    assert short and len(short) < len(train_lengths)  # both kinds of file in the train split
    code, _, err = run(train_args(store, tmp_path / "run", "--warmup-min-length", "512", "--warmup-stage-steps",
                                  "1"), capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["short_files"] == "pack" and metrics["files_left_out"] == []
    assert metrics["train_files"] == len(train_lengths)
    packing = metrics["packing"]
    assert packing["files"] == len(short) and packing["rows"] >= 1 and 0 < packing["fill"] <= 1
    assert 0 < metrics["val_bits_per_sample"] < 9
    # a resumed run continues to a longer budget
    code, _, err = run(train_args(store, tmp_path / "run", "--warmup-min-length", "512", "--warmup-stage-steps",
                                  "1", "--resume", "--max-steps", "4"), capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4


def test_misaligned_warmup_is_one_line(store, tmp_path, capsys):
    code, _, err = run(train_args(store, tmp_path / "bad", "--warmup-min-length", "8"), capsys)
    assert_one_line_error(code, err, "--warmup-min-length 8: --short-files pack needs a multiple of the model's "
                                     "stride 16")
    assert not (tmp_path / "bad").exists()
