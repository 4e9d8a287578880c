"""A classifier head fitted before fine-tuning: logistic regression on the frozen backbone's pooled features.

A new head starts random, and its first steps of fine-tuning push random errors back into the backbone. Fitting the
head first, by a convex regression on the features the backbone already gives (a "linear probe"), and only then
fine-tuning everything is LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"). With mean
pooling even a randomly initialized Mamba's pooled states are a useful summary of a window's short words, so the
probe alone places windows about as well as a k-mer regression where classes differ in short-word statistics (the
demo's genomes: results/dna/README.md), in seconds on a CPU.

:func:`fit_head_by_probe` fits :class:`~mamba_bio_audio.tasks.baselines.LogisticRegression` (the k-mer baseline's
solver) on ``(n, d_model)`` pooled features and writes it into ``model.head`` (the features' standardization folded
into the weights), so the model is unchanged in shape and checkpoint format.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from mamba_bio_audio.models.classifier import MambaClassifier
from mamba_bio_audio.tasks.baselines import LogisticRegression
from mamba_bio_audio.tasks.windows import autocast, batches, evaluating

#: L2 penalty of the probe on standardized features (the k-mer baseline's)
PROBE_L2 = 1.0


def pooled_features(model: MambaClassifier, windows: Sequence[np.ndarray], device: torch.device | str = "cpu",
                    batch_size: int | None = None) -> np.ndarray:
    """``(n, d_model)`` float64: the pooled backbone states the head reads, of ``n`` windows ``(seqlen,)`` of token
    ids (consecutive windows of equal length share a batch). Leaves ``model`` on ``device``, trainable."""
    device = torch.device(device)
    out = []
    with evaluating(model, device):
        for batch in batches(windows, batch_size):
            ids = torch.from_numpy(batch).to(device).long()
            with autocast(device):
                hidden = model.backbone(ids)
            out.append(model.pool(hidden, None).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.d_model))


def fit_head_by_probe(model: MambaClassifier, windows: Sequence[np.ndarray], labels: np.ndarray, *,
                      device: torch.device | str = "cpu", l2: float = PROBE_L2) -> dict:
    """Set ``model.head`` to the logistic regression of ``labels (n,)`` (class ids) on the pooled features of
    ``windows``; returns JSON-ready facts: windows, seconds and the probe's accuracy on its own windows.

    Classes absent from ``labels`` get low logits (the regression pushes their biases down).
    """
    started = time.time()
    labels = np.asarray(labels, dtype=np.int64)
    if len(windows) != labels.size or labels.size == 0:
        raise ValueError(f"need one label per window and at least one window, got {len(windows)} and {labels.size}")
    features = pooled_features(model, windows, device)
    probe = LogisticRegression(l2=l2, num_classes=model.num_classes).fit(features, labels)
    # logits = ((x - mean) / scale) @ W + b = x @ (W / scale) + (b - (mean / scale) @ W)
    weight = probe.weight.numpy() / probe.scale[:, None]
    bias = probe.bias.numpy() - (probe.mean / probe.scale) @ probe.weight.numpy()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight.T))
        model.head.bias.copy_(torch.from_numpy(bias))
    accuracy = float((probe.predict(features) == labels).mean())
    return {"windows": int(labels.size), "train_accuracy": round(accuracy, 4), "l2": l2,
            "seconds": round(time.time() - started, 1)}
