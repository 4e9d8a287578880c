"""data_prep.audio.recordings: any folder of WAV / FLAC / OGG at any rate and length -> a store of whole files;
the seeded split by file, the list file, and every bad file skipped with its one-line reason (or raised)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import soundfile as sf

from mamba_bio_audio.data_prep.audio.recordings import (
    prepare_recordings,
    read_split_list,
    split_by_file,
)
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError

RATE = 8000


def tone(seconds: float, rate: int, freq: float = 220.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """Six usable files: WAV at the store rate, FLAC at 16 kHz in stereo, OGG, in a sub-folder too."""
    src = tmp_path / "rec"
    (src / "sub").mkdir(parents=True)
    for i in range(4):
        sf.write(src / f"w{i}.wav", tone(0.2 + 0.1 * i, RATE), RATE)
    stereo = np.stack([tone(0.5, 16000), tone(0.5, 16000, level=0.1)], axis=1)
    sf.write(src / "sub" / "st.flac", stereo, 16000)
    sf.write(src / "sub" / "v.ogg", tone(0.3, RATE), RATE, format="OGG", subtype="VORBIS")
    return src


def prepare(src, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_recordings(src, out, RATE, **kw)


def test_every_format_any_rate_mono_at_the_store_rate(folder, tmp_path):
    result = prepare(folder, tmp_path / "store", val_fraction=0.2, test_fraction=0.2)
    store = TokenStore(tmp_path / "store")
    records = {r["file"]: r for r in store.records}
    assert set(records) == {"w0.wav", "w1.wav", "w2.wav", "w3.wav", "sub/st.flac", "sub/v.ogg"}
    assert result.skipped == [] and sum(result.counts.values()) == 6
    assert records["w2.wav"]["length"] == round(0.4 * RATE)
    flac = records["sub/st.flac"]  # 16 kHz stereo: resampled to 8 kHz, channels averaged
    assert (flac["length"], flac["source_rate"], flac["source_channels"]) == (round(0.5 * RATE), 16000, 2)
    assert store.meta["sample_rate"] == RATE and store.meta["layout"] == "recordings"
    # the stereo mix: mean of 0.3 and 0.1 amplitudes -> peak about 0.2 (mu-law token of 0.2 is about 228)
    tokens = np.asarray(store.tokens(list(records).index("sub/st.flac")))
    assert 215 < tokens.max() < 240


def test_split_by_file_is_seeded_disjoint_and_complete():
    names = [f"f{i}.wav" for i in range(20)]
    a, b = split_by_file(names, 0.1, 0.2, seed=3), split_by_file(names, 0.1, 0.2, seed=3)
    assert a == b and set(a) == set(names)
    assert sorted(a.values()).count("test") == 4 and sorted(a.values()).count("val") == 2
    assert split_by_file(names, 0.1, 0.2, seed=4) != a
    small = split_by_file(["x", "y", "z"], 0.05, 0.05, seed=0)  # tiny folders still get one val and one test file
    assert sorted(small.values()) == ["test", "train", "val"]


def test_split_list(folder, tmp_path):
    listing = tmp_path / "splits.txt"
    listing.write_text("# held out\nw0.wav test\nsub/v.ogg\tval\n")
    prepare(folder, tmp_path / "store", split_list=listing)
    splits = {r["file"]: r["split"] for r in TokenStore(tmp_path / "store").records}
    assert splits["w0.wav"] == "test" and splits["sub/v.ogg"] == "val"
    assert {s for f, s in splits.items() if f not in ("w0.wav", "sub/v.ogg")} == {"train"}
    listing.write_text("nope.wav test\n")
    with pytest.raises(DataError, match=r"splits.txt:1: nope.wav is not an audio file"):
        read_split_list(listing, ["w0.wav"])
    listing.write_text("w0.wav holdout\n")
    with pytest.raises(DataError, match=r"splits.txt:1: expected"):
        read_split_list(listing, ["w0.wav"])


def bad_files(src):
    """One file of each problem; returns {file name: fragment of its message}."""
    (src / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    (src / "zero.wav").write_bytes(b"")
    sf.write(src / "empty.wav", np.zeros(0, np.float32), RATE)
    nan = tone(0.2, RATE)
    nan[100] = np.nan
    sf.write(src / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(src / "clipped.wav", np.sign(tone(0.2, RATE)), RATE)
    sf.write(src / "huge.wav", tone(3.0, RATE), RATE)
    return {"garbage.wav": "unreadable", "zero.wav": "empty file (0 bytes)", "empty.wav": "empty", "nan.wav": "NaN",
            "clipped.wav": "clipped", "huge.wav": "huge"}


def test_bad_files_are_skipped_with_their_reason(folder, tmp_path):
    problems = bad_files(folder)
    with pytest.warns(UserWarning):
        result = prepare_recordings(folder, tmp_path / "store", RATE, max_file_seconds=2.0)
    assert len(result.skipped) == len(problems)
    for name, fragment in problems.items():
        line = next(m for m in result.skipped if name in m)
        assert fragment in line and "\n" not in line and line.count(name) == 1
    assert {r["file"] for r in TokenStore(tmp_path / "store").records}.isdisjoint(problems)


@pytest.mark.parametrize("name", ["garbage.wav", "zero.wav", "empty.wav", "nan.wav", "clipped.wav", "huge.wav"])
def test_strict_stops_at_a_bad_file_and_writes_nothing(tmp_path, name):
    src = tmp_path / "rec"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.3, RATE), RATE)
    fragment = bad_files(src)[name]
    for other in set(bad_files(src)) - {name}:
        (src / other).unlink()
    with pytest.raises(DataError, match=re.escape(fragment)) as info:
        prepare(src, tmp_path / "store", strict=True, max_file_seconds=2.0)
    assert name in str(info.value)
    assert not (tmp_path / "store").exists() and [p.name for p in tmp_path.iterdir()] == ["rec"]


def test_a_folder_without_usable_audio(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(DataError, match="no audio files"):
        prepare(tmp_path / "empty", tmp_path / "store")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"junk")
    with pytest.raises(DataError, match="no usable audio files"):
        prepare(bad, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_no_usable_file_names_the_first_problem(tmp_path):
    """Before: "no usable audio files (1 skipped)", with the skipped file and its problem nowhere on the screen."""
    src = tmp_path / "rec"
    src.mkdir()
    sf.write(src / "nan.wav", np.array([0.1, np.nan], np.float32), RATE, subtype="FLOAT")
    with pytest.raises(DataError) as info:
        prepare(src, tmp_path / "store")
    message = str(info.value)
    assert "no usable audio files" in message and "nan.wav: NaN" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]


@pytest.mark.parametrize("bad", ["a.wav", "b.wav", "c.wav"])
def test_a_skipped_file_takes_no_split_place(tmp_path, bad):
    """The seeded split is of the usable files. Before: it was drawn over every file, so a skipped one could take
    the only train place (three files, b.wav bad: "no usable file is in the train split", two good files unused)."""
    src = tmp_path / "rec"
    src.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(src / name, tone(0.2, RATE), RATE)
    (src / bad).write_bytes(b"junk" * 100)
    result = prepare(src, tmp_path / "store")
    assert result.counts == {"train": 2, "val": 0, "test": 0} and len(result.skipped) == 1
    good = sorted({"a.wav", "b.wav", "c.wav"} - {bad})
    assert {r["file"]: r["split"] for r in TokenStore(tmp_path / "store").records} == split_by_file(good, 0.1, 0.1, 0)


def test_the_split_of_a_clean_folder_is_the_seeded_split_of_its_files(folder, tmp_path):
    prepare(folder, tmp_path / "store", val_fraction=0.2, test_fraction=0.2, seed=5)
    records = TokenStore(tmp_path / "store").records
    assert {r["file"]: r["split"] for r in records} == split_by_file([r["file"] for r in records], 0.2, 0.2, 5)


@pytest.mark.parametrize("subtype", ["PCM_U8", "ULAW"])
def test_clipping_is_found_at_a_coarse_format_full_scale(tmp_path, subtype):
    """An 8-bit or mu-law WAV tops out below 0.999 (127/128, 32124/32768). Before: clipped at its positive full
    scale only, a third of the samples there, it was kept as clean."""
    src = tmp_path / "rec"
    src.mkdir()
    sf.write(src / "clipped.wav", np.clip(2 * tone(0.3, RATE, level=1.0), -0.5, 1.0), RATE, subtype=subtype)
    sf.write(src / "clean.wav", tone(0.3, RATE, level=0.9), RATE, subtype=subtype)
    result = prepare(src, tmp_path / "store")
    assert result.counts["train"] == 1 and len(result.skipped) == 1
    assert "clipped.wav: clipped (3" in result.skipped[0]


def test_clipping_in_one_channel_is_found(tmp_path):
    """Before: clipping was counted on the mono mix, where a channel at full scale beside a quiet one averages to
    about half scale: a stereo file with one channel clipped throughout was kept as clean."""
    src = tmp_path / "rec"
    src.mkdir()
    loud = np.clip(3 * tone(0.3, RATE, level=1.0), -1.0, 1.0)
    sf.write(src / "one_side.wav", np.stack([loud, 0.1 * tone(0.3, RATE)], axis=1), RATE)
    sf.write(src / "clean.wav", np.stack([tone(0.3, RATE), tone(0.3, RATE)], axis=1), RATE)
    result = prepare(src, tmp_path / "store")
    assert result.counts["train"] == 1 and len(result.skipped) == 1 and "one_side.wav: clipped" in result.skipped[0]


def test_a_truncated_ogg_is_not_called_merely_empty(tmp_path):
    """libsndfile finds no samples in an OGG cut in half. Before: "empty audio file (no samples)" for a file of
    kilobytes, which reads as a wrong path rather than a damaged file."""
    src = tmp_path / "rec"
    src.mkdir()
    sf.write(src / "ok.wav", tone(0.3, RATE), RATE)
    sf.write(tmp_path / "whole.ogg", tone(5.0, RATE), RATE, format="OGG", subtype="VORBIS")
    data = (tmp_path / "whole.ogg").read_bytes()
    (src / "cut.ogg").write_bytes(data[:len(data) // 2])
    result = prepare(src, tmp_path / "store")
    assert len(result.skipped) == 1 and "cut.ogg: empty audio file (no samples: a header only, or a file cut short)" \
        in result.skipped[0]
