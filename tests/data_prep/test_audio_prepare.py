"""Audio files -> token stores: FSDD-layout folders, SC09 from a Speech Commands tree, bad files, the Dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_bio_audio.data_prep.audio.dataset import AudioClipDataset
from mamba_bio_audio.data_prep.audio.folder import prepare_folder
from mamba_bio_audio.data_prep.audio.io import read_audio, write_wav
from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN, decode, encode
from mamba_bio_audio.data_prep.audio.sc09 import DIGITS, prepare_speech_commands
from mamba_bio_audio.data_prep.audio.synthetic import write_synthetic_digits
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """11 takes of each digit by one synthetic speaker at 8 kHz: takes 0-4 test, 5-9 val, 10 train."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_digits(out, sample_rate=8000, speakers=1, takes=11, seed=3)
    return out


def test_prepare_folder_fsdd_layout_round_trip(synth_dir, tmp_path):
    result = prepare_folder(synth_dir, tmp_path / "store", sample_rate=16000, clip_seconds=1.0)
    assert result.counts == {"train": 10, "val": 50, "test": 50} and result.skipped == []
    store = TokenStore(result.store)
    assert store.meta["encoding"] == "mulaw8" and store.meta["sample_rate"] == 16000
    assert store.meta["clip_samples"] == 16000 and store.meta["normalization"] == "none"
    by_file = {r["file"]: (i, r) for i, r in enumerate(store.records)}
    i, rec = by_file["7_synth0_6.wav"]
    assert (rec["label"], rec["speaker"], rec["split"], rec["sample_rate"]) == (7, "synth0", "val", 16000)
    wave, _ = read_audio(synth_dir / "7_synth0_6.wav", 16000)
    assert wave.numel() < 16000  # synthetic words are shorter than 1 s: zero padding at the end
    assert np.array_equal(store.tokens(i)[: wave.numel()], encode(wave).numpy())
    assert (store.tokens(i)[wave.numel():] == SILENCE_TOKEN).all()


def test_dataset_yields_fixed_length_token_clips(synth_dir, tmp_path):
    prepare_folder(synth_dir, tmp_path / "store", sample_rate=8000, clip_seconds=0.5, encoding="linear8")
    ds = AudioClipDataset(tmp_path / "store", split="test", waveform=True)
    assert len(ds) == 50 and ds.sample_rate == 8000 and ds.clip_samples == 4000
    item = ds[3]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (4000,)
    assert item["label"].dtype == torch.long and item["label"].shape == ()
    assert torch.equal(item["waveform"], decode(item["input_ids"], "linear8"))
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    with pytest.raises(DataError, match="no clips in split 'nope'"):
        AudioClipDataset(tmp_path / "store", split="nope")


def test_bad_files_are_skipped_with_a_warning_or_raise_when_strict(synth_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    (src / "3_bad_20.wav").write_bytes(b"not audio at all")
    (src / "4_bad_21.wav").write_bytes(b"")
    sf.write(src / "5_bad_22.wav", np.array([0.1, np.nan], np.float32), 8000, subtype="FLOAT")
    (src / "README_x.wav").write_bytes(b"")  # name without label/speaker/take
    with pytest.warns(UserWarning) as caught:
        result = prepare_folder(src, tmp_path / "store")
    assert len(result.skipped) == 4 and result.counts["train"] == 10
    assert [str(w.message) for w in caught] == [line + " -- skipped" for line in result.skipped]
    assert {Path(line.split(":")[0]).name for line in result.skipped} == {"3_bad_20.wav", "4_bad_21.wav",
                                                                         "5_bad_22.wav", "README_x.wav"}
    assert json.loads((tmp_path / "store" / "index.json").read_text())["meta"]["skipped"] == result.skipped

    before = (tmp_path / "store" / "index.json").read_bytes()
    (src / "README_x.wav").unlink()  # unmatched names are reported before any file is read
    with pytest.raises(DataError, match=r"3_bad_20\.wav: unreadable or corrupt"):
        prepare_folder(src, tmp_path / "store", strict=True)
    assert (tmp_path / "store" / "index.json").read_bytes() == before  # the old store is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store"]  # and no half-written one


def test_native_rate_must_be_shared_when_not_resampling(synth_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    write_wav(src / "1_other_30.wav", np.zeros(1000, np.float32), 16000)
    with pytest.warns(UserWarning, match="1_other_30.wav: sample rate 16000 Hz differs"):
        result = prepare_folder(src, tmp_path / "store", sample_rate=None)
    assert TokenStore(result.store).meta["sample_rate"] == 8000


def test_folder_without_usable_audio_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="no usable audio files"):
        prepare_folder(tmp_path / "src", tmp_path / "store")
    assert not (tmp_path / "store").exists()
    with pytest.raises(DataError, match="no such folder"):
        prepare_folder(tmp_path / "absent", tmp_path / "store")


def make_speech_commands(root: Path) -> dict[str, str]:
    """A tiny Speech Commands tree; returns the expected split of every digit file (``word/name``)."""
    rng = np.random.default_rng(0)
    expected = {}
    for word in (*DIGITS, "dog"):
        for speaker, n in (("aaaa1111", 0), ("bbbb2222", 0), ("bbbb2222", 1)):
            seconds = 1.25 if n else 0.5  # one too long (trimmed), the others short (padded)
            name = f"{word}/{speaker}_nohash_{n}.wav"
            write_wav(root / name, 0.3 * rng.standard_normal(round(16000 * seconds)).astype(np.float32), 16000)
            expected[name] = "train"
    write_wav(root / "_background_noise_" / "noise.wav", np.zeros(16000, np.float32), 16000)
    val = ["one/aaaa1111_nohash_0.wav", "five/bbbb2222_nohash_1.wav", "dog/aaaa1111_nohash_0.wav"]
    test = ["zero/bbbb2222_nohash_0.wav", "nine/aaaa1111_nohash_0.wav"]
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    expected.update({name: "val" for name in val})
    expected.update({name: "test" for name in test})
    return {k: v for k, v in expected.items() if not k.startswith("dog/")}


def test_prepare_speech_commands_honours_the_official_lists(tmp_path):
    expected = make_speech_commands(tmp_path / "sc")
    result = prepare_speech_commands(tmp_path / "sc", tmp_path / "sc09")
    assert result.counts == {"train": 26, "val": 2, "test": 2} and result.skipped == []
    store = TokenStore(result.store)
    assert store.meta["label_names"] == list(DIGITS) and store.meta["clip_samples"] == 16000
    assert {r["file"]: r["split"] for r in store.records} == expected
    for i, rec in enumerate(store.records):
        word = rec["file"].split("/")[0]
        assert rec["label"] == DIGITS.index(word) and rec["speaker"] == rec["file"][len(word) + 1:][:8]
        assert rec["length"] == 16000
        wave, _ = read_audio(tmp_path / "sc" / rec["file"])
        n = min(wave.numel(), 16000)
        assert np.array_equal(store.tokens(i)[:n], encode(wave[:n]).numpy())
        assert (store.tokens(i)[n:] == SILENCE_TOKEN).all()


def test_prepare_speech_commands_needs_the_lists(tmp_path):
    make_speech_commands(tmp_path / "sc")
    (tmp_path / "sc" / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt: missing"):
        prepare_speech_commands(tmp_path / "sc", tmp_path / "sc09")


def test_prepare_real_fsdd_subset(shared_data, tmp_path):
    fsdd = shared_data / "audio" / "fsdd_dev" / "recordings"
    if not fsdd.is_dir():
        pytest.skip(f"{fsdd} is not present")
    src = tmp_path / "fsdd"
    src.mkdir()
    for name in ("3_george_0.wav", "3_george_7.wav", "8_lucas_49.wav", "0_nicolas_4.wav"):
        shutil.copy(fsdd / name, src / name)
    result = prepare_folder(src, tmp_path / "store", sample_rate=16000)
    store = TokenStore(result.store)
    splits = {r["file"]: (r["label"], r["speaker"], r["split"]) for r in store.records}
    assert splits == {"0_nicolas_4.wav": (0, "nicolas", "test"), "3_george_0.wav": (3, "george", "test"),
                      "3_george_7.wav": (3, "george", "val"), "8_lucas_49.wav": (8, "lucas", "train")}
    assert all(r["length"] == 16000 for r in store.records)
