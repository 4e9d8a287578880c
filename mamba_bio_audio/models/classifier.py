"""MambaClassifier: the backbone, a pooling over positions, and a linear head (DNA species, audio digits)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from mamba_bio_audio.checkpoint import PretrainedMixin
from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.modules.block import BackboneMixin, MambaBackbone

POOLINGS = ("last", "mean")


class MambaClassifier(BackboneMixin, nn.Module, PretrainedMixin):
    """input_ids (batch, seqlen) [+ attention_mask (batch, seqlen), True = real token] -> logits (batch, num_classes).

    pooling "last": the hidden state of the last real token (a causal model has then read the whole window);
    "mean": the average over real tokens. ``num_classes``, ``pooling`` and optional ``labels`` are stored in
    ``config.extra["classifier"]`` so :meth:`from_pretrained` rebuilds the same head.
    """

    def __init__(self, config: MambaConfig, num_classes: int | None = None, pooling: str | None = None,
                 labels: list[str] | None = None):
        super().__init__()
        saved = dict(config.extra.get("classifier", {}))
        num_classes = num_classes if num_classes is not None else saved.get("num_classes")
        pooling = pooling or saved.get("pooling", "last")
        labels = labels if labels is not None else saved.get("labels")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"MambaClassifier needs num_classes >= 2, got {num_classes!r}")
        if pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if labels is not None and len(labels) != num_classes:
            raise UserError(f"{len(labels)} labels given for {num_classes} classes")
        head = {"num_classes": num_classes, "pooling": pooling, "labels": labels}
        config = dataclasses.replace(config, extra={**config.extra, "classifier": head})
        self.config = config
        self.num_classes = num_classes
        self.pooling = pooling
        self.labels = labels
        self.backbone = MambaBackbone(config)
        self.head = nn.Linear(config.d_model, num_classes)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) -> (batch, d_model)."""
        if attention_mask is None:
            return hidden[:, -1] if self.pooling == "last" else hidden.mean(dim=1)
        mask = attention_mask.to(torch.bool)
        if self.pooling == "last":
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (batch, seqlen); attention_mask (batch, seqlen), right padding (row b: True at its first
        length_b positions). A padded row gets the logits it gets alone: the causal direction reads its pads only
        after its real tokens, and a bidirectional model's reverse direction reads each row from its own end."""
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
        return self.head(self.pool(hidden, attention_mask).to(self.head.weight.dtype))
