"""The linear-probe head: the model's logits after fitting are the regression's, and species training can start from it."""

import numpy as np
import pytest
import torch

from mamba_bio_audio.config import MambaConfig
from mamba_bio_audio.models.classifier import MambaClassifier
from mamba_bio_audio.tasks.baselines import LogisticRegression
from mamba_bio_audio.tasks.probe import fit_head_by_probe, pooled_features


def _model(pooling="mean", classes=3):
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=8, d_state=4, pad_vocab_size_multiple=8)
    return MambaClassifier(config, num_classes=classes, pooling=pooling)


def test_head_reproduces_the_regression():
    rng = np.random.default_rng(0)
    model = _model()
    windows = [rng.integers(0, 4, 37) for _ in range(30)]
    labels = rng.integers(0, 3, 30)
    facts = fit_head_by_probe(model, windows, labels)
    features = pooled_features(model, windows)
    expected = LogisticRegression(l2=facts["l2"], num_classes=3).fit(features, labels).predict_proba(features)
    with torch.no_grad():
        got = torch.softmax(model(torch.from_numpy(np.stack(windows))).double(), -1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert facts["windows"] == 30 and 0 <= facts["train_accuracy"] <= 1
    assert facts["train_accuracy"] == round(float((expected.argmax(1) == labels).mean()), 4)


def test_probe_separates_composition():
    """Windows of different base composition: a random model's pooled states + the probe place them."""
    rng = np.random.default_rng(1)
    model = _model(classes=2)
    weights = [np.array([0.4, 0.1, 0.1, 0.4]), np.array([0.1, 0.4, 0.4, 0.1])]  # AT-rich vs GC-rich
    labels = np.arange(40) % 2
    windows = [rng.choice(4, 200, p=weights[y]) for y in labels]
    fit_head_by_probe(model, windows, labels)
    test_labels = np.arange(20) % 2
    test = np.stack([rng.choice(4, 200, p=weights[y]) for y in test_labels])
    with torch.no_grad():
        predicted = model(torch.from_numpy(test)).argmax(-1).numpy()
    assert (predicted == test_labels).mean() >= 0.9


def test_species_training_from_a_probed_head(tmp_path):
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
    from mamba_bio_audio.tasks.species import SpeciesSettings, plan_training, run_training

    write_synthetic_genomes(tmp_path / "genomes", n_species=2, strains=3, length=3_000, seed=0)
    prepare_genomes(tmp_path / "genomes", tmp_path / "store", "strain")
    settings = SpeciesSettings(length=128, max_steps=2, preset="tiny", batch_size=2, head_init="probe",
                               val_per_species=0, checkpoint_every=0, device="cpu", progress=False)
    plan = plan_training(tmp_path / "store", settings)
    assert plan.summary["head_init"] == "probe"
    assert plan.summary["probe"]["windows"] == 128  # 32 per species and their reverse complements (rc_prob 0.5)
    random = plan_training(tmp_path / "store", SpeciesSettings(**{**settings.__dict__, "head_init": "random"}))
    assert "probe" not in random.summary
    assert torch.equal(plan.model.backbone.embedding.weight, random.model.backbone.embedding.weight)
    assert not torch.allclose(plan.model.head.weight, random.model.head.weight)  # the same model, its head fitted
    metrics = run_training(plan, tmp_path / "run")
    assert metrics["steps"] == 2 and metrics["probe"]["windows"] == 128


@pytest.mark.gpu
def test_a_head_probed_on_the_gpu_trains():
    """The probe moves the model to the GPU; its parameters must stay trainable (not inference tensors)."""
    rng = np.random.default_rng(0)
    model = _model()
    windows = [rng.integers(0, 4, 64) for _ in range(12)]
    fit_head_by_probe(model, windows, np.arange(12) % 3, device="cuda")
    assert model.head.weight.device.type == "cuda"
    loss = model(torch.from_numpy(np.stack(windows)).cuda()).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_keeping_the_better_of_probe_and_fine_tuned(tmp_path):
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
    from mamba_bio_audio.tasks.species import (
        SpeciesSettings,
        load_classifier,
        plan_training,
        split_accuracy,
        train_keeping_the_better,
    )

    write_synthetic_genomes(tmp_path / "genomes", n_species=2, strains=3, length=3_000, seed=0)
    prepare_genomes(tmp_path / "genomes", tmp_path / "store", "strain")
    settings = SpeciesSettings(length=128, max_steps=3, preset="tiny", batch_size=2, lr=0.05, head_init="probe",
                               val_per_species=0, checkpoint_every=0, device="cpu", progress=False)
    plan = plan_training(tmp_path / "store", settings)
    probed_head = plan.model.head.weight.detach().clone()
    metrics = train_keeping_the_better(plan, tmp_path / "run", tmp_path / "store", 128, val_per_species=8)
    assert metrics["kept"] == ("fine-tuned" if metrics["val_accuracy_fine_tuned"] >= metrics["val_accuracy_probe"]
                               else "probe")
    saved = load_classifier(tmp_path / "run")
    assert torch.equal(saved.head.weight, plan.model.head.weight)  # what is kept is what was saved
    assert torch.equal(saved.head.weight, probed_head) == (metrics["kept"] == "probe")
    assert split_accuracy(saved, tmp_path / "store", "val", 128, 8) == max(metrics["val_accuracy_probe"],
                                                                             metrics["val_accuracy_fine_tuned"])
