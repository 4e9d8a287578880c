"""Held-out DNA that a pretrained backbone has already read: the val / test regions of a classification store that
lie inside the train regions of the ``mba dna pretrain`` run given as ``--init-from``.

A backbone pretrained on the genomes a species store holds out has seen its test strains (next-base prediction
on them), so the fine-tuned model's held-out accuracy is no longer held out. Both stores index their regions by
genome file (relative to the genomes folder), record and start (``index.json``); two regions of the same file and
record overlap when their base ranges do. Stores of other kinds (BED intervals, labelled sequences) are not
compared (None).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HELD_OUT = ("val", "test")


def pretrain_store(init_from: str | os.PathLike) -> Path | None:
    """The token store a ``dna pretrain`` run trained on: RUN/store (``--genomes``) or its ``--data``; ``init_from``
    is the run folder or its ``model/`` folder. None when that is not a local pretraining run with its store."""
    import yaml

    path = Path(init_from)
    for run in (path, path.parent):
        config_path = run / "config.yaml"
        if not (run / "model").is_dir() or not config_path.is_file():
            continue
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(config, dict):
            return None
        if (run / "store" / "index.json").is_file():
            return run / "store"
        data = config.get("data")
        if data and (Path(data) / "index.json").is_file():
            return Path(data)
        return None
    return None


def _regions(index: dict, splits: tuple[str, ...]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """{(file, record): [(start, end), ...]} of the genome regions in ``splits``."""
    regions: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r in index.get("records", []):
        if r.get("split") in splits and "file" in r and "record" in r:
            start = int(r.get("start") or 0)
            regions.setdefault((r["file"], r["record"]), []).append((start, start + int(r["length"])))
    return regions


def held_out_overlap(store: str | os.PathLike, pretrained_on: str | os.PathLike) -> dict | None:
    """How much of ``store``'s val / test regions lies in ``pretrained_on``'s train regions:
    ``{"held_out_bases", "overlap_bases", "overlap_fraction", "records": [(file, record), ...]}``, or None when
    either store does not index genome regions."""
    indexes = []
    for path in (store, pretrained_on):
        try:
            indexes.append(json.loads((Path(path) / "index.json").read_text()))
        except (OSError, ValueError):
            return None
    held_out, trained = _regions(indexes[0], HELD_OUT), _regions(indexes[1], ("train",))
    if not held_out or not trained:
        return None
    total = overlap = 0
    touched = []
    for key, spans in held_out.items():
        for start, end in spans:
            total += end - start
            shared = sum(max(0, min(end, e) - max(start, s)) for s, e in trained.get(key, []))
            if shared:
                overlap += shared
                touched.append(list(key))
    return {"held_out_bases": total, "overlap_bases": overlap,
            "overlap_fraction": overlap / total if total else 0.0, "records": touched}


def check_pretrain_overlap(store: str | os.PathLike, init_from: str | os.PathLike | None) -> dict | None:
    """:func:`held_out_overlap` of ``store`` and the store of the pretraining run ``init_from`` (None when there
    is nothing to compare), with one warning line on stderr when they overlap."""
    import click

    if init_from is None:
        return None
    pretrained_on = pretrain_store(init_from)
    if pretrained_on is None:
        return None
    found = held_out_overlap(store, pretrained_on)
    if found is None:
        return None
    found["pretrain_store"] = str(pretrained_on)
    if found["overlap_bases"]:
        click.echo(f"mba species train: warning: --init-from {init_from} was pretrained on {found['overlap_fraction']:.0%} of the val/test "
                   f"bases of {store} ({len(found['records'])} held-out regions, e.g. {found['records'][0][1]}): its "
                   f"held-out accuracy is not held out; pretrain with 'mba dna pretrain --data {store}' (its train "
                   f"split only)", err=True)
    return found
