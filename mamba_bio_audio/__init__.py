"""mamba_bio_audio: Mamba selective state-space models for genomics and raw audio.

``from mamba_bio_audio import MambaConfig, MambaLM, MambaClassifier``. Heavy modules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "MambaConfig": "mamba_bio_audio.config",
    "MambaLM": "mamba_bio_audio.models.lm",
    "MambaClassifier": "mamba_bio_audio.models.classifier",
}

__all__ = ["MambaConfig", "MambaLM", "MambaClassifier", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from mamba_bio_audio.config import MambaConfig
    from mamba_bio_audio.models.classifier import MambaClassifier
    from mamba_bio_audio.models.lm import MambaLM


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mamba_bio_audio' has no attribute {name!r}")
