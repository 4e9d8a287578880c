"""Train/val/test assignment of genome records: a pure plan, made from names only, before any sequence is read.

Three ways to split (``by``):

- ``"record"`` (HyenaDNA-style): whole records (chromosomes) are held out. Per species, one record goes to test when
  the species has >= 2 records, and one more to val when it has >= 3; the choice is a deterministic function of
  ``seed`` and the species name. Or name them: ``val=[...]``, ``test=[...]`` (record ids).
- ``"strain"``: whole strains are held out, chosen the same way among a species' strains (or named).
- ``"fraction"``: every record is cut into a train, a val and a test region (``fractions``, in that order along the
  record); each region becomes its own index entry, so a window never crosses from one split into another.

In the seeded ``"record"`` and ``"strain"`` modes a species with a single record (strain) cannot hold one out, so its
records fall back to the ``"fraction"`` cut; the plan lists those species in ``region_species``.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mamba_bio_audio.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_BY = ("record", "strain", "fraction")


@dataclass(frozen=True)
class SplitPlan:
    """Which split each unit (record id or strain) of each species goes to; ``region_species`` are cut by region."""

    by: str
    fractions: tuple[float, float, float]
    seed: int
    unit_splits: dict[str, dict[str, str]] = field(default_factory=dict)
    region_species: tuple[str, ...] = ()

    def split_of(self, species: str, unit: str) -> str | None:
        """The split of a whole unit, or None when the species is cut into regions."""
        if species in self.region_species:
            return None
        try:
            return self.unit_splits[species][unit]
        except KeyError:
            raise DataError(f"species {species!r}: {self.by} {unit!r} was not in the split plan") from None

    def meta(self) -> dict[str, Any]:
        """JSON-ready description for the store's index."""
        held_out = {
            species: {s: sorted(u for u, split in units.items() if split == s) for s in SPLITS[1:]}
            for species, units in sorted(self.unit_splits.items())
        }
        return {"by": self.by, "seed": self.seed, "fractions": list(self.fractions), "held_out": held_out,
                "region_species": list(self.region_species)}


def plan_splits(units: Mapping[str, Sequence[str]], by: str = "record", *, val: Collection[str] | None = None,
                test: Collection[str] | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> SplitPlan:
    """Plan the splits of ``units`` (species -> its record ids for ``by="record"``, its strains for ``"strain"``).

    ``val``/``test`` name held-out units explicitly (a name applies in every species that has it); without them
    the held-out units are drawn from ``seed``. ``fractions`` (train, val, test) cut the region-split species.
    ``by="fraction"`` holds out no unit, so names with it are a DataError (not silently ignored).
    """
    if by not in SPLIT_BY:
        raise DataError(f"split_by must be one of {', '.join(SPLIT_BY)}, not {by!r}")
    fracs = _checked_fractions(fractions)
    if by == "fraction" and (val is not None or test is not None):
        raise DataError("--val/--test name records or strains to hold out (--split-by record or strain); "
                        "--split-by fraction holds out a region of every record instead, so it takes no names")
    if by == "fraction":
        return SplitPlan(by, fracs, seed, region_species=tuple(sorted(units)))
    if val is not None or test is not None:
        unit_splits = _named(units, by, _name_set(val), _name_set(test))
        return SplitPlan(by, fracs, seed, unit_splits)
    unit_splits = {}
    for species, names in units.items():
        if len(set(names)) >= 2:
            unit_splits[species] = _drawn(species, sorted(set(names)), seed)
    single = tuple(sorted(set(units) - set(unit_splits)))
    return SplitPlan(by, fracs, seed, unit_splits, single)


def region_bounds(length: int, fractions: Sequence[float]) -> list[tuple[str, int, int]]:
    """``(split, start, end)`` regions of a record of ``length`` tokens, train then val then test; empty ones left out.

    The cut points are the rounded cumulative fractions, so regions tile the record exactly.
    """
    inner = [min(length, round(length * c)) for c in (fractions[0], fractions[0] + fractions[1])]
    cuts = [0, *inner, length]
    return [(split, a, b) for split, a, b in zip(SPLITS, cuts[:-1], cuts[1:]) if b > a]


def _drawn(species: str, names: list[str], seed: int) -> dict[str, str]:
    """One name to test, and one to val when there are >= 3, drawn from (seed, species) only."""
    rng = np.random.default_rng([seed, zlib.crc32(species.encode())])
    order = rng.permutation(len(names))
    splits = dict.fromkeys(names, "train")
    splits[names[order[0]]] = "test"
    if len(names) >= 3:
        splits[names[order[1]]] = "val"
    return splits


def _named(units: Mapping[str, Sequence[str]], by: str, val: set[str], test: set[str]) -> dict[str, dict[str, str]]:
    if both := val & test:
        raise DataError(f"held out for both val and test: {', '.join(sorted(both))}")
    known = {name for names in units.values() for name in names}
    if unknown := (val | test) - known:
        raise DataError(f"no {by} named {', '.join(sorted(unknown))} in the genomes")
    unit_splits = {}
    for species, names in units.items():
        splits = {n: "test" if n in test else "val" if n in val else "train" for n in names}
        if "train" not in splits.values():
            raise DataError(f"species {species!r}: every {by} is held out, none is left for training")
        unit_splits[species] = splits
    return unit_splits


def _name_set(names: Collection[str] | None) -> set[str]:
    """``names`` as a set; a lone string is one name, not a set of characters."""
    return {names} if isinstance(names, str) else set(names or ())


def _checked_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fracs = tuple(float(f) for f in fractions)
    if len(fracs) != 3 or min(fracs) < 0 or fracs[0] <= 0 or abs(sum(fracs) - 1) > 1e-6:
        raise DataError(f"split fractions must be 3 numbers (train, val, test) >= 0 summing to 1, train > 0: "
                        f"{list(fractions)}")
    return fracs
