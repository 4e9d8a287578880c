"""prepare_genomes: folder layout, store round trip, the three split modes, bad inputs, the real bacteria."""

import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.splits import plan_splits, region_bounds
from mamba_bio_audio.data_prep.dna.store import find_genomes, prepare_genomes
from mamba_bio_audio.data_prep.dna.tokenizer import encode
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.errors import DataError

BACTERIA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dna" / "bacteria"


def random_seq(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def write_species(folder, species, strains, records_per_strain=1, length=300, seed=0, gz=False):
    """``<species>.fa[.gz]`` with headers ``species|strain=S|S_rK ...``; returns {record id: sequence}."""
    rng = np.random.default_rng(seed)
    seqs = {f"{s}_r{k}": random_seq(rng, length) for s in strains for k in range(records_per_strain)}
    text = "".join(f">{species}|strain={rid.rsplit('_r', 1)[0]}|{rid} test\n{seq}\n" for rid, seq in seqs.items())
    path = folder / f"{species}.fa{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return seqs


@pytest.fixture
def genomes(tmp_path):
    """Three species: 'ant' 3 strains x 2 records (gzipped), 'bee' 2 strains, 'cat' 1 strain of 2 records."""
    folder = tmp_path / "genomes"
    folder.mkdir()
    seqs = {"ant": write_species(folder, "ant", ["A1", "A2", "A3"], 2, seed=1, gz=True),
            "bee": write_species(folder, "bee", ["B1", "B2"], seed=2),
            "cat": write_species(folder, "cat", ["C1"], 2, seed=3)}
    (folder / "README.md").write_text("not a genome")
    return folder, seqs


def by_record(store):
    """(species, record) -> index entries sorted by start."""
    out = defaultdict(list)
    for i, r in enumerate(store.records):
        out[r["species"], r["record"]].append((r["start"], i))
    return {k: [store.records[i] for _, i in sorted(v)] for k, v in out.items()}


def test_find_genomes_layout(tmp_path):
    (tmp_path / "b.fasta.gz").write_bytes(b"")
    (tmp_path / "a.fa").write_text(">x\nA\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "s1.fna").write_text(">y\nA\n")
    (tmp_path / "c" / "notes.txt").write_text("")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / ".hidden.fa").write_text(">z\nA\n")
    found = find_genomes(tmp_path)
    assert {k: [p.name for p in v] for k, v in found.items()} == {"a": ["a.fa"], "b": ["b.fasta.gz"],
                                                                  "c": ["s1.fna"]}


def test_find_genomes_errors(tmp_path):
    with pytest.raises(DataError, match="no genome files"):
        find_genomes(tmp_path)
    (tmp_path / "a.fa").write_text(">x\nA\n")
    (tmp_path / "a.2bit").write_text("")
    with pytest.raises(DataError, match="species 'a' appears twice"):
        find_genomes(tmp_path)


def test_round_trip_tokens_and_fields(genomes, tmp_path):
    folder, seqs = genomes
    store = TokenStore(prepare_genomes(folder, tmp_path / "store", "record"))
    assert store.meta["species"] == ["ant", "bee", "cat"]
    assert store.meta["tokenizer"] == "hyena-12" and store.meta["vocab_size"] == 12
    for (species, record), entries in by_record(store).items():
        tokens = np.concatenate([store.tokens(store.records.index(e)) for e in entries])
        np.testing.assert_array_equal(tokens, encode(seqs[species][record]))
        e = entries[0]
        assert e["strain"] == record.rsplit("_r", 1)[0] and e["chromosome"] is None
        assert e["file"] == f"{species}.fa{'.gz' if species == 'ant' else ''}"
    assert sum(len(s) for v in seqs.values() for s in v.values()) == store.data.size


def test_record_split_is_seeded_and_deterministic(genomes, tmp_path):
    folder, _ = genomes
    index = [TokenStore(prepare_genomes(folder, tmp_path / f"s{i}", "record", seed=7)).records for i in range(2)]
    assert index[0] == index[1]
    held = TokenStore(tmp_path / "s0").meta["split"]["held_out"]
    assert len(held["ant"]["test"]) == len(held["ant"]["val"]) == 1  # 6 records: one each
    assert len(held["bee"]["test"]) == 1 and held["bee"]["val"] == []  # 2 records: test only
    assert len(held["cat"]["test"]) == 1 and held["cat"]["val"] == []  # one strain, but 2 records
    other_seeds = {tuple(TokenStore(prepare_genomes(folder, tmp_path / "t", "record", seed=s)).meta["split"]
                         ["held_out"]["ant"]["test"]) for s in range(6)}
    assert len(other_seeds) > 1


def test_strain_split_holds_out_whole_strains(genomes, tmp_path):
    folder, _ = genomes
    store = TokenStore(prepare_genomes(folder, tmp_path / "store", "strain", seed=3))
    splits = defaultdict(set)
    for r in store.records:
        splits[r["species"], r["strain"]].add(r["split"])
    assert all(len(s) == 1 for k, s in splits.items() if k[0] != "cat")  # a strain lies in one split
    assert sorted(s.pop() for k, s in splits.items() if k[0] == "ant") == ["test", "train", "val"]
    assert sorted(s.pop() for k, s in splits.items() if k[0] == "bee") == ["test", "train"]
    # 'cat' has a single strain: its records are cut into regions instead.
    assert store.meta["split"]["region_species"] == ["cat"]
    assert {r["split"] for r in store.records if r["species"] == "cat"} == {"train", "val", "test"}


def test_explicit_held_out_names(genomes, tmp_path):
    folder, _ = genomes
    store = TokenStore(prepare_genomes(folder, tmp_path / "store", "strain", val=["A1"], test=["A2", "B1"]))
    split = {r["strain"]: r["split"] for r in store.records}
    assert split == {"A1": "val", "A2": "test", "A3": "train", "B1": "test", "B2": "train", "C1": "train"}
    with pytest.raises(DataError, match="no strain named ZZ"):
        prepare_genomes(folder, tmp_path / "bad", "strain", test=["ZZ"])
    with pytest.raises(DataError, match="species 'bee': every strain is held out"):
        prepare_genomes(folder, tmp_path / "bad", "strain", val=["B2"], test=["B1"])
    assert not (tmp_path / "bad").exists()


def test_fraction_split_regions_tile_each_record(genomes, tmp_path):
    folder, seqs = genomes
    store = TokenStore(prepare_genomes(folder, tmp_path / "store", "fraction", fractions=(0.7, 0.2, 0.1)))
    for (species, record), entries in by_record(store).items():
        assert [e["split"] for e in entries] == ["train", "val", "test"]
        ends = [e["start"] + e["length"] for e in entries]
        assert [e["start"] for e in entries] == [0, *ends[:-1]] and ends[-1] == len(seqs[species][record])
        assert [e["length"] for e in entries] == [210, 60, 30]


def test_fraction_split_with_held_out_names_is_one_line(genomes, tmp_path, capsys):
    from helpers import assert_one_line_error, run_cli

    folder, _ = genomes
    with pytest.raises(DataError, match="--split-by fraction holds out a region of every record"):
        plan_splits({"ant": ["A1", "A2"]}, "fraction", test=["A1"])
    out = tmp_path / "store"
    code, _, err = run_cli(["species", "prepare", "--genomes", folder, "--out", out, "--split-by", "fraction",
                            "--val", "A1", "--test", "A2"], capsys)
    assert_one_line_error(code, err, "--val/--test name records or strains", "--split-by fraction")
    assert not out.exists()


def test_region_bounds_and_fraction_checks():
    assert region_bounds(10, (0.8, 0.1, 0.1)) == [("train", 0, 8), ("val", 8, 9), ("test", 9, 10)]
    assert region_bounds(3, (0.8, 0.1, 0.1)) == [("train", 0, 2), ("val", 2, 3)]  # the empty test region is left out
    with pytest.raises(DataError, match="split fractions"):
        plan_splits({"a": ["x"]}, "fraction", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="split_by must be one of"):
        plan_splits({"a": ["x"]}, "chromosome")


def test_strain_from_file_name_in_species_folder(tmp_path):
    folder = tmp_path / "genomes"
    (folder / "ant").mkdir(parents=True)
    for strain in ("k12", "dh1"):
        (folder / "ant" / f"{strain}.fa").write_text(f">contig1_{strain}\nACGTACGT\n>contig2_{strain}\nGGCC\n")
    store = TokenStore(prepare_genomes(folder, tmp_path / "store", "strain", seed=0))
    assert {(r["record"], r["strain"]) for r in store.records} == {
        ("contig1_k12", "k12"), ("contig2_k12", "k12"), ("contig1_dh1", "dh1"), ("contig2_dh1", "dh1")}
    assert {r["file"] for r in store.records} == {"ant/k12.fa", "ant/dh1.fa"}


def test_n_fraction_and_lenient(tmp_path):
    folder = tmp_path / "genomes"
    folder.mkdir()
    (folder / "ant.fa").write_text(">a\nACGTNNNNRY\n>b\nACGT*T\n")
    with pytest.raises(DataError, match=r"ant.fa: record 'b': invalid character '\*' at position 5"):
        prepare_genomes(folder, tmp_path / "store", "fraction", fractions=(1, 0, 0))
    store = TokenStore(prepare_genomes(folder, tmp_path / "store", "fraction", fractions=(1, 0, 0), lenient=True))
    assert [r["n_fraction"] for r in store.records] == [0.6, pytest.approx(1 / 6)]
    assert store.meta["lenient"] is True


@pytest.mark.parametrize("bad_file, content, message", [
    ("bee.fa", b"", "empty file"),
    ("bee.fa", b"ACGT\n>x\nACGT\n", "no FASTA header"),
    ("bee.fa.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03truncated", "corrupt gzip"),
    ("bee.fa", b">x\nACGT\n>x\nACGT\n", "duplicate record id 'x'"),
    ("bee.fa", b">x\nACGT\n>y\nAC!T\n", "record 'y': invalid character '!' at position 3"),
    ("bee/second.fa", b">ant|strain=A1|A1_r0 dup\nACGT\n", "duplicate record id 'A1_r0'"),
])
def test_bad_input_raises_and_leaves_no_output(genomes, tmp_path, bad_file, content, message):
    folder, _ = genomes
    if bad_file.startswith("bee/"):  # a species folder whose two files share a record id
        (folder / "bee.fa").rename(tmp_path / "moved.fa")
        (folder / "bee").mkdir()
        (folder / "bee" / "first.fa").write_bytes(b">A1_r0\nACGT\n")
    else:
        (folder / "bee.fa").unlink()
    (folder / bad_file).write_bytes(content)
    out = tmp_path / "out" / "store"
    with pytest.raises(DataError) as err:
        prepare_genomes(folder, out, "strain")
    assert str(folder / bad_file) in str(err.value) and message in str(err.value)
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == []  # neither the store nor its temporary folder


@pytest.mark.skipif(not BACTERIA.is_dir(), reason=f"real bacteria not found at {BACTERIA}")
def test_real_bacteria_strain_split(tmp_path):
    store = TokenStore(prepare_genomes(BACTERIA, tmp_path / "store", "strain", seed=0))
    assert store.meta["species"] == ["escherichia_coli", "helicobacter_pylori", "staphylococcus_aureus",
                                     "streptococcus_suis", "vibrio_cholerae"]
    assert store.meta["split"]["region_species"] == ["streptococcus_suis"]  # its only strain: SC84
    strains = defaultdict(set)
    for r in store.records:
        strains[r["species"], r["strain"]].add(r["split"])
    assert all(len(s) == 1 for (species, _), s in strains.items() if species != "streptococcus_suis")
    vibrio = [r for r in store.records if r["species"] == "vibrio_cholerae"]
    assert len(vibrio) == 8 and {r["chromosome"] for r in vibrio} == {"1", "2", "I", "II"}
    # SOURCES.md: Vibrio holds 2,104 N and 35 other IUPAC codes, all encoded as N.
    assert sum(round(r["n_fraction"] * r["length"]) for r in vibrio) == 2104 + 35
    assert store.data.size == 50_301_267  # bases, as the table in SOURCES.md rounds them


def test_library_callers_never_replace_a_folder_of_other_files(genomes, tmp_path):
    """prepare_genomes / TokenStoreWriter(overwrite=True) from Python: a folder that is not a token store, or the
    genomes folder itself, is refused in one line and left as it was; a store of ours is replaced."""
    from mamba_bio_audio.data_prep.store import TokenStoreWriter

    genomes, _ = genomes
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.txt").write_text("t")
    for target in (mine, genomes, genomes / "sub"):
        with pytest.raises(DataError) as info:
            prepare_genomes(genomes, target, overwrite=True)
        assert "\n" not in str(info.value) and ("not a token store" in str(info.value) or "overlaps" in str(info.value))
    with pytest.raises(DataError, match="not a token store"):
        TokenStoreWriter(mine, overwrite=True)
    (tmp_path / "file").write_text("f")
    with pytest.raises(DataError, match="not a folder"):
        TokenStoreWriter(tmp_path / "file")
    assert (mine / "thesis.txt").read_text() == "t" and sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    assert not (genomes / "sub").exists()
    store = prepare_genomes(genomes, tmp_path / "store")
    prepare_genomes(genomes, store, overwrite=True, seed=1)  # a store of ours: replaced
    assert len(TokenStore(store)) > 0
    with pytest.raises(DataError, match="already exists"):
        prepare_genomes(genomes, store, overwrite=False)
    (tmp_path / "empty").mkdir()
    assert len(TokenStore(prepare_genomes(genomes, tmp_path / "empty", overwrite=False))) > 0
