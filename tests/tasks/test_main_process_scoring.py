"""In a multi-device run only the main process scores the trained model: the others return right after fit (their
scores went unused, and on GPUs they all ran on GPU 0)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.mark.parametrize("module, run", [("species", "run_training"), ("dna_lm", "run_pretraining")])
def test_other_processes_do_not_score(monkeypatch, module, run):
    import importlib

    tasks = importlib.import_module(f"mamba_bio_audio.tasks.{module}")
    monkeypatch.setattr(tasks, "run_windows", lambda plan, out, resume: {"steps": 3})
    monkeypatch.setattr(tasks, "is_main_process", lambda: False)

    def scoring(*args, **kwargs):
        raise AssertionError("a non-main process scored the model")

    for name in ("predict_proba", "lm_loss", "masked_lm_eval"):
        if hasattr(tasks, name):
            monkeypatch.setattr(tasks, name, scoring)
    plan = SimpleNamespace(val=[(None, None)], model=None, trainer=SimpleNamespace(device="cpu"),
                           summary={}, task=SimpleNamespace(seed=0))
    assert getattr(tasks, run)(plan, "out") == {"steps": 3}
