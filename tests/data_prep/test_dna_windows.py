"""Window sampling: determinism, fixed eval windows, reverse complement, N limits, record ends, torch view."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mamba_bio_audio.data_prep.dna.dataset import WindowDataset
from mamba_bio_audio.data_prep.dna.store import prepare_genomes
from mamba_bio_audio.data_prep.dna.tokenizer import count_unknown, reverse_complement
from mamba_bio_audio.data_prep.dna.windows import WindowSampler, eval_windows
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError


def make_store(tmp_path, records: dict[str, dict[str, str]], split_by="fraction", **kw):
    """A store of species -> {record id: sequence}, everything in train unless ``kw`` says otherwise."""
    folder = tmp_path / "genomes"
    folder.mkdir()
    for species, recs in records.items():
        (folder / f"{species}.fa").write_text("".join(f">{rid}\n{seq}\n" for rid, seq in recs.items()))
    kw.setdefault("fractions", (1, 0, 0))
    return TokenStore(prepare_genomes(folder, tmp_path / "store", split_by, **kw))


def seq(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path, {"ant": {"a1": seq(1000, 0), "a2": "N" * 500 + seq(500, 1)},
                                 "bee": {"b1": seq(200, 2)}})


def locate(store, tokens):
    """Every (entry, start) at which ``tokens`` occurs."""
    hits = []
    for i in range(len(store)):
        rec = store.tokens(i)
        for s in range(rec.size - tokens.size + 1):
            if np.array_equal(rec[s: s + tokens.size], tokens):
                hits.append((i, s))
    return hits


def test_sampler_is_a_function_of_seed_and_index(store):
    a = WindowSampler(store, "train", 64, seed=5)
    b = WindowSampler(store.path, "train", 64, seed=5)  # a path works too
    later = [b[i] for i in (7, 3, 0)]  # any access order
    for i, (tokens, label) in zip((7, 3, 0), later):
        np.testing.assert_array_equal(a[i][0], tokens)
        assert a[i][1] == label
    first = [t for t, _ in (a[i] for i in range(20))]
    other = [t for t, _ in (WindowSampler(store, "train", 64, seed=6)[i] for i in range(20))]
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))
    it = iter(a)
    np.testing.assert_array_equal(next(it)[0], a[0][0])


def test_labels_follow_sorted_species_and_classes_are_balanced(store):
    sampler = WindowSampler(store, "train", 64, seed=0)
    assert store.meta["species"] == ["ant", "bee"] and sampler.species == ["ant", "bee"]
    labels = [sampler[i][1] for i in range(400)]
    assert 150 < labels.count(1) < 250  # 'bee' is 5x smaller but drawn half the time


def test_reverse_complement_in_train_only(store):
    fwd = WindowSampler(store, "train", 64, rc_prob=0.0, seed=1)
    rev = WindowSampler(store, "train", 64, rc_prob=1.0, seed=1)
    for i in range(10):
        np.testing.assert_array_equal(rev[i][0], reverse_complement(fwd[i][0]))
    half = WindowSampler(store, "train", 64, seed=1)
    flipped = [not np.array_equal(half[i][0], fwd[i][0]) for i in range(100)]
    assert 25 < sum(flipped) < 75


def test_no_reverse_complement_outside_train(tmp_path):
    store = make_store(tmp_path, {"ant": {"a1": seq(1000, 0)}}, fractions=(0.5, 0.5, 0))
    sampler = WindowSampler(store, "val", 64, rc_prob=1.0, seed=0)
    tokens, _ = sampler[0]
    assert locate(store, tokens)  # read as stored, not reverse-complemented


def test_windows_avoid_n_and_stay_inside_records(store):
    sampler = WindowSampler(store, "train", 100, max_n_fraction=0.0, rc_prob=0.0, seed=0)
    for i in range(50):
        tokens, label = sampler[i]
        assert tokens.shape == (100,) and tokens.dtype == np.uint8
        assert count_unknown(tokens) == 0
        assert locate(store, tokens)  # a real stretch of one record, so never padded


def test_n_limit_is_a_fraction(store):
    loose = WindowSampler(store, "train", 100, max_n_fraction=0.5, seed=0)
    n_counts = [count_unknown(loose[i][0]) for i in range(200)]
    assert max(n_counts) <= 50 and max(n_counts) > 0


def test_impossible_n_limit_is_a_clear_error(tmp_path):
    store = make_store(tmp_path, {"ant": {"a1": "N" * 300}})
    with pytest.raises(DataError, match="species 'ant', split 'train': no 100-token window with at most 10 N"):
        WindowSampler(store, "train", 100, seed=0)[0]


def test_window_as_long_as_its_record(store):
    windows = eval_windows(store, "train", 200, per_species=3)
    bee = [t for t, label in windows if label == 1]
    assert len(bee) == 3 and all(np.array_equal(t, store.tokens(2)) for t in bee)


def test_species_without_a_long_enough_record(store):
    with pytest.raises(DataError, match=r"species 'bee' has no train record of at least 201 tokens \(longest: "
                                        r"'b1', 200 tokens\)"):
        WindowSampler(store, "train", 201)


def test_eval_windows_are_fixed(store):
    a = eval_windows(store, "train", 50, per_species=4, seed=3)
    b = eval_windows(store.path, "train", 50, per_species=4, seed=3)
    assert a.windows == b.windows and len(a) == 8
    assert a.labels.tolist() == [0] * 4 + [1] * 4
    for (ta, la), (tb, lb) in zip(a, b):
        np.testing.assert_array_equal(ta, tb)
        assert la == lb
    assert eval_windows(store, "train", 50, per_species=4, seed=4).windows != a.windows
    for w in a.windows:
        assert 0 <= w.start and w.start + w.length <= store.records[w.entry]["length"]


def test_species_absent_from_a_split_is_left_out(tmp_path):
    store = make_store(tmp_path, {"ant": {"a1": seq(300, 0), "a2": seq(300, 1)}, "bee": {"b1": seq(300, 2)}},
                       split_by="record", val=["a2"])
    windows = eval_windows(store, "val", 50, per_species=2)
    assert windows.labels.tolist() == [0, 0]
    with pytest.raises(DataError, match="no records in split 'test'"):
        eval_windows(store, "test", 50, per_species=2)


def test_torch_dataset(store):
    sampler = WindowSampler(store, "train", 32, seed=0)
    data = WindowDataset(sampler, num_samples=10)
    item = data[3]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (32,)
    assert item["label"].dtype == torch.long and item["label"].shape == ()
    np.testing.assert_array_equal(item["input_ids"].numpy(), sampler[3][0])
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["input_ids"].shape == (4, 32) and batch["label"].shape == (4,)
    assert len(WindowDataset(eval_windows(store, "train", 32, per_species=2))) == 4
    with pytest.raises(TypeError, match="no length"):
        len(WindowDataset(sampler))
    assert WindowDataset(sampler)[10_000]["input_ids"].shape == (32,)  # unbounded: a sample_fn(i)


def test_pickles_the_store_path_not_its_tokens(tmp_path):
    store = make_store(tmp_path, {"ant": {"a1": seq(100_000, 0)}})
    sampler = WindowSampler(store, "train", 64, seed=2)
    windows = eval_windows(store, "train", 64, per_species=3)
    for obj in (sampler, windows):
        blob = pickle.dumps(obj)
        assert len(blob) < 10_000  # the store holds 100,000 tokens
        copy = pickle.loads(blob)
        np.testing.assert_array_equal(copy[1][0], obj[1][0])
