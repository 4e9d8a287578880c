"""What ``dna classify`` writes: the prediction TSV (one label column decided for the whole file, every row as wide
as the header, the bases a cropping model read), metrics of a one-class split (MCC and AUROC null, with a note),
the 6-mer baseline read on the model's crop, and metrics.json without bare NaN (``write_json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_bio_audio import MambaClassifier, MambaConfig
from mamba_bio_audio.recipes.outputs import write_json
from mamba_bio_audio.tasks.classify import evaluate, predict_file, prepare, results_table
from mamba_bio_audio.tasks.windows import dna_extra

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(crop: int | None = None) -> MambaClassifier:
    torch.manual_seed(0)
    extra = dna_extra(32)
    if crop is not None:
        extra["dna"]["crop"] = crop
    config = MambaConfig(d_model=16, n_layer=1, vocab_size=12, d_state=4, extra=extra)
    return MambaClassifier(config, num_classes=2, pooling="mean", labels=["a", "b"])


def strict_json(path: Path):
    """``path`` parsed as strict JSON: NaN, Infinity and -Infinity are refused."""
    def refuse(name):
        raise ValueError(f"{path}: non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


# ---- predict --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labelled_first", [False, True])
def test_predict_decides_the_label_column_once_for_the_whole_file(tmp_path, labelled_first):
    """Chunks of 2: a file whose first chunk has no labels and a later one has (or the other way round) still gets
    one label column, every row as wide as the header, empty label cells for unlabelled sequences."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(7):
        labelled = (i < 3) == labelled_first
        seq = "".join(rng.choice(list("ACGT"), 12 + i))
        records.append((f"q{i}", seq, "ab"[i % 2] if labelled else None))
    fasta = tmp_path / "mixed.fa"
    fasta.write_text("".join(f">{i}{'' if y is None else f' label={y}'}\n{s}\n" for i, s, y in records))
    out = tmp_path / "preds.tsv"
    assert predict_file(tiny_model(), fasta, out, chunk=2) == 7
    header, rows = read_tsv(out)
    assert header == ["id", "length", "label", "predicted", "p_a", "p_b"]
    assert all(len(row) == len(header) for row in rows)
    for (name, seq, label), row in zip(records, rows):
        fields = dict(zip(header, row))
        assert fields["id"] == name and fields["length"] == str(len(seq)) and fields["label"] == (label or "")
        assert fields["predicted"] in ("a", "b")
        assert float(fields["p_a"]) + float(fields["p_b"]) == pytest.approx(1, abs=1e-5)
    assert not list(tmp_path.glob(".preds.tsv*"))  # no temporary file left behind


def test_predict_without_any_label_has_no_label_column(tmp_path):
    fasta = tmp_path / "new.fa"
    fasta.write_text("".join(f">q{i}\n{'ACGT' * (i + 2)}\n" for i in range(5)))
    out = tmp_path / "p.tsv"
    predict_file(tiny_model(), fasta, out, chunk=2)
    header, rows = read_tsv(out)
    assert header == ["id", "length", "predicted", "p_a", "p_b"]
    assert [row[0] for row in rows] == [f"q{i}" for i in range(5)] and all(len(row) == 5 for row in rows)


def test_predict_with_a_cropping_model_says_the_bases_read(tmp_path):
    """A model trained with a crop reads the centre ``crop`` bases: ``bases_read`` says how many, ``length`` stays
    the sequence's length."""
    csv = tmp_path / "seqs.csv"
    csv.write_text("sequence,label\n" + "".join(f"{'ACGT' * n},{'ab'[n % 2]}\n" for n in (1, 2, 5, 10)))
    out = tmp_path / "p.tsv"
    predict_file(tiny_model(crop=10), csv, out)
    header, rows = read_tsv(out)
    assert header == ["id", "length", "bases_read", "label", "predicted", "p_a", "p_b"]
    assert [(row[1], row[2]) for row in rows] == [("4", "4"), ("8", "8"), ("20", "10"), ("40", "10")]


# ---- evaluate -------------------------------------------------------------------------------------------------------
def write_store(root: Path, rows) -> Path:
    """A 'classify prepare' store of ``(sequence, label, split)`` rows."""
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "seqs.csv"
    csv.write_text("sequence,label,split\n" + "".join(f"{s},{y},{sp}\n" for s, y, sp in rows))
    prepare(csv, root / "store", split_column="split")
    return root / "store"


def test_a_one_class_test_split_has_null_mcc_and_auroc_with_a_note(tmp_path):
    rng = np.random.default_rng(1)
    rows = [("".join(rng.choice(list("GGCCA" if i % 2 else "AATTG"), 30)), "ab"[i % 2], "train") for i in range(20)]
    rows += [("".join(rng.choice(list("AATTG"), 30)), "a", "test") for _ in range(6)]
    result = evaluate(tiny_model(), write_store(tmp_path, rows))
    for name in ("model", "baseline"):
        assert result[name]["mcc"] is None and result[name]["auroc"] is None
        assert "label a" in result[name]["note"] and "undefined" in result[name]["note"]
        assert 0 <= result[name]["accuracy"] <= 1
    assert "n/a" in results_table(result)
    write_json(tmp_path / "metrics.json", result)
    assert strict_json(tmp_path / "metrics.json")["model"]["auroc"] is None


def test_the_baseline_reads_the_crop_the_model_reads(tmp_path):
    """Classes differ only outside the centre 20 bases, which are the same in every sequence: a model trained with
    --max-length 20 reads the centre only, and so does the baseline (one prediction for all); on whole sequences the
    baseline would tell the classes apart."""
    rng = np.random.default_rng(2)
    centre = "".join(rng.choice(list("ACGT"), 20))
    rows = []
    for i in range(40):
        label = "ab"[i % 2]
        flank = "GGGCCC" if label == "a" else "AAATTT"
        side = "".join(rng.choice(list(flank), 20))
        rows.append((side + centre + side[::-1], label, "test" if i % 5 == 4 else "train"))
    store = write_store(tmp_path, rows)
    result = evaluate(tiny_model(crop=20), store)
    assert result["crop"] == 20 and result["baseline"]["crop"] == 20
    predicted = np.array(result["baseline"]["confusion_matrix"]).sum(0)
    assert (predicted > 0).sum() == 1  # identical inputs: one class for every sequence
    whole = evaluate(tiny_model(), store)
    assert whole["baseline"]["crop"] is None and whole["baseline"]["accuracy"] == 1.0


# ---- write_json ---------------------------------------------------------------------------------------------------
def test_write_json_writes_nan_and_infinity_as_null(tmp_path):
    data = {"auroc": float("nan"), "nested": [1.5, math.inf, {"x": -math.inf, "y": np.float32("nan")}],
            "n": 3, "ok": True, "f64": np.float64(0.25), "tuple": (float("nan"), 2)}
    write_json(tmp_path / "m.json", data)
    parsed = strict_json(tmp_path / "m.json")
    assert parsed == {"auroc": None, "nested": [1.5, None, {"x": None, "y": None}], "n": 3, "ok": True,
                      "f64": 0.25, "tuple": [None, 2]}
