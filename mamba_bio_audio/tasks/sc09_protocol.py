"""SaShiMi's SC09 sample protocol: a likelihood threshold tuned on half of the samples, applied to the other half.

The s4 repository's SaShiMi evaluation (``generate.py`` saves the samples sorted by their log-likelihood under
the model, lowest first; ``sc09_classifier/test_speech_commands.py --threshold`` scores them) does this:

1. split the samples at random into a tuning half and a test half (each kept in likelihood order);
2. on the tuning half, for every band ``(lower, upper)`` with ``lower`` in 0, 0.1, .., 0.4 and ``upper`` in 0.6,
   0.65, .., 0.95, keep the samples of likelihood rank ``[int(lower n), int(upper n))`` -- dropping the least
   likely ``lower`` share and the most likely ``1 - upper`` share -- and compute the Inception Score;
3. take the band with the best IS and keep the same band of the test half; FID / IS / mIS / AM are reported on it.

:func:`threshold_protocol` is that procedure, with three differences (docs/audio.md says why):

- the band with the highest tuning IS is taken. The s4 script never updates its running best (``best_value``
  stays 0), so it always ends with the last band of its loop, (0.4, 0.95), whatever the scores;
  ``band="s4"`` reproduces that choice.
- the split is seeded (``seed``); the s4 script draws it from NumPy's global generator in the state earlier metric
  calls left it in.
- the test band is cut at the test half's own size; the s4 script uses ``len // 2`` for both halves, one sample
  short of the test half when the count is odd.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mamba_bio_audio.errors import DataError
from mamba_bio_audio.metrics.sample_quality import inception_score

LOWER = tuple(round(0.1 * k, 2) for k in range(5))  # 0.0 .. 0.4
UPPER = tuple(round(0.6 + 0.05 * k, 2) for k in range(8))  # 0.6 .. 0.95
S4_BAND = (0.4, 0.95)  # the band the s4 script ends with (see the module docstring)
MIN_SAMPLES = 20  # the narrowest band, (0.4, 0.6), of a half of 10 keeps 2 samples (FID needs 2)


def band(n: int, lower: float, upper: float) -> slice:
    """Ranks ``[int(lower n), int(upper n))`` of ``n`` samples in likelihood order (as the s4 script slices)."""
    return slice(int(lower * n), int(upper * n))


@dataclass
class ThresholdResult:
    """``tune`` / ``test``: sample indices of each half in likelihood order (ascending); ``lower`` / ``upper``: the
    chosen band; ``tune_is``: IS of the band on the tuning half; ``grid``: ``{(lower, upper): tuning IS}``;
    ``kept``: the indices of the test half's samples inside the band (the scored set)."""

    tune: np.ndarray
    test: np.ndarray
    lower: float
    upper: float
    tune_is: float
    grid: dict
    kept: np.ndarray

    def summary(self) -> dict:
        """JSON-ready: the band, the tuning IS, the counts and the grid."""
        return {"lower": self.lower, "upper": self.upper, "tune_is": self.tune_is, "tune_samples": len(self.tune),
                "test_samples": len(self.test), "kept_samples": len(self.kept),
                "grid": [{"lower": lo, "upper": up, "is": v} for (lo, up), v in self.grid.items()]}


def threshold_protocol(log_likelihoods, probs, *, seed: int = 0, band_choice: str = "best") -> ThresholdResult:
    """The likelihood-threshold protocol (module docstring) on ``n`` samples.

    Args:
        log_likelihoods: ``(n,)`` each sample's log-likelihood under the model (any monotone score: bits per sample
            of equal-length clips sort the other way round, so pass ``-bits``).
        probs: ``(n, classes)`` the classifier's probabilities of each sample.
        seed: the seed of the random half split.
        band_choice: ``"best"`` (the band of highest tuning IS) or ``"s4"`` (the s4 script's (0.4, 0.95)).
    """
    loglik = np.asarray(log_likelihoods, dtype=np.float64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    n = loglik.shape[0]
    if probs.shape[0] != n:
        raise ValueError(f"{n} log-likelihoods but {probs.shape[0]} rows of probabilities")
    if n < MIN_SAMPLES:
        raise DataError(f"the likelihood threshold needs at least {MIN_SAMPLES} samples (every band of a half then "
                        f"keeps 2 for FID), got {n}")
    if band_choice not in ("best", "s4"):
        raise ValueError(f"band_choice must be 'best' or 's4', got {band_choice!r}")
    order = np.argsort(loglik, kind="stable")  # likelihood order, least likely first
    ranks = np.sort(np.random.default_rng(seed).choice(n, size=n // 2, replace=False))
    tune = order[ranks]
    test = order[np.setdiff1d(np.arange(n), ranks)]
    grid = {}
    for lower in LOWER:
        for upper in UPPER:
            grid[(lower, upper)] = inception_score(probs[tune[band(len(tune), lower, upper)]])
    chosen = max(grid, key=grid.get) if band_choice == "best" else S4_BAND
    kept = test[band(len(test), *chosen)]
    return ThresholdResult(tune=tune, test=test, lower=chosen[0], upper=chosen[1], tune_is=grid[chosen], grid=grid,
                           kept=kept)


def tune_threshold(samples, model, classifier, test_set, *, seed: int = 0, band_choice: str = "best",
                   batch_size: int = 64, device="cpu"):
    """Run :func:`threshold_protocol` on the WAVs of ``samples`` (read as the evaluation reads them: the test set's
    rate and clip length). Log-likelihoods come from the folder's ``likelihoods.tsv`` (``mba sc09 generate``)
    when it lists every file, else from ``model`` (:func:`~mamba_bio_audio.tasks.audio_page.clip_log_likelihoods`).

    Returns ``(result, waves (n, clip_samples), source)`` with ``source`` "likelihoods.tsv" or "model".
    """
    import warnings

    from mamba_bio_audio.metrics.classifier_training import classifier_outputs
    from mamba_bio_audio.tasks.audio_lm import audio_settings, read_wav_folder
    from mamba_bio_audio.tasks.audio_page import clip_log_likelihoods, read_likelihoods

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        waves, names, _ = read_wav_folder(samples, test_set.sample_rate, test_set.clip_samples)
    table = read_likelihoods(samples)
    if all(name in table for name in names):
        loglik, source = np.array([table[name][1] for name in names]), "likelihoods.tsv"
    else:
        audio = audio_settings(model)
        scored = clip_log_likelihoods(model, waves, audio["encoding"], int(audio["clip_samples"]), device=device)
        loglik, source = np.array([ll for _, ll in scored]), "model"
    probs, _ = classifier_outputs(classifier, waves, batch_size=batch_size, device=device)
    return threshold_protocol(loglik, probs, seed=seed, band_choice=band_choice), waves, source
