"""Test NLL against training context length (``mba audio context-sweep``): the Mamba paper's long-context audio
experiment (its YouTubeMix figure) on any recordings store.

The same model is trained once per window length ``W`` in ``windows``, each run with the same number of samples
per batch (``tokens_per_batch``, so the batch is ``tokens_per_batch // W`` windows), the same number of steps
(``max_steps``; or, with ``max_minutes``, the same wall-clock budget per run, its steps planned from the measured
step time) and the same seed, optimiser and schedule: equal compute, only the context changes. The
sequence-length warm-up is off unless ``warmup_min_length`` is given (with it the long windows would spend most
of a short run at shorter lengths). Each trained model is scored on the test files:

* ``test_bits_own``: consecutive windows of its own training length (what ``mba audio evaluate`` reports);
* ``test_bits_common``: consecutive windows of one common length (``eval_window``, default the longest of
  ``windows``) for every model, so that the rows differ only in training: a model trained on short windows then
  runs past its training length (the recurrence has no position limit).

A run that runs out of GPU memory leaves its row empty (``error``) and the sweep goes on.

Beside them, the simple baseline: an order-2 Markov chain of the samples fitted on the train files
(:func:`~mamba_bio_audio.metrics.markov.markov_baseline`). Results: ``sweep.json`` (every row, the baseline, the
settings, the environment), ``sweep.md`` (the table) and ``sweep.png`` (bits per sample against window length,
log2 axis); each run's folder ``window_W/`` is an ``mba audio train`` run
(config, model, logs, metrics.json). A run whose ``metrics.json`` exists is not trained again, and its test scores
are kept there too (``sweep_test``), so a stopped sweep continues where it was, even from the runs' metrics.json
files alone (e.g. carried to another machine without their models). A run stopped by SIGTERM / SIGINT (its
metrics.json only says so: :func:`stopped_run`) is continued from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.tasks.audio_folder import (
    RecordingTrainSettings,
    RecordingWindows,
    eval_windows,
    train_recording_lm,
    window_nll_bits,
)

MAX_EVAL_BATCH = 64


@dataclass
class SweepSettings:
    """What varies (``windows``, ascending) and what is held fixed: ``tokens_per_batch`` samples per step, the
    training settings ``base`` (its window, batch size and val windows are set per run), and the evaluation:
    ``eval_window`` (None: the longest window), at most ``max_test_windows`` test windows per score (None: all)."""

    windows: list[int]
    tokens_per_batch: int
    base: RecordingTrainSettings
    eval_window: int | None = None
    max_test_windows: int | None = None

    def __post_init__(self):
        if not self.windows:
            raise UserError("--windows: give at least one window length")
        self.windows = sorted(set(self.windows))
        if self.windows[-1] > self.tokens_per_batch:
            raise UserError(f"--tokens-per-batch {self.tokens_per_batch}: smaller than the longest window "
                            f"{self.windows[-1]} (each step holds at least one window)")

    @property
    def common_window(self) -> int:
        return self.eval_window or self.windows[-1]

    def run_settings(self, window: int) -> RecordingTrainSettings:
        """The training settings of the run at ``window``: batch ``tokens_per_batch // window``."""
        warmup = self.base.warmup_min_length if self.base.warmup_min_length is not None else 0
        return dataclasses.replace(self.base, window=window, batch_size=self.tokens_per_batch // window,
                                   warmup_min_length=warmup)


REUSE_MUST_MATCH = ("arch", "preset", "max_steps", "max_minutes")
"""The settings a reused run's metrics.json must share with the sweep (its window is its folder's name)."""


def stopped_run(trained: dict) -> bool:
    """Whether a run's metrics.json is the note a run stopped by a signal leaves (``stopped_by`` SIGTERM or SIGINT,
    its step and checkpoint; written by :func:`~mamba_bio_audio.training.trainer.fit`) rather than a finished run's
    metrics (whose ``stopped_by`` is at most "max_minutes")."""
    from mamba_bio_audio.errors import TrainingStopped

    return trained.get("stopped_by") in TrainingStopped.EXIT_CODES


def check_reused_run(trained: dict, settings: RecordingTrainSettings, run: Path) -> None:
    """Refuse to put a run trained under another budget or model (an earlier sweep's) into this sweep's table."""
    differ = [f"{key} {trained.get(key)!r} there, {getattr(settings, key)!r} now" for key in REUSE_MUST_MATCH
              if trained.get(key) != getattr(settings, key)]
    if differ:
        raise UserError(f"{run}: trained with other settings ({'; '.join(differ)}); move it away or sweep with "
                        f"the same settings")


def check_sweep(store: TokenStore, settings: SweepSettings, out: Path | None = None) -> None:
    """Refuse, before anything is trained or written, a window that no training file can hold (one-line
    DataError), a common evaluation window longer than every test file, and (with ``out``) an earlier run in
    ``out`` that this sweep would reuse but that was trained with other settings (:func:`check_reused_run`)."""
    from mamba_bio_audio.errors import DataError

    for window in settings.windows:
        try:
            RecordingWindows(store, "train", window, settings.base.seed, settings.base.short_files)
        except (DataError, UserError) as e:  # its message names --window: here the flag is --windows
            raise type(e)(str(e).replace(f"--window {window}:", f"--windows {window}:", 1)) from None
    if not eval_windows(store, "test", settings.common_window, settings.base.short_files, 1):
        raise DataError(f"--eval-window {settings.common_window}: longer than every test file of {store.path}; "
                        f"give a shorter --eval-window or --short-files pad")
    if out is None:
        return
    for window in settings.windows:
        metrics_path = out / f"window_{window}" / "metrics.json"
        if metrics_path.is_file():
            trained = json.loads(metrics_path.read_text())
            if not stopped_run(trained):  # a stopped run is continued, not reused
                check_reused_run(trained, settings.run_settings(window), metrics_path.parent)


def test_bits(model, store: TokenStore, window: int, settings: SweepSettings, device) -> tuple[float | None, int]:
    """(bits per sample, windows scored) of ``model`` on consecutive ``window``-sample windows of the test files."""
    windows = eval_windows(store, "test", window, settings.base.short_files, settings.max_test_windows)
    batch = max(1, min(MAX_EVAL_BATCH, settings.tokens_per_batch // window))
    return window_nll_bits(model, windows, batch_size=batch, device=device), len(windows)


ROW_FIELDS = ("steps", "train_seconds", "peak_memory_gib", "val_bits", "test_bits_own", "test_windows_own",
              "test_bits_common", "test_windows_common", "parameters")
"""A table row's fields besides window, seconds_of_audio and batch (None until known)."""


def new_row(window: int, batch: int, store: TokenStore, **values) -> dict:
    """One table row: the window, its length in seconds and its batch; every other field None unless given."""
    return {"window": window, "seconds_of_audio": window / int(store.meta["sample_rate"]), "batch": batch,
            **dict.fromkeys(ROW_FIELDS), **values}


def save_metrics(path: Path, metrics: dict) -> None:
    from mamba_bio_audio.files import atomic_write_text

    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")


def sweep_row(store: TokenStore, out: Path, window: int, settings: SweepSettings, progress=print) -> dict:
    """Train (or reuse) the run at ``window`` under ``out/window_{window}`` and score it; one table row. A run
    that runs out of GPU memory gives a row without scores, its ``error`` the reason."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.audio_generation import load_audio_lm
    from mamba_bio_audio.training.trainer import last_checkpoint

    run = out / f"window_{window}"
    s = settings.run_settings(window)
    metrics_path = run / "metrics.json"
    trained = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    if trained is not None and not stopped_run(trained):
        progress(f"window {window}: reusing {run}")  # its settings checked by check_sweep
    else:
        resume = trained is not None and last_checkpoint(run) is not None
        if resume:
            progress(f"window {window}: continuing the run stopped by {trained['stopped_by']} at step "
                     f"{trained.get('global_step')}")
        else:
            progress(f"window {window}: training, batch {s.batch_size} x {window} samples")
        run.mkdir(parents=True, exist_ok=True)
        where = torch_device(s.device)
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        t0 = time.perf_counter()
        try:
            trained = train_recording_lm(store, run, s, resume=resume)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            progress(f"window {window}: out of GPU memory at batch {s.batch_size} -- row left empty")
            return new_row(window, s.batch_size, store, test_windows_own=0, test_windows_common=0,
                           error="out of GPU memory")
        trained["wall_seconds"] = time.perf_counter() - t0
        trained["peak_memory_gib"] = (torch.cuda.max_memory_allocated(where) / 2**30 if where.type == "cuda"
                                      else None)
        save_metrics(metrics_path, trained)  # before scoring: a run stopped while scoring is not trained again
    scores = trained.get("sweep_test", {})
    if (scores.get("common_window"), scores.get("max_test_windows")) != (settings.common_window,
                                                                         settings.max_test_windows):
        # scored once and kept in the run's metrics.json: a reused run needs no model
        device = torch_device(s.device)
        model = load_audio_lm(run, device=device)
        own, own_n = test_bits(model, store, window, settings, device)
        common, common_n = test_bits(model, store, settings.common_window, settings, device)
        del model
        scores = {"test_bits_own": own, "test_windows_own": own_n, "test_bits_common": common,
                  "test_windows_common": common_n, "common_window": settings.common_window,
                  "max_test_windows": settings.max_test_windows}
        trained["sweep_test"] = scores
        save_metrics(metrics_path, trained)
    row = new_row(window, s.batch_size, store, steps=trained.get("steps"), train_seconds=trained.get("train_seconds"),
                  peak_memory_gib=trained.get("peak_memory_gib"), val_bits=trained.get("val_bits_per_sample"),
                  parameters=trained.get("parameters"), **{k: scores[k] for k in ROW_FIELDS if k in scores})
    progress(f"window {window}: test {row['test_bits_own']:.4f} bits/sample at its own window, "
             f"{row['test_bits_common']:.4f} at {settings.common_window}")
    return row


def sweep_table(rows: list[dict], common_window: int) -> str:
    """The markdown table of ``rows`` (one per window)."""
    from mamba_bio_audio.benchmarks.report import markdown_table

    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    return markdown_table(
        ["window", "seconds", "batch", "steps", "train s", "peak GiB", "test bits/sample (own window)",
         f"test bits/sample (window {common_window})"],
        [[r["window"], fmt(r["seconds_of_audio"], ".3g"), r["batch"], r["steps"] or r.get("error", "n/a"),
          fmt(r["train_seconds"], ".0f"), fmt(r["peak_memory_gib"], ".1f"), fmt(r["test_bits_own"], ".4f"),
          fmt(r["test_bits_common"], ".4f")] for r in rows])


def plot_sweep(path: Path, rows: list[dict], common_window: int, title: str, baseline: dict | None = None) -> None:
    """Test bits per sample against training window (log2 x axis), own-window and common-window scores, and the
    Markov baseline as a dashed line."""
    from mamba_bio_audio.files import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    scored = [r for r in rows if r["test_bits_own"] is not None]
    xs = [r["window"] for r in scored]
    ax.plot(xs, [r["test_bits_own"] for r in scored], marker="o", label="test, windows of the training length")
    ax.plot(xs, [r["test_bits_common"] for r in scored], marker="s", linestyle="--",
            label=f"test, windows of {common_window} samples")
    if baseline is not None:
        ax.axhline(baseline["bits_per_sample"], color="gray", linestyle="--", linewidth=1,
                   label=f"order-{baseline['order']} Markov chain (baseline)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training window (samples)")
    ax.set_ylabel("test NLL (bits per sample)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def run_sweep(store: TokenStore, out: Path, settings: SweepSettings, progress=print) -> dict:
    """Every window's row (:func:`sweep_row`), shortest first; ``sweep.json`` / ``sweep.md`` / ``sweep.png`` in
    ``out`` are rewritten after each row, so a sweep stopped part-way leaves the rows it finished."""
    from mamba_bio_audio.metrics.markov import markov_baseline

    check_sweep(store, settings, out)
    baseline = markov_baseline(store)
    progress(f"baseline: order-2 Markov chain of the samples, test {baseline['bits_per_sample']:.4f} bits/sample")
    rows: list[dict] = []
    result: dict = {}
    for window in settings.windows:
        rows.append(sweep_row(store, out, window, settings, progress))
        result = write_sweep(out, rows, settings, store, baseline)
    return result


def write_sweep(out: Path, rows: list[dict], settings: SweepSettings, store: TokenStore, baseline: dict) -> dict:
    """``sweep.json``, ``sweep.md`` and ``sweep.png`` of the rows so far, beside ``baseline``
    (:func:`~mamba_bio_audio.metrics.markov.markov_baseline`); returns what sweep.json holds."""
    from mamba_bio_audio.benchmarks.report import environment
    from mamba_bio_audio.files import atomic_write_text

    base = settings.base
    steps = {r["steps"] for r in rows if r["steps"] is not None}
    budget = (f"{steps.pop()} steps per run" if len(steps) == 1 else
              f"{base.max_minutes:g} min per run" if base.max_minutes else "steps per run vary")
    title = f"{base.arch} {base.preset}, {settings.tokens_per_batch} samples per step, {budget}"
    result = {"rows": rows, "windows": settings.windows, "tokens_per_batch": settings.tokens_per_batch,
              "common_window": settings.common_window, "max_test_windows": settings.max_test_windows,
              "store": str(store.path), "sample_rate": int(store.meta["sample_rate"]),
              "encoding": store.meta["encoding"], "settings": dataclasses.asdict(base), "baseline": baseline,
              "environment": environment()}
    shown = (f"Baseline: an order-{baseline['order']} Markov chain of the samples (add-{baseline['alpha']:g}, "
             f"fitted on the train files), {baseline['bits_per_sample']:.4f} bits/sample over the "
             f"{baseline['samples']:,} test samples.")
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(out / "sweep.md", f"# {title}\n\n{sweep_table(rows, settings.common_window)}\n\n{shown}\n")
    plot_sweep(out / "sweep.png", rows, settings.common_window, title, baseline)
    return result
