"""``mba bench generate``'s Transformer under CUDA graphs: the decode modes each model is measured in, the graphed
Transformer's rows and ratio in the report; its timed path on the CPU (the same static step, eagerly); on the GPU,
eager and graphed Transformer rows side by side, at fixed batches and at the largest batch."""

from __future__ import annotations

import pytest
import torch

from mamba_bio_audio.benchmarks.generate import (
    decode_modes,
    fits,
    generate_figure,
    generate_markdown,
    make_generate_fn,
    run_generate_bench,
    run_largest_batch,
    time_generation,
)
from mamba_bio_audio.benchmarks.train import BenchSize, build_model

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = BenchSize(d_model=32, n_layer=1, vocab_size=16, transformer_layers=2, n_head=2)
ENV = {"device": "test", "torch": "x", "triton": "x", "mamba_ssm": "x", "date": "today"}


def test_decode_modes():
    assert decode_modes("transformer", "cuda", None) == [False, True]
    assert decode_modes("transformer", "cuda:1", False) == [False, True]  # --eager is about our model
    assert decode_modes("transformer", "cpu", None) == [False]
    assert decode_modes("mamba", "cuda", False) == [False] and decode_modes("mamba", "cpu", None) == [None]
    assert decode_modes("mamba_ssm", "cuda", False) == [None]


def test_static_cache_generation_is_the_eager_one_and_is_timed_on_cpu():
    model = build_model("transformer", TINY, "cpu", torch.float64).eval()
    prompt = torch.randint(0, 16, (3, 4), generator=torch.Generator().manual_seed(0))
    static = make_generate_fn("transformer", model, prompt, 9, cuda_graph=True, attention_bucket=4)
    eager = make_generate_fn("transformer", model, prompt, 9, cuda_graph=False)
    assert torch.equal(static(), eager()) and torch.equal(static(5), eager(5))
    row = time_generation("transformer", model, 2, 3, 6, "cpu", repeats=1, cuda_graph=True, attention_bucket=4)
    assert row["tokens_per_second"] > 0 and row["setup_seconds"] >= 0
    assert fits("transformer", model, 2, 3, 6, "cpu", cuda_graph=True, attention_bucket=4)


def test_attention_bucket_flag(tmp_path, capsys):
    args = ["bench", "generate", "--batch-sizes", "2", "--new-tokens", "3", "--prompt-len", "2", "--repeats", "1",
            "--models", "transformer", "--d-model", "8", "--n-layer", "1", "--transformer-layers", "1",
            "--n-head", "2", "--device", "cpu"]
    code, out, err = run([*args, "--attention-bucket", "0", "--out", tmp_path / "ok"], capsys)
    assert code == 0, err
    assert "| Transformer (SDPA) [eager] | 2 |" in out and "[CUDA graph]" not in out  # no graphed rows off CUDA
    code, _, err = run([*args, "--attention-bucket", "-1", "--out", tmp_path / "bad"], capsys)
    assert_one_line_error(code, err, "--attention-bucket")


def test_report_names_both_transformer_modes_and_both_ratios(tmp_path):
    def row(model, graphed, tps, **extra):
        return {"model": model, "batch": 8, "new_tokens": 4, "prompt_len": 2, "dtype": "bfloat16",
                "cuda_graph": graphed, "tokens_per_second": tps, "ms_per_step": 1.0, **extra}

    rows = [row("mamba", True, 90.0, backend="triton"), row("transformer", False, 10.0),
            row("transformer", True, 30.0, attention_bucket=256)]
    largest = {"rows": rows, "ratio": 9.0, "ratio_graphed": 3.0, "max_batch": 64}
    text = generate_markdown(rows, largest, ENV, TINY)
    assert "| Transformer (SDPA) [eager] | 8 |" in text and "| Transformer (SDPA) [CUDA graph] | 8 |" in text
    assert "rounded up to a multiple of 256" in text
    assert "**9.00x** (Transformer eager), **3.00x** (Transformer under CUDA graphs)" in text
    generate_figure(tmp_path / "f.png", rows, largest)
    assert (tmp_path / "f.png").is_file()
    whole = generate_markdown([row("transformer", True, 30.0, attention_bucket=0)], None, ENV, TINY)
    assert "the whole preallocated cache" in whole
    eager_only = generate_markdown(rows[:2], {**largest, "rows": rows[:2], "ratio_graphed": None}, ENV, TINY)
    assert "Transformer (SDPA) [CUDA graph]" not in eager_only and "Transformer [CUDA graph]:" not in eager_only
    assert "**9.00x** (the Mamba paper" in eager_only


@pytest.mark.gpu
def test_gpu_bench_has_eager_and_graphed_transformer_rows():
    rows = run_generate_bench(["mamba", "transformer"], [1, 3], TINY, "cuda", prompt_len=3, new_tokens=20,
                              repeats=1, attention_bucket=8, progress=lambda m: None)
    assert [(r["model"], r["cuda_graph"], r["batch"]) for r in rows] == [
        ("mamba", True, 1), ("mamba", True, 3), ("transformer", False, 1), ("transformer", False, 3),
        ("transformer", True, 1), ("transformer", True, 3)]
    for r in rows:
        assert r["tokens_per_second"] > 0 and r["peak_gib"] > 0 and "error" not in r, r
        assert ("attention_bucket" in r) == (r["model"] == "transformer" and r["cuda_graph"])
    largest = run_largest_batch(["mamba", "transformer"], TINY, "cuda", prompt_len=3, new_tokens=16, max_batch=4,
                                attention_bucket=8, progress=lambda m: None)
    assert [(r["model"], r["cuda_graph"]) for r in largest["rows"]] == [
        ("mamba", True), ("transformer", False), ("transformer", True)]
    for r in largest["rows"]:
        assert r["batch"] == 4 and r["capped"] and r["tokens_per_second"] > 0, r
    assert largest["ratio"] > 0 and largest["ratio_graphed"] > 0
