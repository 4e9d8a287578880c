"""``mba demo`` writes its folder beside --out and renames it into place: a second demo replaces the first one's
outputs whole (no genome or store of the first left behind), a folder of other files is refused, and a demo that
fails part-way leaves the earlier one as it was."""

from __future__ import annotations

import json

import pytest

from mamba_bio_audio.files import MARKER

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--max-steps", "1", "--length", "32", "--eval-lengths", "32", "--genome-length", "2000",
         "--per-species", "2", "--batch-size", "2", "--head-init", "random", "--device", "cpu"]


def test_a_second_demo_replaces_the_first_whole(tmp_path, capsys, monkeypatch):
    """Before: `mba demo --species 3` then `--species 2` kept synth_02.fa in genomes/ and trained on 3 species."""
    out = tmp_path / "demo"
    code, _, err = run(["demo", "--out", out, "--species", "3", *SMALL], capsys)
    assert code == 0, err
    assert len(json.loads((out / "metrics.json").read_text())["confusion_matrix"]) == 3
    code, _, err = run(["demo", "--out", out, "--species", "2", *SMALL], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "genomes").glob("*.fa")) == ["synth_00.fa", "synth_01.fa"]
    assert len(json.loads((out / "store" / "index.json").read_text())["meta"]["species"]) == 2
    assert len(json.loads((out / "metrics.json").read_text())["confusion_matrix"]) == 2
    assert (out / MARKER).read_text() == "demo\n" and "n_species: 2" in (out / "config.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary sibling left

    import mamba_bio_audio.tasks.species as species

    def fail(*args, **kwargs):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(species, "evaluate_lengths", fail)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run(["demo", "--out", out, "--species", "4", *SMALL], capsys)
    assert code != 0
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_demo_refuses_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    code, _, err = run(["demo", "--out", out, *SMALL], capsys)
    assert_one_line_error(code, err, "did not write")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
