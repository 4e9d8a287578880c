"""What a genomics user walking the README's `mba species` / `mba dna` commands ran into (small synthetic fixtures):
``evaluate --out RUN/eval`` as documented, ``--resume`` with only ``--out`` (as the SIGINT message says), and
records or sequences of N alone, which have no species or class to predict."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

from helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIES_TRAIN = ["--preset", "tiny", "--length", "64", "--batch-size", "4", "--val-per-species", "2",
                 "--checkpoint-every", "1", "--max-steps", "2", "--device", "cpu"]
CLASSIFY_TRAIN = ["--preset", "tiny", "--batch-size", "4", "--checkpoint-every", "1", "--max-steps", "2",
                  "--val-every", "2", "--device", "cpu"]


def _ok(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return out, err


def _labelled_csv(path, n=40, seed=0):
    """A CSV of ``n`` distinct sequences, labels a (GC-rich) and b (AT-rich)."""
    rng = np.random.default_rng(seed)
    seqs = {}
    while len(seqs) < n:
        y = "ab"[len(seqs) % 2]
        p = [0.1, 0.4, 0.4, 0.1] if y == "a" else [0.4, 0.1, 0.1, 0.4]
        seqs.setdefault("".join(rng.choice(list("ACGT"), int(rng.integers(30, 60)), p=p)), y)
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in seqs.items()))
    return path


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A 2-species store with a 2-step species run, and a labelled store with a 2-step classify run."""

    from mamba_bio_audio.cli import main

    root = tmp_path_factory.mktemp("walk")
    write_synthetic_genomes(root / "genomes", n_species=2, strains=3, length=1_500, seed=0)
    _labelled_csv(root / "labelled.csv")
    for args in (["species", "prepare", "--genomes", root / "genomes", "--out", root / "store", "--split-by",
                  "strain"],
                 ["species", "train", "--data", root / "store", "--out", root / "run", *SPECIES_TRAIN],
                 ["dna", "classify", "prepare", root / "labelled.csv", "--out", root / "cls-store"],
                 ["dna", "classify", "train", "--data", root / "cls-store", "--out", root / "cls-run",
                  *CLASSIFY_TRAIN]):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        assert info.value.code == 0, args
    return root


# ---- evaluate --out RUN/eval (README and docs/dna.md write the evaluation inside the run) -------------------------
def test_species_evaluate_into_the_run_folder_as_documented(fx, capsys):
    out, _ = _ok(["species", "evaluate", "--checkpoint", fx / "run", "--data", fx / "store", "--lengths", "64",
                  "--per-species", "2", "--no-baseline", "--out", fx / "run" / "eval", "--device", "cpu"], capsys)
    assert "wrote" in out and (fx / "run" / "eval" / "metrics.json").is_file()
    # the run folder itself, or a folder inside the weights, stays refused
    for bad in (fx / "run", fx / "run" / "model" / "eval"):
        code, _, err = run_cli(["species", "evaluate", "--checkpoint", fx / "run", "--data", fx / "store",
                                "--lengths", "64", "--out", bad, "--device", "cpu"], capsys)
        assert_one_line_error(code, err, "overlaps the input")
    assert not (fx / "run" / "model" / "eval").exists()


def test_classify_evaluate_into_the_run_folder_as_documented(fx, capsys):
    _ok(["dna", "classify", "evaluate", "--checkpoint", fx / "cls-run", "--data", fx / "cls-store", "--no-baseline",
         "--out", fx / "cls-run" / "eval", "--device", "cpu"], capsys)
    assert (fx / "cls-run" / "eval" / "metrics.json").is_file()
    code, _, err = run_cli(["dna", "classify", "evaluate", "--checkpoint", fx / "cls-run", "--data",
                            fx / "cls-store", "--out", fx / "cls-run", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "overlaps the input")


# ---- --resume with --out alone -------------------------------------------------------------------------------------
def test_species_train_resume_takes_data_and_length_from_the_run(fx, tmp_path, capsys):
    _ok(["species", "train", "--data", fx / "store", "--out", tmp_path / "r", *SPECIES_TRAIN], capsys)
    _ok(["species", "train", "--out", tmp_path / "r", "--resume", "--max-steps", "3", "--device", "cpu"], capsys)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["window"] == 64


def test_classify_train_resume_takes_data_from_the_run(fx, tmp_path, capsys):
    _ok(["dna", "classify", "train", "--data", fx / "cls-store", "--out", tmp_path / "r", *CLASSIFY_TRAIN], capsys)
    _ok(["dna", "classify", "train", "--out", tmp_path / "r", "--resume", "--max-steps", "3", "--device", "cpu"],
        capsys)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["data"] == str(fx / "cls-store")


@pytest.mark.parametrize("args, missing", [
    (["species", "train", "--length", "64"], "--data"),
    (["species", "train", "--data", "STORE"], "--length"),
    (["dna", "classify", "train"], "--data"),
    (["dna", "pretrain", "--data", "STORE"], "--length"),
])
def test_a_new_run_still_needs_its_data_and_length(fx, tmp_path, capsys, args, missing):
    args = [str(fx / "store") if a == "STORE" else a for a in args]
    code, _, err = run_cli([*args, "--out", tmp_path / "o", "--max-steps", "1", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, f"missing option {missing}")
    assert not (tmp_path / "o").exists()


# ---- N alone: no prediction ---------------------------------------------------------------------------------------
def _tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_species_predict_gives_no_prediction_for_n_alone(fx, tmp_path, capsys):
    bases = "".join(np.random.default_rng(1).choice(list("ACGT"), 200))
    fasta = tmp_path / "new.fa"
    fasta.write_text(f">gap\n{'N' * 300}\n>short\n{bases[:20]}\n>half\n{bases[:128]}{'N' * 128}\n")
    _, err = _ok(["species", "predict", "--checkpoint", fx / "run", fasta, "--out", tmp_path / "p.tsv",
                  "--device", "cpu"], capsys)
    rows = {r["record"]: r for r in _tsv(tmp_path / "p.tsv")}
    labels = [k for k in rows["gap"] if k.startswith("p_")]
    assert rows["gap"]["predicted"] == "" and all(math.isnan(float(rows["gap"][k])) for k in labels)
    assert rows["gap"]["windows"] == "0"
    assert rows["short"]["predicted"] and rows["half"]["predicted"]
    assert rows["half"]["windows"] == "2"  # of 4 windows of 64 bases, the two of N alone are left out
    assert abs(sum(float(rows["half"][k]) for k in labels) - 1) < 1e-5
    assert "1 record(s) hold no A/C/G/T base" in err and "gap (new.fa)" in err
    # one row per window: the N windows have no prediction, one warning line counts them
    _, err = _ok(["species", "predict", "--checkpoint", fx / "run", fasta, "--window", "64", "--out",
                  tmp_path / "w.tsv", "--device", "cpu"], capsys)
    windows = _tsv(tmp_path / "w.tsv")
    blank = [w for w in windows if w["predicted"] == ""]
    assert len(blank) == 5 + 2 and all(w["record"] in ("gap", "half") for w in blank)
    assert [line for line in err.splitlines() if "A/C/G/T" in line][0].count("7 window(s)") == 1


def test_classify_predict_gives_no_prediction_for_n_alone(fx, tmp_path, capsys):
    fasta = tmp_path / "new.fa"
    fasta.write_text(">gap\nNNNNNNNNNNNNNNNNNNNNNNNNN\n>seq\nACGTGGCCGCGCATGCGCGCCGGA\n>iupac\nRYNNKMRYNN\n")
    _, err = _ok(["dna", "classify", "predict", "--checkpoint", fx / "cls-run", fasta, "--out", tmp_path / "p.tsv",
                  "--device", "cpu"], capsys)
    rows = {r["id"]: r for r in _tsv(tmp_path / "p.tsv")}
    assert rows["seq"]["predicted"] in ("a", "b")
    for name in ("gap", "iupac"):  # ambiguity codes read as N: nothing to classify either
        assert rows[name]["predicted"] == "" and math.isnan(float(rows[name]["p_a"]))
    assert "2 sequence(s) hold no A/C/G/T base" in err and "gap, iupac" in err


# ---- a CSV as users bring it ---------------------------------------------------------------------------------------
def test_a_users_csv_windows_line_endings_soft_masking_iupac_and_an_empty_line(tmp_path, capsys):
    from mamba_bio_audio.data_prep.dna.tokenizer import decode
    from mamba_bio_audio.data_prep.store import TokenStore

    rows = [(f"s{i}", "ACGTTGCA" * 4 + "ACGT"[i % 4] * (i + 1), "ab"[i % 2]) for i in range(12)]
    rows[0] = ("s0", "acgtacgtGGCC", "a")  # soft-masked
    rows[1] = ("s1", "ACRYNKMTTG", "b")  # IUPAC codes
    text = "id,sequence,label,split\r\n" + "".join(
        f"{i},{s},{y},{'test' if k == 11 else 'train'}\r\n" + ("\r\n" if k == 4 else "")
        for k, (i, s, y) in enumerate(rows))
    (tmp_path / "mine.csv").write_bytes(text.encode())
    _, err = _ok(["dna", "classify", "prepare", tmp_path / "mine.csv", "--out", tmp_path / "st2", "--split-column",
                  "split", "--id-column", "id", "--val-fraction", "0"], capsys)
    assert err == ""
    store = TokenStore(tmp_path / "st2")
    seqs = {r["id"]: decode(store.tokens(i)) for i, r in enumerate(store.records)}
    assert seqs["s0"] == "ACGTACGTGGCC" and seqs["s1"] == "ACNNNNNTTG" and len(seqs) == 12
    assert store.meta["counts"]["test"] == {"b": 1}


def test_a_duplicate_id_in_the_id_column_is_one_line(tmp_path, capsys):
    (tmp_path / "dup.tsv").write_text("id\tsequence\tlabel\nx\tACGTAC\ta\ny\tGGCCAA\tb\nx\tTTTTAC\ta\n")
    code, _, err = run_cli(["dna", "classify", "prepare", tmp_path / "dup.tsv", "--out", tmp_path / "st",
                            "--id-column", "id"], capsys)
    assert_one_line_error(code, err, "dup.tsv: line 4: duplicate id 'x' (first on line 2")
    assert not (tmp_path / "st").exists()


def test_predict_names_the_unread_id_column(fx, tmp_path, capsys):
    (tmp_path / "new.csv").write_text("id,sequence\nmine-1,ACGTGGCCGCGCAT\nmine-2,ATATATTTAAAT\n")
    _, err = _ok(["dna", "classify", "predict", "--checkpoint", fx / "cls-run", tmp_path / "new.csv", "--out",
                  tmp_path / "p.tsv", "--device", "cpu"], capsys)
    assert "column 'id' is not read" in err and "--id-column id" in err
    assert [r["id"] for r in _tsv(tmp_path / "p.tsv")] == ["line 2", "line 3"]
    _, err = _ok(["dna", "classify", "predict", "--checkpoint", fx / "cls-run", tmp_path / "new.csv", "--out",
                  tmp_path / "q.tsv", "--id-column", "id", "--device", "cpu"], capsys)
    assert err == "" and [r["id"] for r in _tsv(tmp_path / "q.tsv")] == ["mine-1", "mine-2"]


# ---- species prepare says which strains it held out ----------------------------------------------------------------
def test_species_prepare_names_the_held_out_strains(tmp_path, capsys):
    from mamba_bio_audio.data_prep.store import TokenStore

    write_synthetic_genomes(tmp_path / "g", n_species=2, strains=3, length=1_000, seed=0)
    out, _ = _ok(["species", "prepare", "--genomes", tmp_path / "g", "--out", tmp_path / "st", "--split-by",
                  "strain"], capsys)
    held = {(r["species"], r["split"]): r["strain"] for r in TokenStore(tmp_path / "st").records}
    for species in ("synth_00", "synth_01"):
        line = next(line for line in out.splitlines() if line.startswith(f"{species}:"))
        assert re.search(rf"test [\d,]+ \({held[species, 'test']}\), train [\d,]+, val [\d,]+ "
                         rf"\({held[species, 'val']}\) bases$", line), line  # train: not named (the rest)
    out, _ = _ok(["species", "prepare", "--genomes", tmp_path / "g", "--out", tmp_path / "fr", "--split-by",
                  "fraction"], capsys)
    assert "(" not in out  # regions of one record: nothing to name


# ---- predict --out RUN/preds.tsv (beside the weights, as evaluate --out RUN/eval) ---------------------------------
def test_predict_writes_into_the_run_it_reads_but_not_into_other_outputs(fx, capsys):
    fasta = fx / "one.fa"
    fasta.write_text(">r1\n" + "ACGT" * 40 + "\n")
    _ok(["species", "predict", "--checkpoint", fx / "run", fasta, "--out", fx / "run" / "preds.tsv", "--device",
         "cpu"], capsys)
    assert (fx / "run" / "preds.tsv").read_text().count("\n") == 2  # header and r1
    seqs = fx / "seqs.csv"
    seqs.write_text("sequence\n" + "ACGT" * 10 + "\n")
    _ok(["dna", "classify", "predict", "--checkpoint", fx / "cls-run", seqs, "--out", fx / "cls-run" / "preds.tsv",
         "--device", "cpu"], capsys)
    assert (fx / "cls-run" / "preds.tsv").is_file()
    for bad, why in ((fx / "store" / "preds.tsv", "a 'species prepare' output"),  # another command's output
                     (fx / "run" / "model" / "preds.tsv", "is an input"),  # inside the weights
                     (fx / "cls-run" / "preds.tsv", "lies inside")):  # another run than the one read
        code, _, err = run_cli(["species", "predict", "--checkpoint", fx / "run", fasta, "--out", bad, "--device",
                                "cpu", "--overwrite"], capsys)
        assert_one_line_error(code, err, why)
