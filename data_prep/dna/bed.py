"""BED intervals over one genome FASTA -> a DNA token store: HyenaDNA's hg38 pretraining setup.

HyenaDNA pretrains on intervals of the human reference listed in a ``sequences.bed`` file: tab-separated lines
``chrom  start  end  split`` (0-based, end exclusive; split ``train``, ``valid`` or ``test``). :func:`read_bed`
reads such a file (a missing 4th column means ``train``; ``valid``/``validation`` are read as ``val``; ``track``,
``browser`` and ``#`` lines are skipped), and :func:`prepare_bed` cuts the intervals out of the FASTA (or 2bit)
into a token store whose entries carry the split, so :class:`~.windows.WindowSampler` and
:func:`~.windows.eval_windows` draw windows from them as from any genome store.

An interval shorter than ``extend_to`` is widened around its centre to ``extend_to`` bases (shifted, not padded,
at a chromosome end), as HyenaDNA's ``FastaInterval`` widens intervals to the model's context; HyenaDNA pads with
N where a widened interval leaves the chromosome, we shift it instead so no window is N filler. Widening never
makes splits share bases (:func:`place_intervals`): test intervals are widened first, then val, then train, each
inside the room left between the intervals of the other splits on its chromosome (their widened extent once
placed, their BED extent before, and a dropped one's BED extent: its bases stay out of the other splits). An interval that does not fit centred is shifted within that room
(``clipped``); one whose room is shorter than ``extend_to`` is dropped (``dropped``): no window of that length
fits it. Both counts go to the store's ``meta["split"]``, with one warning when either is not zero.

Every problem is one :class:`~mamba_bio_audio.errors.DataError` naming the file and line: a malformed line, an
unknown split, an interval that is empty, leaves its chromosome or names a chromosome the FASTA does not hold.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_bio_audio.errors import DataError

from ..store import TokenStoreWriter
from .fasta import read_headers, read_records
from .store import GENOME_SUFFIXES
from .tokenizer import NAME, VOCAB_SIZE, count_unknown

_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SKIP_PREFIXES = ("#", "track", "browser")
_PLACING_ORDER = ("test", "val", "train")  # who widens first


@dataclass(frozen=True)
class Interval:
    """Bases ``[start, end)`` of chromosome ``chrom`` (0-based), in ``split``; ``line`` is its line in the BED file."""

    chrom: str
    start: int
    end: int
    split: str
    line: int


def read_bed(path: str | os.PathLike) -> list[Interval]:
    """The intervals of a BED file, in file order (see the module docstring for the columns)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable BED text file ({type(e).__name__})") from None
    intervals = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(_SKIP_PREFIXES):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 3:
            raise DataError(f"{path}: line {number}: expected 'chrom start end [split]', got {line.strip()!r}")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise DataError(f"{path}: line {number}: start and end must be integers, got {fields[1]!r}, "
                            f"{fields[2]!r}") from None
        if not 0 <= start < end:
            raise DataError(f"{path}: line {number}: empty or negative interval {start}-{end}")
        split = fields[3].strip().lower() if len(fields) > 3 and fields[3].strip() else "train"
        if split not in _SPLIT_NAMES:
            raise DataError(f"{path}: line {number}: column 4 must be a split (train, valid or test), "
                            f"got {fields[3]!r}")
        intervals.append(Interval(fields[0], start, end, _SPLIT_NAMES[split], number))
    if not intervals:
        raise DataError(f"{path}: no intervals")
    return intervals


def widen(start: int, end: int, extend_to: int, chrom_length: int) -> tuple[int, int]:
    """``[start, end)`` widened around its centre to ``min(extend_to, chrom_length)`` bases inside the chromosome."""
    target = min(extend_to, chrom_length)
    if end - start >= target:
        return start, end
    new_start = start - (target - (end - start)) // 2
    new_start = min(max(new_start, 0), chrom_length - target)
    return new_start, new_start + target


def place_intervals(intervals: list[Interval], extend_to: int,
                    chrom_length: int) -> tuple[list[tuple[int, int] | None], int, int]:
    """Where the intervals of one chromosome go once widened to ``extend_to``: per interval (same order) its
    ``(start, end)``, or None when dropped; then the counts ``clipped`` and ``dropped`` (module docstring).

    An interval of another split bounds the room of this one: ``lo`` is the furthest end, cut at this interval's
    start, of those starting before it; ``hi`` the nearest start, cut at this interval's end, of those ending
    after it. Intervals that overlap in the BED itself keep that overlap; widening adds none.
    """
    target = min(extend_to, chrom_length)
    placed = [(iv.start, iv.end) for iv in intervals]  # a dropped interval keeps blocking its own bases
    kept = [True] * len(intervals)
    clipped = 0
    for split in _PLACING_ORDER:
        mine = [k for k, iv in enumerate(intervals) if iv.split == split]
        if not mine:
            continue
        others = np.array([p for iv, p in zip(intervals, placed) if iv.split != split],
                          dtype=np.int64).reshape(-1, 2)
        by_start = others[np.argsort(others[:, 0], kind="stable")]
        max_end = np.maximum.accumulate(by_start[:, 1]) if len(others) else by_start[:, 1]
        by_end = others[np.argsort(others[:, 1], kind="stable")]
        min_start = np.minimum.accumulate(by_end[::-1, 0])[::-1] if len(others) else by_end[:, 0]
        for k in mine:
            iv = intervals[k]
            if iv.end - iv.start >= target:
                continue
            before = int(np.searchsorted(by_start[:, 0], iv.start, side="left"))
            lo = min(int(max_end[before - 1]), iv.start) if before else 0
            after = int(np.searchsorted(by_end[:, 1], iv.end, side="right"))
            hi = max(int(min_start[after]), iv.end) if after < len(by_end) else chrom_length
            lo, hi = max(lo, 0), min(hi, chrom_length)
            start, end = widen(iv.start, iv.end, extend_to, chrom_length)
            if lo <= start and end <= hi:
                placed[k] = (start, end)
            elif hi - lo >= target:
                start = min(max(start, lo), hi - target)
                placed[k] = (start, start + target)
                clipped += 1
            else:
                kept[k] = False
    return [p if keep else None for p, keep in zip(placed, kept)], clipped, kept.count(False)


def prepare_bed(bed: str | os.PathLike, fasta: str | os.PathLike, out_dir: str | os.PathLike, *,
                species: str | None = None, extend_to: int = 0, lenient: bool = False,
                overwrite: bool = True) -> Path:
    """Write the token store of ``bed``'s intervals of ``fasta`` to ``out_dir`` (atomically); returns ``out_dir``.

    One store entry per interval, with fields ``species`` (``species``, default the FASTA's name without suffix),
    ``record`` (``chrom:start-end``, as widened), ``strain`` and ``chromosome`` (the chromosome), ``file``,
    ``start``, ``offset, length``, ``n_fraction`` and ``split``. ``extend_to`` widens shorter intervals without
    reaching into another split (module docstring); ``meta["split"]`` counts the ``clipped`` and ``dropped`` ones.
    """
    bed, fasta = Path(bed), Path(fasta)
    intervals = read_bed(bed)
    known = {h.id for h in read_headers(fasta)}
    by_chrom: dict[str, list[Interval]] = {}
    for iv in intervals:
        if iv.chrom not in known:
            raise DataError(f"{bed}: line {iv.line}: chromosome {iv.chrom!r} is not in {fasta}")
        by_chrom.setdefault(iv.chrom, []).append(iv)
    species = species or _stem(fasta)
    split_meta = {"by": "bed", "bed": str(bed), "extend_to": extend_to, "clipped": 0, "dropped": 0}
    meta = {"domain": "dna", "tokenizer": NAME, "vocab_size": VOCAB_SIZE, "species": [species],
            "split": split_meta, "lenient": lenient}
    with TokenStoreWriter(out_dir, meta=meta, overwrite=overwrite) as writer:
        for header, tokens in read_records(fasta, lenient):
            chrom_intervals = by_chrom.get(header.id, [])
            for iv in chrom_intervals:
                if iv.end > tokens.size:
                    raise DataError(f"{bed}: line {iv.line}: interval {iv.chrom}:{iv.start}-{iv.end} runs past the "
                                    f"end of {iv.chrom} ({tokens.size} bases in {fasta})")
            if extend_to:
                placed, clipped, dropped = place_intervals(chrom_intervals, extend_to, tokens.size)
                split_meta["clipped"] += clipped
                split_meta["dropped"] += dropped
            else:
                placed = [(iv.start, iv.end) for iv in chrom_intervals]
            for iv, where in zip(chrom_intervals, placed):
                if where is None:
                    continue
                start, end = where
                part = tokens[start:end]
                writer.add(part, species=species, record=f"{iv.chrom}:{start}-{end}", strain=iv.chrom,
                           chromosome=iv.chrom, file=fasta.name, start=start,
                           n_fraction=count_unknown(part) / part.size, split=iv.split)
        if not writer.records:
            raise DataError(f"{bed}: every interval was dropped: widened to {extend_to} bases, none fits between "
                            f"the intervals of the other splits")
    if split_meta["clipped"] or split_meta["dropped"]:
        warnings.warn(f"{bed}: widened to {extend_to} bases clear of the other splits' intervals, "
                      f"{split_meta['clipped']} interval(s) were shifted off centre and {split_meta['dropped']} "
                      f"dropped (less than {extend_to} bases of room)", stacklevel=2)
    return Path(out_dir)


def _stem(path: Path) -> str:
    name = path.name
    suffix = next((s for s in GENOME_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)] if suffix else path.stem
