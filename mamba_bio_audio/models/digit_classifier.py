"""The SC09 evaluation classifier: a CIFAR-style ResNeXt on 32 x 32 log-mel spectrograms of 1 s of 16 kHz audio.

It reproduces the classifier behind the SaShiMi paper's SC09 scores (state-spaces/s4,
``models/sashimi/sc09_classifier``, taken from tugstugi/pytorch-speech-commands): ``librosa`` mel spectrogram
with its defaults (``n_fft=2048``, ``hop_length=512``, centred frames, Slaney mel scale and area normalisation)
and 32 mel bands, ``power_to_db(ref=max)`` (floor 80 dB below the clip's peak), then ``CifarResNeXt`` with depth
29, cardinality 8, base width 64, widen factor 4 and 10 outputs. The FID features are the input of the last
linear layer (1024 numbers), where the s4 script hooks them.

Here the spectrogram is torchaudio's ``MelSpectrogram`` with those settings (``norm="slaney"``,
``mel_scale="slaney"``, reflect padding as in the librosa of the time): 16,000 samples give
``1 + 16000 // 512 = 32`` frames, so the input is ``(batch, 1, 32, 32)``; dB are taken relative to each clip's
maximum and floored at -80 dB. Average pooling over the final map is adaptive, so other clip lengths also work.
The default network has about 34 M parameters (about 5 GFLOP per clip); smaller widths and depths are options
for CPU runs and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.transforms as T

from mamba_bio_audio.checkpoint import CONFIG_NAME, load_state_dict_strict, read_state_dict, save_checkpoint
from mamba_bio_audio.config import JsonConfig
from mamba_bio_audio.errors import CheckpointError


@dataclass(frozen=True)
class DigitClassifierConfig(JsonConfig):
    """Spectrogram and ResNeXt settings; the defaults are the s4 SC09 classifier's (depth = 9 * blocks + 2)."""

    n_classes: int = 10
    sample_rate: int = 16000
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 32
    top_db: float = 80.0
    depth: int = 29
    cardinality: int = 8
    base_width: int = 64
    widen_factor: int = 4
    stem_channels: int = 64


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 (``cardinality`` groups, stride) -> 1x1 expand, plus a (projected) shortcut.

    ``x: (batch, in_channels, H, W) -> (batch, out_channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, group_width: int):
        super().__init__()
        inner = cardinality * group_width
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU())
        self.grouped = nn.Sequential(
            nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(),
        )
        self.expand = nn.Sequential(nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity()
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.expand(self.grouped(self.reduce(x))))


class DigitClassifier(nn.Module):
    """Waveforms ``(batch, samples)`` in [-1, 1] -> digit logits ``(batch, n_classes)``; see the module docstring."""

    def __init__(self, config: DigitClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or DigitClassifierConfig()
        if (c.depth - 2) % 9:
            raise ValueError(f"depth must be 9 * blocks + 2 (11, 20, 29, ...), got {c.depth}")
        self.mel = T.MelSpectrogram(sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
                                    n_mels=c.n_mels, norm="slaney", mel_scale="slaney")
        self.stem = nn.Sequential(nn.Conv2d(1, c.stem_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c.stem_channels), nn.ReLU())
        widths = [c.stem_channels] + [64 * c.widen_factor * 2**i for i in range(3)]
        blocks = []
        for stage in range(3):
            # the s4 / ResNeXt-CIFAR rule: group width = base_width * out_channels / (64 * widen_factor)
            group_width = c.base_width * 2**stage
            for b in range((c.depth - 2) // 9):
                blocks.append(ResNeXtBottleneck(widths[stage] if b == 0 else widths[stage + 1], widths[stage + 1],
                                                2 if b == 0 and stage > 0 else 1, c.cardinality, group_width))
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = widths[-1]
        self.classifier = nn.Linear(self.feature_dim, c.n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave: (batch, samples)`` -> log-mel ``(batch, 1, n_mels, frames)`` in dB below each clip's peak."""
        db = 10.0 * torch.log10(self.mel(wave.float()).clamp_min(1e-10))
        db = db - db.amax(dim=(-2, -1), keepdim=True)
        return db.clamp_min(-self.config.top_db).unsqueeze(1)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the FID embedding): ``(batch, samples) -> (batch, feature_dim)``."""
        x = self.blocks(self.stem(self.spectrogram(wave)))
        return x.mean(dim=(-2, -1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` for ``wave: (batch, samples)``."""
        return self.classifier(self.features(wave))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (temp folder, then rename)."""
        return save_checkpoint(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> DigitClassifier:
        """Load a classifier written by :meth:`save_pretrained`; CheckpointError names what is wrong."""
        directory = Path(directory)
        try:
            model = cls(DigitClassifierConfig.load(directory / CONFIG_NAME))
            load_state_dict_strict(model, read_state_dict(directory), directory, tie_embeddings=False)
        except (CheckpointError, OSError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{directory}: not a digit classifier checkpoint ({e})") from None
        return model
