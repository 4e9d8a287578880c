"""Evaluation metrics: SC09 sample quality (FID, IS, mIS, AM) and the digit classifier's training helpers."""

from mamba_bio_audio.metrics.sample_quality import (
    am_score,
    fid,
    frechet_distance,
    inception_score,
    modified_inception_score,
    sample_quality_scores,
)

__all__ = [
    "am_score",
    "fid",
    "frechet_distance",
    "inception_score",
    "modified_inception_score",
    "sample_quality_scores",
]
