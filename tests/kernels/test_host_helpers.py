"""The host-side integer helpers of kernels/utils.py agree with Triton's own (which they replace in host code)."""

import random

import triton

from mamba_bio_audio.kernels.utils import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_match_triton():
    rng = random.Random(0)
    values = [0, 1, 2, 3, 7, 8, 9, 1023, 1024, 1025, 2**20, 2**31 + 5] + [rng.randrange(1, 1 << 40) for _ in range(200)]
    for a in values:
        assert next_power_of_2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 8, 13, 1024, rng.randrange(1, 1 << 20)):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
