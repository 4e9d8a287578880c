"""``mba bench train --cuda-graphs``: the flag's one-line errors, which models it captures, the rows and markdown
that say which steps were graphed; ``-m gpu``: a tiny run whose Mamba rows replay a captured step."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mamba_bio_audio.benchmarks.options import cuda_graph_models
from mamba_bio_audio.benchmarks.train import BenchSize, train_markdown
from mamba_bio_audio.errors import UserError

from helpers import assert_one_line_error
from helpers import run_cli as run

TINY = ["--d-model", "16", "--n-layer", "1", "--transformer-layers", "1", "--n-head", "2"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_cuda_graphs_on_cpu_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run(["bench", "train", "--cuda-graphs", "--device", "cpu", "--shapes", "1,8", *TINY,
                        "--out", tmp_path / "report"], capsys)
    assert_one_line_error(code, err, "CUDA graphs need a CUDA device; got cpu")
    assert not (tmp_path / "report").exists()  # refused before any measurement or output


def test_cuda_graph_models():
    assert cuda_graph_models(False, ["mamba", "transformer"], "cpu") == ()
    # mamba_ssm is captured too: a graphed row of ours has a graphed peer
    assert cuda_graph_models(True, ["transformer", "mamba", "mamba_ssm"], "cuda") == ("mamba", "mamba_ssm")
    assert cuda_graph_models(True, ["mamba"], "cuda:1") == ("mamba",)
    assert cuda_graph_models(True, ["transformer", "mamba_ssm"], "cuda") == ("mamba_ssm",)
    with pytest.raises(UserError, match="--models has none"):
        cuda_graph_models(True, ["transformer"], "cuda")
    with pytest.raises(UserError, match="need a CUDA device; got cpu"):
        cuda_graph_models(True, ["mamba"], "cpu")


def test_eager_rows_say_cuda_graph_false(tmp_path, capsys):
    code, out, err = run(["bench", "train", "--shapes", "1,8", "--models", "mamba", *TINY, "--device", "cpu",
                          "--warmup", "0", "--steps", "1", "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_train.json").read_text())
    assert data["cuda_graph_models"] == []
    (row,) = data["rows"]
    assert row["cuda_graph"] is False and "setup_seconds" not in row and row["tokens_per_second"] > 0, row
    assert "CUDA graph" not in out  # the markdown has no graph column when nothing was graphed


def test_markdown_marks_graphed_rows():
    env = {"device": "H100", "torch": "2", "triton": "3", "mamba_ssm": "2.3", "date": "today"}
    rows = [
        {"model": "mamba", "batch": 8, "seqlen": 2048, "autocast": "bf16", "backend": "triton", "cuda_graph": True,
         "parameters": 10, "tokens_per_second": 2e5, "ms_per_step": 80.0, "peak_gib": 13.0, "setup_seconds": 4.25},
        {"model": "transformer", "batch": 8, "seqlen": 2048, "autocast": "bf16", "cuda_graph": False,
         "parameters": 9, "tokens_per_second": 1e5, "ms_per_step": 160.0, "peak_gib": 20.0},
    ]
    rows[0].update(back_to_back_tokens_per_second=2.5e5, setup_peak_gib=14.0)
    text = train_markdown(rows, env, BenchSize(), warmup=3, steps=10)
    assert "| CUDA graph | capture s |" in text and "replay the whole step captured once" in text
    assert "| Mamba (ours) [triton] | (8, 2048) | 10 | 200,000 | 250,000 | 80.000 | 13.000 | 14.000 | yes | 4.250 |" \
        in text
    assert "| Transformer (SDPA) | (8, 2048) | 9 | 100,000 | — | 160.000 | 20.000 | — | no | — |" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="needs CUDA and TRITON_INTERPRET=0")
def test_gpu_bench_train_cuda_graphs(tmp_path, capsys):
    code, out, err = run(["bench", "train", "--cuda-graphs", "--shapes", "2,256;1,512", "--models",
                          "mamba,transformer", *TINY, "--warmup", "1", "--steps", "3", "--device", "cuda",
                          "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_train.json").read_text())
    assert data["cuda_graph_models"] == ["mamba"]
    for row in data["rows"]:
        assert "error" not in row and row["tokens_per_second"] > 0, row
        graphed = row["model"] == "mamba"
        assert row["cuda_graph"] is graphed, row
        assert (row["setup_seconds"] > 0) if graphed else "setup_seconds" not in row, row
        # the timed steps' peak (reset after the warm-up and capture) and the setup's are both recorded
        assert row["peak_gib"] > 0 and row["setup_peak_gib"] > 0, row
        # a graphed row's peak counts the graph's pool (reserved), an eager row's what it allocated
        assert row.get("peak_measure") == ("reserved" if graphed else None), row
        assert row["back_to_back_tokens_per_second"] > 0, row
    assert "| CUDA graph | capture s |" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                    reason="needs CUDA and TRITON_INTERPRET=0")
def test_gpu_bench_train_cuda_graphs_capture_mamba_ssm_too(tmp_path, capsys):
    pytest.importorskip("mamba_ssm")
    code, out, err = run(["bench", "train", "--cuda-graphs", "--shapes", "2,256", "--models", "mamba,mamba_ssm",
                          *TINY, "--warmup", "1", "--steps", "3", "--device", "cuda", "--out", tmp_path], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_train.json").read_text())
    assert data["cuda_graph_models"] == ["mamba", "mamba_ssm"]
    for row in data["rows"]:
        assert "error" not in row and row["cuda_graph"] is True and row["setup_seconds"] > 0, row
    (peer,) = [r for r in data["rows"] if r["model"] == "mamba_ssm"]
    assert peer["peer_fast_path"] is True, peer
