"""DNA tokenizer: id layout, case, IUPAC codes, invalid characters, decode, reverse complement."""

import numpy as np
import pytest
import torch

from mamba_bio_audio.data_prep.dna import tokenizer as tk
from mamba_bio_audio.errors import DataError


def test_id_layout_matches_hyenadna():
    assert tk.SPECIAL_TOKENS == ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
    assert (tk.CLS_ID, tk.SEP_ID, tk.BOS_ID, tk.MASK_ID, tk.PAD_ID, tk.RESERVED_ID, tk.UNK_ID) == tuple(range(7))
    assert (tk.A_ID, tk.C_ID, tk.G_ID, tk.T_ID, tk.N_ID) == (7, 8, 9, 10, 11)
    assert tk.VOCAB_SIZE == 12
    ids = tk.encode("ACGTN")
    assert ids.dtype == np.uint8 and ids.tolist() == [7, 8, 9, 10, 11]


def test_lower_case_is_upper_cased():
    assert tk.encode("acgtn").tolist() == tk.encode("ACGTN").tolist()
    assert tk.encode(b"aCgT").tolist() == [7, 8, 9, 10]


def test_iupac_codes_become_n_and_u_becomes_t():
    assert tk.encode("RYSWKMBDHVryswkmbdhv").tolist() == [tk.N_ID] * 20
    assert tk.encode("ACGU").tolist() == tk.encode("ACGT").tolist()
    assert tk.encode("u").tolist() == [tk.T_ID]


def test_empty_sequence():
    assert tk.encode("").shape == (0,)


def test_encoded_array_is_writable():
    ids = tk.encode("ACGT")
    ids[0] = tk.N_ID
    assert ids[0] == tk.N_ID


@pytest.mark.parametrize("seq, char, position", [("ACGX", "X", 4), ("A-C", "-", 2), ("ACé", "é", 3),
                                                 ("AC GT", " ", 3)])
def test_invalid_character_names_source_and_position(seq, char, position):
    with pytest.raises(DataError) as err:
        tk.encode(seq, source="genome.fa: record 'chr1'")
    assert str(err.value) == f"genome.fa: record 'chr1': invalid character {char!r} at position {position}"


def test_lenient_maps_invalid_to_unk():
    assert tk.encode("AXé-n", lenient=True).tolist() == [tk.A_ID, tk.UNK_ID, tk.UNK_ID, tk.UNK_ID, tk.N_ID]


def test_decode_round_trip_and_specials():
    assert tk.decode(tk.encode("GATTACAN")) == "GATTACAN"
    assert tk.decode([tk.CLS_ID, tk.A_ID, tk.PAD_ID]) == "[CLS]A[PAD]"
    assert tk.decode(torch.tensor([7, 10])) == "AT"


def test_count_unknown():
    assert tk.count_unknown(tk.encode("ACGTNNRX", lenient=True)) == 4
    assert tk.count_unknown(np.array([tk.PAD_ID, tk.A_ID], dtype=np.uint8)) == 1


def test_reverse_complement_known_example():
    assert tk.decode(tk.reverse_complement(tk.encode("AACGTN"))) == "NACGTT"
    specials = np.array([tk.CLS_ID, tk.A_ID, tk.MASK_ID, tk.UNK_ID], dtype=np.uint8)
    assert tk.reverse_complement(specials).tolist() == [tk.UNK_ID, tk.MASK_ID, tk.T_ID, tk.CLS_ID]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_reverse_complement_numpy_is_an_involution_on_the_last_axis(dtype):
    ids = np.random.default_rng(0).integers(0, tk.VOCAB_SIZE, (3, 2, 50)).astype(dtype)
    rc = tk.reverse_complement(ids)
    assert rc.dtype == dtype and rc.shape == ids.shape
    np.testing.assert_array_equal(tk.reverse_complement(rc), ids)
    np.testing.assert_array_equal(rc[1, 0], tk.reverse_complement(ids[1, 0]))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.long])
def test_reverse_complement_torch(dtype):
    ids = torch.randint(0, tk.VOCAB_SIZE, (2, 3, 40), generator=torch.Generator().manual_seed(0)).to(dtype)
    rc = tk.reverse_complement(ids)
    assert isinstance(rc, torch.Tensor) and rc.dtype == dtype and rc.shape == ids.shape
    assert torch.equal(tk.reverse_complement(rc), ids)
    np.testing.assert_array_equal(rc.numpy(), tk.reverse_complement(ids.numpy()))
