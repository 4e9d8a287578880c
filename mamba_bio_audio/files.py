"""Writing outputs safely: every file is written under a temporary name and renamed into place, so a crash or a
bad input never leaves a half-written file behind; figures render headless (matplotlib's Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported on first use: plotting is never on a hot path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically and close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path
