"""Classification metrics in numpy: accuracy, Matthews correlation, macro-F1, binary AUROC, the confusion matrix.

Inputs: ``y_true (n,)`` class ids in ``0..C-1``, ``probs (n, C)`` class probabilities (or ``y_pred (n,)``).
MCC is the multi-class R_K of Gorodkin (2004), the binary phi coefficient when C = 2 (scikit-learn's
``matthews_corrcoef`` computes the same). AUROC is the Mann-Whitney statistic with ties counted half.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def mcc(cm: np.ndarray) -> float:
    """Matthews correlation of a confusion matrix (0 when a prediction or the truth is constant)."""
    cm = cm.astype(np.float64)
    n = cm.sum()
    correct = np.trace(cm)
    predicted, true = cm.sum(0), cm.sum(1)
    cov_pt = correct * n - predicted @ true
    cov_pp = n * n - predicted @ predicted
    cov_tt = n * n - true @ true
    denom = np.sqrt(cov_pp * cov_tt)
    return float(cov_pt / denom) if denom > 0 else 0.0


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """``(C,)`` F1 of each class (0 for a class neither present nor predicted)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the truth or the predictions."""
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(f1_per_class(cm)[present].mean()) if present.any() else float("nan")


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary labels ``y_true (n,)`` (1 = positive) and ``scores (n,)``; NaN when one
    class is missing."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y_true.sum()), int((~y_true).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], scores.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[y_true].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """JSON-ready ``{"n", "accuracy", "mcc", "macro_f1", "confusion_matrix", ["auroc" when binary]}`` of
    ``probs (n, C)``; the prediction is the most probable class."""
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = probs.shape[1]
    y_true = np.asarray(y_true, dtype=np.int64)
    cm = confusion_matrix(y_true, probs.argmax(1), num_classes)
    result = {"n": int(y_true.size), "accuracy": accuracy(cm), "mcc": mcc(cm), "macro_f1": macro_f1(cm),
              "confusion_matrix": cm.tolist()}
    if num_classes == 2:
        result["auroc"] = auroc(y_true == 1, probs[:, 1])
    return result


def plot_confusion_matrix(path: str | os.PathLike, cm: np.ndarray, labels: Sequence[str], title: str = "") -> None:
    """PNG of a confusion matrix (rows true, columns predicted; cells shaded by row share, printed as counts)."""
    from mamba_bio_audio.files import pyplot, save_figure

    plt = pyplot()
    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 2.5 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
