"""`mba sc09` end to end on synthetic digits (CPU, 0.1 s clips at 8 kHz): prepare -> train -> generate ->
train-classifier -> evaluate; and bad inputs ending in one line with exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_bio_audio.cli import main
from mamba_bio_audio.data_prep.audio.synthetic import write_synthetic_digits

from helpers import assert_one_line_error
from helpers import run_cli as run

RATE, CLIP = 8000, 800




pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run the whole recipe once; tests read its outputs. Returns (folder, {command: (code, out, err)})."""
    root = tmp_path_factory.mktemp("sc09")
    write_synthetic_digits(root / "synth", sample_rate=RATE, speakers=1, takes=11, seed=0)
    capsys = _Capture()
    steps = {
        "prepare": ["sc09", "prepare", "--from-folder", root / "synth", "--out", root / "store",
                    "--sample-rate", str(RATE), "--clip-seconds", "0.1"],
        "train": ["sc09", "train", "--data", root / "store", "--out", root / "run", "--preset", "tiny",
                  "--max-steps", "3", "--batch-size", "2", "--val-clips", "2", "--val-every", "3",
                  "--device", "cpu"],
        "generate": ["sc09", "generate", "--checkpoint", root / "run", "--num-samples", "3", "--batch-size", "2",
                     "--out", root / "gen", "--device", "cpu", "--seed", "1"],
        "train-classifier": ["sc09", "train-classifier", "--data", root / "store", "--out", root / "clf",
                             "--preset", "tiny", "--epochs", "1", "--device", "cpu"],
        "evaluate": ["sc09", "evaluate", "--checkpoint", root / "run", "--data", root / "store", "--classifier",
                     root / "clf", "--samples", root / "gen", "--out", root / "eval", "--max-clips", "4",
                     "--device", "cpu"],
    }
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, args in steps.items():
            results[name] = capsys.run([str(a) for a in args])
            if results[name][0] != 0:
                break
    finally:
        torch.set_num_threads(threads)
    return root, results


class _Capture:
    """capsys is function-scoped; the module fixture captures through pytest's own machinery instead."""

    def run(self, args):
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as e:
                code = e.code
        return code, out.getvalue(), err.getvalue()


def test_every_command_succeeds(pipeline):
    _, results = pipeline
    assert list(results) == ["prepare", "train", "generate", "train-classifier", "evaluate"]
    for name, (code, _, err) in results.items():
        assert code == 0, f"{name}: {err[-2000:]}"


def test_prepare_and_train_outputs(pipeline):
    root, results = pipeline
    assert "train 10, val 50, test 50 clips at 8000 Hz" in results["prepare"][1]
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert 0 < metrics["val_bits_per_sample"] < 9 and metrics["clip_samples"] == CLIP
    assert metrics["arch"] == "sashimi" and metrics["sample_rate"] == RATE
    for name in ("config.yaml", "loss.png", "model/config.json", "model/model.safetensors", "checkpoints/last.ckpt"):
        assert (root / "run" / name).is_file(), name


def test_generate_writes_valid_wavs_likelihoods_and_spectrograms(pipeline):
    root, _ = pipeline
    wavs = sorted((root / "gen").glob("*.wav"))
    assert [w.name for w in wavs] == ["sample_0000.wav", "sample_0001.wav", "sample_0002.wav"]
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (RATE, CLIP, 1, "PCM_16")
        data, _ = sf.read(str(wav), dtype="float32")
        assert np.isfinite(data).all() and np.abs(data).max() <= 1.0
    rows = (root / "gen" / "likelihoods.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["file", "bits_per_sample", "log_likelihood_nats"] and len(rows) == 4
    assert all(0 < float(r.split("\t")[1]) < 9 for r in rows[1:])
    png = (root / "gen" / "spectrograms.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (root / "gen").glob(".*")] == [".mba-output"]  # our marker; no temp files left


def test_classifier_and_evaluate_outputs(pipeline):
    root, results = pipeline
    assert (root / "clf" / "model.safetensors").is_file()
    assert 0 <= json.loads((root / "clf" / "metrics.json").read_text())["test_accuracy"] <= 1
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert 0 < metrics["test_nll_bits_per_sample"] < 9 and metrics["nll_test_clips"] == 4
    assert set(metrics["scores"]) == {"real test set", "generated"}
    for row in metrics["scores"].values():
        assert {"fid", "is", "mis", "am", "n"} <= set(row)
        assert row["fid"] >= -1e-6 and 1 - 1e-9 <= row["is"] <= 10 and row["mis"] >= 1 - 1e-9 and row["am"] >= 0
    assert metrics["scores"]["generated"]["n"] == 3 and metrics["scores"]["real test set"]["n"] == 50
    table = (root / "eval" / "metrics.md").read_text()
    assert "| real test set |" in table and "| generated |" in table and "FID" in table


def test_listening_pages_of_generate_and_evaluate(pipeline):
    root, _ = pipeline
    generated = (root / "gen" / "index.html").read_text()
    assert generated.count("<audio") == 3 and "predicted label" not in generated
    evaluated = (root / "eval" / "index.html").read_text()
    assert evaluated.count('src="../gen/sample_') == 3 and "predicted label" in evaluated
    for src in re.findall(r'<img src="([^"]+)"', generated):
        assert (root / "gen" / src).is_file()


def test_evaluate_with_the_likelihood_threshold(pipeline, tmp_path, capsys):
    root, _ = pipeline
    code, _, err = run(["sc09", "generate", "--checkpoint", root / "run", "--num-samples", "20", "--batch-size", "20",
                        "--seconds", "0.02", "--out", tmp_path / "gen", "--device", "cpu"], capsys)
    assert code == 0, err
    code, out, err = run(["sc09", "evaluate", "--checkpoint", root / "run", "--data", root / "store",
                          "--classifier", root / "clf", "--samples", tmp_path / "gen", "--threshold", "best",
                          "--max-clips", "2", "--out", tmp_path / "eval", "--device", "cpu"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    band = metrics["threshold"]
    assert band["log_likelihoods"] == "likelihoods.tsv" and band["tune_samples"] == 10 and band["test_samples"] == 10
    assert metrics["scores"]["generated, likelihood band"]["n"] == band["kept_samples"] >= 2
    assert "| generated, likelihood band |" in out
    code, _, err = run(["sc09", "evaluate", "--checkpoint", root / "run", "--data", root / "store",
                        "--classifier", root / "clf", "--samples", root / "gen", "--threshold", "s4",
                        "--out", tmp_path / "eval3", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "at least 20 samples")


@pytest.mark.parametrize("case", ["missing-store", "no-source", "both-sources", "not-a-checkpoint",
                                  "corrupt-checkpoint", "strict-corrupt-file", "no-usable-files",
                                  "bad-classifier", "samples-folder-missing", "one-sample",
                                  "out-is-a-foreign-folder"])
def test_bad_inputs_end_in_one_line_and_exit_2(case, pipeline, tmp_path, capsys):
    root, _ = pipeline
    bad_audio = tmp_path / "audio"
    bad_audio.mkdir()
    (bad_audio / "3_x_1.wav").write_bytes(b"RIFF garbage")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.wav").write_bytes((root / "gen" / "sample_0000.wav").read_bytes())
    args, fragment = {
        "missing-store": (["train", "--data", tmp_path / "nope", "--out", tmp_path / "r"], "not a token store"),
        "no-source": (["prepare", "--out", tmp_path / "s"], "exactly one of"),
        "both-sources": (["prepare", "--from", bad_audio, "--from-folder", bad_audio, "--out", tmp_path / "s"],
                         "exactly one of"),
        "not-a-checkpoint": (["generate", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "g"],
                             "not a model checkpoint"),
        "corrupt-checkpoint": (["generate", "--checkpoint", _corrupt_copy(root / "run" / "model", tmp_path),
                                "--out", tmp_path / "g"], "corrupt"),
        "strict-corrupt-file": (["prepare", "--from-folder", bad_audio, "--out", tmp_path / "s", "--strict"],
                                "3_x_1.wav"),
        "no-usable-files": (["prepare", "--from-folder", bad_audio, "--out", tmp_path / "s"], "no usable audio"),
        "bad-classifier": (["evaluate", "--checkpoint", root / "run", "--data", root / "store", "--classifier",
                            tmp_path / "ckpt", "--out", tmp_path / "e"], "not a digit classifier"),
        "samples-folder-missing": (["evaluate", "--checkpoint", root / "run", "--data", root / "store",
                                    "--classifier", root / "clf", "--samples", tmp_path / "none",
                                    "--out", tmp_path / "e"], "no such folder"),
        "one-sample": (["evaluate", "--checkpoint", root / "run", "--data", root / "store", "--classifier",
                        root / "clf", "--samples", tmp_path / "one", "--out", tmp_path / "e"], "at least 2"),
        "out-is-a-foreign-folder": (["prepare", "--from-folder", bad_audio, "--out", bad_audio],
                                    "overlaps the input"),
    }[case]
    code, _, err = run(["sc09", *[str(a) for a in args]], capsys)
    assert_one_line_error(code, err, fragment)
    for out in ("s", "r", "g", "e"):
        assert not (tmp_path / out).exists() or not any((tmp_path / out).iterdir()), f"{out} half-written"


def test_bad_wavs_among_samples_are_skipped_with_a_warning(pipeline, tmp_path, capsys):
    root, _ = pipeline
    samples = tmp_path / "samples"
    samples.mkdir()
    data, _ = sf.read(str(root / "gen" / "sample_0000.wav"), dtype="float32")
    sf.write(str(samples / "stereo_16k.wav"), np.stack([data, data], 1).repeat(2, 0), 16000, subtype="PCM_16")
    sf.write(str(samples / "mono.wav"), data, RATE, subtype="PCM_16")
    (samples / "empty.wav").write_bytes(b"")
    sf.write(str(samples / "nan.wav"), np.full(100, np.nan, np.float32), RATE, subtype="FLOAT")
    code, out, err = run(["sc09", "evaluate", "--checkpoint", str(root / "run"), "--data", str(root / "store"),
                          "--classifier", str(root / "clf"), "--samples", str(samples), "--out",
                          str(tmp_path / "e"), "--max-clips", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning: skipped" in line]
    assert len(warnings) == 2 and any("empty.wav" in w for w in warnings) and any("nan.wav" in w for w in warnings)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["scores"]["generated"]["n"] == 2  # stereo 16 kHz converted (mono average, resampled), mono kept


def _corrupt_copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "corrupt"
    target.mkdir()
    (target / "config.json").write_text((model_dir / "config.json").read_text())
    (target / "model.safetensors").write_bytes(b"\x00" * 64)
    return target


def test_plain_mamba_lm_trains_and_generates(pipeline, tmp_path, capsys):
    root, _ = pipeline
    code, _, err = run(["sc09", "train", "--data", str(root / "store"), "--out", str(tmp_path / "run"), "--arch",
                        "mamba-lm", "--preset", "tiny", "--max-steps", "1", "--batch-size", "1", "--val-clips", "1",
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert "arch: mamba-lm" in (tmp_path / "run" / "config.yaml").read_text()
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert "architecture" not in config and config["extra"]["sample_rate"] == RATE
    code, _, err = run(["sc09", "generate", "--checkpoint", str(tmp_path / "run"), "--num-samples", "1",
                        "--seconds", "0.01", "--out", str(tmp_path / "gen"), "--device", "cpu"], capsys)
    assert code == 0, err
    assert sf.info(str(tmp_path / "gen" / "sample_0000.wav")).frames == 80


def test_prepare_from_a_speech_commands_tree(tmp_path, capsys):
    from mamba_bio_audio.data_prep.audio.io import write_wav
    from mamba_bio_audio.data_prep.audio.sc09 import DIGITS

    src = tmp_path / "speech_commands_v0.02"
    rng = np.random.default_rng(0)
    for word in (*DIGITS, "marvin"):
        for speaker in ("aa11", "bb22"):
            write_wav(src / word / f"{speaker}_nohash_0.wav", rng.uniform(-0.5, 0.5, 1600), 16000)
    (src / "validation_list.txt").write_text("one/aa11_nohash_0.wav\n")
    (src / "testing_list.txt").write_text("two/bb22_nohash_0.wav\nmarvin/aa11_nohash_0.wav\n")
    code, out, err = run(["sc09", "prepare", "--from", str(tmp_path), "--out", str(tmp_path / "store"),
                          "--sample-rate", "8000", "--encoding", "linear8"], capsys)
    assert code == 0, err
    assert "train 18, val 1, test 1 clips at 8000 Hz (linear8)" in out
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["meta"]["clip_samples"] == 8000 and index["meta"]["encoding"] == "linear8"
    code, _, err = run(["sc09", "prepare", "--from", str(tmp_path / "store"), "--out", str(tmp_path / "s2")], capsys)
    assert_one_line_error(code, err, "validation_list.txt")
    code, _, err = run(["sc09", "prepare", "--from-folder", str(src), "--out", str(tmp_path / "s3"),
                        "--download"], capsys)
    assert_one_line_error(code, err, "--download needs --from")


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generate_classifier_and_evaluate_replace_their_output_only_with_overwrite(pipeline, tmp_path, capsys):
    """Before: each wrote into its earlier output in place (generate --num-samples 3 then 2 left three WAVs and a
    3-clip page beside a 2-row likelihoods.tsv, and evaluate scored all three)."""
    root, _ = pipeline
    gen, clf, ev = tmp_path / "gen", tmp_path / "clf", tmp_path / "eval"
    commands = {
        "generate": lambda n: ["generate", "--checkpoint", root / "run", "--num-samples", n, "--seconds", "0.01",
                               "--out", gen],
        "train-classifier": lambda n: ["train-classifier", "--data", root / "store", "--out", clf, "--preset",
                                       "tiny", "--epochs", "1"],
        "evaluate": lambda n: ["evaluate", "--checkpoint", root / "run", "--data", root / "store", "--classifier",
                               clf, "--samples", gen, "--out", ev, "--max-clips", "1"],
    }
    for name, args in commands.items():
        code, _, err = run(["sc09", *args(3), "--device", "cpu"], capsys)
        assert code == 0, f"{name}: {err}"
    before = {name: _snapshot(folder) for name, folder in (("gen", gen), ("clf", clf), ("eval", ev))}
    for args in commands.values():
        code, _, err = run(["sc09", *args(2), "--device", "cpu"], capsys)
        assert_one_line_error(code, err, "pass --overwrite")
    assert {name: _snapshot(folder) for name, folder in (("gen", gen), ("clf", clf), ("eval", ev))} == before
    for name, args in commands.items():
        code, _, err = run(["sc09", *args(2), "--overwrite", "--device", "cpu"], capsys)
        assert code == 0, f"{name}: {err}"
    assert sorted(p.name for p in gen.glob("*.wav")) == ["sample_0000.wav", "sample_0001.wav"]
    assert (gen / "index.html").read_text().count("<audio") == 2
    assert len((gen / "likelihoods.tsv").read_text().splitlines()) == 3
    assert json.loads((ev / "metrics.json").read_text())["scores"]["generated"]["n"] == 2
    assert (ev / "index.html").read_text().count("<audio") == 2
    assert (clf / "model.safetensors").is_file() and (clf / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf", "eval", "gen"]  # no temporary sibling left
