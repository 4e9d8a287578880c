"""The LightningModule every recipe trains: holds the model and the loss, builds AdamW + cosine schedule.

Subclasses implement :meth:`MambaTask.compute_loss`; :class:`LMTask` (next-token cross-entropy) and
:class:`ClassificationTask` (cross-entropy on a label) cover the recipes; :func:`next_token_loss` is the summed
next-token loss of packed (``seq_idx``) and masked rows that the DNA and audio LM tasks share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio.training.callbacks import fold_to_seqlen
from mamba_bio_audio.training.optim import cosine_with_warmup, param_groups


@dataclass
class OptimConfig:
    """lr: peak learning rate; warmup: fraction of max_steps (< 1) or a step count (>= 1)."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: float = 0.1
    min_lr_ratio: float = 0.1
    max_steps: int = 1000

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup * self.max_steps) if self.warmup < 1 else int(self.warmup)


class MambaTask(pl.LightningModule):
    """A model plus its loss. ``batch`` is a dict of tensors ("input_ids" (batch, seqlen), maybe "label")."""

    def __init__(self, model: nn.Module, optim: OptimConfig):
        super().__init__()
        self.model = model
        self.optim = optim
        self.current_seqlen: int | None = None  # set by SeqLenWarmup: train on shorter folded windows
        self.save_hyperparameters({"optim": asdict(optim)})

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.current_seqlen is not None:
            batch = fold_to_seqlen(batch, self.current_seqlen)
        loss, metrics = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        for name, value in metrics.items():
            self.log(f"train/{name}", value)
        if self.current_seqlen is not None:
            self.log("train/seqlen", float(batch["input_ids"].shape[1]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, metrics = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, except under FSDP: there the norm is over every rank's shards, which only the
        wrapped root module's ``clip_grad_norm_`` computes (Lightning's FSDP precision refuses "norm" clipping)."""
        from lightning.pytorch.strategies import FSDPStrategy

        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(float(gradient_clip_val))
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def configure_optimizers(self):
        o = self.optim
        optimizer = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr, betas=tuple(o.betas))
        scheduler = cosine_with_warmup(optimizer, o.warmup_steps, o.max_steps, o.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LMTask(MambaTask):
    """Next-token prediction on batch["input_ids"] (batch, seqlen): predict token t+1 from tokens <= t."""

    def compute_loss(self, batch):
        ids = batch["input_ids"]
        logits = self.model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return loss, {"bits_per_token": loss.detach() / torch.log(torch.tensor(2.0))}


def next_token_loss(model: nn.Module, ids: torch.Tensor, seq_idx: torch.Tensor | None = None,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of the next-token cross-entropies (fp32), number of predicted tokens)`` of ``ids`` (batch, seqlen)
    int64: the model reads ``ids[:, :-1]`` and predicts ``ids[:, 1:]``. With ``seq_idx`` (batch, seqlen) several
    sequences share a row: the model restarts at each, and the first token of a sequence is not predicted (its
    predecessor belongs to another sequence). ``mask`` (batch, seqlen) bool: tokens to predict (False: padding,
    never a target)."""
    targets = ids[:, 1:]
    if seq_idx is None:
        logits = model(ids[:, :-1])
    else:
        logits = model(ids[:, :-1], seq_idx=seq_idx[:, :-1])
        targets = targets.masked_fill(seq_idx[:, 1:] != seq_idx[:, :-1], -100)
    if mask is not None:
        targets = targets.masked_fill(~mask[:, 1:].bool(), -100)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                            reduction="sum")
    return total, (targets != -100).sum()


class ClassificationTask(MambaTask):
    """Cross-entropy on batch["label"] (batch,) from batch["input_ids"] (and optional "attention_mask")."""

    def compute_loss(self, batch):
        logits = self.model(batch["input_ids"], batch.get("attention_mask"))
        loss = F.cross_entropy(logits.float(), batch["label"])
        accuracy = (logits.argmax(-1) == batch["label"]).float().mean()
        return loss, {"accuracy": accuracy}
