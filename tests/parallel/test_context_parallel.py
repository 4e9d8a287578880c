"""Context parallelism (one sequence over 2 and 3 gloo processes) gives the loss and gradients of one pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.parallel import local_lm_ids, segment_bounds

from conftest import rel_err

# name -> (seqlen of inputs, batch, gradient checkpointing, gradients present before the call, dtype)
CASES = {
    "plain": (50, 2, False, False, torch.float64),
    "checkpointing": (50, 2, True, False, torch.float64),
    "shorter_than_conv": (5, 1, False, False, torch.float64),  # 3 ranks: segments of 2, 2, 1 < d_conv - 1
    "accumulate": (23, 2, False, True, torch.float64),
    "autocast_bf16": (40, 1, True, False, torch.float32),  # exercises the carry dtypes under autocast
}


def _model(dtype):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=3, vocab_size=7, d_state=4, d_conv=4)).to(dtype)
    return model


def _ids(seqlen, batch):
    return torch.randint(0, 7, (batch, seqlen + 1), generator=torch.Generator().manual_seed(seqlen))


def _earlier_grads(model):
    return {n: torch.full_like(p, 0.5) for n, p in model.named_parameters()}


def _worker(rank, world, init_file, out_dir):
    from mamba_bio_audio.parallel import context_parallel_lm_backward

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for name, (seqlen, batch, ckpt, earlier, dtype) in CASES.items():
        model = _model(dtype)
        model.gradient_checkpointing = ckpt
        if earlier:
            for n, p in model.named_parameters():
                p.grad = _earlier_grads(model)[n]
        local = local_lm_ids(_ids(seqlen, batch), rank, world)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "autocast_bf16"):
            loss = context_parallel_lm_backward(model, local)
        results[name] = {"loss": loss, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _reference(name):
    seqlen, batch, _, earlier, dtype = CASES[name]
    model = _model(dtype)
    ids = _ids(seqlen, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "autocast_bf16"):
        logits = model(ids[:, :-1]).float() if dtype != torch.float64 else model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 7), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    if earlier:
        grads = {n: g + _earlier_grads(model)[n] for n, g in grads.items()}
    return loss.item(), grads


@pytest.mark.slow  # starts 2 and 3 gloo processes
@pytest.mark.parametrize("world", [2, 3])
def test_context_parallel_equals_one_pass(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name in CASES:
        loss, grads = _reference(name)
        exact = name != "autocast_bf16"
        for r, res in enumerate(ranks):
            got = res[name]
            assert got["loss"] == pytest.approx(loss, rel=1e-12 if exact else 2e-2), (name, r)
            for n, g in grads.items():
                err = rel_err(got["grads"][n], g)
                assert err < (1e-9 if exact else 0.1), (name, r, n, err)
            for n in grads:  # every rank holds the same gradients, so optimizers stay in step
                assert torch.equal(got["grads"][n], ranks[0][name]["grads"][n]), (name, r, n)


def test_segments_and_target_ownership():
    assert segment_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError):
        segment_bounds(2, 3)
    ids = torch.arange(24).view(2, 12)  # 11 inputs, 11 targets
    parts = [local_lm_ids(ids, r, 3) for r in range(3)]
    # the last token of rank r's slice (its last target) is the first input of rank r + 1
    for a, b in zip(parts, parts[1:]):
        assert torch.equal(a[:, -1], b[:, 0])
    assert torch.equal(torch.cat([p[:, :-1] for p in parts], 1), ids[:, :-1])  # inputs: each position once
    assert torch.equal(torch.cat([p[:, 1:] for p in parts], 1), ids[:, 1:])  # targets: each target once


@pytest.mark.slow  # starts 2 gloo processes through torchrun
def test_bench_command_runs_on_cpu_with_two_processes(tmp_path):
    """``mba bench context-parallel`` starts two gloo ranks itself (torchrun) and rank 0 writes the report."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "mamba_bio_audio", "bench", "context-parallel", "--nproc-per-node", "2",
           "--device", "cpu", "--check", "--check-seqlen", "64", "--seqlen", "128", "--d-model", "16",
           "--n-layer", "2", "--steps", "2", "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "context_parallel.json").read_text())
    checks = {c["dtype"]: c for c in data["check"]}
    assert checks["float64"]["max_grad_rel_err"] < 1e-9
    assert checks["float64"]["loss_rel_err"] < 1e-12
    assert checks["float32"]["max_grad_rel_err"] < 1e-4
    bench = data["bench"]
    assert bench["world_size"] == 2 and bench["seconds_per_step"] > 0
    assert (out / "context_parallel.md").read_text().startswith("# Context parallelism")


def test_out_of_memory_in_the_collective_step_stops_the_process(monkeypatch, capsys):
    """A rank out of memory in the context-parallel step must not move on (its neighbour would wait for its
    message forever): one line and exit 2. Alone, it is the row's error."""
    from types import SimpleNamespace

    from mamba_bio_audio.benchmarks import context_parallel as cp

    monkeypatch.setattr(cp.dist, "barrier", lambda: None)
    monkeypatch.setattr(cp.dist, "get_rank", lambda: 1)

    def step():
        raise torch.OutOfMemoryError("CUDA out of memory")

    opts = SimpleNamespace(warmup=0, steps=1)
    assert cp.time_steps(step, opts, torch.device("cpu"), collective=False) == {"error": "out of memory"}
    with pytest.raises(SystemExit) as info:
        cp.time_steps(step, opts, torch.device("cpu"), collective=True)
    assert info.value.code == 2
    assert "rank 1: out of GPU memory" in capsys.readouterr().err
