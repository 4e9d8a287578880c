"""`mba audio` end to end on a small folder of mixed recordings (CPU): prepare -> train -> generate -> evaluate;
bad inputs end in one line with exit code 2 and leave nothing half-written."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import assert_one_line_error
from helpers import run_cli as run

RATE = 8000

pytestmark = pytest.mark.usefixtures("one_thread")


def write_recordings(folder, n: int = 6) -> None:
    """``n`` short recordings (chirps plus noise) of different lengths, formats and rates."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        rate = RATE if i % 3 else 16000
        t = np.arange(int((0.15 + 0.05 * i) * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t) + 0.01 * rng.standard_normal(t.size)
        suffix = (".wav", ".flac", ".ogg")[i % 3]
        sf.write(folder / f"rec{i}{suffix}", wave.astype(np.float32), rate)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("audio")
    write_recordings(root / "rec")
    steps = {
        "prepare": ["audio", "prepare", "--from", root / "rec", "--out", root / "store", "--sample-rate", RATE,
                    "--val-fraction", "0.2", "--test-fraction", "0.2"],
        "train": ["audio", "train", "--data", root / "store", "--out", root / "run", "--preset", "tiny",
                  "--window", "256", "--warmup-min-length", "64", "--warmup-stage-steps", "1", "--max-steps", "3",
                  "--batch-size", "2", "--val-windows", "2", "--device", "cpu"],
        "generate": ["audio", "generate", "--checkpoint", root / "run", "--num-samples", "2", "--seconds", "0.02",
                     "--out", root / "gen", "--device", "cpu"],
        "evaluate": ["audio", "evaluate", "--checkpoint", root / "run", "--data", root / "store", "--out",
                     root / "eval", "--samples", root / "gen", "--device", "cpu"],
    }
    codes = {}
    for name, args in steps.items():
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        codes[name] = info.value.code
        if codes[name] != 0:
            break
    return root, codes


def test_every_command_succeeds(pipeline):
    root, codes = pipeline
    assert codes == {"prepare": 0, "train": 0, "generate": 0, "evaluate": 0}
    index = json.loads((root / "store" / "index.json").read_text())
    assert len(index["records"]) == 6 and {r["split"] for r in index["records"]} == {"train", "val", "test"}
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["window"] == 256 and metrics["steps"] == 3 and metrics["sample_rate"] == RATE
    assert [s["length"] for s in metrics["sequence_length_warmup"]["stages"]] == [64, 128, 256]
    assert 0 < metrics["val_bits_per_sample"] < 9
    ev = json.loads((root / "eval" / "metrics.json").read_text())
    assert ev["window"] == 256 and 0 < ev["test_bits_per_sample"] < 9 and ev["test_windows"] >= 1
    assert ev["baseline"]["order"] == 2 and 0 < ev["baseline"]["bits_per_sample"] < 9
    assert "Markov chain (baseline)" in (root / "eval" / "metrics.md").read_text()
    wave, rate = sf.read(root / "gen" / "sample_0000.wav")
    assert rate == RATE and wave.shape == (round(0.02 * RATE),)


def test_listening_pages(pipeline):
    root, _ = pipeline
    for folder, prefix in (("gen", "sample_"), ("eval", "../gen/sample_")):
        page = (root / folder / "index.html").read_text()
        players = re.findall(r'<audio[^>]* src="([^"]+)"', page)
        images = re.findall(r'<img src="([^"]+)"', page)
        assert len(players) == len(images) == 2 and all(p.startswith(prefix) for p in players)
        assert all((root / folder / src).is_file() for src in players + images)
    assert json.loads((root / "eval" / "metrics.json").read_text())["samples"]["clips"] == 2


def test_bad_inputs_are_one_line(pipeline, tmp_path, capsys):
    root, _ = pipeline
    (tmp_path / "none").mkdir()
    code, _, err = run(["audio", "prepare", "--from", tmp_path / "none", "--out", tmp_path / "s"], capsys)
    assert_one_line_error(code, err, "no audio files")
    code, _, err = run(["audio", "train", "--data", root / "store", "--out", tmp_path / "r", "--window", "100000",
                        "--preset", "tiny", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--window 100000: longer than every train file", "rec")
    code, _, err = run(["audio", "train", "--data", root / "store", "--out", tmp_path / "r", "--window", "256",
                        "--warmup-min-length", "100", "--preset", "tiny", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--warmup-min-length 100")
    code, _, err = run(["audio", "train", "--data", root / "store", "--out", tmp_path / "r", "--window", "256",
                        "--max-minutes", "1", "--devices", "2", "--preset", "tiny", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--max-minutes", "--max-steps")
    code, _, err = run(["audio", "train", "--data", root / "rec", "--out", tmp_path / "r", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "not a token store")
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "bad"
    write_recordings(bad, 2)
    (bad / "zz.wav").write_bytes(b"RIFF????WAVE junk")
    code, _, err = run(["audio", "prepare", "--from", bad, "--out", tmp_path / "s", "--strict"], capsys)
    assert_one_line_error(code, err, "zz.wav", "unreadable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "none"]  # nothing half-written
    code, _, err = run(["audio", "prepare", "--from", bad, "--out", tmp_path / "s"], capsys)
    assert code == 0 and "warning: skipped" in err and "zz.wav" in err


def test_generate_continues_a_prompt(pipeline, tmp_path, capsys):
    root, _ = pipeline
    t = np.arange(800) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 3000 * t) * t)
    sf.write(tmp_path / "p.wav", np.stack([chirp, chirp], axis=1).astype(np.float32), 16000)
    code, out, err = run(["audio", "generate", "--checkpoint", root / "run", "--prompt", tmp_path / "p.wav",
                          "--prompt-seconds", "0.02", "--seconds", "0.01", "--num-samples", "2", "--out",
                          tmp_path / "cont", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "averaged to mono" in err and "resampled to the model's 8000 Hz" in err and "continuations" in out
    metrics = json.loads((tmp_path / "cont" / "metrics.json").read_text())
    assert metrics["prompt_samples"] == 160 and metrics["generated_samples_per_clip"] == 80
    assert metrics["batch_1"]["samples_per_second"] > 0 and metrics["prompt_bits_per_sample"] > 0
    assert metrics["batch_size"] == 2 and out.rstrip().endswith("at batch 2)")  # the batch run: 2 clips, not 16
    wave, _ = sf.read(tmp_path / "cont" / "sample_0001.wav")
    assert wave.shape == (240,)
    code, _, err = run(["audio", "generate", "--checkpoint", root / "run", "--prompt-seconds", "1", "--out",
                        tmp_path / "x", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--prompt-seconds needs --prompt")
    (tmp_path / "junk.wav").write_bytes(b"junk")
    code, _, err = run(["audio", "generate", "--checkpoint", root / "run", "--prompt", tmp_path / "junk.wav",
                        "--out", tmp_path / "x", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "junk.wav", "unreadable")
    assert not (tmp_path / "x").exists()


def test_half_precision_training_saves_fp32_weights(pipeline, tmp_path, capsys):
    """`--precision bf16-true` trains with bf16 weights; the saved model and its val score are fp32."""
    import safetensors.torch

    root, _ = pipeline
    code, _, err = run(["audio", "train", "--data", root / "store", "--out", tmp_path / "r", "--preset", "tiny",
                        "--window", "256", "--max-steps", "1", "--batch-size", "2", "--val-windows", "2",
                        "--precision", "bf16-true", "--device", "cpu"], capsys)
    assert code == 0, err
    weights = safetensors.torch.load_file(tmp_path / "r" / "model" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generate_and_evaluate_replace_their_output_only_with_overwrite(pipeline, tmp_path, capsys, monkeypatch):
    """Before: generate wrote into an earlier output in place: `--num-samples 3` then `--num-samples 1` left three
    WAVs and a 3-clip page beside a 1-row likelihoods.tsv, and a later evaluate --samples scored the mixed set."""
    root, _ = pipeline
    gen, ev = tmp_path / "gen", tmp_path / "eval"

    def generate(n, *extra):
        return run(["audio", "generate", "--checkpoint", root / "run", "--num-samples", n, "--seconds", "0.01",
                    "--no-batch-1-speed", "--out", gen, "--device", "cpu", *extra], capsys)

    def evaluate(*extra):
        return run(["audio", "evaluate", "--checkpoint", root / "run", "--data", root / "store", "--out", ev,
                    "--samples", gen, "--max-windows", "1", "--device", "cpu", *extra], capsys)

    code, _, err = generate(3)
    assert code == 0, err
    assert "sampling into" in err and ".gen.partial-" in err  # the WAVs grow in a temporary folder beside OUT
    assert evaluate()[0] == 0
    first = snapshot(gen)
    code, _, err = generate(1)
    assert_one_line_error(code, err, "pass --overwrite")
    code, _, err = evaluate()
    assert_one_line_error(code, err, "pass --overwrite")
    assert snapshot(gen) == first

    code, _, err = generate(1, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in gen.glob("*.wav")) == ["sample_0000.wav"]
    assert (gen / "index.html").read_text().count("<audio") == 1
    assert len((gen / "likelihoods.tsv").read_text().splitlines()) == 2
    code, _, err = evaluate("--overwrite")
    assert code == 0, err
    assert json.loads((ev / "metrics.json").read_text())["samples"]["clips"] == 1
    assert (ev / "index.html").read_text().count("<audio") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "gen"]  # no temporary sibling left

    # a generation that fails part-way leaves the earlier output as it was
    import mamba_bio_audio.tasks.audio_continuation as continuation

    real = continuation.write_generations

    def fail(model, out, *args, **kwargs):
        real(model, out, *args, **kwargs)
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(continuation, "write_generations", fail)
    before = snapshot(gen)
    code, _, err = generate(2, "--overwrite")
    assert code != 0
    assert snapshot(gen) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "gen"]
