"""Masked-language-model pretraining as Caduceus (and BERT) does it, for bidirectional DNA models.

:func:`mask_tokens` chooses each position with probability ``mask_prob`` (0.15, one Bernoulli draw per position, as
Caduceus' ``mlm_getitem``); of the chosen, 80% are replaced by ``[MASK]``, 10% by a random base (A, C, G or T,
uniform: it may equal the original) and 10% are left unchanged. The loss (:func:`masked_lm_loss`) is the
cross-entropy at the chosen positions only. One difference: Caduceus' hg38 loader draws the random token from its
whole 12-token vocabulary (special tokens included; its A/C/G/T-only variant is commented out), here from the four
bases, so a random replacement never shows the model a token it never sees otherwise.

Masks are drawn on the batch's device from a generator seeded by ``(seed, step, batch)`` (:class:`MLMTask`), so a
resumed run draws the masks it would have drawn, and validation scores the same masked positions at every
evaluation (and under any number of processes: a validation batch's seed is its place in the validation set).
Validation means are weighted by the number of masked positions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio.data_prep.dna.tokenizer import A_ID, C_ID, G_ID, MASK_ID, T_ID
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.training.module import MambaTask, OptimConfig

MASK_PROB = 0.15
REPLACE_WITH_MASK = 0.8  # of the chosen positions
REPLACE_WITH_RANDOM = 0.1  # of the chosen positions; the rest keep their token
BASES = (A_ID, C_ID, G_ID, T_ID)
IGNORE = -100


def mask_tokens(ids: torch.Tensor, generator: torch.Generator | None = None, mask_prob: float = MASK_PROB,
                mask_id: int = MASK_ID, replacements: tuple[int, ...] = BASES) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` (batch, seqlen) int64 -> ``(inputs, targets)``, both (batch, seqlen) int64: ``inputs`` with the
    chosen positions masked (80% ``mask_id``, 10% a random id of ``replacements``, 10% unchanged), ``targets`` the
    original ids at the chosen positions and ``IGNORE`` (-100) elsewhere. ``generator`` lives on ``ids``' device."""
    device = ids.device
    chosen = torch.rand(ids.shape, generator=generator, device=device) < mask_prob
    kind = torch.rand(ids.shape, generator=generator, device=device)
    masked = chosen & (kind < REPLACE_WITH_MASK)
    randomised = chosen & (kind >= REPLACE_WITH_MASK) & (kind < REPLACE_WITH_MASK + REPLACE_WITH_RANDOM)
    pick = torch.randint(len(replacements), ids.shape, generator=generator, device=device)
    random_ids = torch.tensor(replacements, dtype=ids.dtype, device=device)[pick]
    inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(randomised, random_ids, inputs)
    return inputs, ids.masked_fill(~chosen, IGNORE)


def masked_lm_loss(model: nn.Module, ids: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of the cross-entropies (fp32) at the masked positions, number of masked positions)`` of ``ids``
    (batch, seqlen): the model reads :func:`mask_tokens`' inputs and predicts the original ids where chosen."""
    inputs, targets = mask_tokens(ids, generator)
    logits = model(inputs)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                            reduction="sum")
    return total, (targets != IGNORE).sum()


def mask_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (the masks of one step or validation batch)."""
    return torch.Generator(device=device).manual_seed(seed)


def check_bidirectional(model: nn.Module) -> None:
    """A UserError unless ``model`` reads both directions (a causal model sees no base after the mask)."""
    config = getattr(model, "config", None)
    if not getattr(config, "bidirectional", False):
        raise UserError(f"masked-LM pretraining needs a bidirectional model; this {type(model).__name__} is causal "
                        f"(it would predict a masked base from the bases before it only)")


class MLMTask(MambaTask):
    """Masked-LM loss on ``batch["input_ids"]`` (batch, seqlen): the mean cross-entropy at the masked positions.
    The masks of a training batch come from a seed of ``(seed, step, batch index, rank)``, a validation batch's
    from ``(seed, batch index)`` alone: the same masks at every evaluation."""

    def __init__(self, model: nn.Module, optim: OptimConfig, seed: int = 0):
        check_bidirectional(model)
        super().__init__(model, optim)
        self.seed = seed
        self._mask_seed = seed

    def compute_loss(self, batch):
        ids = batch["input_ids"]
        total, count = masked_lm_loss(self.model, ids, mask_generator(ids.device, self._mask_seed))
        loss = total / count.clamp(min=1)
        return loss, {"bits_per_token": loss.detach() / torch.log(torch.tensor(2.0))}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._mask_seed = _seed_of("train", self.seed, int(self.global_step), batch_idx, self.global_rank)
        return super().training_step(batch, batch_idx)

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """The masked positions of ``batch`` (the same draw as :meth:`compute_loss`'s, from the same seed)."""
        ids = batch["input_ids"]
        return (torch.rand(ids.shape, generator=mask_generator(ids.device, self._mask_seed), device=ids.device)
                < MASK_PROB).sum()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        # the batch's place in the whole validation set: the same masks whatever the number of processes
        index, _ = self.val_batch_position(batch_idx, dataloader_idx)
        self._mask_seed = _seed_of("val", self.seed, index)
        super().validation_step(batch, batch_idx, dataloader_idx)


def _seed_of(*parts) -> int:
    """A 63-bit seed from ints and strings, the same in every process (unlike ``hash`` of a string)."""
    import zlib

    return zlib.crc32(repr(parts).encode()) * 2**31 + zlib.adler32(repr(parts).encode()) % 2**31
