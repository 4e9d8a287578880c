"""MambaClassifier: the backbone, a pooling over positions, and a linear head (DNA species, audio digits)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from mamba_bio_audio.checkpoint import PretrainedMixin
from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.modules.block import BackboneMixin, MambaBackbone
from mamba_bio_audio.modules.packing import pool_sequences, sequence_runs
from mamba_bio_audio.ops import resolve_seq_idx

POOLINGS = ("last", "mean")


def head_settings(config, num_classes: int | None, pooling: str | None, labels: list[str] | None, *, owner: str,
                  default_pooling: str, poolings: tuple[str, ...], pooling_error: str) -> dict:
    """A classifier head's ``{"num_classes", "pooling", "labels"}``: each argument, or when None the value saved in
    ``config.extra["classifier"]`` (so ``from_pretrained`` rebuilds the head), pooling defaulting to
    ``default_pooling``. One-line UserErrors: fewer than 2 classes (naming ``owner``), a pooling not in
    ``poolings`` (``pooling_error``, formatted with the pooling), as many labels as classes."""
    saved = dict(config.extra.get("classifier", {}))
    num_classes = num_classes if num_classes is not None else saved.get("num_classes")
    pooling = pooling or saved.get("pooling", default_pooling)
    labels = labels if labels is not None else saved.get("labels")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"{owner} needs num_classes >= 2, got {num_classes!r}")
    if pooling not in poolings:
        raise UserError(pooling_error.format(pooling))
    if labels is not None and len(labels) != num_classes:
        raise UserError(f"{len(labels)} labels given for {num_classes} classes")
    return {"num_classes": num_classes, "pooling": pooling, "labels": labels}


class MambaClassifier(BackboneMixin, nn.Module, PretrainedMixin):
    """input_ids (batch, seqlen) [+ attention_mask (batch, seqlen), True = real token] -> logits (batch, num_classes).

    pooling "last": the hidden state of the last real token (a causal model has then read the whole window);
    "mean": the average over real tokens. ``num_classes``, ``pooling`` and optional ``labels`` are stored in
    ``config.extra["classifier"]`` so :meth:`from_pretrained` rebuilds the same head.
    """

    def __init__(self, config: MambaConfig, num_classes: int | None = None, pooling: str | None = None,
                 labels: list[str] | None = None):
        super().__init__()
        head = head_settings(config, num_classes, pooling, labels, owner="MambaClassifier", default_pooling="last",
                             poolings=POOLINGS, pooling_error=f"pooling must be one of {POOLINGS}, got {{!r}}")
        config = dataclasses.replace(config, extra={**config.extra, "classifier": head})
        self.config = config
        self.num_classes, self.pooling, self.labels = head["num_classes"], head["pooling"], head["labels"]
        self.backbone = MambaBackbone(config)
        self.head = nn.Linear(config.d_model, self.num_classes)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) -> (batch, d_model) float32 (a mean accumulates in float32: bf16's 3
        significant digits would blur the small differences between windows' averages)."""
        if attention_mask is None:
            return hidden[:, -1].float() if self.pooling == "last" else hidden.mean(dim=1, dtype=torch.float32)
        mask = attention_mask.to(torch.bool)
        if self.pooling == "last":
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1, dtype=torch.float32) / weights.sum(1, dtype=torch.float32).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                seq_idx: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (batch, seqlen); attention_mask (batch, seqlen), right padding (row b: True at its first
        length_b positions). A padded row gets the logits it gets alone: the causal direction reads its pads only
        after its real tokens, and a bidirectional model's reverse direction reads each row from its own end.

        Packed rows: ``seq_idx`` (batch, seqlen) integers, several sequences per row, each one run of equal values
        (e.g. 0 0 0 1 1 2 ...). Returns then (n_sequences, num_classes): one row of logits per sequence, in order
        (row by row, left to right), each what the sequence gets alone. attention_mask (optional) marks real
        tokens; pads may sit anywhere and are no sequence.

        ``cu_seqlens`` (n + 1,) integers, instead of seq_idx: n sequences packed into one row (batch 1), cumulative
        lengths from 0 to seqlen (:func:`~mamba_bio_audio.ops.resolve_seq_idx`); (n, num_classes) logits, as the
        equivalent seq_idx gives. A zero-length sequence has nothing to pool: ValueError."""
        seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, *input_ids.shape[:2], input_ids.device, allow_empty=False)
        if seq_idx is not None:
            return self._forward_packed(input_ids, attention_mask, seq_idx)
        lengths = None
        if attention_mask is not None:
            mask = attention_mask.to(torch.bool)
            lengths = mask.sum(1)
            if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)):
                raise UserError("attention_mask must be right padding (each row's real tokens first)")
        if lengths is not None and self.config.bidirectional:
            hidden = self.backbone(input_ids, lengths=lengths)
        else:
            hidden = self.backbone(input_ids)
        pooled = self.pool(hidden, attention_mask)
        with torch.autocast(pooled.device.type, enabled=False):  # the head in float32, also under bf16 autocast
            return self.head(pooled.to(self.head.weight.dtype))

    def _forward_packed(self, input_ids, attention_mask, seq_idx):
        """Logits (n_sequences, num_classes) of packed rows (see :meth:`forward`)."""
        if seq_idx.shape != input_ids.shape:
            raise UserError(f"seq_idx must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(seq_idx.shape)}")
        runs = sequence_runs(seq_idx, attention_mask)
        pooled = pool_sequences(self.backbone(input_ids, seq_idx=runs), runs, self.pooling, attention_mask)
        with torch.autocast(pooled.device.type, enabled=False):  # the head in float32, also under bf16 autocast
            return self.head(pooled.to(self.head.weight.dtype))
