"""dev/gpu_session.sh names test files and dev scripts by path: each must exist (a moved test file otherwise
turns a device call's test step into 'file or directory not found', as on 2026-12-07)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_session_paths_exist():
    script = (ROOT / "dev" / "gpu_session.sh").read_text()
    paths = sorted(set(re.findall(r"/tmp/src/((?:tests|dev)/[A-Za-z0-9_/.]+)", script)))
    assert paths, "no /tmp/src/tests or /tmp/src/dev paths found: the pattern no longer matches the script"
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"dev/gpu_session.sh names paths that do not exist: {missing}"
