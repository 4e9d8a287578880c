"""Inference helpers move the model to its device before entering inference mode: parameters moved inside
``torch.inference_mode()`` become inference tensors, and the next training step on them fails ("Inference tensors
cannot be saved for backward") -- on a GPU, after Lightning has moved the model back to the CPU at the end of
fit. On the CPU ``.to("cpu")`` copies nothing, so the tests watch where ``.to`` is called instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.models.classifier import MambaClassifier
from mamba_bio_audio.models.lm import MambaLM
from mamba_bio_audio.tasks.windows import evaluating

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = dict(d_model=16, n_layer=1, vocab_size=12, d_state=4, pad_vocab_size_multiple=8)


@pytest.fixture
def moves(monkeypatch):
    """Every ``nn.Module.to`` call, with whether inference mode was on."""
    calls = []
    real = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        calls.append(torch.is_inference_mode_enabled())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    return calls


def test_evaluating_moves_first_then_infers_and_restores_the_mode(moves):
    model = MambaClassifier(MambaConfig(**CONFIG), num_classes=2).train()
    with evaluating(model, torch.device("cpu")) as inside:
        assert inside is model and not model.training and torch.is_inference_mode_enabled()
    assert model.training and not torch.is_inference_mode_enabled() and moves == [False]
    with pytest.raises(RuntimeError), evaluating(model, torch.device("cpu")):
        raise RuntimeError("boom")
    assert model.training


def _windows(n=4, length=24):
    return [np.random.default_rng(i).integers(0, 4, length) for i in range(n)]


def test_predictions_and_losses_move_the_model_outside_inference_mode(moves):
    from mamba_bio_audio.tasks import classify, dna_lm, probe, species

    classifier = MambaClassifier(MambaConfig(**CONFIG), num_classes=2)
    lm = MambaLM(MambaConfig(**CONFIG))
    runs = {
        "species.predict_proba": lambda: species.predict_proba(classifier, _windows()),
        "classify.predict_proba": lambda: classify.predict_proba(classifier, _windows()),
        "classify.predict_proba packed": lambda: classify.predict_proba(classifier, _windows(), packed=True),
        "dna_lm.lm_loss": lambda: dna_lm.lm_loss(lm, _windows()),
        "probe.pooled_features": lambda: probe.pooled_features(classifier, _windows()),
    }
    for name, run in runs.items():
        moves.clear()
        run()
        assert moves and not any(moves), f"{name}: .to() inside inference mode {moves}"
        assert not torch.is_inference_mode_enabled()
    # and the model still trains afterwards
    loss = classifier(torch.from_numpy(np.stack(_windows())).long()).square().mean()
    loss.backward()
