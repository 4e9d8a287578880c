"""k-mer features against a naive count."""

from itertools import product

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.kmer import kmer_counts, kmer_features
from mamba_bio_audio.data_prep.dna.tokenizer import decode, encode


def naive_counts(seq: str, k: int) -> np.ndarray:
    index = {"".join(p): i for i, p in enumerate(product("ACGT", repeat=k))}
    counts = np.zeros(4**k, dtype=np.int64)
    for i in range(len(seq) - k + 1):
        if seq[i: i + k] in index:
            counts[index[seq[i: i + k]]] += 1
    return counts


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_counts_match_a_naive_count(k):
    rng = np.random.default_rng(k)
    seq = "".join(rng.choice(list("ACGTN"), 500, p=[0.24, 0.24, 0.24, 0.24, 0.04]))
    np.testing.assert_array_equal(kmer_counts(encode(seq), k), naive_counts(seq, k))


def test_index_order_and_specials_are_skipped():
    assert kmer_counts(encode("AC"), 2).nonzero()[0].tolist() == [1]  # AA=0, AC=1, ..., TT=15
    tokens = np.concatenate([encode("ACG"), [0, 6], encode("TTT")]).astype(np.uint8)  # [CLS], [UNK] in the middle
    assert decode(tokens[3:5]) == "[CLS][UNK]"
    np.testing.assert_array_equal(kmer_counts(tokens, 2), naive_counts("ACG--TTT", 2))


def test_features_are_frequencies():
    windows = np.stack([encode("ACGTACGTAC"), encode("NNNNNNNNNN"), encode("AAAAAAAAAA")])
    X = kmer_features(windows, k=3)
    assert X.shape == (3, 64) and X.dtype == np.float32
    np.testing.assert_allclose(X.sum(axis=1), [1, 0, 1])
    assert X[2, 0] == 1.0
    assert kmer_features([encode("AC")], k=3).sum() == 0  # shorter than k
    with pytest.raises(ValueError, match="k must lie in"):
        kmer_counts(encode("ACGT"), 0)
