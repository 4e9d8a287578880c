"""Every package folder is installed under mamba_bio_audio (pyproject lists packages explicitly)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for package, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    # sub-packages of a mapped package found via another mapping are the same names
    assert found - listed == set(), f"add to pyproject packages: {sorted(found - listed)}"
    assert listed - found == set(), f"listed but missing: {sorted(listed - found)}"


def test_public_api_imports():
    from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM  # noqa: F401
    from mamba_bio_audio.ops import causal_conv1d_fn, selective_scan_fn, selective_state_update  # noqa: F401
