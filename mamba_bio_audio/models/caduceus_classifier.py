"""CaduceusClassifier: a Caduceus backbone (:mod:`~mamba_bio_audio.models.caduceus`), mean pooling over the
positions and a linear head; what ``species train`` / ``dna classify train --init-from`` a Caduceus checkpoint
fine-tune.

Pooling, as Caduceus' own downstream models (``DNAEmbeddingModelCaduceus`` with its decoder's ``conjoin``): the
hidden states of an RCPS backbone (``2 * d_model`` channels) are split into the forward half and the RC half
brought back to the forward orientation (flipped in length and channel), and the two are averaged; then the mean
over the positions. The pooled features of a sequence and of its reverse complement are then equal (RC invariant).
A non-RCPS ("Ph") backbone's states are pooled as they are (its RC average is ``rc_average`` at prediction).

A padded batch (``attention_mask``, right padding) is run as one batch per distinct length, each without its pads,
so a row gets the logits it gets alone (the reverse direction would otherwise read the pads first). Packed rows
(``seq_idx``) are not supported.

Saved with :meth:`save_pretrained` as config.json (Caduceus' fields plus ``extra``: the head and the DNA window) and
model.safetensors with the backbone under Caduceus' names (``caduceus.backbone.*``, tied tensors once) and
``head.weight`` / ``head.bias``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from mamba_bio_audio.checkpoint import load_backbone_weights, read_state_dict, write_checkpoint
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.models.caduceus import (
    CaduceusBackboneAccess,
    CaduceusConfig,
    _Holder,
    load_tied_state,
    rc_hidden,
    read_caduceus_config,
    tie_mixers,
    tied_mixer_names,
)
from mamba_bio_audio.models.classifier import head_settings

POOLINGS = ("mean",)


class CaduceusClassifier(CaduceusBackboneAccess, nn.Module):
    """input_ids (batch, seqlen) [+ attention_mask (batch, seqlen), True = real token] -> logits (batch,
    num_classes) float32. ``num_classes``, ``pooling`` and ``labels`` are kept in ``config.extra["classifier"]``
    (as :class:`~mamba_bio_audio.models.classifier.MambaClassifier`), so :meth:`from_pretrained` rebuilds the head."""

    def __init__(self, config: CaduceusConfig, num_classes: int | None = None, pooling: str | None = None,
                 labels: list[str] | None = None):
        super().__init__()
        head = head_settings(config, num_classes, pooling, labels, owner="CaduceusClassifier",
                             default_pooling="mean", poolings=POOLINGS,
                             pooling_error="a Caduceus classifier pools by the mean over the sequence (Caduceus' "
                                           "own heads), not {!r}")
        self.config = dataclasses.replace(config, extra={**config.extra, "classifier": head})
        self.num_classes, self.pooling, self.labels = head["num_classes"], head["pooling"], head["labels"]
        self.caduceus = _Holder(config)
        self.head = nn.Linear(config.d_model, self.num_classes)
        self.tie_weights()

    def tie_weights(self) -> None:
        tie_mixers(self.backbone)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model or 2 * d_model with RCPS) of unpadded sequences -> (batch, d_model)
        float32: the RCPS halves averaged in the forward orientation, then the mean over the positions. (Padded
        batches go through :meth:`features`; ``attention_mask`` must be None, as MambaClassifier.pool's callers
        without padding pass it.)"""
        if attention_mask is not None:
            raise ValueError("CaduceusClassifier.pool reads unpadded hidden states: use features() for a padded batch")
        if self.config.rcps:
            d = hidden.shape[-1] // 2
            hidden = (hidden[..., :d] + rc_hidden(hidden[..., d:])) / 2
        return hidden.mean(dim=1, dtype=torch.float32)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled features (batch, d_model) float32 the head reads (see the module docstring for padding)."""
        if attention_mask is None or bool(attention_mask.all()):
            return self.pool(self.backbone(input_ids))
        mask = attention_mask.to(torch.bool)
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)):
            raise UserError("attention_mask must be right padding (each row's real tokens first)")
        pooled = torch.zeros(input_ids.shape[0], self.config.d_model, device=input_ids.device)
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            pooled = pooled.index_put((rows,), self.pool(self.backbone(input_ids[rows, :max(1, length)])))
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (batch, seqlen); attention_mask (batch, seqlen), right padding -> logits (batch, num_classes)."""
        if seq_idx is not None:
            raise UserError("a Caduceus classifier does not read packed rows (seq_idx)")
        pooled = self.features(input_ids, attention_mask)
        with torch.autocast(pooled.device.type, enabled=False):  # the head in float32, also under bf16 autocast
            return self.head(pooled.to(self.head.weight.dtype))

    # ---- checkpoints --------------------------------------------------------------------------------------
    def _tied_names(self) -> dict[str, str]:
        return tied_mixer_names(self.config)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """config.json (Caduceus' fields and ``extra``) + model.safetensors (each tied tensor once)."""
        tied = self._tied_names()
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in tied}
        data = {**self.config.to_dict(), "architectures": ["CaduceusClassifier"]}
        return write_checkpoint(directory, json.dumps(data, indent=2, sort_keys=True) + "\n", state)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device=None, dtype=None) -> CaduceusClassifier:
        """A classifier saved by :meth:`save_pretrained` (a folder or a Hub id); a CheckpointError for a Caduceus
        checkpoint without a classifier head (a CaduceusLM: fine-tune it with ``--init-from``)."""
        directory, config = read_caduceus_config(source)
        if "classifier" not in config.extra:
            raise CheckpointError(f"{source}: a Caduceus language model, not a classifier (no classifier head in "
                                  f"its config)")
        model = cls(config)
        load_tied_state(model, dict(read_state_dict(directory)), model._tied_names(), source)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    def load_backbone_from(self, donor: nn.Module, source: str | os.PathLike) -> None:
        """Copy the backbone of ``donor`` (a CaduceusLM or CaduceusClassifier read from ``source``) into this one;
        a CheckpointError names ``source`` when the backbones differ in shape."""
        load_backbone_weights(donor, self, source)
        self.tie_weights()
