"""DDP on N devices follows the loss curve of one device at the same global batch (CPU, gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mamba_bio_audio.training.data import IndexedStream


def _take(stream, n):
    it = iter(stream)
    return [next(it)["i"] for _ in range(n)]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_each_global_batch_in_order(world):
    """At local step k, rank r holds the r-th slice of the single-device batch k (so the mean loss is the same)."""
    batch, steps, start = 8, 3, 2
    sample = lambda i: {"i": i}
    single = _take(IndexedStream(sample, batch, start_batch=start), batch * steps)
    local = batch // world
    shards = [_take(IndexedStream(sample, local, start_batch=start, rank=r, world_size=world), local * steps)
              for r in range(world)]
    for k in range(steps):
        merged = [i for r in range(world) for i in shards[r][k * local: (k + 1) * local]]
        assert merged == single[k * batch: (k + 1) * batch]


@pytest.mark.slow  # trains on 2 gloo processes and on one
def test_ddp_loss_curve_matches_one_device(tmp_path):
    out = tmp_path / "curve"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mamba_bio_audio", "bench", "ddp", "--accelerator", "cpu", "--devices", "2",
           "--steps", "6", "--d-model", "32", "--n-layer", "2", "--seqlen", "48", "--global-batch", "4",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "ddp_loss_curve.json").read_text())
    assert len(data["loss_single"]) == len(data["loss_ddp"]) == 6
    assert data["max_abs_diff"] < 1e-4  # fp32: only the order of the gradient sums differs
    assert data["loss_single"][-1] < data["loss_single"][0]  # it learns: the comparison is not of flat curves
    assert (out / "ddp_loss_curve.png").stat().st_size > 0
    assert (out / "ddp_loss_curve.md").read_text().startswith("# Same loss curve")
