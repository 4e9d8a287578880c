"""Cut a labelled-sequence task (contig binning) from whole genomes: CSV of sequence, label, split.

    python dev/make_fragments.py GENOMES_DIR OUT.csv [--train-per-species 2000] [--test-per-species 400]

GENOMES_DIR holds one FASTA per species (``<species>.fa[.gz]``, headers ``species|strain=NAME|...``, the layout of
``mba species prepare``). Each fragment is a random stretch of one record, of a length drawn log-uniformly from
100..2,000 bases (short reads to contigs), from either strand. Splits are by strain: a species' last strain
(sorted by name) is its test strain, the others give train fragments; a species with a single strain gives train
fragments from the first 80% of each record and test fragments from the last 20%. Fragments with more than 10% N
are redrawn. Deterministic in ``--seed``. The output is what ``mba dna classify prepare --split-column split``
reads. (Used for results/dna/classify_fragments; the genomes are not part of the repository.)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
from pathlib import Path

COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def read_fasta(path: Path) -> list[tuple[str, str]]:
    """(header, sequence) of every record, sequences upper-case."""
    opener = gzip.open if path.suffix == ".gz" else open
    records, header, parts = [], None, []
    with opener(path, "rt") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if header is not None:
                    records.append((header, "".join(parts).upper()))
                header, parts = line[1:], []
            else:
                parts.append(line)
    if header is not None:
        records.append((header, "".join(parts).upper()))
    return records


def strain_of(header: str) -> str:
    for field in header.split("|"):
        if field.startswith("strain="):
            return field[len("strain="):]
    return header.split()[0]


def draw(rng: random.Random, records: list[str], n: int, lo: float, hi: float) -> list[str]:
    """``n`` fragments from the ``[lo, hi)`` share of each record (records weighed by length)."""
    weights = [len(r) for r in records]
    out = []
    while len(out) < n:
        seq = rng.choices(records, weights)[0]
        length = int(round(10 ** rng.uniform(2, 3.30103)))  # 100 .. 2,000, log-uniform
        start_lo, start_hi = int(lo * len(seq)), int(hi * len(seq)) - length
        if start_hi <= start_lo:
            continue
        start = rng.randrange(start_lo, start_hi)
        fragment = seq[start:start + length]
        if fragment.count("N") > 0.1 * length:
            continue
        if rng.random() < 0.5:
            fragment = fragment.translate(COMPLEMENT)[::-1]
        out.append(fragment)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("genomes", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-species", type=int, default=2000)
    parser.add_argument("--test-per-species", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    files = sorted(p for p in args.genomes.iterdir() if p.name.endswith((".fa", ".fa.gz", ".fasta", ".fasta.gz")))
    for path in files:
        species = path.name.split(".")[0]
        by_strain: dict[str, list[str]] = {}
        for header, seq in read_fasta(path):
            by_strain.setdefault(strain_of(header), []).append(seq)
        strains = sorted(by_strain)
        if len(strains) > 1:
            train = draw(rng, [s for name in strains[:-1] for s in by_strain[name]], args.train_per_species, 0, 1)
            test = draw(rng, by_strain[strains[-1]], args.test_per_species, 0, 1)
            how = f"test strain {strains[-1]}"
        else:
            train = draw(rng, by_strain[strains[0]], args.train_per_species, 0, 0.8)
            test = draw(rng, by_strain[strains[0]], args.test_per_species, 0.8, 1)
            how = "test: last 20% of each record"
        rows += [(s, species, "train") for s in train] + [(s, species, "test") for s in test]
        print(f"{species}: {len(train)} train, {len(test)} test fragments ({how})")
    rng.shuffle(rows)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence", "label", "split"])
        writer.writerows(rows)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(rows)} fragments")


if __name__ == "__main__":
    main()
