"""``mba bench summary``: ours beside the peer with the ratio, from the JSON reports the bench commands write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mamba_bio_audio.benchmarks.summary import load_report, ratio_text, summarize, summarize_reports
from mamba_bio_audio.errors import UserError

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
    rows = {(r["measure"], r["shape"]): r for r in summarize([scan_report(tmp_path)])}
    assert len(rows) == 7  # 2 Triton rows x 3 measures, and the failed row once with its error
    failed = rows[("scan fwd ms", "(1, 512, 64)")]
    assert failed["ours"] == "error: OutOfMemoryError: ..." and failed["ratio"] is None
    assert failed["note"] == "no mamba_ssm row in this report"
    rows = {m: r for (m, shape), r in rows.items() if shape == "(8, 1536, 2048)"}
    fwd = rows["scan fwd ms"]
    assert fwd["peer"] == "mamba_ssm" and fwd["ratio"] == pytest.approx(0.38 / 0.45) and fwd["better"] == "lower"
    assert rows["scan [triton-lean] peak extra GiB"]["ratio"] == pytest.approx(0.23 / 0.24)
    assert fwd["where"] == "H100 80GB HBM3, 2026-12-07 06:30" and fwd["note"] == ""


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
        dict(model="ours", batch=1, seqlen=4096, median_s=11.0, tokens_per_second=4096 / 11),
        dict(model="transformers", batch=1, seqlen=4096, median_s=4000.0, tokens_per_second=4096 / 4000)]})
    rows = summarize([train, generate, cpu])
    by = {(r["measure"], r["peer"]): r for r in rows}
    tokens = by[("train [triton, fused inner triton, save_every 16] [CUDA graph] tokens/s", "mamba_ssm [eager]")]
    assert tokens["ratio"] == pytest.approx(1.25) and tokens["better"] == "higher"
    assert tokens["note"] == "modes differ: ours CUDA graph, mamba_ssm eager"
    assert by[("decode ms/step", "mamba_ssm")]["ratio"] == pytest.approx(0.4 / 0.7)
    assert by[("largest-batch generation tokens/s", "Transformer (eager)")]["ratio"] == pytest.approx(20)
    assert by[("largest-batch generation tokens/s", "Transformer (CUDA graph)")]["ratio"] == pytest.approx(10)
    cpu_row = by[("CPU training step tokens/s", "transformers MambaForCausalLM")]
    assert cpu_row["ratio"] == pytest.approx(4000 / 11) and cpu_row["better"] == "higher"  # tokens/s, as the
    assert ratio_text(1 / cpu_row["ratio"]) == "1/364x"  # CPU report and the issue state it


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
    assert again.count("| scan fwd ms | (8, 1536, 2048) |") == 1


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


def test_failed_rows_of_ours_are_kept_and_the_peers_reason_is_noted(tmp_path):
    train = write(tmp_path, "bench_train.json", {"rows": [
        dict(model="mamba", batch=1, seqlen=65536, backend="triton", error="out of memory"),
        dict(model="mamba", batch=8, seqlen=2048, backend="triton", tokens_per_second=2e5, peak_gib=13.0),
        dict(model="mamba_ssm", batch=1, seqlen=65536, error="out of memory"),
        dict(model="mamba_ssm", batch=8, seqlen=2048, note="not installed (ModuleNotFoundError)")]})
    generate = write(tmp_path, "bench_generate.json", {"rows": [
        dict(model="mamba", batch=64, new_tokens=100, error="RuntimeError: boom"),
        dict(model="mamba_ssm", batch=64, new_tokens=100, ms_per_step=0.9, tokens_per_second=7e4,
             peer_fast_path=False, peer_fast_path_note="causal_conv1d_fn did not import")]})
    by = {(r["measure"], r["shape"]): r for r in summarize([train, generate])}
    failed = by[("train [triton] tokens/s", "(1, 65536)")]
    assert failed["ours"] == "error: out of memory" and failed["peer_value"] is None and failed["ratio"] is None
    assert failed["note"] == "mamba_ssm: out of memory"
    missing = by[("train [triton] tokens/s", "(8, 2048)")]
    assert missing["ours"] == 2e5 and missing["note"] == "mamba_ssm: not installed (ModuleNotFoundError)"
    assert by[("train [triton] peak GiB", "(8, 2048)")]["peer_value"] is None
    decode = by[("decode ms/step", "batch 64")]
    assert decode["ours"] == "error: RuntimeError: boom" and decode["peer_value"] == 0.9
    assert decode["note"] == "mamba_ssm off its fast path (causal_conv1d_fn did not import)"


def test_largest_batch_rows_with_errors(tmp_path):
    """A largest-batch row that failed has no "batch" (the search's result at most): a row with its error."""
    generate = write(tmp_path, "bench_generate.json", {"rows": [], "largest_batch": {"rows": [
        dict(model="mamba", largest_batch=22528, capped=False, batch=22528, cuda_graph=True,
             tokens_per_second=298538.6),
        dict(model="transformer", cuda_graph=False, error="out of memory"),
        dict(model="transformer", cuda_graph=True, largest_batch=0, capped=False, error="batch 1 does not fit")]}})
    rows = {r["peer"]: r for r in summarize([generate])}
    eager, graphed = rows["Transformer (eager)"], rows["Transformer (CUDA graph)"]
    assert eager["shape"] == "batch 22528 vs —" and eager["ratio"] is None
    assert eager["note"] == "Transformer (eager): out of memory"
    assert graphed["shape"] == "batch 22528 vs 0" and graphed["note"].endswith("batch 1 does not fit")
    ours_failed = write(tmp_path, "bench_generate2.json", {"rows": [], "largest_batch": {"rows": [
        dict(model="mamba", cuda_graph=True, error="batch 1 does not fit", largest_batch=0),
        dict(model="transformer", batch=1000, cuda_graph=False, tokens_per_second=15_000.0)]}})
    (row,) = summarize([ours_failed])
    assert row["ours"] == "error: batch 1 does not fit" and row["peer_value"] == 15_000.0


def test_graphed_rows_pair_with_a_graphed_peer(tmp_path):
    train = write(tmp_path, "bench_train.json", {"kind": "train", "rows": [
        dict(model="mamba", batch=8, seqlen=2048, backend="triton", cuda_graph=False, tokens_per_second=1.0e5,
             back_to_back_tokens_per_second=1.2e5),
        dict(model="mamba", batch=8, seqlen=2048, backend="triton", cuda_graph=True, tokens_per_second=2.0e5),
        dict(model="mamba_ssm", batch=8, seqlen=2048, cuda_graph=True, tokens_per_second=1.6e5),
        dict(model="mamba_ssm", batch=8, seqlen=2048, cuda_graph=False, tokens_per_second=0.8e5,
             back_to_back_tokens_per_second=1.0e5)]})
    by = {r["measure"]: r for r in summarize([train])}
    eager, graphed = by["train [triton] tokens/s"], by["train [triton] [CUDA graph] tokens/s"]
    assert eager["peer"] == "mamba_ssm [eager]" and eager["ratio"] == pytest.approx(1.25) and not eager["note"]
    assert graphed["peer"] == "mamba_ssm [CUDA graph]" and graphed["ratio"] == pytest.approx(1.25)
    assert by["train [triton] tokens/s (back-to-back steps)"]["ratio"] == pytest.approx(1.2)


def test_graphed_peak_is_the_setup_peak_in_older_reports_and_the_reserved_peak_in_newer(tmp_path):
    """Before 2026-12-07 17:30 UTC a graphed row's peak_gib left out the graph's pool (1.48 GiB for a 13.6 GiB
    step): the summary reads such rows' setup peak, and a row marked peak_measure "reserved" as it is."""
    old = write(tmp_path, "old.json", {"kind": "train", "rows": [
        dict(model="mamba", backend="triton", batch=8, seqlen=2048, cuda_graph=True, tokens_per_second=2.0e5, peak_gib=1.478,
             setup_peak_gib=13.59),
        dict(model="mamba_ssm", batch=8, seqlen=2048, cuda_graph=True, tokens_per_second=1.9e5, peak_gib=1.541,
             setup_peak_gib=7.07)]})
    new = write(tmp_path, "new.json", {"kind": "train", "rows": [
        dict(model="mamba", backend="triton", batch=8, seqlen=2048, cuda_graph=True, tokens_per_second=2.0e5, peak_gib=13.7,
             setup_peak_gib=13.59, peak_measure="reserved"),
        dict(model="mamba_ssm", batch=8, seqlen=2048, cuda_graph=True, tokens_per_second=1.9e5, peak_gib=7.2,
             setup_peak_gib=7.07, peak_measure="reserved"),
        dict(model="mamba", backend="triton", batch=8, seqlen=2048, cuda_graph=False, tokens_per_second=1.4e5, peak_gib=13.59,
             setup_peak_gib=13.6)]})
    old_peak = next(r for r in summarize([old]) if r["measure"].endswith("peak GiB"))
    assert (old_peak["ours"], old_peak["peer_value"]) == (13.59, 7.07), old_peak
    assert old_peak["ratio"] == pytest.approx(13.59 / 7.07) and "setup peak" in old_peak["note"]
    peaks = {r["measure"]: r for r in summarize([new]) if r["measure"].endswith("peak GiB")}
    graphed, eager = peaks["train [triton] [CUDA graph] peak GiB"], peaks["train [triton] peak GiB"]
    assert (graphed["ours"], graphed["peer_value"]) == (13.7, 7.2) and "setup peak" not in graphed["note"]
    assert eager["ours"] == 13.59 and "setup peak" not in eager["note"]


def test_reports_of_the_same_name_are_told_apart_by_their_folder(tmp_path):
    paths = []
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        paths.append(write(tmp_path / v, "bench_train.json", {"kind": "train", "rows": [
            dict(model="mamba", backend="triton", batch=8, seqlen=2048, tokens_per_second=2.0e5),
            dict(model="mamba_ssm", batch=8, seqlen=2048, tokens_per_second=1.9e5)]}))
    assert {r["file"] for r in summarize(paths)} == {"v1/bench_train.json", "v2/bench_train.json"}
    assert {r["file"] for r in summarize(paths[:1])} == {"bench_train.json"}


def test_kind_field_decides_and_reports_without_a_peer_are_skipped(tmp_path, capsys):
    memory_rows = [dict(d_model=256, n_layer=8, seqlen=1024, batch=1, checkpoint_level=0, segment=None,
                        parameters=10, seconds_per_step=0.1, tokens_per_second=1e4, peak_gib=1.0)]
    old_memory = write(tmp_path, "bench_memory.json", {"rows": memory_rows})  # no kind: told by its rows
    assert load_report(old_memory)[0] == "memory"
    new_memory = write(tmp_path, "new_memory.json", {"kind": "memory", "rows": []})
    packed = write(tmp_path, "bench_packed.json", {"kind": "packed", "rows": [{"mode": "packed"}]})
    rows, skipped = summarize_reports([old_memory, new_memory, packed, scan_report(tmp_path)])
    assert [s["kind"] for s in skipped] == ["memory", "memory", "packed"] and len(rows) == 7
    with pytest.raises(UserError, match="of kind 'nonsense'"):
        load_report(write(tmp_path, "odd.json", {"kind": "nonsense", "rows": []}))
    assert load_report(write(tmp_path, "ddp.json", {"kind": "ddp"}))[0] == "ddp"  # multi-GPU reports: no rows
    # the kind wins over rows that look like another report's
    assert load_report(write(tmp_path, "t.json", {"kind": "train", "rows": memory_rows}))[0] == "train"
    code, out, err = run(["bench", "summary", str(old_memory), str(packed), str(scan_report(tmp_path)),
                          "--out", str(tmp_path / "sum")], capsys)
    assert code == 0, err
    assert f"skipped {old_memory}: a memory report" in err and "Skipped (no peer)" in out
    data = json.loads((tmp_path / "sum" / "bench_summary.json").read_text())
    assert data["kind"] == "summary" and len(data["skipped"]) == 2


RESULTS = Path(__file__).resolve().parents[2] / "results"
EXPECTED_KIND = {"bench_scan_variants": "scan-variants", "bench_scan": "scan", "bench_train": "train",
                 "bench_generate": "generate", "bench_cpu": "cpu", "bench_memory": "memory", "bench_packed": "packed"}


def _stored_reports() -> list[tuple[Path, str]]:
    """Every mba bench report stored under results/ with the kind it must be read as."""
    found = []
    for path in sorted(RESULTS.glob("bench_*.json")):
        found.append((path, next(k for prefix, k in EXPECTED_KIND.items() if path.stem.startswith(prefix))))
    found += [(p, "generate") for p in sorted(RESULTS.glob("decode_ab/*.json")) if p.stem != "decode_variants"]
    found += [(p, "memory") for p in sorted(RESULTS.glob("memory_ab/*.json"))]
    return found


@pytest.mark.skipif(not RESULTS.is_dir(), reason="no results/ folder")
def test_every_stored_report_is_read_as_its_kind_and_summarised():
    reports = _stored_reports()
    assert len(reports) >= 10
    for path, kind in reports:
        assert load_report(path)[0] == kind, path
    rows, skipped = summarize_reports([p for p, _ in reports])
    assert {s["kind"] for s in skipped} == {"memory", "packed", "scan-variants"}
    assert rows and all(r["measure"] and r["where"] for r in rows)
