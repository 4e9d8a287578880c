"""Genome language-model pretraining (``mba dna pretrain``): a MambaLM learns to predict the next base.

The run is planned by :func:`~mamba_bio_audio.tasks.windows.plan_windows` like a species run; it is scored by the
next-base cross-entropy on fixed validation windows (nats per base, perplexity, bits per base). Its saved model is
the starting point of ``mba species train --init-from``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mamba_bio_audio.devices import torch_device
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.tasks.windows import (
    TrainSettings,
    WindowPlan,
    autocast,
    batches,
    dna_extra,
    get_preset,
    open_store,
    plan_windows,
    run_windows,
)

LN2 = math.log(2.0)


def plan_pretraining(store_path: str | os.PathLike, settings: TrainSettings) -> WindowPlan:
    """Build the MambaLM of ``settings.preset`` (default "tiny"), its task and data for next-base prediction on
    ``store_path``'s train windows. Raises DataError/UserError before anything is written."""
    from mamba_bio_audio.models.lm import MambaLM

    store = open_store(store_path)
    config = dataclasses.replace(get_preset(settings.preset or "tiny").model_config(), extra=dna_extra(settings.length))
    plan = plan_windows(store, settings, lambda: MambaLM(config), labelled=False)
    plan.summary["species"] = plan.species
    return plan


def run_pretraining(plan: WindowPlan, out: Path, resume: bool = False, batch_size: int | None = None) -> dict:
    """Train, save ``out/model``, and return the metrics: val loss (nats per base), perplexity, bits per base."""
    metrics = run_windows(plan, out, resume)
    if plan.val is not None:  # Lightning hands the model back on the CPU: evaluate on the training device
        device = torch_device(plan.trainer.device)
        metrics.update(lm_loss(plan.model, (t for t, _ in plan.val), batch_size, device))
    return metrics


@torch.inference_mode()
def lm_loss(model: nn.Module, windows: Iterable[np.ndarray], batch_size: int | None = None,
            device: torch.device | str = "cpu") -> dict:
    """Next-base cross-entropy of ``model`` over windows (each ``(seqlen,)`` token ids; the model reads the first
    ``seqlen - 1`` and predicts the last ``seqlen - 1``).

    Returns ``{"val_loss": nats per base, "val_perplexity": exp(loss), "val_bits_per_base": loss / ln 2,
    "val_tokens": predicted bases}``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    total, count = 0.0, 0
    for batch in batches(windows, batch_size):
        ids = torch.from_numpy(batch).to(device).long()
        with autocast(device):
            logits = model(ids[:, :-1])
        total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += ids[:, 1:].numel()
    if count == 0:
        raise UserError("no windows to evaluate")
    model.train(was_training)
    loss = total / count
    return {"val_loss": loss, "val_perplexity": math.exp(loss), "val_bits_per_base": loss / LN2,
            "val_tokens": count}
