"""Labelled sequences: the four readers, the token store they feed, every bad input (one line, exit 2, nothing
written), and the length-bucketed batches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.buckets import BucketedSampler, bucket_batches, eval_batches, pad_batch
from mamba_bio_audio.data_prep.dna.labelled import (
    detect_format,
    download_genomic_benchmark,
    read_labelled,
    write_labelled_store,
)
from mamba_bio_audio.data_prep.dna.tokenizer import PAD_ID, decode
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError

from helpers import assert_one_line_error, run_cli


def read(path, fmt="auto", **kw):
    return [(s.id, decode(s.tokens), s.label, s.split) for s in read_labelled(path, fmt, **kw)]


def distinct(n: int, seed: int = 0, length: int = 12) -> list[str]:
    """``n`` different random sequences (identical ones would share their split)."""
    rng = np.random.default_rng(seed)
    seqs = list(dict.fromkeys("".join(rng.choice(list("ACGT"), length)) for _ in range(2 * n)))
    return seqs[:n]


def write_gb(root: Path, layout: dict) -> Path:
    """A Genomic Benchmarks folder: {split: {class: [sequence, ...]}} -> root/split/class/i.txt."""
    for split, classes in layout.items():
        for cls, seqs in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i, seq in enumerate(seqs):
                (root / split / cls / f"{i}.txt").write_text(seq + "\n")
    return root


# ---- readers ------------------------------------------------------------------------------------------------------
def test_csv_with_named_columns_split_column_and_mixed_line_endings(tmp_path):
    path = tmp_path / "seqs.csv"
    path.write_bytes(b"name,seq,y,part\r\nr1,ACGT,pos,train\nr2,ggcc,neg,test\r\nr3,ACGTN,pos,dev\n\n")
    got = read(path, sequence_column="seq", label_column="y", split_column="part", id_column="name")
    assert got == [("r1", "ACGT", "pos", "train"), ("r2", "GGCC", "neg", "test"), ("r3", "ACGTN", "pos", "val")]


def test_tsv_gzipped_ids_are_line_numbers(tmp_path):
    path = tmp_path / "seqs.tsv.gz"
    with gzip.open(path, "wt", newline="") as f:
        f.write("sequence\tlabel\r\nAAAA\tx\r\nCCCCGG\ty\n")
    assert detect_format(path) == "table"
    assert read(path) == [("line 2", "AAAA", "x", None), ("line 3", "CCCCGG", "y", None)]


def test_labelled_fasta_with_another_key_and_a_split(tmp_path):
    path = tmp_path / "seqs.fa"
    path.write_bytes(b">a class=enh split=test\r\nACGT\r\nAC\r\n>b some words class=prom\nGGGG\n")
    assert detect_format(path) == "fasta"
    assert read(path, label_key="class") == [("a", "ACGTAC", "enh", "test"), ("b", "GGGG", "prom", None)]


def test_genomic_benchmarks_folder(tmp_path):
    root = write_gb(tmp_path / "demo", {"train": {"human": ["ACGT", "AAC"], "worm": ["TTG"]},
                                        "test": {"human": ["GGA"], "worm": ["CCA"]}})
    assert detect_format(root) == "genomic-benchmarks"
    assert read(root) == [("human/0", "ACGT", "human", "train"), ("human/1", "AAC", "human", "train"),
                          ("worm/0", "TTG", "worm", "train"), ("human/0", "GGA", "human", "test"),
                          ("worm/0", "CCA", "worm", "test")]


def test_nucleotide_transformer_task_folder(tmp_path):
    task = tmp_path / "promoter_all"
    task.mkdir()
    (task / "test.csv").write_text("sequence,label,name\nACGT,1,t1\n")
    (task / "train.csv").write_text("sequence,label,name\nGGGG,0,a\nCCCC,1,b\n")
    assert detect_format(task) == "nt"
    assert read(task) == [("a", "GGGG", "0", "train"), ("b", "CCCC", "1", "train"), ("t1", "ACGT", "1", "test")]


def test_lenient_encodes_other_characters_as_unknown(tmp_path):
    path = tmp_path / "seqs.csv"
    path.write_text("sequence,label\nAC-GT,x\n")
    assert read(path, lenient=True)[0][1] == "AC[UNK]GT"


def test_download_through_a_fetch_function_and_offline_failure(tmp_path):
    def fetch(name, dest):
        return write_gb(dest / name, {"train": {"a": ["AC"], "b": ["GT"]}})

    folder = download_genomic_benchmark("demo_x", tmp_path, download=fetch)
    assert read(folder)[0] == ("a/0", "AC", "a", "train")

    def offline(name, dest):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(DataError, match=r"--download demo_x: could not fetch .*name resolution.*offline"):
        download_genomic_benchmark("demo_x", tmp_path, download=offline)


# ---- the store ----------------------------------------------------------------------------------------------------
def test_store_one_entry_per_sequence_with_labels_and_seeded_splits(tmp_path):
    path = tmp_path / "seqs.csv"
    rng = np.random.default_rng(0)
    rows = [("".join(rng.choice(list("ACGT"), rng.integers(5, 40))), "ab"[i % 2]) for i in range(300)]
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    stores = [TokenStore(write_labelled_store(read_labelled(path), tmp_path / f"store{i}", seed=3))
              for i in range(2)]
    store = stores[0]
    assert len(store) == 300 and store.meta["labels"] == ["a", "b"] and store.meta["task"] == "classify"
    assert [decode(store.tokens(i)) for i in range(3)] == [s for s, _ in rows[:3]]
    assert [r["label"] for r in store.records] == [y for _, y in rows]
    splits = [r["split"] for r in store.records]
    assert splits == [r["split"] for r in stores[1].records]  # seeded
    assert 15 < splits.count("val") < 50 and 15 < splits.count("test") < 50
    assert sum(sum(c.values()) for c in store.meta["counts"].values()) == 300


def test_val_is_drawn_from_train_when_only_train_and_test_are_given(tmp_path):
    root = write_gb(tmp_path / "gb", {"train": {"a": distinct(40, 1), "b": distinct(40, 2), "c": ["TT"]},
                                      "test": {"a": ["AC"], "b": ["GG"]}})
    store = TokenStore(write_labelled_store(read_labelled(root), tmp_path / "store", val_fraction=0.25))
    counts = store.meta["counts"]
    assert counts["test"] == {"a": 1, "b": 1}
    assert 5 < counts["val"]["a"] < 20 and counts["train"]["c"] == 1  # a single sequence stays in train


# ---- bad input: one line naming the place, exit 2, nothing written ------------------------------------------------
def prepare(args, tmp_path, capsys):
    out = tmp_path / "store"
    code, _, err = run_cli(["dna", "classify", "prepare", *args, "--out", out], capsys)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]
    return code, err


@pytest.mark.parametrize("name,content,flags,fragments", [
    ("empty.csv", "sequence,label\nACGT,a\n,b\n", [], ["empty.csv: line 3", "empty sequence"]),
    ("bad.csv", "sequence,label\nACGT,a\nACXT,b\n", [], ["bad.csv: line 3", "invalid character 'X' at position 3"]),
    ("nocol.csv", "seq,label\nACGT,a\n", [], ["nocol.csv", "no column 'sequence'", "--sequence-column"]),
    ("onlytest.csv", "sequence,label,split\nACGT,a,train\nACGT,b,train\nGGG,c,test\n", ["--split-column", "split"],
     ["onlytest.csv: line 4", "label 'c' appears in the test split but never in train"]),
    ("badsplit.csv", "sequence,label,split\nACGT,a,train\nACGT,b,holdout\n", ["--split-column", "split"],
     ["badsplit.csv: line 3", "split 'holdout'"]),
    ("empty.fa", ">r1 label=a\nACGT\n>r2 label=b\n>r3 label=a\nAC\n", [], ["empty.fa", "'r2'", "no sequence"]),
    ("nolabel.fa", ">r1 label=a\nACGT\n>r2\nGG\n", [], ["nolabel.fa: record 2 ('r2')", "no 'label='"]),
], ids=lambda v: v if isinstance(v, str) and "." in v and "\n" not in v else None)
def test_bad_input_is_one_line(tmp_path, capsys, name, content, flags, fragments):
    path = tmp_path / name
    path.write_bytes(content.encode())
    code, err = prepare([path, *flags], tmp_path, capsys)
    assert_one_line_error(code, err, *fragments)


def test_gzip_that_ends_early(tmp_path, capsys):
    body = "sequence,label\n" + "".join(f"{'ACGT' * 50},{'ab'[i % 2]}\n" for i in range(2000))
    data = gzip.compress(body.encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    code, err = prepare([path], tmp_path, capsys)
    assert_one_line_error(code, err, "cut.csv.gz: line", "cut short or corrupt")


def test_genomic_benchmarks_folder_without_classes(tmp_path, capsys):
    root = tmp_path / "gb"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    code, err = prepare([root], tmp_path, capsys)
    assert_one_line_error(code, err, "gb: no class folders")


def test_offline_download_is_one_line(tmp_path, capsys, monkeypatch):
    import mamba_bio_audio.data_prep.dna.labelled as labelled

    def offline(name, dest):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(labelled, "_package_download", offline)
    code, err = prepare(["--download", "human_nontata_promoters", "--download-dir", tmp_path / "dl"], tmp_path,
                        capsys)
    assert_one_line_error(code, err, "--download human_nontata_promoters", "network is unreachable")


# ---- length buckets -----------------------------------------------------------------------------------------------
def test_bucket_batches_cover_every_sequence_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 10_000, 1000)
    batches = bucket_batches(lengths, 16, seed=1, pool=8)
    assert all(b.size == 16 for b in batches) and len(batches) == 63
    assert set(np.concatenate(batches).tolist()) == set(range(1000))
    def padding(batches):
        return sum(lengths[b].max() * b.size - lengths[b].sum() for b in batches)

    random_batches = np.array_split(rng.permutation(1008) % 1000, 63)
    assert padding(batches) < 0.25 * padding(random_batches)  # buckets pad far less than random batches
    assert [b.tolist() for b in batches] == [b.tolist() for b in bucket_batches(lengths, 16, seed=1, pool=8)]


def test_eval_batches_each_once_under_a_token_budget():
    lengths = [5, 100, 7, 50, 6, 90]
    batches = eval_batches(lengths, 4, max_tokens=200)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in batches)


def test_pad_batch_right_pads_with_a_mask():
    ids, mask = pad_batch([np.array([7, 8], np.uint8), np.array([9], np.uint8)])
    assert ids.tolist() == [[7, 8], [9, PAD_ID]] and mask.tolist() == [[True, True], [True, False]]


def test_bucketed_sampler_is_a_pure_function_of_the_index(tmp_path):
    path = tmp_path / "seqs.csv"
    path.write_text("sequence,label\n" + "".join(f"{'ACGT' * (i + 1)},{'ab'[i % 2]}\n" for i in range(20)))
    store = TokenStore(write_labelled_store(read_labelled(path), tmp_path / "store", val_fraction=0,
                                            test_fraction=0))
    sampler = BucketedSampler(store, range(20), [i % 2 for i in range(20)], 4, seed=0, crop=10, rc_prob=0.5)
    items = [sampler[i] for i in range(60)]
    assert all(t.size <= 10 for t, _ in items)
    again = BucketedSampler(store, range(20), [i % 2 for i in range(20)], 4, seed=0, crop=10, rc_prob=0.5)
    for i in (59, 3, 41):
        assert np.array_equal(again[i][0], items[i][0]) and again[i][1] == items[i][1]


def test_sequences_without_a_split_beside_given_ones_are_train_and_give_the_val_draw(tmp_path):
    path = tmp_path / "seqs.fa"
    path.write_text("".join(f">r{i} label={'ab'[i % 2]}{' split=test' if i < 4 else ''}\n{seq}\n"
                            for i, seq in enumerate(distinct(100))))
    store = TokenStore(write_labelled_store(read_labelled(path), tmp_path / "store", val_fraction=0.3))
    splits = [r["split"] for r in store.records]
    assert splits[:4] == ["test"] * 4 and set(splits[4:]) == {"train", "val"} and splits.count("val") > 15
