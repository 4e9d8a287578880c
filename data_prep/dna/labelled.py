"""Labelled DNA sequences from the user's files, streamed one sequence at a time.

Formats (:data:`FORMATS`, or ``"auto"``: :func:`detect_format`):

- ``table``: one CSV or TSV file (the delimiter from the header line: a tab makes it TSV), one sequence per row,
  the column names given (``sequence_column``, ``label_column``, optional ``split_column`` and ``id_column``; an
  empty split cell is no split, see :func:`write_labelled_store`; without ids a row's id is ``line N``);
- ``nt``: the Nucleotide Transformer downstream-task layout: CSV with columns ``sequence``, ``label`` and ``name``
  (the id; other names with ``sequence_column``, ``label_column``, ``id_column``; without a ``name`` column ids
  are ``<file> line N``), as one file or a folder of ``train.csv`` / ``test.csv`` (``dev`` / ``val`` /
  ``validation`` too), the split taken from the file name;
- ``fasta``: FASTA with the label in the header, ``>id label=X`` (``label_key`` for another key; a ``split=``
  word gives the split, ``split=`` with no value none);
- ``genomic-benchmarks``: the folder the ``genomic-benchmarks`` package writes, ``NAME/{train,test}/<class>/*.txt``,
  one sequence per file (:func:`download_genomic_benchmark` fetches one by name).

Any file may be gzipped (detected from its first bytes). Line endings may be ``\\n``, ``\\r\\n`` or mixed. Every
problem is a :class:`~mamba_bio_audio.errors.DataError` naming the file and the line, record or file of the
problem: a missing column, an empty sequence, a character that is not a base (unless ``lenient``: [UNK]), a
missing label, a gzip stream that ends early, a Genomic Benchmarks folder without classes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_bio_audio.errors import DataError

from .fasta import read_records
from .tokenizer import encode

FORMATS = ("table", "nt", "fasta", "genomic-benchmarks")
SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}
_GZIP_MAGIC = b"\x1f\x8b"
_FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")
_KEY_VALUE = re.compile(r"(\S+?)=(\S*)")
_FIELD_LIMIT = 2**31 - 1  # a sequence of tens of millions of bases is one CSV field


@dataclass(frozen=True)
class LabelledSequence:
    """One sequence: its ``id``, ``tokens`` ``(length,)`` uint8, ``label`` (None when the input has none and
    labels are optional), ``split`` (one of :data:`SPLITS`, or None: not given) and ``where`` (file and place)."""

    id: str
    tokens: np.ndarray
    label: str | None
    split: str | None
    where: str


def split_name(text: str, where: str) -> str:
    """``train`` / ``val`` / ``test`` of a split column value or file name (``dev``, ``validation``, ... too)."""
    name = _SPLIT_NAMES.get(text.strip().lower())
    if name is None:
        raise DataError(f"{where}: split {text!r} is not one of train, val (dev, validation), test")
    return name


def _optional_split(text: str, where: str) -> str | None:
    """:func:`split_name` of ``text``, or None when it is blank (no split given)."""
    return split_name(text, where) if text.strip() else None


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path``: a folder with ``train/`` or ``test/`` class folders is ``genomic-benchmarks``, one
    of CSV files ``nt``; a file whose first character is ``>`` is ``fasta``; else ``table``."""
    path = Path(path)
    if path.is_dir():
        if (path / "train").is_dir() or (path / "test").is_dir():
            return "genomic-benchmarks"
        if _nt_files(path):
            return "nt"
        raise DataError(f"{path}: a folder that holds neither train/ and test/ class folders (Genomic Benchmarks) "
                        f"nor train.csv / test.csv (Nucleotide Transformer tasks)")
    with _open_text(path) as f, _gzip_errors(path, lambda: 1):
        head = f.read(1024).lstrip()
    return "fasta" if head.startswith(">") else "table"


def read_labelled(path: str | os.PathLike, fmt: str = "auto", *, sequence_column: str = "sequence",
                  label_column: str = "label", split_column: str | None = None, id_column: str | None = None,
                  label_key: str = "label", lenient: bool = False,
                  require_labels: bool = True) -> Iterator[LabelledSequence]:
    """Every sequence of ``path`` in file order (see the module docstring for ``fmt`` and the checks)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "table":
        if path.is_dir():
            raise DataError(f"{path}: a folder; --format table reads one CSV/TSV file (for a folder of train.csv / "
                            f"test.csv use --format nt or auto)")
        yield from read_table(path, sequence_column, label_column, split_column, id_column, lenient=lenient,
                              require_labels=require_labels)
    elif fmt == "nt":
        if split_column is not None:
            raise DataError(f"{path}: --split-column does not apply to Nucleotide Transformer task files (the split "
                            f"is the file name: train.csv, test.csv)")
        yield from read_nt(path, sequence_column, label_column, id_column, lenient=lenient,
                           require_labels=require_labels)
    elif fmt == "fasta":
        yield from read_fasta(path, label_key, lenient=lenient, require_labels=require_labels)
    elif fmt == "genomic-benchmarks":
        yield from read_genomic_benchmarks(path, lenient=lenient)
    else:
        raise DataError(f"{path}: unknown format {fmt!r} (expected auto or one of {', '.join(FORMATS)})")


# ---- CSV / TSV ----------------------------------------------------------------------------------------------------
def read_table(path: str | os.PathLike, sequence_column: str = "sequence", label_column: str = "label",
               split_column: str | None = None, id_column: str | None = None, *, split: str | None = None,
               default_id_column: str | None = None, id_prefix: str = "", lenient: bool = False,
               require_labels: bool = True) -> Iterator[LabelledSequence]:
    """Rows of a CSV/TSV file (gzip or not) with a header line; ``split`` for every row when there is no column.

    A row's id is its ``id_column`` value (a missing column is an error, and so is a value on two lines), else its
    ``default_id_column`` value when the file has that column, else ``{id_prefix}line N``. An empty split cell is
    no split (None). Empty lines are skipped. With labels optional (prediction), a column named like ids (``id``,
    ``name``) that no flag reads is an :class:`UnreadColumnWarning`; with labels required (preparing), so is a column
    named like splits (``split``, ``set``, ...) that no ``--split-column`` reads.
    """
    path = Path(path)
    csv.field_size_limit(_FIELD_LIMIT)
    with _open_text(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t" if _is_tsv(path, f) else ",")
        with _gzip_errors(path, lambda: reader.line_num + 1):
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file")
            header = [h.strip().lstrip("\ufeff") for h in header]
            seq_i = _column(path, header, sequence_column, "--sequence-column")
            label_i = _column(path, header, label_column, "--label-column", required=require_labels)
            split_i = None if split_column is None else _column(path, header, split_column, "--split-column")
            id_i = (_column(path, header, id_column, "--id-column") if id_column is not None
                    else _column(path, header, default_id_column, "", required=False) if default_id_column else None)
            if id_i is None and not require_labels:  # prediction: the output names each row by its id
                _warn_unread_column(path, header, ("id", "name"), "rows are named 'line N' instead", "--id-column")
            if split_i is None and split is None and require_labels:  # preparing: the user's own splits?
                _warn_unread_column(path, header, ("split", "set", "fold", "subset"),
                                    "the splits are drawn or taken as train instead", "--split-column")
            seen: dict[str, int] = {}  # id -> line, for ids from --id-column (unique, as FASTA record ids)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                where = f"{path}: line {reader.line_num}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
                if id_column is not None:
                    first = seen.setdefault(row[id_i].strip(), reader.line_num)
                    if first != reader.line_num:
                        raise DataError(f"{where}: duplicate id {row[id_i].strip()!r} (first on line {first}; "
                                        f"--id-column {id_column})")
                label = None if label_i is None else row[label_i].strip()
                if require_labels and not label:
                    raise DataError(f"{where}: empty label")
                row_split = split if split_i is None else _optional_split(row[split_i], where)
                yield LabelledSequence(id=row[id_i].strip() if id_i is not None else
                                       f"{id_prefix}line {reader.line_num}",
                                       tokens=_encode(row[seq_i].strip(), lenient, where), label=label or None,
                                       split=row_split, where=where)


class UnreadColumnWarning(UserWarning):
    """A CSV/TSV column that looks like the ids, read by no flag (the commands print it as a line)."""


def _warn_unread_column(path: Path, header: list[str], names: tuple[str, ...], instead: str, flag: str) -> None:
    """An :class:`UnreadColumnWarning` for the first column of ``header`` named like ``names`` (any case) that no
    ``flag`` asked to read: the user most likely meant it; ``instead`` says what happens without it."""
    lower = [h.lower() for h in header]
    found = next((header[lower.index(n)] for n in names if n in lower), None)
    if found is not None:
        warnings.warn(f"{path}: column {found!r} is not read ({instead}); pass {flag} {found} to use it",
                      UnreadColumnWarning, stacklevel=3)


def _is_tsv(path: Path, f: io.TextIOBase) -> bool:
    """TSV when the header line holds a tab (peeked without consuming it)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".tsv"):
        return True
    if name.endswith(".csv"):
        return False
    with _gzip_errors(path, lambda: 1):
        first = f.readline()
    f.seek(0)
    return "\t" in first


def _column(path: Path, header: list[str], name: str, flag: str, required: bool = True) -> int | None:
    if name in header:
        return header.index(name)
    if not required:
        return None
    raise DataError(f"{path}: no column {name!r} (columns: {', '.join(header)}; choose with {flag})")


# ---- Nucleotide Transformer tasks ---------------------------------------------------------------------------------
def read_nt(path: str | os.PathLike, sequence_column: str = "sequence", label_column: str = "label",
            id_column: str | None = None, *, lenient: bool = False,
            require_labels: bool = True) -> Iterator[LabelledSequence]:
    """The Nucleotide Transformer downstream-task layout: CSV columns ``sequence``, ``label``, ``name`` (the id:
    ``id_column``, else ``name`` when the file has it, else ``<file> line N``), one file or a folder of them."""
    path = Path(path)
    files = _nt_files(path) if path.is_dir() else [(path, _split_of_name(path))]
    if not files:
        raise DataError(f"{path}: no train.csv / test.csv files")
    for file, split in files:
        yield from read_table(file, sequence_column, label_column, None, id_column, split=split,
                              default_id_column="name", id_prefix=f"{file.name} " if path.is_dir() else "",
                              lenient=lenient, require_labels=require_labels)


def _nt_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, split) of the CSV files of a task folder named after a split, in train, val, test order."""
    found = [(p, _split_of_name(p)) for p in sorted(folder.iterdir()) if p.is_file() and _split_of_name(p)]
    return sorted(found, key=lambda fs: SPLITS.index(fs[1]))


def _split_of_name(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    for suffix in (".csv", ".tsv"):
        if name.endswith(suffix):
            return _SPLIT_NAMES.get(name.removesuffix(suffix))
    return None


# ---- labelled FASTA -----------------------------------------------------------------------------------------------
def read_fasta(path: str | os.PathLike, label_key: str = "label", *, lenient: bool = False,
               require_labels: bool = True) -> Iterator[LabelledSequence]:
    """Records of a FASTA file whose header carries ``label_key=X`` (and optionally ``split=Y``) words."""
    path = Path(path)
    for number, (header, tokens) in enumerate(read_records(path, lenient), 1):
        where = f"{path}: record {number} ({header.id!r})"
        fields = dict(_KEY_VALUE.findall(header.title))
        label = fields.get(label_key) or None
        if require_labels and label is None:
            raise DataError(f"{where}: no '{label_key}=' in the header (choose the key with --label-key)")
        split = _optional_split(fields.get("split", ""), where)
        yield LabelledSequence(id=header.id, tokens=tokens, label=label, split=split, where=where)


# ---- Genomic Benchmarks -------------------------------------------------------------------------------------------
def read_genomic_benchmarks(root: str | os.PathLike, *, lenient: bool = False) -> Iterator[LabelledSequence]:
    """``root/{train,test}/<class>/*.txt``: one sequence per file, its class the folder name."""
    root = Path(root)
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if not splits:
        raise DataError(f"{root}: no train/ or test/ folder (the Genomic Benchmarks layout is "
                        f"NAME/{{train,test}}/<class>/*.txt)")
    classes = {s: sorted(p for p in (root / s).iterdir() if p.is_dir() and not p.name.startswith(".")) for s in splits}
    if not any(classes.values()):
        raise DataError(f"{root}: no class folders in {' or '.join(s + '/' for s in splits)}")
    for split in splits:
        for folder in classes[split]:
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
            for name in names:
                file = folder / name
                with _open_text(file) as f, _gzip_errors(file, lambda: 1):
                    text = f.read()
                yield LabelledSequence(id=f"{folder.name}/{Path(name).stem}",
                                       tokens=_encode("".join(text.split()), lenient, str(file)),
                                       label=folder.name, split=split, where=str(file))


def download_genomic_benchmark(name: str, dest: str | os.PathLike,
                               download: Callable[[str, Path], Path] | None = None) -> Path:
    """Fetch the Genomic Benchmarks data set ``name`` into ``dest/name`` (its folder layout); returns that folder.

    ``download(name, dest)`` defaults to the ``genomic-benchmarks`` package's ``download_dataset``. Any failure
    (the package missing, no network, an unknown name) is one DataError line.
    """
    dest = Path(dest)
    fetch = download or _package_download
    try:
        folder = Path(fetch(name, dest))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- network, HTTP and the package's own errors: one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"--download {name}: could not fetch the Genomic Benchmarks data set ({reason}); offline? "
                        f"give the downloaded folder instead") from None
    if not folder.is_dir():
        raise DataError(f"--download {name}: the download left no folder at {folder}")
    return folder


def _package_download(name: str, dest: Path) -> Path:
    try:
        from genomic_benchmarks.loc2seq import download_dataset
    except ImportError:
        raise DataError(f"--download {name}: needs the genomic-benchmarks package (pip install genomic-benchmarks), "
                        f"or give a folder it wrote") from None
    return download_dataset(name, version=0, dest_path=dest)


# ---- shared -------------------------------------------------------------------------------------------------------
def _encode(seq: str, lenient: bool, where: str) -> np.ndarray:
    if not seq:
        raise DataError(f"{where}: empty sequence")
    return encode(seq, lenient, source=where)


def _open_text(path: Path, newline: str | None = None) -> io.TextIOBase:
    """The file as UTF-8 text, gzip detected from its first bytes. ``newline`` None: universal newlines (``\\r\\n``,
    ``\\n`` or both read as ``\\n``); ``""`` for the csv module, which handles every line ending itself."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == _GZIP_MAGIC
        raw = gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return io.TextIOWrapper(raw, encoding="utf-8", newline=newline)


@contextmanager
def _gzip_errors(path: Path, line: Callable[[], int]):
    """A gzip stream that ends early or is corrupt, or text that is not UTF-8: one DataError naming the line."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: line {line()}: the gzip data is cut short or corrupt ({e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {line()}: not UTF-8 text") from None


# ---- token store --------------------------------------------------------------------------------------------------
def write_labelled_store(sequences: Iterator[LabelledSequence], out_dir: str | os.PathLike, *, source: str = "",
                         val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                         lenient: bool = False, overwrite: bool = True) -> Path:
    """Write a DNA token store with one entry per sequence (``id, label, split, offset, length``); returns its path.

    Splits: the input's where given; a record without one (no split column or word, or an empty cell) is train.
    With no split anywhere, a seeded draw puts ``val_fraction`` of the sequences in val and ``test_fraction`` in
    test; with splits but no val, ``val_fraction`` of train (the records without a split included) goes to val (a
    label keeps at least its train sequences: none of them moves if all would). Draws are per distinct sequence:
    identical sequences (the same bases, any case) always land in the same split. A label seen in val or test but
    never in train is a DataError naming its first place, unless no record is in train at all: then the store is
    test-only (``meta["test_only"]``; e.g. an external test set to evaluate a trained model on) and its labels are
    those of its records. Meta: ``labels`` (sorted; a label's class id is its position), ``counts`` per split and
    label, ``duplicates`` (val and test sequences identical to a train sequence: only user-given splits can have
    them), ``test_only``, ``tokenizer``, ``vocab_size``, ``lenient``, ``source``. Written atomically: any error
    leaves nothing behind.
    """
    from ..store import TokenStoreWriter
    from .tokenizer import NAME, VOCAB_SIZE

    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"validation and test fractions {val_fraction}, {test_fraction}: each in [0, 1), sum < 1")
    rng = np.random.default_rng(seed)
    meta = {"domain": "dna", "task": "classify", "tokenizer": NAME, "vocab_size": VOCAB_SIZE, "lenient": lenient,
            "source": source}
    with TokenStoreWriter(out_dir, meta=meta, overwrite=overwrite) as writer:
        first_place: dict[tuple[str, str], str] = {}
        group_of: dict[bytes, int] = {}  # a digest of the tokens -> the sequence's group (identical sequences)
        groups, draws = [], []
        for seq in sequences:
            writer.add(seq.tokens, id=seq.id, label=seq.label, split=seq.split)
            first_place.setdefault((seq.split or "", seq.label), seq.where)
            group = group_of.setdefault(hashlib.blake2b(seq.tokens.tobytes(), digest_size=16).digest(), len(draws))
            if group == len(draws):
                draws.append(rng.random())
            groups.append(group)
        if not writer.records:
            raise DataError(f"{source or out_dir}: no sequences")
        groups = np.array(groups)
        _assign_splits(writer.records, groups, np.array(draws)[groups], val_fraction, test_fraction)
        splits = np.array([r["split"] for r in writer.records])
        test_only = "train" not in splits
        labels = sorted({r["label"] for r in writer.records if test_only or r["split"] == "train"})
        for r in writer.records:
            if r["label"] not in labels:
                place = first_place.get((r["split"], r["label"])) or first_place.get(("", r["label"]))
                raise DataError(f"{place}: label {r['label']!r} appears in the {r['split']} split but never in "
                                f"train (train labels: {', '.join(labels) or 'none'})")
        if len(labels) < 2 and not test_only:
            raise DataError(f"{source or out_dir}: the train split holds {len(labels)} label(s); classification "
                            f"needs at least 2")
        counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        for r in writer.records:
            counts[r["split"]][r["label"]] = counts[r["split"]].get(r["label"], 0) + 1
        in_train = np.isin(groups, groups[splits == "train"])
        duplicates = {s: int((in_train & (splits == s)).sum()) for s in SPLITS[1:]}
        writer.meta.update(labels=labels, counts={s: c for s, c in counts.items() if c}, duplicates=duplicates,
                           test_only=test_only)
    return Path(out_dir)


def _assign_splits(records: list[dict], groups: np.ndarray, draws: np.ndarray, val_fraction: float,
                   test_fraction: float) -> None:
    """Fill in the ``split`` of each record in place (see :func:`write_labelled_store`); ``groups`` ``(n,)``: the
    group of identical sequences of each record, ``draws`` ``(n,)``: its group's uniform draw."""
    given = {r["split"] for r in records} - {None}
    drawn = []
    for k, (r, u) in enumerate(zip(records, draws)):
        if not given:
            r["split"] = "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
        elif r["split"] is None or r["split"] == "train":
            r["split"] = "val" if "val" not in given and u < val_fraction else "train"
        else:
            continue
        drawn.append(k)
    in_train = {r["label"] for r in records if r["split"] == "train"}
    back = {groups[k] for k in drawn if records[k]["label"] not in in_train}
    for k in drawn:  # a draw never takes every train sequence of a label (nor splits a group doing so)
        if groups[k] in back:
            records[k]["split"] = "train"
