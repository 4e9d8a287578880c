"""Sample-quality scores of generated audio from a classifier's outputs, as in the SaShiMi / Mamba SC09 evaluation.

Inputs are arrays (numpy or torch): class probabilities ``probs: (n, classes)`` (rows sum to 1) and features
``features: (n, dim)`` from :class:`~mamba_bio_audio.models.digit_classifier.DigitClassifier`. Everything is
computed in float64 torch; no scipy. Conventions: ``0 log 0 = 0``; ``KL(p || q)`` is infinite where ``q = 0 < p``.

- FID (lower is better): the Frechet distance between Gaussians fit to two feature sets,
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^(1/2) S2 S1^(1/2))^(1/2))`` (the trace equals ``Tr (S1 S2)^(1/2)``);
  means and unbiased (n - 1) covariances as ``np.cov``. With ``R_i = S_i^(1/2)`` (symmetric, by
  eigendecomposition), ``S1^(1/2) S2 S1^(1/2) = (R2 R1)^T (R2 R1)``, so the trace term is the sum of the singular
  values of ``R2 R1``; this never squares the covariances' condition number, and a set against itself gives 0
  to rounding even when ``n < dim`` (no ``1e-4`` diagonal offset as the s4 script needs with scipy's sqrtm).
- IS (higher is better, 1 .. classes): ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean of ``p(y|x)``
  over the set. (The s4 script's number is another quantity: its ``scipy.stats.entropy`` call on 2-D arrays runs
  along the samples, see docs/audio.md, "Checked against the s4 code".)
- mIS (higher is better, >= 1): ``exp(E_{x,x'} KL(p(y|x) || p(y|x')))`` over independent draws ``x, x'`` of the set
  (pairs with replacement). The s4 script estimates it from 10,000 random pairs; here the expectation over all
  ``n^2`` pairs is exact: ``-mean_x H(p(y|x)) - sum_y p(y) mean_x' log p(y|x')``.
- AM (lower is better, >= 0): ``KL(p*(y) || p(y)) + E_x H(p(y|x))``, with ``p(y)`` the samples' mean prediction and
  ``p*`` a reference label marginal: the s4 script uses the classifier's mean prediction over the training set;
  the training labels' frequencies are the same thing for a perfect classifier.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _probs(probs: ArrayLike) -> torch.Tensor:
    """Check and convert ``probs: (n, classes)`` to float64."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must have shape (n, classes) with n >= 1, got {tuple(p.shape)}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ValueError("probabilities must be non-negative with rows summing to 1")
    return p


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) along the last axis."""
    return -torch.xlogy(p, p).sum(-1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) (nats) along the last axis; infinite where q = 0 < p."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def inception_score(probs: ArrayLike) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))), ``p(y)`` the set's mean prediction; ``probs: (n, classes)``."""
    p = _probs(probs)
    return _kl(p, p.mean(0)).mean().exp().item()


def modified_inception_score(probs: ArrayLike) -> float:
    """mIS = exp(E_{x,x'} KL(p(y|x) || p(y|x'))), exact over all ordered pairs; ``probs: (n, classes)``."""
    p = _probs(probs)
    marginal = p.mean(0)
    mean_log = torch.log(p).mean(0)  # (classes,), -inf where some prediction is 0
    cross = torch.where(marginal > 0, marginal * mean_log, torch.zeros_like(marginal)).sum()
    return (-_entropy(p).mean() - cross).exp().item()


def am_score(probs: ArrayLike, reference_marginal: ArrayLike) -> float:
    """AM = KL(p* || p(y)) + E_x H(p(y|x)); ``probs: (n, classes)``, ``reference_marginal`` p*: ``(classes,)``."""
    p = _probs(probs)
    ref = _probs(torch.as_tensor(reference_marginal).reshape(1, -1))[0]
    if ref.shape[0] != p.shape[1]:
        raise ValueError(f"reference marginal has {ref.shape[0]} classes, the probabilities {p.shape[1]}")
    return (_kl(ref, p.mean(0)) + _entropy(p).mean()).item()


def gaussian_stats(features: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(dim,)`` and unbiased covariance ``(dim, dim)`` (float64) of ``features: (n, dim)``, n >= 2."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (n, dim) with n >= 2, got {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigendecomposition; negative
    eigenvalues from rounding are set to 0)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); means ``(dim,)``, covariances ``(dim, dim)``."""
    mu1, mu2, s1, s2 = (torch.as_tensor(a, dtype=torch.float64) for a in (mu1, mu2, sigma1, sigma2))
    tr_covmean = torch.linalg.svdvals(_sqrt_psd(s2) @ _sqrt_psd(s1)).sum()
    return ((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_covmean).item()


def fid(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two feature sets ``(n1, dim)`` and ``(n2, dim)``: Frechet distance of their fitted Gaussians."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def sample_quality_scores(train_features: ArrayLike, train_probs: ArrayLike, sample_features: ArrayLike,
                          sample_probs: ArrayLike) -> dict[str, float]:
    """The four SC09 scores of generated samples against the training set, as the s4 script reports them.

    Returns ``{"fid": fid(train, samples), "is": IS(samples), "mis": mIS(samples),
    "am": AM(samples, p* = mean training prediction)}``.
    """
    return {
        "fid": fid(train_features, sample_features),
        "is": inception_score(sample_probs),
        "mis": modified_inception_score(sample_probs),
        "am": am_score(sample_probs, _probs(train_probs).mean(0)),
    }
