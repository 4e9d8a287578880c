"""Shared test setup: the gpu marker skips without CUDA; ``shared_data`` finds ../shared/data or skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports Triton: its @jit functions (its own standard library's among them) become interpreted
# ones only if TRITON_INTERPRET=1 when Triton is first imported. The kernel test modules set it at their import,
# but a run that collects another module first (e.g. ``pytest tests/recipes tests/modules``) imported Triton
# before, and kernels calling ``tl.zeros`` from a nested function then failed ("Cannot call @triton.jit'd
# outside of the scope of a kernel"). GPU runs export TRITON_INTERPRET=0 (dev/gpu_session.sh), which this keeps.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _import_the_installed_kernels_package() -> None:
    """``python -m pytest`` from the clone puts its root on sys.path, where our top-level ``kernels/`` folder (the
    package's ``mamba_bio_audio.kernels``) shadows the PyPI ``kernels`` package that transformers imports when it is
    installed (``transformers.integrations.hub_kernels``: "cannot import name 'CUDAProperties' from 'kernels'"),
    which failed a transformers test depending on what ran before it. Import the installed one first, from sys.path
    without the clone's root; nothing when it is not installed."""
    import importlib
    import importlib.util
    import sys

    if "kernels" in sys.modules:
        return
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
    try:
        if importlib.util.find_spec("kernels") is not None:
            importlib.import_module("kernels")
    except Exception:  # noqa: BLE001 - a broken optional package: leave it to the tests that need it
        sys.modules.pop("kernels", None)
    finally:
        sys.path[:] = saved


_import_the_installed_kernels_package()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_deterministic_algorithms():
    """Every test starts with torch's deterministic-algorithms flag as the session had it: a Lightning Trainer
    with ``deterministic=True`` turns it on for the process, and the scan's backward (partial sums instead of
    atomics) and the op counts of ``dev/count_ops.py`` depend on it."""
    import torch

    flag, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(flag, warn_only=warn_only)


@pytest.fixture
def one_thread():
    """Tiny ops on 2 shared cores: one torch thread avoids OpenMP contention (~10x faster steps). Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout (development data); tests using it skip in a user's clone."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not present (it is not part of the project)")
    return path


def rel_err(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64 (NaN anywhere gives inf, so it never passes)."""
    import torch

    x = x.detach().double()
    ref = ref.detach().double()
    if not torch.isfinite(x).all():
        return float("inf")
    denom = ref.norm().item()
    return (x - ref).norm().item() / (denom if denom > 0 else 1.0)


@pytest.fixture
def micro_presets(monkeypatch):
    """The synthetic tasks' "tiny" presets shrunk to a few steps of an 8-wide model (plumbing, not learning)."""
    from mamba_bio_audio.tasks.synthetic import PRESETS, TaskPreset

    micro = {
        "selective-copy": TaskPreset(data={"seqlen": 12, "n_memorize": 2, "n_data_tokens": 4}, batch_size=4,
                                     max_steps=2, lr=1e-3, eval_samples=8, val_every=1,
                                     model={"d_model": 8, "n_layer": 2, "d_state": 2}),
        "induction-heads": TaskPreset(data={"seqlen": 8, "n_tokens": 4}, batch_size=4, max_steps=2, lr=1e-3,
                                      eval_samples=4, test_log2_lengths=(3, 4, 5),
                                      model={"d_model": 8, "n_layer": 2, "d_state": 2}),
    }
    monkeypatch.setitem(PRESETS, "tiny", micro)
    return micro
