"""Environment facts and report writing shared by the benchmarks (every report names device, versions, date)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from mamba_bio_audio.files import atomic_write_text


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
    }
    for name in ("triton", "mamba_ssm", "causal_conv1d"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - optional packages
            env[name] = None
    from mamba_bio_audio import __version__

    env["mamba_bio_audio"] = __version__
    return env


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir: Path, name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write OUT/name.json and OUT/name.md atomically; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in ((".json", json.dumps(data, indent=2, default=str) + "\n"), (".md", markdown + "\n")):
        paths.append(atomic_write_text(out_dir / f"{name}{suffix}", text))
    return paths[0], paths[1]
