"""The Mamba paper's synthetic tasks (Gu & Dao 2023, Section 4.1 and Appendix E.1): selective copying and
induction heads. Generated on the fly; sample ``i`` is a pure function of ``(seed, i)``.

Each sample is a dict of int64 tensors, ready for :class:`mamba_bio_audio.training.data.IndexedDataModule`:

    input_ids: (seqlen,)   the tokens the model reads
    targets:   (seqlen,)   the token to predict at each position, IGNORE_INDEX (-100) where there is no loss

Selective copying (tokens: data 0..n_data_tokens-1, then ``noise_token``, then ``marker_token``)::

    input_ids  n n 3 n n n 7 n 1 n n n 3 n n | M M M M      (n noise, M marker; here 4 data tokens)
    targets    . . . . . . . . . . . . . . . | 3 7 1 3      (. = -100)

``n_memorize`` data tokens sit at random positions (kept in order) among noise in the first
``seqlen - n_memorize`` positions; the last ``n_memorize`` positions hold the marker, and at the k-th marker the
model must output the k-th data token. The spacing varies from sample to sample, which is what defeats a
time-invariant model (the paper's point: it needs content-aware selection, not a fixed delay).

Induction heads (tokens 0..n_tokens-1, then ``special_token``)::

    input_ids  5 2 9 S 4 0 7 ... 3 1 S
    targets    . . . . . . . ... . . 4

Random tokens; once, at a random position, the special token followed by the token to recall; the sequence ends
with the special token, where the model must output the token that followed it the first time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


def _rng(seed: int, index: int) -> np.random.Generator:
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return np.random.default_rng([seed, index])


def _as_sample(input_ids: np.ndarray, targets: np.ndarray) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.from_numpy(input_ids), "targets": torch.from_numpy(targets)}


@dataclass(frozen=True)
class SelectiveCopying:
    """Selective copying: remember ``n_memorize`` data tokens spread among noise, recall them in order.

    Attributes:
        seqlen: total length of ``input_ids`` (context plus the ``n_memorize`` marker positions); paper: 4096.
        n_memorize: data tokens to copy; paper: 16.
        n_data_tokens: distinct data tokens; paper: 14 (a vocabulary of 16 with the noise and marker tokens;
            Appendix E.1 of Gu & Dao 2023). The vocabulary adds a noise and a marker token.
        seed: the stream; sample i of a seed is always the same.
    """

    seqlen: int = 4096
    n_memorize: int = 16
    n_data_tokens: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_memorize < 1 or self.n_data_tokens < 1:
            raise ValueError("n_memorize and n_data_tokens must be >= 1")
        if self.seqlen < 2 * self.n_memorize:
            raise ValueError(f"seqlen {self.seqlen} leaves no room for {self.n_memorize} data tokens and as many "
                             f"markers (need seqlen >= {2 * self.n_memorize})")

    @property
    def noise_token(self) -> int:
        return self.n_data_tokens

    @property
    def marker_token(self) -> int:
        return self.n_data_tokens + 1

    @property
    def vocab_size(self) -> int:
        return self.n_data_tokens + 2

    @property
    def context_len(self) -> int:
        return self.seqlen - self.n_memorize

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        """{"input_ids": (seqlen,), "targets": (seqlen,)} int64; targets are -100 except at the markers."""
        rng = _rng(self.seed, index)
        data = rng.integers(0, self.n_data_tokens, size=self.n_memorize)
        positions = np.sort(rng.choice(self.context_len, size=self.n_memorize, replace=False))
        input_ids = np.full(self.seqlen, self.noise_token, dtype=np.int64)
        input_ids[positions] = data
        input_ids[self.context_len:] = self.marker_token
        targets = np.full(self.seqlen, IGNORE_INDEX, dtype=np.int64)
        targets[self.context_len:] = data
        return _as_sample(input_ids, targets)


@dataclass(frozen=True)
class InductionHeads:
    """Induction heads: after the special token, recall the token that followed its first occurrence.

    Attributes:
        seqlen: length of ``input_ids`` (>= 3); the paper trains at 256 and tests at 2^6 .. 2^20.
        n_tokens: ordinary tokens; paper: 16. The vocabulary adds the special token.
        seed: the stream; sample i of a seed is always the same.
    """

    seqlen: int = 256
    n_tokens: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seqlen < 3:
            raise ValueError(f"seqlen must be >= 3 (special, recall, special), got {self.seqlen}")
        if self.n_tokens < 1:
            raise ValueError("n_tokens must be >= 1")

    @property
    def special_token(self) -> int:
        return self.n_tokens

    @property
    def vocab_size(self) -> int:
        return self.n_tokens + 1

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        """{"input_ids": (seqlen,), "targets": (seqlen,)} int64; targets are -100 except at the last position."""
        rng = _rng(self.seed, index)
        input_ids = rng.integers(0, self.n_tokens, size=self.seqlen, dtype=np.int64)
        cue = int(rng.integers(0, self.seqlen - 2))  # the recall token at cue + 1 comes before the final cue
        input_ids[cue] = self.special_token
        input_ids[-1] = self.special_token
        targets = np.full(self.seqlen, IGNORE_INDEX, dtype=np.int64)
        targets[-1] = input_ids[cue + 1]
        return _as_sample(input_ids, targets)

