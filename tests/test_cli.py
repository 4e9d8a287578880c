"""The mba command line: version, help, one-line errors with exit code 2, --config, the demo, the scan bench."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mamba_bio_audio import __version__

from helpers import run_cli as run


def test_version_and_help(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and __version__ in out
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for group in ("demo", "bench", "dna", "species", "sc09", "synthetic"):
        assert group in out


@pytest.mark.parametrize("args, fragment", [
    (["demo", "--bogus"], "No such option"),
    (["demo", "--max-steps", "zero"], "max-steps"),
    (["nonsense"], "No such command"),
    (["demo", "--config", "/no/such.yaml"], "no such file"),
    (["bench", "scan", "--shapes", "1,2"], "--shapes"),
    (["demo", "--device", "cuda:7", "--max-steps", "1"], "cuda"),
])
def test_user_mistakes_are_one_line_and_exit_2(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--device" in args:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    code, _, err = run(args, capsys)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


DEMO_SMALL = ["--genome-length", "3000", "--species", "3", "--per-species", "2", "--batch-size", "2"]


def test_config_yaml_values_and_flag_override(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: 1\nlength: 32\neval-lengths: '32'\nbatch-size: 3\npooling: mean\n")
    code, out, err = run(["demo", "--config", str(cfg), "--out", str(tmp_path / "d"), *DEMO_SMALL[:6],
                          "--length", "48"], capsys)
    assert code == 0, err
    written = (tmp_path / "d" / "config.yaml").read_text()
    assert "max_steps: 1" in written and "length: 48" in written and "batch_size: 3" in written
    assert "pooling: mean" in written
    (tmp_path / "bad.yaml").write_text("colour: red\n")
    code, _, err = run(["demo", "--config", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "unknown options colour" in err


def test_demo_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(["demo", "--out", str(out), "--max-steps", "2", "--length", "32",
                             "--eval-lengths", "32,64", *DEMO_SMALL], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["length"] for row in metrics["per_length"]] == [32, 64]
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["baseline_accuracy"] <= 1 and metrics["synthetic"]
    assert metrics["train"]["max_steps"] == 2 and len(metrics["confusion_matrix"]) == 3
    assert metrics["train"]["preset"] == "demo" and metrics["train"]["kept"] in ("probe", "fine-tuned")
    assert json.loads((out / "run/model/config.json").read_text())["d_state"] == 1
    for name in ("accuracy_vs_length.png", "config.yaml", "run/model/model.safetensors", "run/model/config.json",
                 "store/index.json", "genomes/synth_00.fa"):
        assert (out / name).is_file(), name
    assert "6-mer LR" in stdout


def test_bench_scan_runs_on_cpu(tmp_path, capsys):
    code, stdout, err = run(["bench", "scan", "--shapes", "1,4,32", "--backends", "reference", "--device", "cpu",
                             "--out", str(tmp_path)], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "bench_scan.json").read_text())
    row = data["rows"][0]
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and "error" not in row
    assert data["environment"]["torch"] and (tmp_path / "bench_scan.md").is_file()


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "mamba_bio_audio", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout
