"""Reading genome files: FASTA, gzip, BGZF and 2bit; the header convention; one clear error per bad file."""

import gzip
import re
import struct

import numpy as np
import pytest
from Bio import SeqIO, bgzf

from mamba_bio_audio.data_prep.dna import fasta
from mamba_bio_audio.data_prep.dna.tokenizer import encode
from mamba_bio_audio.errors import DataError

RECORDS = {"chr1": "ACGTNNacgtRYAC" * 20, "chr2": "GGGTTTAAACCC", "plasmid": "ttaaNNNNccgg" * 9}
TEXT = "".join(f">{name} some description\n{seq[:50]}\n{seq[50:]}\n" for name, seq in RECORDS.items())


def write_2bit(path, records: dict[str, str]) -> None:
    """A minimal UCSC 2bit file (little-endian, version 0): runs of N (or other IUPAC codes, which 2bit cannot
    hold) and of lower case become blocks."""
    code = {"T": 0, "C": 1, "A": 2, "G": 3}
    names = list(records)
    offset = 16 + sum(1 + len(n) + 4 for n in names)
    index, bodies = b"", b""
    for name in names:
        seq = records[name]
        n_runs = [m.span() for m in re.finditer("[^ACGTacgt]+", seq)]
        mask_runs = [m.span() for m in re.finditer("[a-z]+", seq)]
        body = struct.pack("<II", len(seq), len(n_runs))
        body += struct.pack(f"<{len(n_runs)}I", *(a for a, _ in n_runs))
        body += struct.pack(f"<{len(n_runs)}I", *(b - a for a, b in n_runs))
        body += struct.pack("<I", len(mask_runs))
        body += struct.pack(f"<{len(mask_runs)}I", *(a for a, _ in mask_runs))
        body += struct.pack(f"<{len(mask_runs)}I", *(b - a for a, b in mask_runs))
        body += struct.pack("<I", 0)
        codes = [code.get(c, 0) for c in seq.upper()] + [0] * (-len(seq) % 4)
        body += bytes((a << 6) | (b << 4) | (c << 2) | d for a, b, c, d in zip(*[iter(codes)] * 4))
        index += bytes([len(name)]) + name.encode() + struct.pack("<I", offset + len(bodies))
        bodies += body
    path.write_bytes(struct.pack("<IIII", 0x1A412743, 0, len(names), 0) + index + bodies)


def read_all(path):
    return {h.id: tokens for h, tokens in fasta.read_records(path)}


def assert_records(path, expected=RECORDS):
    got = read_all(path)
    assert list(got) == list(expected)
    for name, seq in expected.items():
        np.testing.assert_array_equal(got[name], encode(seq))
    assert [h.id for h in fasta.read_headers(path)] == list(expected)


def test_plain_fasta(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(TEXT)
    assert fasta.detect_format(path) == "fasta"
    assert_records(path)


def test_gzip_detected_by_magic_not_extension(tmp_path):
    path = tmp_path / "g.fa"  # no .gz suffix on purpose
    path.write_bytes(gzip.compress(TEXT.encode()))
    assert fasta.detect_format(path) == "fasta.gz"
    assert_records(path)


def test_bgzf(tmp_path):
    path = tmp_path / "g.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as f:
        f.write(TEXT.encode())
    assert_records(path)


def test_2bit(tmp_path):
    path = tmp_path / "g.2bit"
    write_2bit(path, RECORDS)
    assert [rec.id for rec in SeqIO.parse(str(path), "twobit")] == list(RECORDS)  # the fixture is valid 2bit
    assert fasta.detect_format(path) == "2bit"
    assert_records(path)


def test_block_parser_agrees_with_biopython(tmp_path, monkeypatch):
    text = "\n\n>a desc\r\nAC GT\r\n\r\nacgt\n>b\n\nG\n>c x\nNNNN\nAC\tGT\n>d\nTTTT"  # no final newline
    path = tmp_path / "messy.fa"
    path.write_text(text, newline="")
    expected = {rec.id: str(rec.seq).replace("\t", "") for rec in SeqIO.parse(str(path), "fasta-pearson")}
    for block in (fasta._BLOCK, 1, 3, 7):  # tiny blocks put headers across block boundaries
        monkeypatch.setattr(fasta, "_BLOCK", block)
        assert_records(path, expected)


def test_parse_header_convention():
    h = fasta.parse_header("vibrio_cholerae|strain=O395|gi|227011820|gb|CP001235.1| Vibrio cholerae O395 "
                           "chromosome I, complete sequence")
    assert (h.species, h.strain, h.id, h.chromosome) == ("vibrio_cholerae", "O395", "gi|227011820|gb|CP001235.1|", "I")


@pytest.mark.parametrize("title, record_id, chromosome", [
    ("chr7 Homo sapiens", "chr7", "7"),
    ("NC_000001.11 Homo sapiens chromosome 1, GRCh38", "NC_000001.11", "1"),
    ("contig_12 assembled", "contig_12", None),
    ("ecoli|strain=K12|", "ecoli|strain=K12|", None),  # the convention needs an original header
])
def test_parse_header_fallback(title, record_id, chromosome):
    h = fasta.parse_header(title)
    assert (h.id, h.strain, h.species, h.chromosome) == (record_id, record_id, None, chromosome)


def _corrupt_gzip(path):
    data = gzip.compress(TEXT.encode() * 50)
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\n  \n", "no records"),
    (b"\nACGT\n>a\nACGT\n", "no FASTA header: line 2"),
    (b">a\nAC\x00GT\n", "binary content"),
    (b"ACGT\x00\x01\x02\x03", "binary content"),
    (b">a\nACGT\n>b\nAC\n>a\nGG\n", "duplicate record id 'a' (records 1 and 3)"),
    (b">a\nACGT\n>\nAC\n", "record 2 has an empty header"),
    (b">a\nACGT\n>b\n\n>c\nAC\n", "record 'b' has no sequence"),
    (b">a\nACGT\n>b\nACXT\n", "record 'b': invalid character 'X' at position 3"),
    (b"\x1f\x8b\x08\x00garbage-not-deflate-data", "corrupt gzip"),
    (b">caf\xe9\nACGT\n", "not UTF-8"),
    (_corrupt_gzip, "corrupt gzip"),
])
def test_bad_files_raise_one_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.fa"
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:  # scan, then read, as prepare_genomes does
        fasta.read_headers(path)
        read_all(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=re.escape(message)):  # the full reader agrees
        read_all(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        fasta.read_headers(tmp_path / "nope.fa")


def test_corrupt_2bit(tmp_path):
    path = tmp_path / "g.2bit"
    write_2bit(path, RECORDS)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: corrupt 2bit"):
        read_all(path)
