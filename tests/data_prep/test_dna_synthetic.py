"""Synthetic genomes: deterministic, shaped like the real input, and harder on short windows than on long ones."""

import numpy as np

from mamba_bio_audio.data_prep.dna.kmer import kmer_features
from mamba_bio_audio.data_prep.dna.store import prepare_genomes
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.data_prep.dna.windows import eval_windows
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.tasks.baselines import LogisticRegression


def test_deterministic_in_seed(tmp_path):
    a = write_synthetic_genomes(tmp_path / "a", n_species=3, strains=2, length=5_000, seed=1)
    b = write_synthetic_genomes(tmp_path / "b", n_species=3, strains=2, length=5_000, seed=1)
    c = write_synthetic_genomes(tmp_path / "c", n_species=3, strains=2, length=5_000, seed=2)
    assert [p.name for p in a] == ["synth_00.fa", "synth_01.fa", "synth_02.fa"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_files_go_through_prepare(tmp_path):
    write_synthetic_genomes(tmp_path / "genomes", n_species=4, strains=3, length=20_000, seed=0)
    text = (tmp_path / "genomes" / "synth_00.fa").read_text()
    assert text.startswith(">synth_00|strain=S1|synth_00_S1 synthetic chromosome 1\n")
    assert any(c.islower() for c in text) and "N" in text  # soft-masked repeats and an assembly gap
    store = TokenStore(prepare_genomes(tmp_path / "genomes", tmp_path / "store", "strain"))
    assert store.meta["species"] == ["synth_00", "synth_01", "synth_02", "synth_03"]
    assert {r["split"] for r in store.records} == {"train", "val", "test"}
    assert all(18_000 < r["length"] < 24_000 and 0 < r["n_fraction"] < 0.02 for r in store.records)


def test_long_windows_beat_short_ones(tmp_path):
    write_synthetic_genomes(tmp_path / "genomes", seed=0)
    store = prepare_genomes(tmp_path / "genomes", tmp_path / "store", "strain")
    accuracy = {}
    for length in (100, 10_000):
        train = eval_windows(store, "train", length, per_species=80, seed=1)
        test = eval_windows(store, "test", length, per_species=40, seed=2)
        model = LogisticRegression(l2=0.1).fit(kmer_features((t for t, _ in train), k=4), train.labels)
        predicted = model.predict(kmer_features((t for t, _ in test), k=4))
        accuracy[length] = float(np.mean(predicted == test.labels))
    assert accuracy[100] < 0.75 and accuracy[10_000] > 0.95, accuracy  # chance is 0.2
