"""Splits of labelled sequences: identical sequences share a drawn split, duplicates across the input's own splits
are counted, an empty split cell is train, input without train rows is a test-only store; NT task files with
their own column names or without a ``name`` column."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.labelled import read_labelled, write_labelled_store
from mamba_bio_audio.data_prep.dna.tokenizer import decode
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError


def random_seqs(n: int, seed: int = 0, length: int = 16) -> list[str]:
    rng = np.random.default_rng(seed)
    return list(dict.fromkeys("".join(rng.choice(list("ACGT"), length)) for _ in range(2 * n)))[:n]


def store_of(path, tmp_path, name="store", **kw) -> TokenStore:
    return TokenStore(write_labelled_store(read_labelled(path, **kw), tmp_path / name, seed=1))


# ---- duplicates ---------------------------------------------------------------------------------------------------
def test_identical_sequences_any_case_share_their_drawn_split(tmp_path):
    seqs = random_seqs(100)
    path = tmp_path / "dups.csv"
    rows = [(variant(s), "ab"[i % 2]) for i, s in enumerate(seqs) for variant in (str, str.lower, str)]
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    store = store_of(path, tmp_path)
    split_of: dict[str, set[str]] = {}
    for i, r in enumerate(store.records):
        split_of.setdefault(decode(store.tokens(i)), set()).add(r["split"])
    assert len(split_of) == 100 and all(len(s) == 1 for s in split_of.values())
    splits = [next(iter(s)) for s in split_of.values()]
    assert splits.count("val") >= 3 and splits.count("test") >= 3  # still drawn, per distinct sequence
    assert store.meta["duplicates"] == {"val": 0, "test": 0}


def test_without_duplicates_the_draw_is_the_one_per_row(tmp_path):
    """Sets without duplicates keep the splits they had (one draw per sequence, in file order)."""
    path = tmp_path / "seqs.csv"
    seqs = random_seqs(200, seed=2)
    path.write_text("sequence,label\n" + "".join(f"{s},{'ab'[i % 2]}\n" for i, s in enumerate(seqs)))
    store = store_of(path, tmp_path)
    u = np.random.default_rng(1).random(200)
    expected = np.where(u < 0.1, "val", np.where(u < 0.2, "test", "train"))
    assert [r["split"] for r in store.records] == expected.tolist()


def test_duplicates_across_the_inputs_own_splits_are_kept_and_counted(tmp_path):
    a, b, c = random_seqs(3, seed=3)
    path = tmp_path / "given.csv"
    path.write_text("sequence,label,split\n"
                    f"{a},x,train\n{b},y,train\n{c},x,train\n{a.lower()},x,test\n{a},x,val\n{b},y,test\n{c}A,y,test\n")
    store = store_of(path, tmp_path, split_column="split")
    assert [r["split"] for r in store.records] == ["train", "train", "train", "test", "val", "test", "test"]
    assert store.meta["duplicates"] == {"val": 1, "test": 2}


# ---- an empty split cell ------------------------------------------------------------------------------------------
def test_an_empty_split_cell_is_train_and_joins_the_val_draw(tmp_path):
    seqs = random_seqs(60, seed=4)
    path = tmp_path / "part.csv"
    path.write_text("sequence,label,split\n" + "".join(
        f"{s},{'ab'[i % 2]},{'test' if i < 6 else ' ' if i % 3 else 'train'}\n" for i, s in enumerate(seqs)))
    assert [s.split for s in read_labelled(path, split_column="split")][5:9] == ["test", "train", None, None]
    store = store_of(path, tmp_path, split_column="split")
    splits = [r["split"] for r in store.records]
    assert splits[:6] == ["test"] * 6 and set(splits[6:]) == {"train", "val"}
    fasta = tmp_path / "part.fa"
    fasta.write_text(">r1 label=a split=\nACGT\n>r2 label=b split=test\nGG\n")
    assert [s.split for s in read_labelled(fasta)] == [None, "test"]


def test_every_split_cell_empty_draws_every_row(tmp_path):
    seqs = random_seqs(200, seed=5)
    path = tmp_path / "blank.csv"
    path.write_text("sequence,label,split\n" + "".join(f"{s},{'ab'[i % 2]},\n" for i, s in enumerate(seqs)))
    splits = [r["split"] for r in store_of(path, tmp_path, split_column="split").records]
    assert splits.count("test") > 5 and splits.count("val") > 5


# ---- test-only stores ---------------------------------------------------------------------------------------------
def test_rows_all_in_test_make_a_test_only_store(tmp_path):
    seqs = random_seqs(9, seed=6)
    path = tmp_path / "external.csv"
    path.write_text("sequence,label,split\n" + "".join(f"{s},{'abc'[i % 3]},test\n" for i, s in enumerate(seqs)))
    store = store_of(path, tmp_path, split_column="split")
    assert store.meta["test_only"] is True and store.meta["labels"] == ["a", "b", "c"]
    assert store.meta["counts"] == {"test": {"a": 3, "b": 3, "c": 3}}
    one = tmp_path / "one.csv"
    one.write_text("sequence,label,split\nACGT,a,test\nGGA,a,test\n")  # an external set of one class is fine too
    assert store_of(one, tmp_path, "one", split_column="split").meta["labels"] == ["a"]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("sequence,label,split\nACGT,a,train\nGGA,b,train\nTTT,c,test\n")
    with pytest.raises(DataError, match="label 'c' appears in the test split but never in train"):
        store_of(mixed, tmp_path, "mixed", split_column="split")


def test_a_store_with_train_is_not_test_only(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("sequence,label\n" + "".join(f"{s},{'ab'[i % 2]}\n" for i, s in enumerate(random_seqs(20))))
    assert store_of(path, tmp_path).meta["test_only"] is False


# ---- NT task folders ----------------------------------------------------------------------------------------------
def test_nt_folder_with_its_own_column_names(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.csv").write_text("ident,seq,y\nt1,ACGT,pos\nt2,GGCC,neg\n")
    (task / "test.csv").write_text("ident,seq,y\ns1,TTAA,pos\n")
    got = [(s.id, decode(s.tokens), s.label, s.split)
           for s in read_labelled(task, sequence_column="seq", label_column="y", id_column="ident")]
    assert got == [("t1", "ACGT", "pos", "train"), ("t2", "GGCC", "neg", "train"), ("s1", "TTAA", "pos", "test")]
    with pytest.raises(DataError, match="no column 'nope'.*--id-column"):
        list(read_labelled(task, sequence_column="seq", label_column="y", id_column="nope"))
    with pytest.raises(DataError, match="--split-column does not apply"):
        list(read_labelled(task, "nt", sequence_column="seq", label_column="y", split_column="split"))


def test_nt_folder_without_a_name_column_gets_ids_of_file_and_line(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.csv").write_text("sequence,label\nACGT,1\nGGCC,0\n")
    (task / "dev.csv").write_text("sequence,label\nTTAA,1\n")
    (task / "test.csv").write_text("sequence,label\nCCAA,0\n")
    assert [(s.id, s.split) for s in read_labelled(task)] == [
        ("train.csv line 2", "train"), ("train.csv line 3", "train"), ("dev.csv line 2", "val"),
        ("test.csv line 2", "test")]
    (task / "train.csv").write_text("sequence,label,name\nACGT,1,n1\n")  # a name column is still the id
    assert next(iter(read_labelled(task))).id == "n1"


def test_table_format_on_a_folder_is_an_error(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.csv").write_text("sequence,label\nACGT,1\n")
    with pytest.raises(DataError, match="a folder; --format table reads one CSV/TSV file"):
        list(read_labelled(task, "table"))
