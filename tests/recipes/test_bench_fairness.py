"""How ``mba bench`` measures ours against the peer alike: the commit and MBA_* variables in every report, the
report's kind, mamba_ssm's fast-path check (with a stand-in mamba_ssm module), the peak counted over the timed
steps, back-to-back steps, rounds in alternating order, several ``--fused-inner`` rows, the first call counted in
every model's generation setup, the memory bench's warm-up, the CPU bench's per-step RSS and the profile's event
counts; ``-m gpu``: mamba_ssm's setup and peak in a real generation."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from mamba_bio_audio.benchmarks import generate as generate_bench
from mamba_bio_audio.benchmarks import train as train_bench
from mamba_bio_audio.benchmarks.report import commit_id, environment, where

from helpers import assert_one_line_error
from helpers import run_cli as run

TINY = ["--d-model", "16", "--n-layer", "1", "--transformer-layers", "1", "--n-head", "2", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the environment of a report: commit and MBA_* variables ------------------------------------------------
def test_environment_records_mba_variables_and_the_commit(monkeypatch):
    monkeypatch.setenv("MBA_FUSED_NORM", "0")
    monkeypatch.setenv("MBA_BACKEND", "triton")
    monkeypatch.setenv("MBA_COMMIT", "0123456789abcdef-dirty")
    env = environment()
    assert env["mba_env"]["MBA_FUSED_NORM"] == "0" and env["mba_env"]["MBA_BACKEND"] == "triton"
    assert env["commit"] == "0123456789abcdef" and env["commit_dirty"] is True and env["commit_source"] == "MBA_COMMIT"
    assert where({**env, "device": "NVIDIA H100", "date": "2026-12-07 06:30 UTC"}) == \
        "H100, 2026-12-07 06:30, 012345678+dirty"


def test_commit_from_a_commit_file_or_git(tmp_path, monkeypatch):
    monkeypatch.delenv("MBA_COMMIT", raising=False)
    assert commit_id(tmp_path) == {"commit": None, "commit_dirty": None, "commit_source": None}
    (tmp_path / "COMMIT").write_text("feedbeef\n")  # a tree made with git archive: no .git
    assert commit_id(tmp_path) == {"commit": "feedbeef", "commit_dirty": False, "commit_source": "COMMIT"}
    if (REPO / ".git").exists():
        from_git = commit_id(REPO)
        assert from_git["commit_source"] == "git" and len(from_git["commit"]) == 40
        assert from_git["commit_dirty"] in (True, False)


def test_reports_name_their_kind_and_commit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MBA_COMMIT", "abc")
    monkeypatch.setenv("MBA_SCAN_SOFTPLUS", "pass")
    code, out, err = run(["bench", "train", "--shapes", "1,8", "--models", "mamba", *TINY, "--warmup", "0",
                          "--steps", "1", "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_train.json").read_text())
    assert data["kind"] == "train" and data["environment"]["commit"] == "abc"
    assert data["environment"]["mba_env"]["MBA_SCAN_SOFTPLUS"] == "pass"
    assert "commit abc" in out


# ---- mamba_ssm's fast path ----------------------------------------------------------------------------------
def _fake_mamba_ssm(monkeypatch, conv_fn, use_fast_path=(True, True)):
    """A stand-in mamba_ssm.modules.mamba_simple with its Mamba class and its optional kernels; returns a model
    holding one such layer per ``use_fast_path`` value."""
    simple = types.ModuleType("mamba_ssm.modules.mamba_simple")

    class Mamba(torch.nn.Module):
        def __init__(self, fast):
            super().__init__()
            self.use_fast_path = fast

    simple.Mamba = Mamba
    simple.causal_conv1d_fn = conv_fn
    simple.causal_conv1d_update = conv_fn
    simple.selective_state_update = len
    package, modules = types.ModuleType("mamba_ssm"), types.ModuleType("mamba_ssm.modules")
    package.modules, modules.mamba_simple = modules, simple
    for name, module in (("mamba_ssm", package), ("mamba_ssm.modules", modules),
                         ("mamba_ssm.modules.mamba_simple", simple)):
        monkeypatch.setitem(sys.modules, name, module)
    return torch.nn.Sequential(*(Mamba(fast) for fast in use_fast_path))


def test_peer_fast_path(monkeypatch):
    model = _fake_mamba_ssm(monkeypatch, conv_fn=len)
    assert train_bench.peer_fast_path(model) == {"peer_fast_path": True}
    model = _fake_mamba_ssm(monkeypatch, conv_fn=None, use_fast_path=(True, False))
    fast = train_bench.peer_fast_path(model)
    assert fast["peer_fast_path"] is False
    assert fast["peer_fast_path_note"] == ("causal_conv1d_fn, causal_conv1d_update did not import; use_fast_path "
                                           "off in 1 of 2 layers")
    # a generate row of mamba_ssm carries it, with a note
    row = generate_bench._fast_path("mamba_ssm", model)
    assert row["peer_fast_path"] is False and row["note"].startswith("mamba_ssm off its fast path")
    assert generate_bench._fast_path("mamba", model) == {}


def test_train_row_of_a_slow_mamba_ssm_says_so(monkeypatch):
    model = _fake_mamba_ssm(monkeypatch, conv_fn=None)
    real_build = train_bench.build_model

    def fake_build(name, size, device, dtype=torch.float32, backend="auto", fused_inner="off"):
        lm = real_build("mamba", size, device)
        lm.add_module("ssm_layers", model)  # stands in for MambaLMHeadModel's Mamba layers
        return lm

    monkeypatch.setattr(train_bench, "build_model", fake_build)
    monkeypatch.setattr(train_bench, "logits_of", lambda name, m, ids: m(ids))
    size = train_bench.BenchSize(d_model=16, n_layer=1)
    row = train_bench.measure_train("mamba_ssm", size, 1, 8, "cpu", warmup=0, steps=1, progress=lambda m: None)
    assert row["peer_fast_path"] is False and "off its fast path" in row["note"] and row["tokens_per_second"] > 0


# ---- bench train: back-to-back steps, rounds, several fused-inner values -----------------------------------
def test_train_rows_time_back_to_back_steps_too(tmp_path, capsys):
    code, out, err = run(["bench", "train", "--shapes", "1,8", "--models", "mamba,transformer", *TINY,
                          "--warmup", "1", "--steps", "2", "--out", tmp_path], capsys)
    assert code == 0, err
    for row in json.loads((tmp_path / "bench_train.json").read_text())["rows"]:
        assert row["back_to_back_tokens_per_second"] > 0 and row["back_to_back_seconds_per_step"] > 0, row
    assert "| tokens/s back to back |" in out and "back to back" in err


def test_rounds_alternate_the_model_order(monkeypatch):
    calls = []
    speeds = iter([100.0, 50.0, 90.0, 60.0, 110.0, 40.0])

    def fake_measure(name, size, batch, seqlen, device, **kw):
        calls.append((name, kw["fused_inner"]))
        return {"model": name, "batch": batch, "seqlen": seqlen, "fused_inner": kw["fused_inner"],
                "tokens_per_second": next(speeds), "ms_per_step": 1.0}

    monkeypatch.setattr(train_bench, "measure_train", fake_measure)
    rows = train_bench.run_train_bench(["mamba", "mamba_ssm"], [(1, 8)], train_bench.BenchSize(), "cpu",
                                       fused_inner=["off"], rounds=3, progress=lambda m: None)
    assert calls == [("mamba", "off"), ("mamba_ssm", "off"), ("mamba_ssm", "off"), ("mamba", "off"),
                     ("mamba", "off"), ("mamba_ssm", "off")]
    ours, peer = rows
    assert ours["rounds_tokens_per_second"] == [100.0, 60.0, 110.0] and ours["tokens_per_second"] == 100.0
    assert ours["spread"] == pytest.approx(0.5)
    assert peer["rounds_tokens_per_second"] == [50.0, 90.0, 40.0] and peer["tokens_per_second"] == 50.0


def test_several_fused_inner_values_give_a_row_of_ours_each(tmp_path, capsys):
    code, out, err = run(["bench", "train", "--shapes", "1,8", "--models", "mamba", *TINY, "--warmup", "0",
                          "--steps", "1", "--fused-inner", "off,all", "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_train.json").read_text())
    assert [r["fused_inner"] for r in data["rows"]] == ["off", "all"] and data["fused_inner"] == "off,all"
    code, _, err = run(["bench", "train", "--fused-inner", "off,fast", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "--fused-inner: unknown value 'fast'")


# ---- bench generate: the first call is setup for every model ------------------------------------------------
def test_generation_setup_counts_the_first_call(monkeypatch):
    """mamba_ssm captures its graphs inside its first generate call: that call's excess over a warm call is setup,
    for every model alike."""
    calls = []

    def fake_make(name, model, prompt, new_tokens, cuda_graph=None, attention_bucket=0):
        def fn(n=new_tokens):
            if not calls:
                time.sleep(0.2)  # the first call captures / compiles
            calls.append(n)
            return torch.zeros(prompt.shape[0], prompt.shape[1] + n, dtype=torch.long)
        return fn

    monkeypatch.setattr(generate_bench, "make_generate_fn", fake_make)
    model = types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=8))
    row = generate_bench.time_generation("mamba_ssm", model, 2, 3, 5, "cpu", repeats=2)
    assert row["setup_seconds"] >= 0.15 and row["first_call_seconds"] >= 0.2 and row["warmup_tokens"] == 5
    assert calls == [5, 5, 5]
    assert generate_bench.setup_seconds(1.0, 0.5, 0.75) == 1.0  # a first call faster than the median adds nothing


# ---- bench memory: a warm-up step before the timed ones -----------------------------------------------------
def test_memory_bench_warms_up_before_timing(monkeypatch):
    from mamba_bio_audio.benchmarks import memory

    steps = []
    real = memory._step
    monkeypatch.setattr(memory, "_step", lambda *a: (steps.append(1), real(*a)))
    row = memory.measure_step(8, 1, 16, 0, "cpu", steps=2, warmup=1)
    assert len(steps) == 3 and row["warmup"] == 1 and row["seconds_per_step"] > 0


# ---- bench cpu: the peak resident memory of each step alone -------------------------------------------------
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_step_peak_rss_is_not_an_earlier_steps_peak():
    import numpy as np

    from mamba_bio_audio.benchmarks.cpu import step_peak_rss

    def big():
        a = np.ones(2**27)  # 1 GiB resident, then freed
        return float(a[-1])

    _, first, method = step_peak_rss(big)
    _, second, _ = step_peak_rss(lambda: float(np.ones(2**10)[0]))
    assert method == "VmHWM" and first - second > 0.5, (first, second)


# ---- dev/profile_step.py: kernels, copies, launches ---------------------------------------------------------
def _profile_module():
    spec = importlib.util.spec_from_file_location("profile_step", REPO / "dev" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_counts_kernels_apart_from_copies_and_launches():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    event = lambda name, device, us=0.0: types.SimpleNamespace(name=name, device_type=device, device_time=us)  # noqa: E731
    events = [event("ampere_sgemm", cuda, 10.0), event("_scan_fwd_kernel", cuda, 30.0),
              event("Memcpy HtoD (Pageable -> Device)", cuda, 5.0), event("Memset (Device)", cuda, 1.0),
              event("cudaLaunchKernel", cpu), event("cudaGraphLaunch", cpu), event("aten::mm", cpu)]
    counts = _profile_module().count_events(events * 2, steps=2)
    assert counts == {"kernels": 2.0, "memcpy": 1.0, "memset": 1.0, "kernel_launches": 1.0, "graph_launches": 1.0,
                      "kernel_us": 40.0}


# ---- on a GPU ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="needs CUDA and TRITON_INTERPRET=0")
def test_gpu_generate_setup_and_peak_of_mamba_ssm(tmp_path, capsys):
    pytest.importorskip("mamba_ssm")
    code, out, err = run(["bench", "generate", "--batch-sizes", "1", "--new-tokens", "32", "--repeats", "2",
                          "--models", "mamba,mamba_ssm", "--d-model", "64", "--n-layer", "2", "--device", "cuda",
                          "--out", tmp_path], capsys)
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads((tmp_path / "bench_generate.json").read_text())["rows"]}
    for row in rows.values():
        assert "error" not in row and row["setup_seconds"] > 0 and row["first_call_seconds"] > 0, row
        assert row["peak_gib"] > 0 and row["setup_peak_gib"] > 0, row
    # mamba_ssm captures its decode graphs in its first call: setup is no longer 0
    assert rows["mamba_ssm"]["setup_seconds"] > 0.01 and rows["mamba_ssm"]["peer_fast_path"] is True
