"""``mba bench summary``: ours beside the peer with the ratio, from the JSON reports the bench commands write."""

from __future__ import annotations

import json

import pytest

from mamba_bio_audio.benchmarks.summary import ratio_text, summarize

from helpers import assert_one_line_error
from helpers import run_cli as run

ENV = {"device": "NVIDIA H100 80GB HBM3", "date": "2026-12-07 06:30 UTC"}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps({**data, "environment": ENV}))
    return path


def scan_report(tmp_path):
    rows = [dict(backend="triton", batch=8, dim=1536, seqlen=2048, fwd_ms=0.38, fwd_bwd_ms=1.9, peak_extra_gib=0.47),
            dict(backend="triton-lean", batch=8, dim=1536, seqlen=2048, fwd_ms=0.36, fwd_bwd_ms=2.0,
                 peak_extra_gib=0.23),
            dict(backend="cuda", batch=8, dim=1536, seqlen=2048, fwd_ms=0.45, fwd_bwd_ms=2.3, peak_extra_gib=0.24),
            dict(backend="triton", batch=1, dim=512, seqlen=64, error="OutOfMemoryError: ...")]
    return write(tmp_path, "bench_scan.json", {"rows": rows, "d_state": 16})


def test_scan_rows_pair_each_triton_row_with_mamba_ssm(tmp_path):
    rows = {r["measure"]: r for r in summarize([scan_report(tmp_path)])}
    assert len(rows) == 6  # 2 Triton rows x 3 measures; the failed row is left out
    fwd = rows["scan fwd ms"]
    assert fwd["peer"] == "mamba_ssm" and fwd["ratio"] == pytest.approx(0.38 / 0.45) and fwd["better"] == "lower"
    assert rows["scan [triton-lean] peak extra GiB"]["ratio"] == pytest.approx(0.23 / 0.24)
    assert fwd["where"] == "H100 80GB HBM3, 2026-12-07 06:30"


def test_train_generate_and_cpu_rows(tmp_path):
    train = write(tmp_path, "bench_train.json", {"rows": [
        dict(model="mamba", batch=8, seqlen=2048, backend="triton", fused_inner="triton", fused_save_every=16,
             cuda_graph=True, tokens_per_second=200_000.0, peak_gib=6.5),
        dict(model="mamba_ssm", batch=8, seqlen=2048, tokens_per_second=160_000.0, peak_gib=7.0),
        dict(model="transformer", batch=8, seqlen=2048, tokens_per_second=400_000.0, peak_gib=6.7)]})
    generate = write(tmp_path, "bench_generate.json", {"rows": [
        dict(model="mamba", batch=1, new_tokens=100, ms_per_step=0.4, tokens_per_second=2500.0),
        dict(model="mamba_ssm", batch=1, new_tokens=100, ms_per_step=0.7, tokens_per_second=1400.0)],
        "largest_batch": {"rows": [
            dict(model="mamba", batch=20000, cuda_graph=True, tokens_per_second=300_000.0),
            dict(model="transformer", batch=1000, cuda_graph=False, tokens_per_second=15_000.0),
            dict(model="transformer", batch=1000, cuda_graph=True, tokens_per_second=30_000.0)]}})
    cpu = write(tmp_path, "bench_cpu.json", {"ratios": {}, "rows": [
        dict(model="ours", batch=1, seqlen=4096, median_s=11.0),
        dict(model="transformers", batch=1, seqlen=4096, median_s=4000.0)]})
    rows = summarize([train, generate, cpu])
    by = {(r["measure"], r["peer"]): r for r in rows}
    tokens = by[("train [triton, fused inner, save_every 16] [CUDA graph] tokens/s", "mamba_ssm")]
    assert tokens["ratio"] == pytest.approx(1.25) and tokens["better"] == "higher"
    assert by[("decode ms/step", "mamba_ssm")]["ratio"] == pytest.approx(0.4 / 0.7)
    assert by[("largest-batch generation tokens/s", "Transformer (eager)")]["ratio"] == pytest.approx(20)
    assert by[("largest-batch generation tokens/s", "Transformer (CUDA graph)")]["ratio"] == pytest.approx(10)
    assert ratio_text(by[("CPU training step s", "transformers MambaForCausalLM")]["ratio"]) == "1/364x"


def test_summary_command_writes_report(tmp_path, capsys):
    code, out, err = run(["bench", "summary", str(scan_report(tmp_path)), "--out", str(tmp_path / "sum")], capsys)
    assert code == 0, err
    assert "| scan fwd ms | (8, 1536, 2048) | 0.380 | mamba_ssm | 0.450 | 0.84x | lower |" in out
    first = tmp_path / "sum" / "bench_summary.json"
    assert json.loads(first.read_text())["rows"]
    # a glob over report folders also meets the summary's own report: it adds nothing
    code, again, err = run(["bench", "summary", str(scan_report(tmp_path)), str(first), "--out",
                            str(tmp_path / "sum2")], capsys)
    assert code == 0, err
    assert again.count("| scan fwd ms |") == 1


@pytest.mark.parametrize("content, fragment", [("not json", "not a readable benchmark JSON"),
                                               ('{"rows": 3}', "no 'rows' list"),
                                               ('{"rows": [{"x": 1}]}', "unknown kind"),
                                               ('{"rows": [{"backend": "triton", "dim": 4}]}', "rows lack")])
def test_bad_report_is_one_line(tmp_path, capsys, content, fragment):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = run(["bench", "summary", str(bad), "--out", str(tmp_path / "sum")], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "sum").exists()
