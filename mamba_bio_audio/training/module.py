"""The LightningModule every recipe trains: holds the model and the loss, builds AdamW + cosine schedule.

Subclasses implement :meth:`MambaTask.compute_loss`; :class:`LMTask` (next-token cross-entropy) and
:class:`ClassificationTask` (cross-entropy on a label) cover the recipes; :func:`next_token_loss` is the summed
next-token loss of packed (``seq_idx``) and masked rows that the DNA and audio LM tasks share.

Validation metrics are exact means over the whole validation set, however many processes share it: each batch's
value is weighted by :meth:`MambaTask.loss_weight` (its samples; its predicted tokens for the LM tasks), a padding
repeat (:func:`~mamba_bio_audio.training.data.val_batch_position`) by 0, and the weighted sums of every rank are
added up before the division. In one process that is the sample-weighted mean Lightning logged before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio.training.callbacks import fold_to_seqlen
from mamba_bio_audio.training.data import val_batch_position
from mamba_bio_audio.training.optim import adamw, cosine_with_warmup, param_groups


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

    def loss_weight(self, batch: dict) -> int | torch.Tensor:
        """How many items the loss and metrics of ``batch`` average over, for the validation means: the samples
        (``label`` entries, else rows of ``input_ids``). Token-level tasks override it with their token count."""
        labels = batch.get("label")
        return int(labels.shape[0]) if torch.is_tensor(labels) and labels.dim() > 0 else int(batch["input_ids"].shape[0])

    def val_batch_position(self, batch_idx: int, dataloader_idx: int = 0) -> tuple[int, bool]:
        """``(index of the batch in the validation set, True for a padding repeat)`` (see
        :func:`~mamba_bio_audio.training.data.val_batch_position`)."""
        loader = _val_loader(self._trainer, dataloader_idx)
        return (batch_idx, False) if loader is None else val_batch_position(loader, batch_idx)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Adds the batch's metrics, weighted by :meth:`loss_weight` (0 for a padding repeat), to the sums that
        :meth:`on_validation_epoch_end` turns into exact means over the whole validation set and every rank."""
        _, repeat = self.val_batch_position(batch_idx, dataloader_idx)
        loss, metrics = self.compute_loss(batch)
        weight = 0 if repeat else int(self.loss_weight(batch))
        suffix = f"/dataloader_idx_{dataloader_idx}" if _val_loader_count(self._trainer) > 1 else ""
        for name, value in {"loss": loss, **metrics}.items():
            self._val_accumulate(f"val/{name}{suffix}", value, weight)

    def _val_accumulate(self, name: str, value: torch.Tensor, weight: int) -> None:
        sums = getattr(self, "_val_sums", None)
        if sums is None:
            sums = self._val_sums = {}
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        value = torch.as_tensor(value).detach().to(self.device, dtype)
        total = sums.setdefault(name, torch.zeros(2, dtype=dtype, device=self.device))
        if weight:  # a repeat or an empty batch adds nothing (its value may be NaN: nothing to average)
            total += torch.stack([value * weight, torch.ones_like(value) * weight])

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def on_validation_epoch_end(self) -> None:
        """Logs ``val/<name>`` = sum of weight x value / sum of weights over every batch of every rank: one
        all-reduce of the sums (the same names in the same order on every rank: each ran the same batches)."""
        sums = getattr(self, "_val_sums", None) or {}
        self._val_sums = {}
        if not sums:
            return
        names = sorted(sums)
        totals = self.trainer.strategy.reduce(torch.stack([sums[n] for n in names]), reduce_op="sum")
        for name, (weighted, weight) in zip(names, totals):
            # every rank logs the same value; "max" syncs it without averaging (no rounding, no warning)
            self.log(name, (weighted / weight).float(), prog_bar=name.startswith("val/loss"), sync_dist=True,
                     reduce_fx="max", add_dataloader_idx=False)

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
        from lightning.pytorch.strategies import FSDPStrategy

        trainer = self._trainer  # None when called outside a Trainer (then the parameters decide alone)
        precision = str(getattr(trainer, "precision", ""))
        optimizer = adamw(param_groups(self.model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                          fp16_scaled=precision in ("16-mixed", "16"),
                          sharded=isinstance(getattr(trainer, "strategy", None), FSDPStrategy))
        scheduler = cosine_with_warmup(optimizer, o.warmup_steps, o.max_steps, o.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LMTask(MambaTask):
    """Next-token prediction on batch["input_ids"] (batch, seqlen): predict token t+1 from tokens <= t."""

    def compute_loss(self, batch):
        ids = batch["input_ids"]
        logits = self.model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return loss, {"bits_per_token": loss.detach() / torch.log(torch.tensor(2.0))}

    def loss_weight(self, batch: dict) -> torch.Tensor:
        """The predicted tokens of ``batch``: ``rows * (seqlen - 1)``; with ``seq_idx`` or ``mask`` in the batch
        (the packed and masked subclasses, :func:`next_token_loss`) the ones that loss counts."""
        return next_token_count(batch["input_ids"], batch.get("seq_idx"), batch.get("mask"))


def next_token_count(ids: torch.Tensor, seq_idx: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """The number of tokens :func:`next_token_loss` predicts in ``ids`` (batch, seqlen) with the same ``seq_idx`` and
    ``mask`` (batch, seqlen): a scalar int64 tensor on ``ids``' device."""
    predicted = torch.ones_like(ids[:, 1:], dtype=torch.bool)
    if seq_idx is not None:
        predicted &= seq_idx[:, 1:] == seq_idx[:, :-1]
    if mask is not None:
        predicted &= mask[:, 1:].bool()
    return predicted.sum()


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


def _val_loader(trainer, dataloader_idx: int):
    """The validation DataLoader ``dataloader_idx`` that ``trainer`` is running (after Lightning put its sampler in),
    or None outside a trainer."""
    loaders = _val_loaders(trainer)
    if isinstance(loaders, (list, tuple)):
        return loaders[dataloader_idx] if dataloader_idx < len(loaders) else None
    if isinstance(loaders, dict):
        return list(loaders.values())[dataloader_idx] if dataloader_idx < len(loaders) else None
    return loaders


def _val_loader_count(trainer) -> int:
    loaders = _val_loaders(trainer)
    return len(loaders) if isinstance(loaders, (list, tuple, dict)) else 1


def _val_loaders(trainer):
    if trainer is None:
        return None
    from lightning.pytorch.trainer.states import TrainerFn

    # trainer.val_dataloaders reads the fit loop's first: a trainer.validate() after fit would get fit's loaders
    loop = trainer.validate_loop if trainer.state.fn == TrainerFn.VALIDATING else trainer.fit_loop.epoch_loop.val_loop
    combined = getattr(loop, "_combined_loader", None)
    return combined.iterables if combined is not None else trainer.val_dataloaders
