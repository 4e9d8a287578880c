"""Training progress as plain lines, for output that goes to a file (a cluster job's log, ``2> train.log``).

On a terminal the trainer shows tqdm's bar, redrawn in place; written to a file the same bar becomes thousands of
carriage-return updates, escape codes and separate validation bars. :class:`LineProgress` writes instead one line
when training starts (the steps planned), one every ``every_seconds`` (and at each tenth of the run), and one after
each validation, on the main process only::

    training: steps 0 -> 1000
    step 100/1000 (10%): train/loss 2.3130; 4.1 steps/s, 220 s left
    step 200/1000 validation: val/accuracy 0.6120, val/loss 1.1040
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import lightning.pytorch as pl


class LineProgress(pl.Callback):
    """Plain-line progress on ``stream`` (default: stderr at the time of writing); see the module docstring."""

    def __init__(self, every_seconds: float = 30.0, stream: TextIO | None = None):
        self.every_seconds = every_seconds
        self.stream = stream
        self._started: float | None = None
        self._first_step = 0
        self._last_time = 0.0
        self._last_step = -1

    def _write(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last_time = time.monotonic()
        self._first_step = self._last_step = trainer.global_step
        if trainer.is_global_zero:
            planned = _planned(trainer)
            self._write(f"training: steps {trainer.global_step} -> {planned}" if planned else
                        f"training: from step {trainer.global_step}, no step limit")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step, planned = trainer.global_step, _planned(trainer)
        if not trainer.is_global_zero or step == self._last_step or self._started is None:
            return
        now = time.monotonic()
        tenth = planned is not None and planned >= 10 and step % max(1, planned // 10) == 0
        if not (tenth or step == planned or now - self._last_time >= self.every_seconds):
            return
        self._last_time, self._last_step = now, step
        rate = (step - self._first_step) / max(now - self._started, 1e-9)
        line = f"step {step}" + (f"/{planned} ({step / planned:.0%})" if planned else "")
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            line += f": train/loss {float(loss):.4f}"
        line += f"; {rate:.3g} steps/s"
        if planned and rate > 0:
            line += f", {(planned - step) / rate:.0f} s left"
        self._write(line)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        values = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")}
        if values:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
            self._write(f"step {trainer.global_step} validation: {shown}")


def _planned(trainer: pl.Trainer) -> int | None:
    """The step the run trains to (``max_steps``), or None when it has no step limit."""
    return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None


def progress_callback(refresh_rate: int, interactive: bool | None = None) -> pl.Callback:
    """tqdm's bar (refreshed every ``refresh_rate`` steps) when stderr is a terminal (``interactive``: None asks
    stderr), else :class:`LineProgress`."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    if interactive is None:
        interactive = sys.stderr.isatty()
    return TQDMProgressBar(refresh_rate=max(1, refresh_rate)) if interactive else LineProgress()
