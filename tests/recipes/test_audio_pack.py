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


def test_skipped_short_files_are_one_warning_line(store, tmp_path, capsys):
    """--short-files skip (the default): the files left out are named in one line, not one line each (a folder of
    short clips printed a line per file), and all of them are in metrics.json."""
    code, _, err = run(["audio", "train", "--data", store, "--out", tmp_path / "skip", "--preset", "tiny", "--window",
                        "2048", "--max-steps", "1", "--batch-size", "2", "--val-windows", "2", "--device", "cpu"],
                       capsys)
    assert code == 0, err
    left = json.loads((tmp_path / "skip" / "metrics.json").read_text())["files_left_out"]
    assert len(left) >= 2
    lines = [line for line in err.splitlines() if "left out of training" in line]
    assert len(lines) == 1 and lines[0].startswith(f"mba audio train: warning: {len(left)} train files shorter "
                                                   f"than the 2048-sample window")
    assert left[0] in lines[0] and "files_left_out" in lines[0] and "--short-files pad or pack" in lines[0]


def test_left_out_lines_names_the_first_three():
    from mamba_bio_audio.recipes.audio import left_out_lines

    assert left_out_lines([], 8) == []
    assert left_out_lines(["a.wav"], 8) == ["1 train file shorter than the 8-sample window left out of training "
                                            "(a.wav; all in metrics.json files_left_out): --short-files pad or pack "
                                            "keeps them"]
    (line,) = left_out_lines([f"{i}.wav" for i in range(5)], 8)
    assert "(0.wav, 1.wav, 2.wav and 2 more;" in line and "3.wav" not in line
