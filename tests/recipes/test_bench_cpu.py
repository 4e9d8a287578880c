"""``mba bench cpu`` at tiny sizes: the report files and fields, the equal-logits check before timing (and its
refusal of different weights), one-line errors for a bad flag and for a missing transformers."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mamba_bio_audio.benchmarks import cpu
from mamba_bio_audio.errors import UserError

from helpers import assert_one_line_error
from helpers import run_cli as run

TINY = ["--d-model", "16", "--n-layer", "2", "--vocab-size", "12", "--threads", "1", "--repeats", "2"]


@pytest.fixture()
def transformers():
    try:
        return cpu.import_transformers()
    except UserError as e:
        pytest.skip(str(e))


def test_bench_cpu_writes_json_and_markdown(tmp_path, capsys, transformers):
    code, out, err = run(["bench", "cpu", "--lengths", "16,24", *TINY, "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    assert "cpu bench: transformers (1, 24) step 2/2" in err  # progress goes to stderr
    data = json.loads((tmp_path / "r" / "bench_cpu.json").read_text())
    assert (tmp_path / "r" / "bench_cpu.md").read_text().startswith("# CPU training step")
    assert data["environment"]["transformers"] == transformers.__version__
    assert {"device", "torch", "date", "mamba_bio_audio"} <= set(data["environment"])
    assert [(r["model"], r["seqlen"]) for r in data["rows"]] == [("ours", 16), ("transformers", 16), ("ours", 24),
                                                                  ("transformers", 24)]
    for row in data["rows"]:
        assert len(row["seconds"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"], row
        assert row["tokens_per_second"] > 0 and row["peak_rss_gib"] > 0 and row["loss"] > 0, row
    losses = {(r["model"], r["seqlen"]): r["loss"] for r in data["rows"]}
    assert losses[("ours", 24)] == pytest.approx(losses[("transformers", 24)], rel=1e-5)  # the same model
    assert [r["seqlen"] for r in data["ratios"]] == [16, 24] and all(r["ratio"] > 0 for r in data["ratios"])
    assert all(c["max_abs_diff"] <= 1e-5 for c in data["logits_check"])
    assert data["transformers"]["path"] == "sequential torch loop"
    assert data["transformers"]["use_mambapy"] is False
    assert data["size"] == {"d_model": 16, "n_layer": 2, "vocab_size": 12, "parameters": data["size"]["parameters"]}
    assert len(data["load_average_before"]) == 3 and len(data["load_average_after"]) == 3
    assert "Ours / transformers in tokens/s: (1, 16): **" in out


def test_logits_check_refuses_different_weights(transformers):
    ours, theirs = cpu.build_pair(16, 2, 12, seed=0)
    ids = torch.randint(0, 12, (1, 20), generator=torch.Generator().manual_seed(0))
    assert cpu.check_logits(ours, theirs, ids, atol=1e-5) <= 1e-5
    with torch.no_grad():
        theirs.backbone.layers[1].mixer.D.add_(0.5)  # one weight off: the check must see it
    with pytest.raises(UserError, match="logits differ from transformers'") as info:
        cpu.check_logits(ours, theirs, ids, atol=1e-3)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, fragment", [
    (["--lengths", "4096,x"], "--lengths"),
    (["--lengths", "1"], "at least 2 tokens"),
    (["--threads", "0"], "--threads"),
])
def test_bad_flags_give_one_line_errors(tmp_path, args, fragment, capsys):
    code, _, err = run(["bench", "cpu", *args, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


def test_missing_transformers_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    code, _, err = run(["bench", "cpu", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "needs transformers")
