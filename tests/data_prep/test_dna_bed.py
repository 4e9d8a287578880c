"""BED intervals widened to the window length never reach into another split's intervals: shifted within their
room, or dropped (counted in the store's meta, one warning) when the room is shorter than the window."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.bed import Interval, place_intervals, prepare_bed
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError


def spans(store: TokenStore) -> list[tuple[str, int, int]]:
    return [(r["split"], r["start"], r["start"] + r["length"]) for r in store.records]


def shared_bases(store: TokenStore) -> int:
    """Bases covered by entries of two different splits."""
    cover: dict[str, set[int]] = {}
    for split, a, b in spans(store):
        cover.setdefault(split, set()).update(range(a, b))
    names = sorted(cover)
    return sum(len(cover[x] & cover[y]) for i, x in enumerate(names) for y in names[i + 1:])


@pytest.fixture
def fasta(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "g.fa"
    path.write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 5000)) + "\n")
    return path


def test_adjacent_train_and_test_intervals_share_no_bases_once_widened(tmp_path, fasta):
    bed = tmp_path / "iv.bed"
    bed.write_text("chr1\t0\t1000\ttrain\nchr1\t1000\t1200\ttest\nchr1\t1200\t2400\tvalid\nchr1\t2400\t5000\ttrain\n")
    with pytest.warns(UserWarning, match=r"iv.bed: .* 0 interval\(s\) were shifted off centre and 2 dropped"):
        store = TokenStore(prepare_bed(bed, fasta, tmp_path / "store", extend_to=1024))
    assert shared_bases(store) == 0
    # the 1000-base train interval has no 1024 bases left of the test one, nor the 200-base test interval between
    # train and val: both dropped; the long ones are kept as they are
    assert spans(store) == [("val", 1200, 2400), ("train", 2400, 5000)]
    assert store.meta["split"]["clipped"] == 0 and store.meta["split"]["dropped"] == 2


def test_a_short_interval_is_shifted_within_its_room(tmp_path, fasta):
    bed = tmp_path / "iv.bed"
    bed.write_text("chr1\t1000\t1100\ttest\nchr1\t1150\t1200\ttrain\nchr1\t3000\t3050\tvalid\n")
    with pytest.warns(UserWarning, match=r"2 interval\(s\) were shifted off centre and 0 dropped"):
        store = TokenStore(prepare_bed(bed, fasta, tmp_path / "store", extend_to=400))
    # test first: centred it would be 850-1250 over the train interval; it is shifted to end at 1150.
    # val is far away: centred. train then fits between the widened test (ends 1150) and val (starts 2825)
    # intervals: centred 975-1375 would reach into test, so it starts at 1150.
    assert spans(store) == [("test", 750, 1150), ("train", 1150, 1550), ("val", 2825, 3225)]
    assert shared_bases(store) == 0
    assert store.meta["split"]["clipped"] == 2 and store.meta["split"]["dropped"] == 0
    assert [r["record"] for r in store.records][0] == "chr1:750-1150"


def test_place_intervals_keeps_long_intervals_and_same_split_overlap():
    ivs = [Interval("c", 0, 50, "train", 1), Interval("c", 40, 90, "train", 2), Interval("c", 100, 400, "test", 3)]
    placed, clipped, dropped = place_intervals(ivs, 100, 1000)
    assert placed == [(0, 100), (0, 100), (100, 400)] and (clipped, dropped) == (1, 0)  # 15-115: shifted
    # without another split on the chromosome a widened interval goes where widen() puts it
    placed, clipped, dropped = place_intervals(ivs[:2], 100, 1000)
    assert placed == [(0, 100), (15, 115)] and (clipped, dropped) == (0, 0)


def test_every_interval_dropped_is_one_error(tmp_path, fasta):
    bed = tmp_path / "iv.bed"
    bed.write_text("chr1\t0\t100\ttrain\nchr1\t100\t200\ttest\nchr1\t200\t5000\ttrain\n")
    with pytest.raises(DataError, match="every interval was dropped"):
        prepare_bed(bed, fasta, tmp_path / "store", extend_to=6000)
    assert not (tmp_path / "store").exists()
