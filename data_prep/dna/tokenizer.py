"""DNA characters <-> token ids, in the HyenaDNA / Caduceus character-tokenizer layout ("hyena-12").

Ids: ``[CLS]`` 0, ``[SEP]`` 1, ``[BOS]`` 2, ``[MASK]`` 3, ``[PAD]`` 4, ``[RESERVED]`` 5, ``[UNK]`` 6 (a character
that is not a base, lenient encoding only), ``A`` 7, ``C`` 8, ``G`` 9, ``T`` 10, ``N`` 11 (unknown base);
``VOCAB_SIZE`` = 12.

Encoding rules:

- lower case is upper-cased (soft-masked repeats are ordinary bases; the mask never leaks into labels);
- ``U`` is read as ``T``, so RNA sequences encode like their DNA;
- the IUPAC ambiguity codes become ``N``;
- anything else raises :class:`~mamba_bio_audio.errors.DataError` naming the place, or becomes ``[UNK]`` when
  ``lenient=True``.

Encoding is one 256-entry table lookup over the ASCII bytes (no per-base Python loop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mamba_bio_audio.errors import DataError

NAME = "hyena-12"
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
A_ID, C_ID, G_ID, T_ID, N_ID = range(7, 12)
VOCAB_SIZE = 12
IUPAC_AMBIGUOUS = "RYSWKMBDHV"

_INVALID = 255  # sentinel in the strict table, never a token id


def _encode_table(invalid: int) -> bytes:
    """The 256-entry ASCII code -> token id table, ``invalid`` for characters that are not bases."""
    table = np.full(256, invalid, dtype=np.uint8)
    for chars, token in [("A", A_ID), ("C", C_ID), ("G", G_ID), ("T", T_ID), ("U", T_ID), ("N", N_ID)]:
        for ch in chars + chars.lower():
            table[ord(ch)] = token
    for ch in IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower():
        table[ord(ch)] = N_ID
    return table.tobytes()


_STRICT = _encode_table(_INVALID)
_LENIENT = _encode_table(UNK_ID)
_ID_TO_TOKEN = (*SPECIAL_TOKENS, "A", "C", "G", "T", "N")
_DECODE_BASES = np.frombuffer(b"???????ACGTN", dtype=np.uint8)  # ids 7..11 -> one ASCII byte each
_COMPLEMENT = np.arange(256, dtype=np.uint8)  # id -> id of the complement; ids other than A C G T map to themselves
_COMPLEMENT[[A_ID, C_ID, G_ID, T_ID]] = [T_ID, G_ID, C_ID, A_ID]
_COMPLEMENT_BYTES = _COMPLEMENT.tobytes()


def encode(seq: str | bytes, lenient: bool = False, *, source: str | None = None) -> np.ndarray:
    """Token ids of a DNA/RNA sequence: ``(len(seq),)`` uint8.

    ``source`` (e.g. ``"genome.fa: record 'chr1'"``) prefixes the error message of an invalid character, which also
    gives the character's 1-based position in ``seq``.
    """
    if isinstance(seq, str):
        try:
            seq = seq.encode("ascii")
        except UnicodeEncodeError as e:
            if not lenient:
                raise _invalid(seq[e.start], e.start, source) from None
            seq = seq.encode("ascii", errors="replace")  # '?' is not a base, so it becomes [UNK] below
    if lenient:
        return _translate(seq, _LENIENT)
    ids = _translate(seq, _STRICT)
    if ids.size and ids.max() == _INVALID:
        pos = int(np.argmax(ids == _INVALID))
        raise _invalid(chr(seq[pos]), pos, source)
    return ids


def _translate(seq: bytes, table: bytes) -> np.ndarray:
    """``table[seq]`` as a writable uint8 array (``bytes.translate`` is a C loop, twice numpy's fancy indexing)."""
    return np.frombuffer(bytearray(seq).translate(table), dtype=np.uint8)


def _invalid(char: str, pos: int, source: str | None) -> DataError:
    where = f"{source}: " if source else ""
    return DataError(f"{where}invalid character {char!r} at position {pos + 1}")


def count_unknown(ids: np.ndarray) -> int:
    """How many of ``ids`` (uint8, any shape) are not A, C, G or T: N, [UNK] and specials."""
    return int(np.count_nonzero((ids - np.uint8(A_ID)) > T_ID - A_ID))


def decode(ids: Any) -> str:
    """The string of a sequence of token ids (numpy array, torch tensor or list; 1-D); specials as ``[NAME]``."""
    arr = np.asarray(ids).reshape(-1)
    if arr.size and arr.min() >= A_ID and arr.max() <= N_ID:
        return _DECODE_BASES[arr].tobytes().decode("ascii")
    return "".join(_ID_TO_TOKEN[i] for i in arr.tolist())


def reverse_complement(ids: Any) -> Any:
    """Reverse complement of token ids along the last axis; ids other than A, C, G, T (N, specials) are unchanged.

    ``ids``: a numpy array or torch tensor of any shape ``(..., seqlen)`` with values in 0..255 (a list is read as a
    numpy array); the result has the same type, shape, dtype and (for torch) device.
    """
    if hasattr(ids, "new_tensor"):  # a torch.Tensor; checked by duck type so this module never imports torch
        return ids.new_tensor(_COMPLEMENT)[ids.flip(-1).long()]
    arr = np.asarray(ids)
    if arr.dtype == np.uint8:  # the common case, twice as fast through bytes.translate
        flipped = bytearray(arr[..., ::-1].tobytes()).translate(_COMPLEMENT_BYTES)
        return np.frombuffer(flipped, dtype=np.uint8).reshape(arr.shape)
    return _COMPLEMENT[arr[..., ::-1]].astype(arr.dtype)
