"""Train the SC09 digit classifier, and run it to get the probabilities and features the scores need.

Data are map-style datasets whose items are dicts with ``"waveform": FloatTensor (samples,)`` in [-1, 1] and
``"label": LongTensor ()`` -- e.g. ``AudioClipDataset(store, split="train", waveform=True)`` from
:mod:`mamba_bio_audio.data_prep.audio.dataset` -- or, for generated samples, a tensor ``(n, samples)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mamba_bio_audio.models.digit_classifier import DigitClassifier, DigitClassifierConfig

WaveformData = Dataset | torch.Tensor


def _batches(data: WaveformData, batch_size: int, shuffle: bool = False,
             generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(waveforms (b, samples), labels (b,) or None)`` from a dataset of dicts or a waveform tensor."""
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size], None
        return
    for batch in DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator):
        yield batch["waveform"], batch["label"]


def random_shift(wave: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each clip of ``wave: (b, samples)`` by a uniform integer in [-max_shift, max_shift], zero-filling."""
    n = wave.shape[-1]
    shift = torch.randint(-max_shift, max_shift + 1, (wave.shape[0], 1), generator=generator)
    src = torch.arange(n) - shift  # (b, samples): output sample t reads input sample t - shift
    valid = (src >= 0) & (src < n)
    return torch.where(valid.to(wave.device), wave.gather(-1, src.clamp(0, n - 1).to(wave.device)), 0.0)


@torch.no_grad()
def _predict(model: DigitClassifier, data: WaveformData, batch_size: int,
             device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Float64 probabilities ``(n, classes)``, features ``(n, feature_dim)`` and labels ``(n,)`` (if any)."""
    model.eval().to(device)
    probs, feats, labels = [], [], []
    for wave, label in _batches(data, batch_size):
        features = model.features(wave.to(device))
        probs.append(F.softmax(model.classifier(features).double(), dim=-1).cpu())
        feats.append(features.double().cpu())
        labels.append(label)
    return torch.cat(probs), torch.cat(feats), None if labels[0] is None else torch.cat(labels)


def classifier_outputs(model: DigitClassifier, data: WaveformData, *, batch_size: int = 256,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(n, classes)`` and features ``(n, feature_dim)``, both float64 numpy arrays.

    The softmax is taken in float64 so that confident predictions keep tiny, non-zero probabilities (a zero
    would make the mIS infinite).
    """
    probs, feats, _ = _predict(model, data, batch_size, device)
    return probs.numpy(), feats.numpy()


def train_digit_classifier(
    train_data: Dataset,
    *,
    val_data: Dataset | None = None,
    config: DigitClassifierConfig | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    max_shift_seconds: float = 0.1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[DigitClassifier, list[dict[str, float]]]:
    """Train a :class:`DigitClassifier` with cross-entropy, AdamW and a cosine learning-rate decay.

    Args:
        train_data, val_data: datasets of ``{"waveform", "label"}`` items (see the module docstring).
        config: the network (default: the s4 SC09 classifier).
        epochs, batch_size, lr, weight_decay: optimisation settings.
        max_shift_seconds: augmentation: each training clip is shifted in time by up to this much (0: none).
        device: where to train.
        seed: seeds the initialisation, the shuffling and the augmentation.
        log: called with one line per epoch (e.g. ``print``).

    Returns:
        ``(model, history)``: the trained model (eval mode) and one dict per epoch with ``epoch``,
        ``train_loss``, ``train_acc`` and, given ``val_data``, ``val_acc``.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier(config).to(device)
    max_shift = round(max_shift_seconds * model.config.sample_rate)
    steps = epochs * -(-len(train_data) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    history = []
    for epoch in range(epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for wave, label in _batches(train_data, batch_size, shuffle=True, generator=generator):
            wave, label = wave.to(device), label.to(device)
            if max_shift:
                wave = random_shift(wave, max_shift, generator)
            logits = model(wave)
            loss = F.cross_entropy(logits, label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(label)
            correct += (logits.argmax(-1) == label).sum().item()
            seen += len(label)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen}
        if val_data is not None:
            probs, _, labels = _predict(model, val_data, batch_size, device)
            record["val_acc"] = (probs.argmax(-1) == labels).double().mean().item()
        history.append(record)
        if log is not None:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    return model.eval(), history
