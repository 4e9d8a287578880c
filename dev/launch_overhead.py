"""Host time per call of the kernels' Python wrappers on a GPU, and how much of it is Triton's launcher.

    python dev/launch_overhead.py --out DIR [--calls 300]

Why (#18): eagerly at (8, 2048) our training step took 116.8 ms against 79.5 ms as one CUDA graph (2026-12-07),
and torch.profiler's host table gave our autograd Functions ~0.1-0.8 ms of self CPU time per call (the scan's
backward most) against a few microseconds of Python for the same wrappers on the CPU with the launches left out
(`dev/count_ops.py`'s recording). So the question is what a launch costs on the host: our wrappers (plans,
layouts, allocations, torch operators) or Triton's ``JITFunction.run`` (binding ~40 arguments, specialising
them, the cache lookup, the C launcher).

Each case runs at a tiny shape (batch 1, 64 channels, 64 steps: the GPU work is a few microseconds) ``--calls``
times back to back, and the host time per call is the loop's wall time before the one synchronisation at its end
(a host-bound loop: the GPU waits). Then the same with ``JITFunction.run`` replaced by a no-op ("launcher off"):
what is left is our Python and torch's operators; the difference is Triton's launch path. mamba_ssm's
``selective_scan_fn`` / ``causal_conv1d_fn`` run beside as the peer when installed. Writes launch_overhead.json
and launch_overhead.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def _inputs(dim: int = 64, seqlen: int = 64, d_state: int = 16, grad: bool = False) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * scale).to(dtype).requires_grad_(grad)

    return {"u": rand(1, dim, seqlen), "delta": rand(1, dim, seqlen, scale=0.5), "z": rand(1, dim, seqlen),
            "A": (-torch.rand(dim, d_state, device="cuda", generator=g) - 0.5).requires_grad_(grad),
            "B": rand(1, d_state, seqlen), "C": rand(1, d_state, seqlen),
            "D": torch.ones(dim, device="cuda").requires_grad_(grad),
            "bias": torch.zeros(dim, device="cuda").requires_grad_(grad),
            "x": rand(1, dim, seqlen), "w": rand(dim, 4, dtype=torch.float32), "cb": rand(dim, dtype=torch.float32),
            "h": rand(1, seqlen, dim), "res": rand(1, seqlen, dim, dtype=torch.float32),
            "nw": torch.ones(dim, device="cuda").requires_grad_(grad)}


def cases(peer: bool) -> dict:
    """name -> (make inputs, call(inputs)); "+bwd" cases run a backward of the output's sum too."""
    from mamba_bio_audio import ops

    def scan(t, backend="triton"):
        return ops.selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], z=t["z"],
                                     delta_bias=t["bias"], delta_softplus=True, backend=backend)

    def conv(t, backend="triton"):
        return ops.causal_conv1d_fn(t["x"], t["w"], t["cb"], activation="silu", backend=backend)

    def norm(t):
        return ops.add_rms_norm(t["h"], t["res"], t["nw"], 1e-5, backend="triton")[0]

    out = {"scan forward": (scan, False), "scan forward + backward": (scan, True),
           "conv forward": (conv, False), "conv forward + backward": (conv, True),
           "add + RMSNorm forward": (norm, False), "add + RMSNorm forward + backward": (norm, True)}
    if peer:
        out.update({"mamba_ssm scan forward + backward": (lambda t: scan(t, "cuda"), True),
                    "causal-conv1d forward + backward": (lambda t: conv(t, "cuda"), True)})
    return out


def host_us_per_call(call, grad: bool, calls: int) -> float:
    t = _inputs(grad=grad)

    def once():
        y = call(t)
        if grad:
            y.float().sum().backward()

    for _ in range(5):
        once()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        once()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * host / calls


def torch_op_us(calls: int) -> float:
    """A plain torch operator's host time per call (the floor of one launch from Python)."""
    x = torch.zeros(64, device="cuda")
    for _ in range(5):
        x.add_(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        x.add_(1)
    us = 1e6 * (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return us


def main() -> None:
    import triton

    from mamba_bio_audio.benchmarks.report import environment

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    try:
        import mamba_ssm  # noqa: F401

        peer = True
    except ImportError:
        peer = False
    rows = []
    real_run = triton.runtime.jit.JITFunction.run
    for name, (call, grad) in cases(peer).items():
        row = {"case": name, "host_us": host_us_per_call(call, grad, args.calls)}
        if not name.startswith(("mamba_ssm", "causal-conv1d")):
            triton.runtime.jit.JITFunction.run = lambda self, *a, **k: None
            try:
                row["host_us_launcher_off"] = host_us_per_call(call, grad, args.calls)
            finally:
                triton.runtime.jit.JITFunction.run = real_run
            row["launcher_us"] = row["host_us"] - row["host_us_launcher_off"]
        rows.append(row)
        print(row, flush=True)
    rows.append({"case": "torch add_ (one operator)", "host_us": torch_op_us(args.calls)})
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "launch_overhead.json").write_text(json.dumps({"env": env, "calls": args.calls, "rows": rows}, indent=1))
    lines = [f"# Host time per call (tiny shapes, {args.calls} calls back to back)\n",
             f"{env.get('device')}, torch {env.get('torch')}, triton {env.get('triton')}, {env.get('date')}. "
             "`dev/launch_overhead.py`: launcher off = Triton's `JITFunction.run` made a no-op.\n",
             "| case | host us / call | launcher off | Triton launch path |", "|---|---|---|---|"]
    for r in rows:
        off = r.get("host_us_launcher_off")
        cells = ["", ""] if off is None else [f"{off:.1f}", f"{r['launcher_us']:.1f}"]
        lines.append(f"| {r['case']} | {r['host_us']:.1f} | {cells[0]} | {cells[1]} |")
    (out / "launch_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "0")
    main()
