"""``--short-files pack`` in tasks.audio_folder: short training files packed several per row (first-fit decreasing,
deterministic, each file exactly once, starts aligned to the model's stride), examples a pure function of
(seed, i) mixing long-file windows and packed rows, and a packed row's loss equal to the sum of its files' losses
scored alone (float64, reference backend) for the SaShiMi and the plain Mamba LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN
from mamba_bio_audio.data_prep.store import TokenStoreWriter
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.modules.mixer import set_backend
from mamba_bio_audio.tasks.audio_folder import (
    MaskedLMTask,
    RecordingTrainSettings,
    RecordingWindows,
    eval_windows,
    open_recordings,
    pack_short_files,
    packed_row_item,
    packing_align,
    warmup_plan,
)
from mamba_bio_audio.tasks.audio_lm import build_audio_lm
from mamba_bio_audio.training.module import OptimConfig, next_token_loss

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW = 64
# train: two long files, nine short ones (one of a single sample), one empty; val: one short file
TRAIN = {"long0.wav": 200, "long1.wav": 90, "s0.wav": 40, "s1.wav": 17, "s2.wav": 30, "s3.wav": 1, "s4.wav": 63,
         "s5.wav": 16, "s6.wav": 33, "s7.wav": 5, "s8.wav": 30, "empty.wav": 0}
VAL = {"v.wav": 50}


@pytest.fixture
def store(tmp_path):
    """Tokens count up within each file from a per-file offset (so a stretch shows where it came from)."""
    with TokenStoreWriter(tmp_path / "store", meta={"domain": "audio", "layout": "recordings", "sample_rate": 8000,
                                                    "encoding": "mulaw8"}) as w:
        for k, (name, n) in enumerate({**TRAIN, **VAL}.items()):
            w.add((np.arange(n) + 20 * k) % 256, file=name, split="val" if name in VAL else "train")
    return open_recordings(tmp_path / "store")


def file_tokens(store, name):
    record = next(i for i, r in enumerate(store.records) if r["file"] == name)
    return store.window(record, 0, store.records[record]["length"])


@pytest.mark.parametrize("align", [1, 4, 16])
def test_packing_is_deterministic_and_covers_every_file_once(align):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=200).tolist()
    rows = pack_short_files(lengths, 100, align, seed=3)
    assert rows == pack_short_files(lengths, 100, align, seed=3)
    assert sorted(k for row in rows for k in row) == list(range(200))
    width = 100 // align * align
    loads = [sum(-(-lengths[k] // align) * align for k in row) for row in rows]
    assert all(load <= width or len(row) == 1 for load, row in zip(loads, rows))
    # first fit leaves at most one row at most half full (a later one's files would have fit into it)
    assert sum(load <= width / 2 for load in loads) <= 1
    # ties between equal lengths follow the seeded order
    same = pack_short_files([10] * 40, 100, align, seed=0)
    assert same != pack_short_files([10] * 40, 100, align, seed=1)


@pytest.mark.parametrize("align", [1, 16])
def test_packed_rows_hold_each_short_file_whole_at_aligned_starts(store, align):
    windows = RecordingWindows(store, "train", WINDOW, seed=5, short_files="pack", align=align)
    assert windows.left_out == ["empty.wav"]
    assert [store.records[r]["file"] for r in windows.records] == ["long0.wav", "long1.wav"]
    packed = sorted(store.records[r]["file"] for row in windows.rows for r in row)
    assert packed == sorted(name for name, n in TRAIN.items() if 0 < n < WINDOW)
    assert windows.files == len(TRAIN) - 1
    info = windows.packing()
    assert info["files"] == 9 and info["rows"] == len(windows.rows) and 0 < info["fill"] <= 1
    for row in windows.rows:
        item = packed_row_item(store, row, WINDOW, align)
        ids, seq_idx, mask = item["input_ids"].numpy(), item["seq_idx"].numpy(), item["mask"].numpy()
        assert ids.shape == seq_idx.shape == mask.shape == (WINDOW,)
        starts = [0] + (np.flatnonzero(np.diff(seq_idx)) + 1).tolist()
        assert len(starts) == len(row) and all(s % align == 0 for s in starts)
        assert (np.diff(seq_idx) >= 0).all() and seq_idx[-1] == len(row) - 1  # the tail joins the last file
        for k, (record, start) in enumerate(zip(row, starts)):
            n = store.records[record]["length"]
            assert (ids[start:start + n] == file_tokens(store, store.records[record]["file"])).all()
            assert mask[start:start + n].all() and (seq_idx[start:start + n] == k).all()
        assert mask.sum() == sum(store.records[r]["length"] for r in row)
        assert (ids[~mask] == SILENCE_TOKEN).all()


def test_examples_are_a_function_of_the_index_and_mix_windows_and_rows(store):
    windows = RecordingWindows(store, "train", WINDOW, seed=5, short_files="pack", align=16)
    again = RecordingWindows(store, "train", WINDOW, seed=5, short_files="pack", align=16)
    kinds = {"window": 0, "row": 0}
    for i in range(300):
        item = windows(i)
        assert set(item) == {"input_ids", "seq_idx", "mask"}
        for key in item:
            assert torch.equal(item[key], again(i)[key])  # a fresh object (a resumed run) gives the same item
        if item["mask"].all() and (item["seq_idx"] == 0).all():
            kinds["window"] += 1
            assert (np.diff(item["input_ids"].numpy().astype(int)) % 256 == 1).all()
        else:
            kinds["row"] += 1
    # a row weighs `window` starts: long files offer 137 + 27 starts, the rows 64 each
    share = len(windows.rows) * WINDOW / (137 + 27 + len(windows.rows) * WINDOW)
    assert abs(kinds["row"] / 300 - share) < 0.1
    other = RecordingWindows(store, "train", WINDOW, seed=6, short_files="pack", align=16)
    assert any(not torch.equal(other(i)["input_ids"], windows(i)["input_ids"]) for i in range(10))
    # the other modes are unchanged by the packing: no seq_idx
    assert "seq_idx" not in RecordingWindows(store, "train", WINDOW, seed=5, short_files="pad")(0)


def test_eval_windows_pad_short_files_with_pack(store):
    packed = eval_windows(store, "val", WINDOW, "pack")
    padded = eval_windows(store, "val", WINDOW, "pad")
    assert len(packed) == len(padded) == 1
    assert all(torch.equal(packed[0][k], padded[0][k]) for k in padded[0])


def noised(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    return set_backend(model.double(), "reference")


@pytest.mark.parametrize("arch", ["sashimi", "mamba-lm"])
def test_packed_row_loss_is_the_sum_of_the_files_alone(store, arch):
    torch.manual_seed(0)
    model = noised(build_audio_lm(arch, "tiny", {"sample_rate": 8000, "encoding": "mulaw8", "clip_samples": 64}))
    align = packing_align(model)
    assert align == (16 if arch == "sashimi" else 1)
    windows = RecordingWindows(store, "train", WINDOW, seed=5, short_files="pack", align=align)
    row = max(windows.rows, key=len)
    assert len(row) >= 2
    item = packed_row_item(store, row, WINDOW, align)
    batch = {k: v[None] for k, v in item.items()}
    total, count = next_token_loss(model, batch["input_ids"].long(), batch["seq_idx"], batch["mask"])
    alone_total, alone_count = 0.0, 0
    for record in row:
        tokens = torch.from_numpy(file_tokens(store, store.records[record]["file"])).long()[None]
        if tokens.shape[1] >= 2:
            t, c = next_token_loss(model, tokens)
            alone_total, alone_count = alone_total + t, alone_count + int(c)
    assert int(count) == alone_count == sum(store.records[r]["length"] - 1 for r in row)
    torch.testing.assert_close(total, torch.as_tensor(alone_total, dtype=total.dtype), rtol=1e-10, atol=1e-10)
    # the check can fail: unmasked boundaries, or no seq_idx, give another loss
    assert not torch.isclose(next_token_loss(model, batch["input_ids"].long(), mask=batch["mask"])[0], total)
    # the training task reads a collated batch of a long window and a packed row
    mixed = default_collate([windows(i) for i in range(40)])
    assert mixed["seq_idx"].shape == mixed["input_ids"].shape
    loss, _ = MaskedLMTask(model, OptimConfig()).compute_loss(mixed)
    expected, n = next_token_loss(model, mixed["input_ids"].long(), mixed["seq_idx"], mixed["mask"])
    torch.testing.assert_close(loss, expected / n)


def test_sashimi_warmup_must_keep_packed_starts_aligned():
    settings = RecordingTrainSettings(arch="sashimi", preset="tiny", max_steps=4, window=1024, short_files="pack",
                                      warmup_min_length=8)
    with pytest.raises(UserError, match="--warmup-min-length 8: --short-files pack needs a multiple of the "
                                        "model's stride 16"):
        warmup_plan(settings, 16)
    warmup_plan(settings, 1)  # the plain Mamba LM: any length
    warmup_plan(RecordingTrainSettings(arch="sashimi", preset="tiny", max_steps=4, window=1024, short_files="pad",
                                       warmup_min_length=8), 16)
