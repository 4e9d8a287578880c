"""A wall-clock budget for training (``--max-minutes``): plan the step count from a measured step time, and stop
at the first optimizer step past the budget.

Planning keeps the run exactly resumable: the learning-rate schedule and the sequence-length warm-up stay functions
of the step, over a step count chosen once from :func:`seconds_per_step` (and recorded in the run's config). The
:class:`WallClockBudget` callback is the guard for when the estimate was optimistic: it ends training at a step
boundary once the budget is spent, so that the model is still saved and evaluated.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
import torch

from mamba_bio_audio.errors import UserError

#: the share of the budget that planned steps may fill; the rest covers validation, checkpoints and step-time noise
PLANNED_SHARE = 0.85


class WallClockBudget(pl.Callback):
    """End training at the first optimizer step after ``seconds`` of training time.

    Training time counts from the start of the fit, plus the time of earlier parts of a resumed run (kept in the
    training checkpoint as this callback's state). ``cut`` is True when the budget ended the run. Every process of
    a multi-device run stops at the same step.
    """

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f"the budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.before = 0.0  # seconds of training in earlier parts of a resumed run
        self.started: float | None = None
        self.cut = False
        self._last_step: int | None = None

    def elapsed(self) -> float:
        """Seconds of training so far, earlier parts of a resumed run included."""
        return self.before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.monotonic()
        self.cut = False
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # inside gradient accumulation: not a step boundary
        self._last_step = trainer.global_step
        spent = self.elapsed() >= self.seconds
        if trainer.world_size > 1:
            spent = trainer.strategy.reduce_boolean_decision(spent, all=False)
        if spent:
            self.cut = True
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before = float(state_dict.get("elapsed", 0.0))


def budget_callback(trainer: pl.Trainer) -> WallClockBudget | None:
    """The trainer's :class:`WallClockBudget`, if it has one."""
    return next((c for c in trainer.callbacks if isinstance(c, WallClockBudget)), None)


#: Lightning's precision names (and their short forms): the autocast dtype of "-mixed" ones, the parameter dtype of
#: "-true" ones (None: float32, as built)
_MIXED = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}
_TRUE = {"32-true": None, "32": None, "64-true": torch.float64, "64": torch.float64, "bf16-true": torch.bfloat16,
         "16-true": torch.float16}


def default_precision(device_type: str) -> str:
    """The Lightning precision training runs at when none is given: bf16 autocast on CUDA, fp32 elsewhere."""
    return "bf16-mixed" if device_type == "cuda" else "32-true"


def probe_precision(precision: str | None, device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(autocast dtype or None, parameter dtype or None) under which a step runs with Lightning ``precision`` on
    ``device``; None is the trainer's default (:func:`default_precision`)."""
    precision = str(precision or default_precision(device.type))
    if precision in _MIXED:
        return _MIXED[precision], None
    if precision in _TRUE:
        return None, _TRUE[precision]
    raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join([*_MIXED, *_TRUE])}")


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Float tensors made inside are ``dtype`` (as in Lightning's "-true" precisions); None changes nothing."""
    if dtype is None:
        yield
        return
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def seconds_per_step(task: pl.LightningModule, datamodule: pl.LightningDataModule, device: torch.device, *,
                     precision: str | None = None, accumulate: int = 1, steps: int = 3, warmup: int = 2) -> float:
    """Median seconds of one optimizer step (``accumulate`` batches: data, forward, backward, AdamW) of a copy of
    ``task`` on ``device``, at the run's Lightning ``precision`` (:func:`probe_precision`: autocast for "-mixed",
    the parameters and float inputs in that dtype for "-true"; None: bf16 autocast on CUDA, fp32 on the CPU, as
    the trainer's default); the first ``warmup`` steps (kernel compilation, autotuning, allocator growth) are not
    counted. ``task`` itself is left untouched."""
    autocast_dtype, param_dtype = probe_precision(precision, device)
    probe = copy.deepcopy(task).to(device).train()
    if param_dtype is not None:
        probe = probe.to(param_dtype)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=0.0)
    loader = iter(datamodule.train_dataloader())
    autocast = torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        for _ in range(accumulate):
            batch = {k: _to(v, device, param_dtype) for k, v in next(loader).items()}
            batch = datamodule.on_after_batch_transfer(batch, 0)
            with autocast, _default_dtype(param_dtype):
                loss, _ = probe.compute_loss(batch)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    del probe, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return sorted(times)[len(times) // 2]


def _to(value, device: torch.device, float_dtype: torch.dtype | None):
    """A batch entry on ``device``; a floating-point tensor also in ``float_dtype`` (when given), as Lightning's
    "-true" precisions convert the inputs."""
    if not torch.is_tensor(value):
        return value
    if float_dtype is not None and value.is_floating_point():
        return value.to(device, float_dtype)
    return value.to(device)


def check_budget_plan(max_steps: int | None, max_minutes: float | None, processes: int) -> None:
    """A one-line UserError for a step count planned from ``max_minutes`` (no ``max_steps``) on several
    ``processes``: each would plan its own from its own measured step time, and processes that disagree train on
    different schedules and hang at the end of training."""
    if max_steps is None and max_minutes is not None and processes > 1:
        raise UserError("--max-minutes plans the step count from one device's speed: with several devices give "
                        "--max-steps too (the budget still stops the run in time)")


def planned_steps(budget_seconds: float, step_seconds: float) -> int:
    """Optimizer steps that fill :data:`PLANNED_SHARE` of the budget at ``step_seconds`` a step (at least 1)."""
    return max(1, int(PLANNED_SHARE * budget_seconds / max(step_seconds, 1e-9)))


def planned_max_steps(checkpoint) -> int | None:
    """The ``max_steps`` a run's training checkpoint was planned with (its task's optimizer settings), or None when
    there is no checkpoint: what a ``--resume`` continues to when it was not given the steps again."""
    from pathlib import Path

    from mamba_bio_audio.training.trainer import load_training_checkpoint

    if not Path(checkpoint).is_file():
        return None
    hparams = load_training_checkpoint(checkpoint).get("hyper_parameters", {})
    steps = hparams.get("optim", {}).get("max_steps")
    return int(steps) if steps else None
