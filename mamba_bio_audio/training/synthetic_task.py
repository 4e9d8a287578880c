"""Masked-target language modelling: the loss of the synthetic tasks (selective copying, induction heads).

A batch holds ``input_ids`` (batch, seqlen) and ``targets`` (batch, seqlen), with ``IGNORE_INDEX`` (-100) wherever
there is nothing to predict; the loss and the accuracy count only the answer positions. :class:`StopTraining`
ends a run early: when the validation accuracy reaches a target, or at a wall-clock deadline.
:class:`LengthCurriculum` trains on shorter sequences first and moves on when the training accuracy says the
current length is learned (or after a step cap).
"""

from __future__ import annotations

import bisect
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from mamba_bio_audio.training.module import MambaTask

IGNORE_INDEX = -100


def masked_loss_and_counts(logits: torch.Tensor, targets: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy over the answer positions, and how many argmax answers are right.

    Args:
        logits: (batch, seqlen, vocab). targets: (batch, seqlen) int64, IGNORE_INDEX where there is no answer.
    Returns:
        (mean loss over answers, number of correct answers, number of answers): scalar tensors on logits' device
        (no host sync).
    """
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)
    mask = targets != IGNORE_INDEX
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss, correct, mask.sum()


class MaskedLMTask(MambaTask):
    """Predict ``batch["targets"]`` from ``batch["input_ids"]`` at the positions where targets != -100.

    The model maps input_ids (batch, seqlen) to logits (batch, seqlen, vocab) (e.g. :class:`MambaLM`); targets
    are already aligned with the inputs (the generator shifts them), so there is no shift here.
    Logs ``loss`` and ``accuracy`` (argmax accuracy over answer positions).
    """

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(batch["input_ids"])
        loss, correct, count = masked_loss_and_counts(logits, batch["targets"])
        return loss, {"accuracy": correct.float() / count.clamp(min=1)}

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """The answer positions of ``batch``: validation loss and accuracy are means over every answer."""
        return (batch["targets"] != IGNORE_INDEX).sum()


class StopTraining(pl.Callback):
    """Stop a run when ``val/accuracy`` reaches ``target_accuracy`` or when ``time.monotonic()`` passes ``deadline``;
    record every validation, and with ``keep_best`` the weights of the best one.

    After ``fit``, ``reason`` is "target", "time" or None (ran to max_steps); ``reached_at`` is the step at
    which the target was reached (validation runs every ``val_every`` steps, so a multiple of it). ``history``:
    [{"step", "accuracy", "loss"}] per validation. With ``keep_best``, ``best_state`` is a CPU copy of the model's
    state dict at the validation with the highest accuracy (ties: the lowest ``val/loss``), ``best_step`` its step.
    All of it is saved in training checkpoints, so a resumed run keeps its history and best weights.
    """

    def __init__(self, target_accuracy: float | None = None, deadline: float | None = None,
                 metric: str = "val/accuracy", keep_best: bool = False):
        self.target_accuracy = target_accuracy
        self.deadline = deadline
        self.metric = metric
        self.keep_best = keep_best
        self.reason: str | None = None
        self.reached_at: int | None = None
        self.best: float | None = None
        self.history: list[dict] = []
        self.best_state: dict | None = None
        self.best_step: int | None = None
        self._best_key: tuple[float, float] | None = None
        self.before = 0.0  # seconds of training in earlier parts of a resumed run
        self.started: float | None = None

    def elapsed(self) -> float:
        """Seconds of training so far, earlier parts of a resumed run included (saved in checkpoints)."""
        return self.before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        value = float(value)
        loss = trainer.callback_metrics.get("val/loss")
        loss = float("nan") if loss is None else float(loss)
        self.history.append({"step": int(trainer.global_step), "accuracy": value, "loss": loss})
        self.best = value if self.best is None else max(self.best, value)
        key = (value, -loss if loss == loss else float("-inf"))
        if self.keep_best and (self._best_key is None or key > self._best_key):
            self._best_key, self.best_step = key, int(trainer.global_step)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()}
        if self.target_accuracy is not None and value >= self.target_accuracy and self.reason is None:
            self.reason, self.reached_at = "target", trainer.global_step
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"reason": self.reason, "reached_at": self.reached_at, "best": self.best,
                "history": [dict(h) for h in self.history], "best_state": self.best_state,
                "best_step": self.best_step, "best_key": None if self._best_key is None else list(self._best_key),
                "elapsed": self.elapsed()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("reason") == "target":  # a stop by the deadline is what a resume continues from
            self.reason, self.reached_at = "target", state_dict.get("reached_at")
        self.best, self.history = state_dict.get("best"), list(state_dict.get("history", []))
        self.best_state, self.best_step = state_dict.get("best_state"), state_dict.get("best_step")
        key = state_dict.get("best_key")
        self._best_key = None if key is None else tuple(key)
        self.before = float(state_dict.get("elapsed", 0.0))

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if self.deadline is None or self.reason is not None or time.monotonic() < self.deadline:
            return
        if 0 < getattr(trainer, "max_steps", -1) <= trainer.global_step:
            return  # the last step anyway: the run is complete
        self.reason = "time"
        trainer.should_stop = True


class LengthCurriculum(pl.Callback):
    """The training sequence length by optimizer step: ``stages`` ((seqlen, max_steps), ...) then ``final_len``.

    Stage k lasts at most its max_steps, and at most until ``time_caps[k]`` (a ``time.monotonic()`` value) when
    given; it ends earlier once ``train/accuracy`` is >= ``advance_at`` at ``checks`` consecutive checks (one
    every ``check_every`` steps). The data reads :meth:`seqlen_at` for each
    sample (step = index // batch size); an early switch takes effect ``lag`` steps after the check, so batches
    the loader has already fetched keep their length. ``starts`` lists the first step of each stage reached.
    ``starts`` and the count of good checks are saved in training checkpoints: a resumed run continues the
    curriculum where it was (a stage cut short by ``time_caps`` keeps its recorded start).
    """

    def __init__(self, stages: tuple[tuple[int, int], ...] | list, final_len: int, advance_at: float | None = None,
                 check_every: int = 10, checks: int = 3, lag: int = 2, time_caps: list[float] | None = None):
        if any(n < 1 or cap < 1 for n, cap in stages):
            raise ValueError(f"curriculum stages need seqlen >= 1 and max_steps >= 1, got {stages}")
        self.lengths = [n for n, _ in stages] + [final_len]
        self.caps = [cap for _, cap in stages]
        self.time_caps = list(time_caps or [])
        self.advance_at = advance_at
        self.check_every, self.checks, self.lag = check_every, checks, lag
        self.starts = [0]
        self._good = 0

    def state_dict(self) -> dict:
        return {"starts": list(self.starts), "good": self._good}

    def load_state_dict(self, state_dict: dict) -> None:
        self.starts = [int(s) for s in state_dict.get("starts", [0])]
        self._good = int(state_dict.get("good", 0))

    def _boundaries(self, upto: int) -> list[int]:
        """First steps of stages 0 .. upto: the recorded ones, then each stage's cap after the last."""
        starts = list(self.starts[: upto + 1])
        while len(starts) <= upto:
            starts.append(starts[-1] + self.caps[len(starts) - 1])
        return starts

    def seqlen_at(self, step: int) -> int:
        starts = self._boundaries(len(self.lengths) - 1)
        return self.lengths[bisect.bisect_right(starts, step) - 1]

    def stage_at(self, step: int) -> int:
        return bisect.bisect_right(self._boundaries(len(self.lengths) - 1), step) - 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step = trainer.global_step
        stage = self.stage_at(step)
        while len(self.starts) <= stage:  # record the stages the caps have started
            self.starts.append(self._boundaries(len(self.starts))[-1])
        if stage >= len(self.caps) or len(self.starts) > stage + 1:
            return  # the final stage, or the next stage already scheduled
        if stage < len(self.time_caps) and time.monotonic() >= self.time_caps[stage]:
            self._advance(step, stage)
            return
        if self.advance_at is None or step % self.check_every or self.seqlen_at(step - 1) != self.lengths[stage]:
            return  # not a check, or the last batch was still of the previous stage
        accuracy = trainer.callback_metrics.get("train/accuracy")
        if accuracy is None:
            return
        self._good = self._good + 1 if float(accuracy) >= self.advance_at else 0
        if self._good >= self.checks:
            self._advance(step, stage)

    def _advance(self, step: int, stage: int) -> None:
        """Start the next stage ``lag`` steps from now, unless its step cap starts it sooner."""
        self._good = 0
        if step + self.lag < self._boundaries(stage + 1)[-1]:
            self.starts.append(step + self.lag)
