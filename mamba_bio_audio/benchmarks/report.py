"""Environment facts and report writing shared by the benchmarks (every report names device, versions, date, the
code's commit and the MBA_* environment variables that change our kernels)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from mamba_bio_audio.files import atomic_write_text

#: the repository root of this package when run from a checkout (or a tree copied from one)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: the commit of the code, set by whoever runs a copied tree without .git (dev/gpu_session.sh exports it)
COMMIT_ENV = "MBA_COMMIT"
#: a file at the repository root holding the commit, written by whoever makes a tree without .git
#: (``git rev-parse HEAD > TREE/COMMIT``; a trailing "-dirty" marks uncommitted changes)
COMMIT_FILE = "COMMIT"
DIRTY_SUFFIX = "-dirty"


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit_id(root: Path = REPO_ROOT) -> dict[str, Any]:
    """{"commit": id or None, "commit_dirty": bool or None, "commit_source": where it came from}: the environment
    variable MBA_COMMIT first, else ``git`` in ``root`` when it is a checkout (dirty: tracked files changed), else
    the first line of ``root/COMMIT``. An id ending in "-dirty" is dirty (the suffix is kept off the id)."""
    value, source, dirty = os.environ.get(COMMIT_ENV, "").strip(), COMMIT_ENV, None
    if not value and (root / ".git").exists():
        value, source = _git(root, "rev-parse", "HEAD") or "", "git"
        if value:
            status = _git(root, "status", "--porcelain", "--untracked-files=no")
            dirty = None if status is None else bool(status)
    if not value and (root / COMMIT_FILE).is_file():
        lines = (root / COMMIT_FILE).read_text(errors="replace").split()
        value, source = (lines[0] if lines else ""), COMMIT_FILE
    if not value:
        return {"commit": None, "commit_dirty": None, "commit_source": None}
    if value.endswith(DIRTY_SUFFIX):
        value, dirty = value[: -len(DIRTY_SUFFIX)], True
    elif dirty is None and source != "git":
        dirty = False
    return {"commit": value, "commit_dirty": dirty, "commit_source": source}


def mba_variables() -> dict[str, str]:
    """Every MBA_* environment variable set in this process (they select our kernels: MBA_FUSED_NORM,
    MBA_FUSED_INNER, MBA_BACKEND, MBA_SCAN_SOFTPLUS, the decode batch limits, ...), sorted by name."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("MBA_")}


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
    env.update(commit_id())
    env["mba_env"] = mba_variables()
    return env


def commit_text(env: dict) -> str:
    """", commit <id>" (with " (dirty)" when the tree had uncommitted changes), or ", commit unknown"; for the
    first line of a report."""
    return f", commit {env.get('commit') or 'unknown'}" + (" (dirty)" if env.get("commit_dirty") else "")


def where(env: dict) -> str:
    """The short "device, date, commit" of a report's environment (commit abbreviated, "+dirty" when dirty)."""
    device = str(env.get("device", "?")).replace("NVIDIA ", "")
    text = f"{device}, {str(env.get('date', '?'))[:16]}"
    if env.get("commit"):
        text += f", {str(env['commit'])[:9]}" + ("+dirty" if env.get("commit_dirty") else "")
    return text


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
