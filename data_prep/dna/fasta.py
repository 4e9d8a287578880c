"""Genome files -> records of token ids: FASTA, gzipped FASTA (plain gzip or BGZF) and UCSC 2bit.

The format is detected from the first bytes, never from the extension: ``1f 8b`` is gzip (BGZF is gzip with extra
fields, so it needs nothing special), the 2bit signature is 2bit, anything else is read as FASTA text. 2bit is
parsed by Biopython (``SeqIO.parse(handle, "twobit")``). FASTA is parsed here, block by block: Biopython's
``SimpleFastaParser`` walks the file line by line in Python and was 70% of ``prepare_genomes``' time (about 100 MB/s
on gzipped bacteria, 220 MB/s on plain text), while a block parser costs little beyond gzip decoding: it finds
header lines with ``bytes.find`` and drops line breaks with ``bytes.translate`` (a test checks that it reads what
Biopython reads). Sequences are encoded with :mod:`~mamba_bio_audio.data_prep.dna.tokenizer`; one record is held in
memory at a time.

Every problem is one :class:`~mamba_bio_audio.errors.DataError` naming the file and the place: a missing or empty
file, text before the first ``>`` header, binary content, corrupt gzip or 2bit data, a duplicate record id, a
record without sequence, an invalid character (with its record and 1-based position).

Header convention: ``>species|strain=NAME|original header`` (see ``shared/data/dna/bacteria/SOURCES.md``). The record
id is the first word of the original header; without the convention it is the first word of the header and the
strain is the record id.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from Bio import SeqIO

from mamba_bio_audio.errors import DataError

from .tokenizer import encode

FASTA, FASTA_GZ, TWOBIT = "fasta", "fasta.gz", "2bit"
_GZIP_MAGIC = b"\x1f\x8b"
_TWOBIT_MAGICS = (b"\x43\x27\x41\x1a", b"\x1a\x41\x27\x43")  # 0x1A412743, little- and big-endian
_BLOCK = 1 << 23
_CORRUPTION = {  # format -> (what is corrupt, the exceptions that say so)
    FASTA: ("file", ()),
    FASTA_GZ: ("gzip data", (gzip.BadGzipFile, EOFError, zlib.error)),
    TWOBIT: ("2bit file", (ValueError, RuntimeError, EOFError, struct.error)),  # as Biopython's parser raises them
}
_WHITESPACE = b" \t\r\n"
_CONVENTION = re.compile(r"([^|\s]+)\|strain=([^|]+)\|(.*)")
_CHROMOSOME_WORD = re.compile(r"\bchromosome\s+([0-9]+|[IVX]+|[A-Z])\b", re.IGNORECASE)
_CHR_ID = re.compile(r"chr([0-9]+|[A-Za-z])")


@dataclass(frozen=True)
class RecordHeader:
    """One record's names: ``id`` (unique in its file), ``strain``, and, when the header says so, ``species`` and
    ``chromosome`` (else None); ``title`` is the whole header line without ``>``."""

    id: str
    strain: str
    species: str | None
    chromosome: str | None
    title: str


def parse_header(title: str) -> RecordHeader:
    """Names of a record from its header line (without ``>``), following the module's header convention."""
    species = strain = None
    original = title
    m = _CONVENTION.fullmatch(title)
    if m and m.group(3).strip():
        species, strain, original = m.groups()
    words = original.split(None, 1)
    record_id = words[0] if words else ""
    chrom = _CHR_ID.fullmatch(record_id) or _CHROMOSOME_WORD.search(original)
    return RecordHeader(id=record_id, strain=strain or record_id, species=species,
                        chromosome=chrom.group(1) if chrom else None, title=title)


def detect_format(path: str | Path) -> str:
    """``"fasta"``, ``"fasta.gz"`` or ``"2bit"``, from the file's first bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not head:
        raise DataError(f"{path}: empty file")
    if head.startswith(_GZIP_MAGIC):
        return FASTA_GZ
    return TWOBIT if head in _TWOBIT_MAGICS else FASTA


def read_headers(path: str | Path) -> list[RecordHeader]:
    """Every record's header, in file order, without decoding sequences (a fast scan for planning).

    Checks what can be checked without the sequences: empty file, text before the first header, binary content,
    corrupt gzip data, empty headers and duplicate record ids.
    """
    path = Path(path)
    fmt = detect_format(path)
    with _read_errors(path, fmt):
        if fmt == TWOBIT:
            with open(path, "rb") as fh:
                titles = [rec.id for rec in SeqIO.parse(fh, "twobit")]
        else:
            with _open(path, fmt) as fh:
                titles = [_title(block, start) for block in _blocks(fh, path) for start in _header_starts(block)]
    seen: dict[str, int] = {}
    headers = [_checked_header(title, number, seen, path) for number, title in enumerate(titles, 1)]
    if not headers:
        raise DataError(f"{path}: no records")
    return headers


def read_records(path: str | Path, lenient: bool = False) -> Iterator[tuple[RecordHeader, np.ndarray]]:
    """Yield ``(header, tokens)`` per record, tokens ``(length,)`` uint8 (see the tokenizer for ``lenient``)."""
    path = Path(path)
    fmt = detect_format(path)
    seen: dict[str, int] = {}
    with _read_errors(path, fmt):
        for number, (title, seq) in enumerate(_parse(path, fmt), 1):
            header = _checked_header(title, number, seen, path)
            if not seq:
                raise DataError(f"{path}: record {header.id!r} has no sequence")
            yield header, encode(seq, lenient, source=f"{path}: record {header.id!r}")
    if not seen:
        raise DataError(f"{path}: no records")


def _parse(path: Path, fmt: str) -> Iterator[tuple[str, bytes]]:
    """(title, sequence) pairs, the sequence without whitespace."""
    if fmt == TWOBIT:
        with open(path, "rb") as fh:
            for rec in SeqIO.parse(fh, "twobit"):
                yield rec.id, bytes(rec.seq)
        return
    title, pieces = None, []
    with _open(path, fmt) as fh:
        for block in _blocks(fh, path):
            view, pos = memoryview(block), 0
            for start in _header_starts(block):
                if title is not None:
                    pieces.append(view[pos:start])
                    yield title, b"".join(pieces).translate(None, _WHITESPACE)
                title, pieces = _title(block, start), []
                pos = _line_end(block, start)
            if title is not None:
                pieces.append(view[pos:])
    if title is not None:
        yield title, b"".join(pieces).translate(None, _WHITESPACE)


def _blocks(fh, path: Path) -> Iterator[bytes]:
    """Blocks of whole lines; the first non-blank line must be a header (checked here, with binary content)."""
    started, lines_before = False, 0
    while block := fh.read(_BLOCK):
        if not block.endswith(b"\n"):
            block += fh.readline()
        if not started:
            if b"\0" in block:
                raise DataError(f"{path}: binary content, not FASTA text")
            body = block.lstrip()
            if body and not body.startswith(b">"):
                raise _no_header(path, lines_before + block[: len(block) - len(body)].count(b"\n") + 1)
            started = bool(body)
            lines_before += block.count(b"\n")
        yield block


def _title(block: bytes, start: int) -> str:
    """The header line starting at ``block[start]`` (the '>'), without '>' and trailing whitespace."""
    return block[start + 1: _line_end(block, start)].rstrip().decode("utf-8")


def _line_end(block: bytes, start: int) -> int:
    """Offset just past the line that starts at ``start`` (its newline included)."""
    end = block.find(b"\n", start)
    return len(block) if end < 0 else end + 1


def _header_starts(block: bytes) -> Iterator[int]:
    """Offsets of the lines of ``block`` that start with '>' (``block`` starts at a line start)."""
    if block.startswith(b">"):
        yield 0
    i = block.find(b"\n>")
    while i >= 0:
        yield i + 1
        i = block.find(b"\n>", i + 1)


def _checked_header(title: str, number: int, seen: dict[str, int], path: Path) -> RecordHeader:
    """Parse record ``number``'s header; raise on an empty id or one already in ``seen`` (id -> record number)."""
    header = parse_header(title)
    if not header.id:
        raise DataError(f"{path}: record {number} has an empty header")
    if header.id in seen:
        raise DataError(f"{path}: duplicate record id {header.id!r} (records {seen[header.id]} and {number})")
    seen[header.id] = number
    return header


def _open(path: Path, fmt: str):
    return gzip.open(path, "rb") if fmt == FASTA_GZ else open(path, "rb")


def _no_header(path: Path, line: int) -> DataError:
    return DataError(f"{path}: no FASTA header: line {line} is not blank and does not start with '>'")


@contextmanager
def _read_errors(path: Path, fmt: str):
    """Turn the errors a corrupt file raises deep in gzip or Biopython into one-line DataErrors naming the file."""
    what, kinds = _CORRUPTION[fmt]
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: a header is not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None
    except kinds as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: corrupt {what} ({e})") from None
