"""`mba audio context-sweep` on a tiny store (CPU): one run per window at equal samples per step and equal steps,
each scored at its own window and at the common one; a second call reuses the runs; bad flags are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from helpers import assert_one_line_error
from helpers import run_cli as run

RATE = 8000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A recordings store of five 0.2-0.4 s chirps (3 train, 1 val, 1 test)."""
    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("sweep")
    (root / "rec").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        t = np.arange(int((0.2 + 0.05 * i) * RATE)) / RATE
        wave = 0.3 * np.sin(2 * np.pi * (150 + 300 * t) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(root / "rec" / f"rec{i}.wav", wave.astype(np.float32), RATE)
    with pytest.raises(SystemExit) as info:
        main(["audio", "prepare", "--from", str(root / "rec"), "--out", str(root / "store"), "--sample-rate",
              str(RATE), "--val-fraction", "0.2", "--test-fraction", "0.2"])
    assert info.value.code == 0
    return root / "store"


def sweep_args(store, out, *extra):
    return ["audio", "context-sweep", "--data", store, "--out", out, "--windows", "256,64",
            "--tokens-per-batch", "512", "--max-steps", "2", "--preset", "tiny", "--val-windows", "2",
            "--device", "cpu", *extra]


def test_sweep_trains_each_window_at_equal_compute_and_scores_it(store, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run(sweep_args(store, out), capsys)
    assert code == 0, err
    result = json.loads((out / "sweep.json").read_text())
    rows = result["rows"]
    assert [r["window"] for r in rows] == [64, 256]  # ascending
    assert [r["batch"] for r in rows] == [8, 2] and [r["steps"] for r in rows] == [2, 2]
    assert result["common_window"] == 256
    for r in rows:
        assert 0 < r["test_bits_own"] < 9 and 0 < r["test_bits_common"] < 9
        run_metrics = json.loads((out / f"window_{r['window']}" / "metrics.json").read_text())
        assert run_metrics["window"] == r["window"] and run_metrics["steps"] == 2
        assert run_metrics["sequence_length_warmup"] is None or not run_metrics["sequence_length_warmup"]["stages"]
    assert rows[0]["test_windows_own"] > rows[0]["test_windows_common"] == rows[1]["test_windows_common"]
    # the longest window's own score is its common score: the same windows, the same model
    assert rows[1]["test_bits_own"] == pytest.approx(rows[1]["test_bits_common"], rel=1e-6)
    assert (out / "sweep.png").stat().st_size > 0 and "| 64 |" in (out / "sweep.md").read_text()
    baseline = result["baseline"]  # beside the models: an order-2 Markov chain fitted on the train files
    assert baseline["order"] == 2 and 0 < baseline["bits_per_sample"] < 9 and baseline["samples"] > 0
    assert "Markov chain" in (out / "sweep.md").read_text()

    # a second call reuses the trained runs and gives the same table, from their metrics.json alone
    shutil.rmtree(out / "window_64" / "model")
    stamp = (out / "window_64" / "metrics.json").stat().st_mtime_ns
    code, _, err = run(sweep_args(store, out), capsys)
    assert code == 0, err
    assert "reusing" in err and (out / "window_64" / "metrics.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["test_bits_own"] for r in again] == pytest.approx([r["test_bits_own"] for r in rows], rel=1e-5)

    # a run of another budget is not put into this table: one line naming the run and the setting, before
    # anything is trained or written (the folder's config.yaml is the first call's)
    config = (out / "config.yaml").read_text()
    args = sweep_args(store, out)
    args[args.index("--max-steps") + 1] = "3"
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "max_steps 2 there, 3 now")
    assert "window_64" in err and (out / "config.yaml").read_text() == config


def test_a_sweep_stopped_by_sigterm_continues_the_stopped_run(store, tmp_path, capsys, monkeypatch):
    """Before: the note a stopped run leaves in window_W/metrics.json (stopped_by, global_step, checkpoint) was
    taken for a finished run of other settings, and the sweep refused to continue ("arch None there")."""
    from mamba_bio_audio.training.callbacks import GracefulStop

    out = tmp_path / "sweep"
    start = GracefulStop.on_train_start

    def signalled(self, trainer, pl_module):  # as if SIGTERM arrived during the first step
        start(self, trainer, pl_module)
        self.received = "SIGTERM"

    monkeypatch.setattr(GracefulStop, "on_train_start", signalled)
    code, _, err = run(sweep_args(store, out), capsys)
    assert code == 143, err
    note = json.loads((out / "window_64" / "metrics.json").read_text())
    assert note["stopped_by"] == "SIGTERM" and note["global_step"] == 1
    assert (out / "window_64" / "checkpoints" / "last.ckpt").is_file() and not (out / "window_256").exists()
    monkeypatch.setattr(GracefulStop, "on_train_start", start)

    code, _, err = run(sweep_args(store, out), capsys)
    assert code == 0, err
    assert "window 64: continuing the run stopped by SIGTERM at step 1" in err
    trained = json.loads((out / "window_64" / "metrics.json").read_text())
    assert trained["steps"] == 2 and trained["arch"] == "sashimi" and "global_step" not in trained
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 2] and all(0 < r["test_bits_own"] < 9 for r in rows)
    # the resumed part's logs sit beside the first part's (a new version), not over them
    assert len(list((out / "window_64" / "logs").glob("version_*"))) == 2


@pytest.mark.parametrize("extra, fragment", [
    (["--windows", "64,1024"], "--tokens-per-batch 512"),
    (["--windows", "64,x"], "--windows"),
    (["--windows", "1"], "--windows 1"),
    (["--windows", "4096", "--tokens-per-batch", "8192"], "--windows 4096: longer than every train file"),
    (["--eval-window", "8192"], "--eval-window 8192"),
])
def test_bad_flags_are_one_line_and_write_nothing(store, tmp_path, capsys, extra, fragment):
    out = tmp_path / "sweep"
    args = sweep_args(store, out)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_a_window_out_of_gpu_memory_leaves_its_row_empty(store, tmp_path, monkeypatch):
    import torch

    from mamba_bio_audio.tasks import audio_context_sweep as sweep
    from mamba_bio_audio.tasks.audio_folder import RecordingTrainSettings, open_recordings

    real = sweep.train_recording_lm

    def train(store_, run, s, **kw):
        if s.window == 256:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(store_, run, s, **kw)

    monkeypatch.setattr(sweep, "train_recording_lm", train)
    base = RecordingTrainSettings(arch="sashimi", preset="tiny", max_steps=2, val_clips=2, device="cpu")
    result = sweep.run_sweep(open_recordings(store), tmp_path, sweep.SweepSettings([64, 256], 512, base),
                             progress=lambda m: None)
    short, long_ = result["rows"]
    assert short["test_bits_own"] is not None and short["steps"] == 2
    assert long_["error"] == "out of GPU memory" and long_["test_bits_own"] is None
    assert "out of GPU memory" in (tmp_path / "sweep.md").read_text() and (tmp_path / "sweep.png").is_file()


@pytest.mark.gpu
def test_a_run_trained_on_the_gpu_scores_its_val_windows_there(store, tmp_path, monkeypatch):
    """Lightning moves the model to the CPU when fit returns; the val score after training must still run on the
    training device (on the CPU it took minutes at 2^19-sample windows)."""
    import torch

    from mamba_bio_audio.tasks import audio_folder
    from mamba_bio_audio.tasks.audio_folder import RecordingTrainSettings, open_recordings, train_recording_lm

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    scored_on = []
    real = audio_folder.window_nll_bits

    def window_nll_bits(model, windows, **kw):
        scored_on.append(torch.device(kw["device"]).type)
        return real(model, windows, **kw)

    monkeypatch.setattr(audio_folder, "window_nll_bits", window_nll_bits)
    settings = RecordingTrainSettings(arch="sashimi", preset="tiny", max_steps=2, val_clips=2, device="cuda",
                                      window=256, batch_size=2)
    metrics = train_recording_lm(open_recordings(store), tmp_path, settings)
    assert scored_on == ["cuda"] and 0 < metrics["val_bits_per_sample"] < 9
