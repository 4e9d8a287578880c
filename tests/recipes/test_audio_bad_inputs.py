"""`mba audio` on bad inputs (CPU, an untrained tiny SaShiMi saved as a checkpoint): each is one line naming the
input and its problem with exit code 2, or a warning naming each file left out; nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from test_audio import RATE, write_recordings

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A recordings store at 8 kHz and a fresh tiny model for it (window 256) saved as a checkpoint folder."""
    from mamba_bio_audio.cli import main
    from mamba_bio_audio.data_prep.store import TokenStore
    from mamba_bio_audio.tasks.audio_folder import audio_of
    from mamba_bio_audio.tasks.audio_lm import build_audio_lm

    root = tmp_path_factory.mktemp("audio_bad")
    write_recordings(root / "rec")
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in ["audio", "prepare", "--from", root / "rec", "--out", root / "store",
                               "--sample-rate", RATE, "--val-fraction", "0.2", "--test-fraction", "0.2"]])
    assert info.value.code == 0
    build_audio_lm("sashimi", "tiny", audio_of(TokenStore(root / "store"), 256)).save_pretrained(root / "model")
    return root


def tone(samples: int) -> np.ndarray:
    return (0.3 * np.sin(np.arange(samples) / 5)).astype(np.float32)


def test_a_window_the_default_warmup_cannot_reach_names_the_window(setup, tmp_path, capsys):
    """Before: "--warmup-min-length 16384: the window length 20000 must be ...", an option the user never passed."""
    code, _, err = run(["audio", "train", "--data", setup / "store", "--out", tmp_path / "r", "--window", "20000",
                        "--short-files", "pad", "--preset", "tiny", "--max-steps", "1", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--window 20000", "default sequence-length warm-up",
                          "--warmup-min-length 0 (off) or 10000")
    assert not (tmp_path / "r").exists()


def test_bad_prompts_are_one_line_naming_the_option_and_file(setup, tmp_path, capsys):
    """Before: a 0-byte prompt was "unreadable or corrupt audio (Format not recognised)", and no message but the
    missing file's said it came from --prompt."""
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF junk" * 50)
    nan = tone(400)
    nan[7] = np.nan
    sf.write(tmp_path / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(tmp_path / "none.wav", np.zeros(0, np.float32), RATE)
    cases = {"zero.wav": "empty file (0 bytes)", "junk.wav": "unreadable or corrupt audio",
             "nan.wav": "NaN or infinite sample at frame 7", "none.wav": "empty audio file"}
    for name, problem in cases.items():
        code, _, err = run(["audio", "generate", "--checkpoint", setup / "model", "--prompt", tmp_path / name,
                            "--out", tmp_path / "gen", "--device", "cpu"], capsys)
        assert_one_line_error(code, err, f"--prompt {tmp_path / name}: {problem}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)  # nothing written


def test_a_prompt_shorter_than_prompt_seconds_is_used_whole_with_a_warning(setup, tmp_path, capsys):
    sf.write(tmp_path / "short.wav", tone(40), RATE)
    code, _, err = run(["audio", "generate", "--checkpoint", setup / "model", "--prompt", tmp_path / "short.wav",
                        "--prompt-seconds", "1", "--seconds", "0.002", "--num-samples", "1", "--no-batch-1-speed",
                        "--out", tmp_path / "gen", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "shorter than --prompt-seconds 1; the whole file is the prompt" in err
    assert json.loads((tmp_path / "gen" / "metrics.json").read_text())["prompt_samples"] == 40


def test_a_file_given_as_checkpoint_says_so(setup, tmp_path, capsys):
    """Before: "no such checkpoint folder" for a file that exists."""
    (tmp_path / "model.safetensors").write_bytes(b"x")
    code, _, err = run(["audio", "evaluate", "--checkpoint", tmp_path / "model.safetensors", "--data",
                        setup / "store", "--out", tmp_path / "ev", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "model.safetensors: a file, not a checkpoint folder")
    assert not (tmp_path / "ev").exists()


def evaluate(setup, samples, out, capsys):
    return run(["audio", "evaluate", "--checkpoint", setup / "model", "--data", setup / "store", "--out", out,
                "--samples", samples, "--max-windows", "1", "--device", "cpu"], capsys)


def test_evaluate_samples_without_usable_audio_is_one_line(setup, tmp_path, capsys):
    """Before: exit 0 and a listening page of no clips, for a folder of no audio or of unreadable audio only."""
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("no audio")
    code, _, err = evaluate(setup, tmp_path / "none", tmp_path / "ev", capsys)
    assert_one_line_error(code, err, f"--samples {tmp_path / 'none'}: no audio files")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.wav").write_bytes(b"")
    code, _, err = evaluate(setup, tmp_path / "bad", tmp_path / "ev", capsys)
    assert_one_line_error(code, err, "no readable audio file", "a.wav: empty file (0 bytes)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "none"]


def test_evaluate_samples_warns_about_each_file_left_out(setup, tmp_path, capsys):
    """Before: unreadable WAVs were left out of the page without a word."""
    samples = tmp_path / "samples"
    samples.mkdir()
    sf.write(samples / "ok.wav", tone(300), RATE)
    (samples / "junk.wav").write_bytes(b"RIFF junk" * 50)
    code, _, err = evaluate(setup, samples, tmp_path / "ev", capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "junk.wav: unreadable or corrupt audio" in warnings[0]
    assert "left out of the page" in warnings[0]
    listed = json.loads((tmp_path / "ev" / "metrics.json").read_text())["samples"]
    assert listed["clips"] == 1 and len(listed["left_out"]) == 1 and "junk.wav" in listed["left_out"][0]


def test_a_prompt_over_an_hour_is_refused_before_it_is_read(setup, tmp_path, capsys):
    """Before: read whole, resampled and prefilled in one parallel pass, whose memory grows with the prompt (1.8 GB
    for a minute at 8 kHz with the tiny model on the CPU, so over 100 GB for two hours)."""
    sf.write(tmp_path / "long.wav", np.zeros(3700, np.int16), 1)  # 3,700 s at 1 Hz: a long header, a small file
    code, _, err = run(["audio", "generate", "--checkpoint", setup / "model", "--prompt", tmp_path / "long.wav",
                        "--out", tmp_path / "gen", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "long.wav: 3700 s long, more than the 3600 s", "pass --prompt-seconds")
    code, _, err = run(["audio", "generate", "--checkpoint", setup / "model", "--prompt", tmp_path / "long.wav",
                        "--prompt-seconds", "3650", "--out", tmp_path / "gen", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--prompt-seconds 3650: more than the 3600 s")
    assert [p.name for p in tmp_path.iterdir()] == ["long.wav"]


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_a_model_without_audio_settings_names_the_checkpoint(setup, tmp_path, capsys, command):
    """Before: "the checkpoint is not an audio model (...)", naming no folder."""
    from mamba_bio_audio import MambaConfig, MambaLM

    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=16, d_state=4)).save_pretrained(tmp_path / "dna")
    extra = ["--data", setup / "store"] if command == "evaluate" else []
    code, _, err = run(["audio", command, "--checkpoint", tmp_path / "dna", *extra, "--out", tmp_path / "o",
                        "--device", "cpu"], capsys)
    assert_one_line_error(code, err, f"--checkpoint {tmp_path / 'dna'}", "not an audio model")
    assert [p.name for p in tmp_path.iterdir()] == ["dna"]
