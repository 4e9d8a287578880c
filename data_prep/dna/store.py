"""A folder of genomes -> a DNA token store (:mod:`mamba_bio_audio.data_prep.store`) with species labels and splits.

Input layout: ``DIR/<species>.<ext>`` files, or ``DIR/<species>/`` folders of them, where ``<ext>`` is one of
``.fa .fasta .fna .fas`` (optionally with ``.gz``) or ``.2bit``; other files, hidden entries and folders without
genome files are ignored. The species name (and label) comes from the file or folder name. A record's strain comes
from its header (``species|strain=NAME|...``); without it, from the file name inside a species folder (one file per
strain) or else from the record id.

Two passes: a fast header scan of every file plans the splits and catches bad files before anything is written
(the split of a record depends on its species' other records), then the sequences are streamed into the store one
record at a time. The store is written atomically: any error leaves no output behind.

Index entry fields: ``species, record, strain, chromosome`` (None if unknown), ``file`` (relative to DIR),
``start`` (position of the entry in its record: regions of a region-split record start past 0), ``offset,
length``, ``n_fraction`` (share of tokens that are not A/C/G/T) and ``split``. Meta: ``species`` (sorted; a
species' label is its position), ``tokenizer`` ("hyena-12"), ``vocab_size``, ``split`` (the plan) and ``lenient``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from mamba_bio_audio.errors import DataError

from ..store import TokenStoreWriter, check_replaceable
from .fasta import RecordHeader, read_headers, read_records
from .splits import SplitPlan, plan_splits, region_bounds
from .tokenizer import NAME, VOCAB_SIZE, count_unknown

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")
GENOME_SUFFIXES = (*FASTA_SUFFIXES, *(s + ".gz" for s in FASTA_SUFFIXES), ".2bit")


def find_genomes(genomes_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Species name -> its genome files (sorted), from the input layout described in the module docstring."""
    root = Path(genomes_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of genomes")
    found: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            name, files = entry.name, [p for p in sorted(entry.iterdir()) if p.is_file() and _genome_name(p)]
        elif entry.is_file() and (name := _genome_name(entry)):
            files = [entry]
        else:
            continue
        if not files:
            continue
        if name in found:
            raise DataError(f"{root}: species {name!r} appears twice ({found[name][0].name} and {entry.name})")
        found[name] = files
    if not found:
        raise DataError(f"{root}: no genome files ({', '.join(GENOME_SUFFIXES)})")
    return found


def prepare_genomes(genomes_dir: str | os.PathLike, out_dir: str | os.PathLike, split_by: str = "record", *,
                    val: Collection[str] | None = None, test: Collection[str] | None = None,
                    fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, lenient: bool = False,
                    overwrite: bool = True) -> Path:
    """Write the token store of the genomes in ``genomes_dir`` to ``out_dir``; returns ``out_dir``.

    ``split_by``, ``val``, ``test``, ``fractions`` and ``seed`` are those of
    :func:`~mamba_bio_audio.data_prep.dna.splits.plan_splits`; ``lenient`` encodes invalid characters as [UNK]
    instead of raising. ``out_dir`` must not overlap ``genomes_dir`` and may only replace a token store (with
    ``overwrite``); otherwise a one-line DataError, before anything is read.
    """
    root = Path(genomes_dir)
    out, source = Path(out_dir).resolve(), root.resolve()
    if out == source or source in out.parents or out in source.parents:
        raise DataError(f"{out_dir}: overlaps the genomes folder {genomes_dir}; choose another folder")
    check_replaceable(Path(out_dir), overwrite)
    genomes = find_genomes(root)
    scanned = {species: _scan(files) for species, files in genomes.items()}
    units = {species: [_unit(split_by, h, path, root) for path, headers in files for h in headers]
             for species, files in scanned.items()}
    plan = plan_splits(units, split_by, val=val, test=test, fractions=fractions, seed=seed)
    species_list = sorted(genomes)
    meta = {"domain": "dna", "tokenizer": NAME, "vocab_size": VOCAB_SIZE, "species": species_list,
            "split": plan.meta(), "lenient": lenient}
    with TokenStoreWriter(out_dir, meta=meta, overwrite=overwrite) as writer:
        for species in species_list:
            for path in genomes[species]:
                for header, tokens in read_records(path, lenient):
                    split = plan.split_of(species, _unit(split_by, header, path, root))
                    _write_record(writer, plan, split, tokens, species=species, record=header.id,
                                  strain=_strain(header, path, root), chromosome=header.chromosome,
                                  file=path.relative_to(root).as_posix())
    return Path(out_dir)


def _write_record(writer: TokenStoreWriter, plan: SplitPlan, split: str | None, tokens: np.ndarray,
                  **fields) -> None:
    """Add one record: a single entry of ``split``, or (``split`` None) one entry per region."""
    regions = [(split, 0, tokens.size)] if split else region_bounds(tokens.size, plan.fractions)
    for region_split, start, end in regions:
        part = tokens[start:end]
        writer.add(part, **fields, start=start, n_fraction=count_unknown(part) / part.size, split=region_split)


def _scan(files: list[Path]) -> list[tuple[Path, list[RecordHeader]]]:
    """Headers of a species' files; a record id must be unique across them."""
    seen: dict[str, Path] = {}
    scanned = []
    for path in files:
        headers = read_headers(path)
        for h in headers:
            if h.id in seen:
                raise DataError(f"{path}: duplicate record id {h.id!r} (also in {seen[h.id]})")
            seen[h.id] = path
        scanned.append((path, headers))
    return scanned


def _unit(split_by: str, header: RecordHeader, path: Path, root: Path) -> str:
    """What ``split_by`` holds out: the record id, or the strain."""
    return _strain(header, path, root) if split_by == "strain" else header.id


def _strain(header: RecordHeader, path: Path, root: Path) -> str:
    """The header's strain; without the header convention, the file's name inside a species folder."""
    if header.species is None and path.parent != root:
        return _genome_name(path)
    return header.strain


def _genome_name(path: Path) -> str | None:
    """``path``'s name without its genome suffix, or None when it is not a genome file."""
    name = path.name
    suffix = next((s for s in GENOME_SUFFIXES if name.lower().endswith(s)), None)
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else None
