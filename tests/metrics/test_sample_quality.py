"""SC09 sample-quality scores on cases with known answers, and the digit classifier that feeds them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamba_bio_audio.errors import CheckpointError
from mamba_bio_audio.metrics import (
    am_score,
    fid,
    frechet_distance,
    inception_score,
    modified_inception_score,
    sample_quality_scores,
)
from mamba_bio_audio.metrics.classifier_training import (
    classifier_outputs,
    random_shift,
    train_digit_classifier,
)
from mamba_bio_audio.models.digit_classifier import DigitClassifier, DigitClassifierConfig

C = 10
TINY = DigitClassifierConfig(depth=11, cardinality=2, base_width=4, widen_factor=1, stem_channels=8)


def one_hot_evenly(per_class: int = 5) -> np.ndarray:
    return np.repeat(np.eye(C), per_class, axis=0)


def soft_one_hot_evenly(a: float, per_class: int = 3) -> np.ndarray:
    """Probability ``a`` on the true class and ``(1 - a) / (C - 1)`` on each other, classes equally frequent."""
    b = (1 - a) / (C - 1)
    return b + (a - b) * one_hot_evenly(per_class)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


# --- Inception score, modified IS, AM --------------------------------------------------------------------------


def test_inception_score_known_cases():
    assert inception_score(np.full((7, C), 1 / C)) == pytest.approx(1.0, abs=1e-12)
    assert inception_score(one_hot_evenly()) == pytest.approx(10.0, abs=1e-12)
    a = 0.7
    b = (1 - a) / (C - 1)
    entropy = -a * math.log(a) - (C - 1) * b * math.log(b)
    assert inception_score(soft_one_hot_evenly(a)) == pytest.approx(C * math.exp(-entropy), rel=1e-12)


def test_inception_score_matches_its_definition_on_random_predictions():
    p = np.random.default_rng(0).dirichlet(np.ones(C), size=40)
    expected = math.exp(np.mean([kl(row, p.mean(0)) for row in p]))
    assert inception_score(p) == pytest.approx(expected, rel=1e-12)


def test_modified_inception_score_known_cases():
    assert modified_inception_score(np.full((4, C), 1 / C)) == pytest.approx(1.0, abs=1e-12)
    a = 0.9
    b = (1 - a) / (C - 1)
    # pairs from the same class (probability 1/C) have KL 0, the others (a - b) ln(a / b)
    expected = math.exp((C - 1) / C * (a - b) * math.log(a / b))
    assert modified_inception_score(soft_one_hot_evenly(a)) == pytest.approx(expected, rel=1e-12)
    assert modified_inception_score(one_hot_evenly()) == math.inf  # KL between distinct one-hots is infinite


def test_modified_inception_score_is_the_mean_over_all_pairs():
    p = np.random.default_rng(1).dirichlet(np.ones(C), size=25)
    expected = math.exp(np.mean([kl(x, y) for x in p for y in p]))
    assert modified_inception_score(p) == pytest.approx(expected, rel=1e-10)
    assert modified_inception_score(p) >= inception_score(p)  # KL is convex in its second argument


def test_am_score_known_cases():
    uniform = np.full(C, 1 / C)
    assert am_score(one_hot_evenly(), uniform) == pytest.approx(0.0, abs=1e-12)
    assert am_score(np.full((6, C), 1 / C), uniform) == pytest.approx(math.log(C), rel=1e-12)
    p = np.random.default_rng(2).dirichlet(np.ones(C), size=30)
    ref = np.random.default_rng(3).dirichlet(np.ones(C))
    entropy = -np.mean(np.sum(p * np.log(p), axis=1))
    assert am_score(p, ref) == pytest.approx(kl(ref, p.mean(0)) + entropy, rel=1e-12)


def test_probabilities_are_validated():
    with pytest.raises(ValueError, match="rows summing to 1"):
        inception_score(np.full((3, C), 0.2))
    with pytest.raises(ValueError, match="shape"):
        modified_inception_score(np.full(C, 1 / C))
    with pytest.raises(ValueError, match="classes"):
        am_score(one_hot_evenly(), np.full(4, 0.25))


# --- FID ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, dim", [(200, 16), (30, 64)])  # full rank, and rank-deficient covariance
def test_fid_of_a_set_against_itself_is_zero(n, dim):
    feats = np.random.default_rng(4).normal(size=(n, dim)) * np.linspace(0.1, 3, dim)
    assert abs(fid(feats, feats)) < 1e-6


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    d1, d2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(d1) - sqrt(d2))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-10)
    # S2 = c^2 S1: (1 - c)^2 Tr S1
    a = rng.normal(size=(6, 6))
    s1 = a @ a.T
    assert frechet_distance(mu1, s1, mu1, 9 * s1) == pytest.approx(4 * np.trace(s1), rel=1e-10)


def test_frechet_distance_non_commuting_2x2():
    # for 2x2 PSD M, Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)); here M = S1 S2 with S1 S2 != S2 S1
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.7], [-0.7, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    m = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance([0, 0], s1, [1, 0], s2) == pytest.approx(expected, rel=1e-12)


def test_fid_from_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(6)
    cov1 = np.array([[1.0, 0.3], [0.3, 0.5]])
    cov2 = np.array([[0.4, 0.0], [0.0, 2.0]])
    x1 = rng.multivariate_normal([0, 0], cov1, size=50_000)
    x2 = rng.multivariate_normal([1, -1], cov2, size=50_000)
    assert fid(x1, x2) == pytest.approx(frechet_distance([0, 0], cov1, [1, -1], cov2), abs=0.03)


def test_sample_quality_scores_reports_the_four_scores():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(50, 8))
    probs = soft_one_hot_evenly(0.8, per_class=5)
    scores = sample_quality_scores(feats, probs, feats, probs)
    assert set(scores) == {"fid", "is", "mis", "am"}
    assert abs(scores["fid"]) < 1e-6 and scores["is"] == pytest.approx(inception_score(probs))
    assert scores["am"] == pytest.approx(am_score(probs, probs.mean(0)))


# --- the digit classifier -------------------------------------------------------------------------------------


def test_default_classifier_is_the_s4_resnext_on_32x32_log_mels():
    model = DigitClassifier().eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(34.4e6, rel=0.01)
    wave = 0.1 * torch.randn(2, 16000)
    spec = model.spectrogram(wave)
    assert spec.shape == (2, 1, 32, 32)
    assert spec.amax(dim=(-2, -1)).eq(0).all() and spec.min() >= -80
    with torch.no_grad():
        assert model.features(wave).shape == (2, 1024) and model(wave).shape == (2, 10)


def test_small_classifier_shapes_and_save_load(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier(TINY).eval()
    wave = 0.1 * torch.randn(3, 16000)
    with torch.no_grad():
        logits, feats = model(wave), model.features(wave)
    assert logits.shape == (3, 10) and feats.shape == (3, model.feature_dim) == (3, 256)
    loaded = DigitClassifier.from_pretrained(model.save_pretrained(tmp_path / "clf")).eval()
    assert loaded.config == TINY
    with torch.no_grad():
        torch.testing.assert_close(loaded(wave), logits)
    with pytest.raises(CheckpointError, match="not a digit classifier checkpoint"):
        DigitClassifier.from_pretrained(tmp_path / "absent")
    with pytest.raises(ValueError, match="depth"):
        DigitClassifier(DigitClassifierConfig(depth=12))


def test_random_shift_moves_clips_and_fills_zeros():
    wave = torch.arange(1, 11, dtype=torch.float32).repeat(64, 1)
    shifted = random_shift(wave, 3, torch.Generator().manual_seed(0))
    for row in shifted:
        kept = row[row != 0]
        assert 7 <= kept.numel() <= 10 and torch.all(kept.diff() == 1)
        assert kept.numel() == 10 or row[0] == 0 or row[-1] == 0
    assert random_shift(wave, 3, torch.Generator().manual_seed(0)).ne(wave).any()


def test_train_loop_and_outputs_on_a_tiny_dataset():
    rng = np.random.default_rng(8)
    data = [{"waveform": torch.from_numpy(rng.normal(0, 0.1, 4000).astype(np.float32)),
             "label": torch.tensor(i % 10)} for i in range(20)]
    config = DigitClassifierConfig(sample_rate=4000, n_fft=256, hop_length=128, depth=11, cardinality=1,
                                   base_width=2, widen_factor=1, stem_channels=4)
    model, history = train_digit_classifier(data, val_data=data[:10], config=config, epochs=2, batch_size=8)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) and 0 <= h["val_acc"] <= 1 for h in history)
    probs, feats = classifier_outputs(model, torch.stack([d["waveform"] for d in data]), batch_size=7)
    assert probs.dtype == feats.dtype == np.float64
    assert probs.shape == (20, 10) and feats.shape == (20, model.feature_dim)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
