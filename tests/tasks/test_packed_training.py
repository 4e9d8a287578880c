"""Packed training data and losses: bin packing, the packed classifier stream and its batches, packed LM rows of
records of any length, and each packed loss against the same sequences one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig, MambaLM
from mamba_bio_audio.data_prep.dna.packed_windows import PackedWindowSampler
from mamba_bio_audio.data_prep.dna.packing import PackedSampler, collate_packed, join_row, pack_lengths
from mamba_bio_audio.data_prep.dna.tokenizer import reverse_complement
from mamba_bio_audio.data_prep.store import TokenStore, TokenStoreWriter
from mamba_bio_audio.errors import DataError
from mamba_bio_audio.tasks.classify import WeightedClassificationTask, predict_proba
from mamba_bio_audio.tasks.dna_lm import PackedLMTask, lm_loss
from mamba_bio_audio.tasks.windows import dna_extra
from mamba_bio_audio.training.module import OptimConfig, next_token_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pack_lengths_places_every_sequence_once_within_the_width():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, 200)
    rows = pack_lengths(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(lengths[row].sum() <= 64 for row in rows)
    assert len(rows) <= int(np.ceil(lengths.sum() / 64)) + 3  # first-fit decreasing: close to the bound
    assert pack_lengths([64, 1, 63], 64) == [[0], [2, 1]]
    with pytest.raises(ValueError, match="must lie in"):
        pack_lengths([65], 64)


@pytest.fixture
def labelled_store(tmp_path):
    """20 labelled sequences of lengths 3..60 (class = length parity), all train."""
    rng = np.random.default_rng(1)
    with TokenStoreWriter(tmp_path / "store", meta={"domain": "dna", "task": "classify"}) as writer:
        for i in range(20):
            writer.add(rng.integers(7, 11, 3 + 3 * i).astype(np.uint8), label="ab"[i % 2], split="train")
    return TokenStore(tmp_path / "store")


def test_packed_sampler_rows_are_reproducible_and_cover_each_epoch(labelled_store):
    classes = [i % 2 for i in range(20)]
    sampler = PackedSampler(labelled_store, range(20), classes, 64, seed=3)
    again = PackedSampler(labelled_store, range(20), classes, 64, seed=3)
    n_rows = len(sampler.epoch_rows(0))
    seen = []
    for i in range(n_rows):
        row = sampler[i]
        assert row["input_ids"].size <= 64 and row["seq_idx"].size == row["input_ids"].size
        sizes = np.bincount(row["seq_idx"])
        assert len(sizes) == row["label"].size and (np.diff(row["seq_idx"]) >= 0).all()
        for size, label in zip(sizes, row["label"]):
            k = (size - 3) // 3  # the sequence of this length: no crop, no reverse complement
            assert label == classes[k]
            seen.append(k)
        np.testing.assert_array_equal(row["input_ids"], again[i]["input_ids"])
    assert sorted(seen) == list(range(20))  # an epoch packs every sequence once
    assert sampler.fill() == pytest.approx(sum(3 + 3 * i for i in range(20)) / (64 * n_rows))
    epoch1 = again[n_rows]  # a fresh sampler finds the second epoch's first row
    first = sampler.epoch_rows(1)[0]
    assert epoch1["label"].tolist() == [classes[k] for k in first]
    cropped = PackedSampler(labelled_store, range(20), classes, 64, crop=10, rc_prob=1.0)
    assert np.bincount(cropped[0]["seq_idx"]).max() <= 10


def test_collate_packed_pads_rows_and_orders_labels():
    a = join_row([np.array([7, 8, 9], np.uint8), np.array([10], np.uint8)], [1, 0])
    b = join_row([np.array([8, 8], np.uint8)], [1])
    batch = collate_packed([a, b])
    assert batch["input_ids"].dtype == torch.uint8 and batch["input_ids"].shape == (2, 4)
    assert batch["seq_idx"].tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["label"].tolist() == [1, 0, 1]


def tiny_classifier(bidirectional=False, pooling="mean") -> MambaClassifier:
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4, bidirectional=bidirectional,
                         extra=dna_extra(32))
    return MambaClassifier(config, num_classes=3, pooling=pooling, labels=["a", "b", "c"])


def _sequences(seed=0, sizes=(5, 1, 17, 9, 30, 2, 12)):
    rng = np.random.default_rng(seed)
    return [rng.integers(7, 11, n).astype(np.uint8) for n in sizes]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_packed_classification_loss_is_the_mean_of_the_one_by_one_losses(pooling):
    model = tiny_classifier(pooling=pooling)
    task = WeightedClassificationTask(model, OptimConfig())
    seqs, labels = _sequences(), [0, 2, 1, 1, 0, 2, 1]
    batch = collate_packed([join_row(seqs[:3], labels[:3]), join_row(seqs[3:], labels[3:])])
    batch["input_ids"] = batch["input_ids"].long()
    packed, _ = task.compute_loss(batch)
    alone = [task.compute_loss({"input_ids": torch.from_numpy(s).long()[None], "label": torch.tensor([y])})[0]
             for s, y in zip(seqs, labels)]
    torch.testing.assert_close(packed, torch.stack(alone).mean(), rtol=1e-5, atol=1e-6)
    packed.backward()  # gradients reach the backbone through the packed path
    assert model.backbone.embedding.weight.grad.abs().sum() > 0


def test_weighted_packed_loss_equals_the_weighted_padded_loss():
    from mamba_bio_audio.data_prep.dna.buckets import pad_batch

    task = WeightedClassificationTask(tiny_classifier(), OptimConfig(), weights=[0.5, 2.0, 1.0])
    seqs, labels = _sequences(1), [0, 2, 1, 1, 0, 2, 1]
    packed = collate_packed([join_row(seqs[:4], labels[:4]), join_row(seqs[4:], labels[4:])])
    packed["input_ids"] = packed["input_ids"].long()
    ids, mask = pad_batch(seqs)
    padded = {"input_ids": torch.from_numpy(ids).long(), "attention_mask": torch.from_numpy(mask),
              "label": torch.tensor(labels)}
    torch.testing.assert_close(task.compute_loss(packed)[0], task.compute_loss(padded)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_prediction_equals_padded_prediction(bidirectional):
    model = tiny_classifier(bidirectional)
    seqs = _sequences(2, (3, 40, 17, 17, 9, 64, 1, 25))
    padded = predict_proba(model, seqs, batch_size=4)
    packed = predict_proba(model, seqs, batch_size=2**16, packed=True)  # rows of 64 tokens: several per row
    np.testing.assert_allclose(packed, padded, rtol=1e-5, atol=1e-6)
    cropped = predict_proba(model, seqs, batch_size=4, crop=16, packed=True)
    np.testing.assert_allclose(cropped, predict_proba(model, seqs, batch_size=4, crop=16), rtol=1e-5, atol=1e-6)


# ---- packed LM rows -------------------------------------------------------------------------------------------------
@pytest.fixture
def genome_store(tmp_path):
    """Two species; records of lengths 5 to 200 in train, 8 and 50 in val (one has many N)."""
    rng = np.random.default_rng(4)
    with TokenStoreWriter(tmp_path / "g", meta={"domain": "dna", "species": ["x", "y"]}) as writer:
        for species, split, n in [("x", "train", 5), ("x", "train", 12), ("x", "train", 200), ("y", "train", 30),
                                  ("y", "train", 7), ("x", "val", 8), ("y", "val", 50)]:
            tokens = rng.integers(7, 11, n).astype(np.uint8)
            writer.add(tokens, species=species, record=f"{species}{n}", split=split, n_fraction=0.0)
    return TokenStore(tmp_path / "g")


def _find(record: np.ndarray, piece: np.ndarray) -> bool:
    text, part = record.tobytes(), piece.tobytes()
    return part in text or reverse_complement(piece).tobytes() in text


def test_packed_window_rows_hold_pieces_of_records(genome_store):
    sampler = PackedWindowSampler(genome_store, "train", 64, seed=2)
    sampler.check()
    assert sampler.species == ["x", "y"]
    records = [genome_store.tokens(i) for i in range(5)]
    whole = 0
    for i in range(30):
        tokens, seq_idx = sampler[i]
        assert tokens.shape == seq_idx.shape == (64,) and seq_idx[0] == 0
        assert set(np.diff(seq_idx).tolist()) <= {0, 1}  # pieces numbered 0, 1, 2, ... along the row
        for k in range(seq_idx[-1] + 1):
            piece = tokens[seq_idx == k]
            assert any(_find(r, piece) for r in records), (i, k)
            whole += any(piece.size == r.size for r in records[:2] + records[3:])
        np.testing.assert_array_equal(tokens, PackedWindowSampler(genome_store, "train", 64, seed=2)[i][0])
    assert whole > 10  # short records come whole
    val = PackedWindowSampler(genome_store, "val", 64, seed=1).rows(3)
    assert len(val) == 3 and all(_find(genome_store.tokens(5), t[s == 0]) or _find(genome_store.tokens(6), t[s == 0])
                                 for t, s in val)
    with pytest.raises(DataError, match="no records in split 'test'"):
        PackedWindowSampler(genome_store, "test", 64)


def tiny_lm() -> MambaLM:
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=12, d_state=4))


def test_packed_lm_loss_is_the_mean_of_the_one_by_one_losses():
    model = tiny_lm()
    seqs = _sequences(3, (6, 1, 20, 2, 11))  # a 1-token sequence predicts nothing
    ids = torch.from_numpy(np.concatenate(seqs)).long()[None]
    seq_idx = torch.from_numpy(np.repeat(np.arange(5), [s.size for s in seqs]).astype(np.int32))[None]
    task = PackedLMTask(model, OptimConfig())
    packed, _ = task.compute_loss({"input_ids": ids, "seq_idx": seq_idx})
    sums, counts = zip(*(next_token_loss(model, torch.from_numpy(s).long()[None]) for s in seqs if s.size > 1))
    assert int(sum(counts)) == sum(s.size - 1 for s in seqs)
    torch.testing.assert_close(packed, sum(sums) / sum(counts), rtol=1e-5, atol=1e-6)
    single = torch.from_numpy(seqs[2]).long()[None]  # one sequence: the plain LM task's loss
    torch.testing.assert_close(task.compute_loss({"input_ids": single, "seq_idx": torch.zeros_like(single)})[0],
                               task.compute_loss({"input_ids": single})[0])
    rows = [(ids[0].numpy().astype(np.uint8), seq_idx[0].numpy())] * 2
    metrics = lm_loss(model, (t for t, _ in rows), seq_idx=(s for _, s in rows))
    assert metrics["val_tokens"] == 2 * int(sum(counts))
    assert metrics["val_loss"] == pytest.approx(float(packed), rel=1e-5)
