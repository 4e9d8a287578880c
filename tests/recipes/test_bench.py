"""``mba bench train`` and ``mba bench generate`` at tiny CPU sizes: outputs, JSON fields, one-line errors; the
benchmark models' sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mamba_bio_audio.benchmarks.generate import largest_batch
from mamba_bio_audio.benchmarks.train import BenchSize, build_model, count_parameters

from helpers import assert_one_line_error
from helpers import run_cli as run

TINY = ["--d-model", "16", "--n-layer", "1", "--transformer-layers", "1", "--n-head", "2", "--device", "cpu"]
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_train_writes_json_markdown_and_png(tmp_path, capsys):
    code, out, err = run(["bench", "train", "--shapes", "2,16;1,24", *TINY, "--warmup", "1", "--steps", "1",
                          "--out", tmp_path], capsys)
    assert code == 0, err
    assert "train bench: transformer, batch 1, seqlen 24" in err  # progress goes to stderr
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"bench_train.{suffix}").is_file()
    data = json.loads((tmp_path / "bench_train.json").read_text())
    assert {"device", "torch", "date", "mamba_bio_audio"} <= set(data["environment"])
    assert data["size"]["d_model"] == 16 and data["steps"] == 1
    rows = {(r["model"], r["batch"], r["seqlen"]): r for r in data["rows"]}
    assert len(rows) == 6
    for name in ("mamba", "transformer"):
        row = rows[(name, 2, 16)]
        assert row["tokens_per_second"] > 0 and row["ms_per_step"] > 0 and row["parameters"] > 0, row
    assert rows[("mamba", 1, 24)]["backend"] == "auto"
    if not HAS_MAMBA_SSM:
        assert rows[("mamba_ssm", 2, 16)]["note"].startswith("not installed")
    assert "| Transformer (SDPA) | (1, 24) |" in out


def test_bench_train_fused_inner_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MBA_FUSED_SAVE_EVERY", "0")  # the command sets them for its process: restored after
    monkeypatch.setenv("MBA_SCAN_SOFTPLUS", "pass")
    code, out, err = run(["bench", "train", "--shapes", "2,16", *TINY, "--models", "mamba", "--warmup", "0",
                          "--steps", "1", "--fused-inner", "all", "--fused-save-every", "2", "--scan-softplus",
                          "kernel", "--out", tmp_path], capsys)
    assert code == 0, err
    (row,) = json.loads((tmp_path / "bench_train.json").read_text())["rows"]
    assert row["fused_inner"] == "all" and row["fused_save_every"] == 2 and row["tokens_per_second"] > 0, row
    assert row["scan_softplus"] == "kernel", row
    assert "| Mamba (ours) [auto, fused inner all, save_every 2, softplus in the scan] | (2, 16) |" in out


def test_bench_train_scan_register_cap_is_checked_before_it_runs(tmp_path, capsys, monkeypatch):
    # --scan-bwd-maxnreg sets MBA_SCAN_BWD_MAXNREG for the process; a bad value in the variable is one line, exit 2
    monkeypatch.setenv("MBA_SCAN_BWD_MAXNREG", "lots")
    code, out, err = run(["bench", "train", "--shapes", "2,16", *TINY, "--models", "mamba", "--warmup", "0",
                          "--steps", "1", "--out", tmp_path / "a"], capsys)
    assert code == 2 and "MBA_SCAN_BWD_MAXNREG must be an integer" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    code, out, err = run(["bench", "train", "--shapes", "2,16", *TINY, "--models", "mamba", "--warmup", "0",
                          "--steps", "1", "--scan-bwd-maxnreg", "168", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    import os

    assert os.environ["MBA_SCAN_BWD_MAXNREG"] == "168"


def test_bench_generate_with_largest_batch(tmp_path, capsys):
    code, out, err = run(["bench", "generate", "--batch-sizes", "1,2", "--new-tokens", "5", "--prompt-len", "3",
                          "--repeats", "1", "--models", "mamba,transformer", *TINY, "--largest-batch",
                          "--largest-new-tokens", "4", "--max-batch", "3", "--out", tmp_path], capsys)
    assert code == 0, err
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"bench_generate.{suffix}").is_file()
    data = json.loads((tmp_path / "bench_generate.json").read_text())
    assert "device" in data["environment"]
    assert [(r["model"], r["batch"]) for r in data["rows"]] == [("mamba", 1), ("mamba", 2), ("transformer", 1),
                                                                ("transformer", 2)]
    for row in data["rows"]:
        assert row["tokens_per_second"] > 0 and row["ms_per_step"] > 0 and row["new_tokens"] == 5, row
        assert row["cuda_graph"] is False  # CPU: eager
    largest = data["largest_batch"]
    assert [r["model"] for r in largest["rows"]] == ["mamba", "transformer"]
    for row in largest["rows"]:
        assert row["batch"] == 3 and row["capped"] and row["tokens_per_second"] > 0, row
    assert largest["ratio"] > 0 and "Mamba / Transformer throughput" in out


@pytest.mark.parametrize("args, fragment", [
    (["train", "--shapes", "8,2048;oops"], "--shapes"),
    (["train", "--shapes", "0,16"], "positive"),
    (["train", "--models", "mamba,gpt"], "unknown model 'gpt'"),
    (["train", "--fused-inner", "off", "--fused-save-every", "4"], "not --fused-inner off"),
    (["generate", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["generate", "--d-model", "30", "--n-head", "4"], "must divide"),
])
def test_bad_flags_give_one_line_errors(args, fragment, capsys):
    code, _, err = run(["bench", *args, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, fragment)


def test_benchmark_model_sizes():
    # the 90.7M Mamba (vocab 256 needs no padding to a multiple of 8) and the 85.3M Transformer
    size = BenchSize()
    assert count_parameters(build_model("mamba", size, "meta")) == 90_716_928
    assert count_parameters(build_model("transformer", size, "meta")) == 85_252_608


def test_largest_batch_search():
    assert largest_batch(lambda b: b <= 100, 1 << 20, progress=lambda m: None) == (96, False)  # within 1/8
    assert largest_batch(lambda b: b <= 100, 50, progress=lambda m: None) == (50, True)
    assert largest_batch(lambda b: b <= 64, 64, progress=lambda m: None) == (64, True)
    assert largest_batch(lambda b: False, 8, progress=lambda m: None) == (0, False)


def test_bench_scan_default_out_is_a_new_report_folder(tmp_path, capsys, monkeypatch):
    """Defaults never touch ./results: the report goes to mba-bench/scan (marked as ours), progress to stderr; a
    second run is refused unless --overwrite; a folder of other files is refused and left as it was."""
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_scan.json").write_text("checked-in GPU figures")
    args = ["bench", "scan", "--shapes", "1,4,8", "--backends", "reference", "--dtype", "fp32", "--device", "cpu"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    report = tmp_path / "mba-bench" / "scan"
    assert (report / ".mba-output").read_text().strip() == "bench scan"
    assert json.loads((report / "bench_scan.json").read_text())["rows"][0]["fwd_ms"] > 0
    assert "scan bench: reference at (1, 4, 8)" in err and "fwd+bwd" in err
    assert f"wrote {Path('mba-bench') / 'scan' / 'bench_scan.json'} and .md" in out
    assert (results / "bench_scan.json").read_text() == "checked-in GPU figures"
    code, _, err = run(args, capsys)
    assert_one_line_error(code, err, "pass --overwrite")
    code, _, err = run([*args, "--overwrite"], capsys)
    assert code == 0, err
    code, _, err = run([*args, "--out", "results"], capsys)
    assert_one_line_error(code, err, "holds files mba did not write")
    assert sorted(p.name for p in results.iterdir()) == ["bench_scan.json"]
    assert not list(tmp_path.glob(".*partial*"))
