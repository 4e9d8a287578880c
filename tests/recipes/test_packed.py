"""Packed training through the CLI: ``dna classify train --pack`` and ``dna pretrain --pack`` on BED intervals
shorter than the row, end to end on small synthetic fixtures; ``bench packed`` at tiny CPU sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamba_bio_audio.data_prep.store import TokenStore

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")


def _labelled_csv(path, n=48, seed=0):
    """Two classes that differ in composition, lengths 6 to 40; a sixth of them in test."""
    rng = np.random.default_rng(seed)
    lines = ["id,sequence,label,split"]
    for i in range(n):
        label = "ab"[i % 2]
        bases = list("GGCCA") if label == "a" else list("AATTG")
        lines.append(f"s{i},{''.join(rng.choice(bases, rng.integers(6, 41)))},{label},"
                     f"{'test' if i % 12 in (10, 11) else 'train'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_classify_train_packed_then_evaluate(tmp_path, capsys):
    csv = _labelled_csv(tmp_path / "seqs.csv")
    store, out = tmp_path / "store", tmp_path / "run"
    code, _, err = run(["dna", "classify", "prepare", csv, "--out", store, "--split-column", "split"], capsys)
    assert code == 0, err
    code, stdout, err = run(["dna", "classify", "train", "--data", store, "--out", out, "--max-steps", "4",
                             "--batch-size", "6", "--device", "cpu", "--val-every", "4", "--pack",
                             "--pack-length", "80"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    packing = metrics["packing"]
    assert packing["row_tokens"] == 80 and packing["rows_per_step"] >= 1 and 0.5 < packing["fill"] <= 1
    assert metrics["steps"] == 4 and 0 <= metrics["val"]["accuracy"] <= 1
    code, _, err = run(["dna", "classify", "evaluate", "--checkpoint", out, "--data", store, "--out",
                        tmp_path / "eval", "--no-baseline"], capsys)
    assert code == 0, err
    code, _, err = run(["dna", "classify", "train", "--data", store, "--out", tmp_path / "r2", "--pack",
                        "--pack-length", "16", "--max-length", "32", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--pack-length 16 must hold")


def test_dna_pretrain_packed_on_short_bed_intervals(tmp_path, capsys):
    rng = np.random.default_rng(0)
    chroms = {name: "".join(rng.choice(list("ACGT"), n)) for name, n in (("chr1", 3000), ("chr2", 2000))}
    (tmp_path / "hg.fa").write_text("".join(f">{c}\n{s}\n" for c, s in chroms.items()))
    (tmp_path / "s.bed").write_text("chr1\t0\t30\ttrain\nchr1\t100\t150\ttrain\nchr1\t200\t211\ttrain\n"
                                    "chr1\t1500\t2900\ttrain\nchr2\t100\t140\tvalid\nchr2\t200\t230\tvalid\n"
                                    "chr2\t1000\t2000\ttest\n")
    out = tmp_path / "run"
    code, stdout, err = run(["dna", "pretrain", "--bed", tmp_path / "s.bed", "--fasta", tmp_path / "hg.fa",
                             "--out", out, "--length", "64", "--batch-size", "4", "--val-per-species", "2",
                             "--max-steps", "3", "--device", "cpu", "--pack"], capsys)
    assert code == 0, err
    assert "val perplexity" in stdout
    store = TokenStore(out / "store")
    assert [r["length"] for r in store.records] == [30, 50, 11, 1400, 40, 30, 1000]  # not widened to 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["packed"] is True and metrics["steps"] == 3
    assert metrics["validation"] == "2 packed rows of the val split"
    # 2 rows of 64: 63 targets each, less one per piece boundary (the val intervals are 40 and 30 bases)
    assert 2 * 63 - 2 * 2 <= metrics["val_tokens"] < 2 * 63
    assert 1 < metrics["val_perplexity"] < 12


def test_bench_packed_at_tiny_cpu_sizes(tmp_path, capsys):
    code, out, err = run(["bench", "packed", "--sequences", "30", "--min-length", "8", "--max-length", "64",
                          "--tokens-per-step", "256", "--d-model", "16", "--n-layer", "1", "--scan-shapes",
                          "2,8,128", "--device", "cpu", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "b" / "bench_packed.json").read_text())
    assert {"device", "torch", "date", "mamba_bio_audio"} <= set(data["environment"])
    rows = {r["mode"]: r for r in data["rows"]}
    assert list(rows) == ["padded to max", "padded, length buckets", "packed"]
    useful = rows["packed"]["useful_tokens"]
    assert 8 * 30 <= useful <= 64 * 30 and rows["padded to max"]["useful_tokens"] == useful
    assert rows["padded to max"]["computed_tokens"] == 64 * 30  # every sequence padded to the longest
    assert rows["packed"]["useful_fraction"] > rows["padded to max"]["useful_fraction"]
    assert all(r["useful_tokens_per_second"] > 0 and r["sequences"] == 30 for r in rows.values())
    scan = data["scan"][0]
    assert scan["backend"] == "reference" and scan["fwd_ms"] > 0 and scan["fwd_bwd_ms_seq_idx"] > 0
    assert scan["sequences_per_row"] > 1
    assert "| packed |" in out and (tmp_path / "b" / "bench_packed.md").is_file()
    code, _, err = run(["bench", "packed", "--min-length", "10", "--max-length", "100", "--tokens-per-step", "50",
                        "--device", "cpu", "--out", tmp_path / "c"], capsys)
    assert_one_line_error(code, err, "--tokens-per-step 50 must hold")
