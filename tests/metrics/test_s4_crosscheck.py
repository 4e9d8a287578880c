"""Our FID / IS / mIS / AM against the s4 repository's own SC09 metric code on the same classifier outputs
(tests/metrics/s4_fixture.py; the s4 numbers in s4_scores.json).

- FID and AM: equal (to rounding).
- IS and mIS: the s4 script estimates them differently (IS against the mean prediction of a shuffled other half,
  mIS from 10,000 random pairs); written with those estimators and NumPy's seeded legacy generator as the script
  seeds it, our building blocks give the s4 numbers exactly, and our exact estimators stay within a few percent.

Set MBA_S4_SOURCE to a copy of the s4 file (models/sashimi/sc09_classifier/test_speech_commands.py) to recompute
the s4 numbers from its code (needs scipy)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from s4_fixture import classifier_outputs_fixture

from mamba_bio_audio.metrics.sample_quality import sample_quality_scores

S4 = json.loads((Path(__file__).with_name("s4_scores.json")).read_text())
FIXTURE = classifier_outputs_fixture()


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1).numpy()


def s4_style_inception_score(probs: np.ndarray) -> float:
    """IS as the s4 script computes it: shuffle (legacy generator seeded 0), split in halves, then
    ``scipy.stats.entropy(first, repeated second-half mean)`` -- whose default ``axis=0`` runs over the *samples*:
    each class's column of the first half, normalised over the samples, against a constant column (uniform), the
    KL averaged over the classes."""
    probs = probs[np.random.RandomState(0).permutation(len(probs))]
    first, second = probs[: len(probs) // 2], probs[len(probs) // 2:]
    columns = (first / first.sum(0)).T  # (classes, n / 2): one distribution over the samples per class
    reference = np.repeat(second.mean(0)[None], len(first), axis=0)
    reference = (reference / reference.sum(0)).T  # uniform over the samples
    return float(np.exp(kl(columns, reference).mean()))


def s4_style_modified_inception_score(probs: np.ndarray, pairs: int = 10000) -> float:
    """mIS as the s4 script estimates it: ``pairs`` random ordered pairs (with replacement) from the legacy
    generator seeded 0."""
    rng = np.random.RandomState(0)
    chosen = np.array([rng.choice(np.arange(len(probs)), size=2, replace=True) for _ in range(pairs)])
    return float(np.exp(kl(probs[chosen[:, 0]], probs[chosen[:, 1]]).mean()))


@pytest.mark.parametrize("name", ["large", "small"])
def test_fid_and_am_equal_the_s4_code(name):
    ours = sample_quality_scores(*FIXTURE[name])
    assert ours["fid"] == pytest.approx(S4[name]["fid"], rel=1e-9)
    assert ours["am"] == pytest.approx(S4[name]["am"], rel=1e-12)


@pytest.mark.parametrize("name", ["large", "small"])
def test_is_and_mis_differ_only_by_the_estimator(name):
    probs = FIXTURE[name][3]
    assert s4_style_inception_score(probs) == pytest.approx(S4[name]["is"], rel=1e-9)
    assert s4_style_modified_inception_score(probs) == pytest.approx(S4[name]["mis"], rel=1e-9)
    ours = sample_quality_scores(*FIXTURE[name])  # mIS: our exact expectation against its 10,000-pair estimate
    assert ours["mis"] == pytest.approx(S4[name]["mis"], rel=0.03 if name == "large" else 0.05)


def test_the_s4_inception_score_is_another_quantity():
    """Confident predictions spread evenly over all 10 classes: both are 10; every sample predicting the same
    distribution: both are 1. Confident predictions spread evenly over only 2 classes: ours is 2 (two equally
    likely labels), the s4 code's 2^(2/10) = 1.15 (8 of its 10 per-class terms are 0)."""
    train_feats, train_probs = FIXTURE["large"][:2]

    def ours(probs):
        return sample_quality_scores(train_feats, train_probs, train_feats[:len(probs)], probs)["is"]

    ten = np.eye(10)[np.arange(1000) % 10] * 0.999 + 0.0001
    assert ours(ten) == pytest.approx(10, rel=0.01) and s4_style_inception_score(ten) == pytest.approx(10, rel=0.02)
    same = np.tile(np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum(), (1000, 1))
    assert ours(same) == pytest.approx(1.0) and s4_style_inception_score(same) == pytest.approx(1.0)
    two = np.eye(10)[np.arange(1000) % 2] * 0.999 + 0.0001
    assert ours(two) == pytest.approx(2.0, rel=0.01)
    assert s4_style_inception_score(two) == pytest.approx(2 ** 0.2, rel=0.01)


S4_SOURCE = os.environ.get("MBA_S4_SOURCE")


@pytest.mark.skipif(not S4_SOURCE, reason="set MBA_S4_SOURCE to the s4 repository's test_speech_commands.py")
def test_stored_numbers_are_the_s4_codes():
    pytest.importorskip("scipy")
    from scipy import linalg
    from scipy.stats import entropy

    tree = ast.parse(Path(S4_SOURCE).read_text())
    wanted = ("fid", "inception_score", "modified_inception_score", "am_score")
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert sorted(f.name for f in functions) == sorted(wanted)
    namespace = {"np": np, "linalg": linalg, "entropy": entropy}
    exec(compile(ast.Module(body=functions, type_ignores=[]), S4_SOURCE, "exec"), namespace)  # noqa: S102
    for name, (train_feats, train_probs, feats, probs) in FIXTURE.items():
        assert namespace["fid"](train_feats, feats) == pytest.approx(S4[name]["fid"], rel=1e-9)
        assert namespace["inception_score"](probs) == pytest.approx(S4[name]["is"], rel=1e-9)
        assert namespace["modified_inception_score"](probs) == pytest.approx(S4[name]["mis"], rel=1e-9)
        assert namespace["am_score"](train_probs, probs) == pytest.approx(S4[name]["am"], rel=1e-9)
