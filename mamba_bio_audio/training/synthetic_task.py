"""Masked-target language modelling: the loss of the synthetic tasks (selective copying, induction heads).

A batch holds ``input_ids`` (batch, seqlen) and ``targets`` (batch, seqlen), with ``IGNORE_INDEX`` (-100) wherever
there is nothing to predict; the loss and the accuracy count only the answer positions.
"""

from __future__ import annotations

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
