"""tasks.audio_folder: random training windows from within whole recordings (seeded, resumable, short files
skipped or padded and masked), consecutive evaluation windows, and the masked loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN
from mamba_bio_audio.data_prep.store import TokenStore, TokenStoreWriter
from mamba_bio_audio.errors import DataError
from mamba_bio_audio.tasks.audio_folder import (
    MaskedLMTask,
    RecordingWindows,
    eval_windows,
    open_recordings,
    window_nll_bits,
)
from mamba_bio_audio.training.module import OptimConfig

LENGTHS = {"a.wav": 100, "b.wav": 300, "c.wav": 40, "v.wav": 250, "t.wav": 64}
SPLITS = {"a.wav": "train", "b.wav": "train", "c.wav": "train", "v.wav": "val", "t.wav": "test"}


@pytest.fixture
def store(tmp_path):
    """A recordings store whose tokens count up within each file (so a window shows where it came from)."""
    with TokenStoreWriter(tmp_path / "store", meta={"domain": "audio", "layout": "recordings", "sample_rate": 8000,
                                                    "encoding": "mulaw8"}) as w:
        for k, (name, n) in enumerate(LENGTHS.items()):
            w.add((np.arange(n) + 10 * k) % 256, file=name, split=SPLITS[name])
    return open_recordings(tmp_path / "store")


def test_training_windows_lie_within_one_file_and_are_a_function_of_the_index(store):
    windows = RecordingWindows(store, "train", 64, seed=1)
    assert windows.left_out == ["c.wav"]  # 40 samples < 64
    seen = set()
    for i in range(200):
        item = windows(i)
        ids = item["input_ids"].numpy()
        assert ids.dtype == np.uint8 and ids.shape == (64,) and "mask" not in item
        assert (np.diff(ids.astype(int)) % 256 == 1).all()  # consecutive samples of one file
        seen.add(int(ids[0]))
        assert torch.equal(windows(i)["input_ids"], item["input_ids"])
    other = RecordingWindows(store, "train", 64, seed=2)
    assert any(not torch.equal(other(i)["input_ids"], windows(i)["input_ids"]) for i in range(5))
    assert len(seen) > 50  # starts spread over the files


def test_short_files_padded_and_masked(store):
    windows = RecordingWindows(store, "train", 256, seed=0, short_files="pad")
    assert windows.left_out == []
    padded = [windows(i) for i in range(100) if not windows(i)["mask"].all()]
    assert padded
    for item in padded:
        n = int(item["mask"].sum())
        assert item["mask"][:n].all() and (item["input_ids"][n:] == SILENCE_TOKEN).all()


def test_window_longer_than_every_file_is_one_line(store):
    with pytest.raises(DataError, match=r"--window 400: longer than every train file \(the longest, b.wav, has 300"):
        RecordingWindows(store, "train", 400)


def test_eval_windows_are_consecutive(store):
    skip = eval_windows(store, "val", 64)  # 250 samples: 3 whole windows, the rest dropped
    assert len(skip) == 3 and [int(w["input_ids"][0]) for w in skip] == [(30 + s) % 256 for s in (0, 64, 128)]
    pad = eval_windows(store, "val", 64, "pad")
    assert len(pad) == 4 and int(pad[-1]["mask"].sum()) == 250 - 192
    assert len(eval_windows(store, "train", 64, max_windows=2)) == 2
    assert eval_windows(store, "val", 512) == []


def test_masked_loss_counts_only_real_samples():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 8), torch.nn.Linear(8, 256))
    ids = torch.randint(0, 256, (2, 10), dtype=torch.uint8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    batch = {"input_ids": ids, "mask": mask}
    loss, _ = MaskedLMTask(model, OptimConfig()).compute_loss(batch)
    logits = model(ids.long()[:, :-1])
    keep = mask[:, 1:]
    expected = F.cross_entropy(logits[keep], ids.long()[:, 1:][keep])
    assert torch.allclose(loss, expected)
    windows = [{"input_ids": ids[i], "mask": mask[i]} for i in range(2)]
    assert window_nll_bits(model, windows) == pytest.approx(expected.item() / np.log(2), rel=1e-5)


def test_open_recordings_refuses_other_stores(tmp_path):
    with TokenStoreWriter(tmp_path / "clips", meta={"domain": "audio", "encoding": "mulaw8"}) as w:
        w.add(np.zeros(4, np.uint8), split="train")
    TokenStore(tmp_path / "clips")
    with pytest.raises(DataError, match="not a recordings store"):
        open_recordings(tmp_path / "clips")
