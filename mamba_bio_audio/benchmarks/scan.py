"""Selective-scan benchmark: forward and forward+backward time per backend, peak memory, and the HBM floor.

Inputs follow the issue's protocol: u, delta, z, B, C in the chosen dtype (bf16 by default), A, D, delta_bias in
fp32, d_state 16, input-dependent B/C (batch, d_state, seqlen), delta_softplus, z present.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mamba_bio_audio import ops

DEFAULT_SHAPES = [(8, 1536, 2048), (1, 1536, 65536), (1, 512, 1048576)]
# bench rows of the Triton scan with tunables other than the defaults: name -> selective_scan_triton keywords
TRITON_VARIANTS = {
    "triton-kernel-softplus": dict(softplus_in_kernel=True),
    "triton-lean": dict(softplus_in_kernel=True, save_every=4),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ScanInputs:
    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    z: torch.Tensor
    delta_bias: torch.Tensor

    def leaves(self) -> list[torch.Tensor]:
        return [self.u, self.delta, self.A, self.B, self.C, self.D, self.z, self.delta_bias]


def make_inputs(batch: int, dim: int, seqlen: int, d_state: int, dtype: torch.dtype, device: str,
                requires_grad: bool, seed: int = 0) -> ScanInputs:
    g = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dt)

    inputs = ScanInputs(
        u=rand(batch, dim, seqlen), delta=rand(batch, dim, seqlen, scale=0.5),
        A=-torch.rand(dim, d_state, generator=g, device=device) * 4 - 0.5, B=rand(batch, d_state, seqlen),
        C=rand(batch, d_state, seqlen), D=rand(dim, dt=torch.float32), z=rand(batch, dim, seqlen),
        delta_bias=rand(dim, dt=torch.float32, scale=0.5) - 4.0,
    )
    for t in inputs.leaves():
        t.requires_grad_(requires_grad)
    return inputs


def floor_bytes(batch: int, dim: int, seqlen: int, d_state: int, dtype: torch.dtype) -> int:
    """Forward bytes that must move: u, delta, z read and out written (dtype), B and C read once."""
    item = torch.finfo(dtype).bits // 8
    return 4 * batch * dim * seqlen * item + 2 * batch * d_state * seqlen * item


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of fn(): CUDA events through triton.testing.do_bench on GPU, perf_counter on CPU."""
    if device.startswith("cuda"):
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=50, rep=300, return_mode="median"))

    def cpu_time(fn):
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]

    return cpu_time


def copy_bandwidth(device: str) -> float | None:
    """Device-to-device copy in bytes/s (read + write counted), or None on CPU."""
    if not device.startswith("cuda"):
        return None
    x = torch.empty(1 << 28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = _timer(device)(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def bench_one(backend: str, shape: tuple[int, int, int], d_state: int, dtype: torch.dtype, device: str) -> dict:
    """Times and peak memory of one backend (or a :data:`TRITON_VARIANTS` name) at one shape; a row dict (ms,
    GiB), or an 'error' entry."""
    batch, dim, seqlen = shape
    timer = _timer(device)
    row: dict = {"backend": backend, "batch": batch, "dim": dim, "seqlen": seqlen}
    try:
        x = make_inputs(batch, dim, seqlen, d_state, dtype, device, requires_grad=True)

        if backend in TRITON_VARIANTS:
            from mamba_bio_audio.kernels.selective_scan.function import selective_scan_triton

            scan = functools.partial(selective_scan_triton, **TRITON_VARIANTS[backend])
        else:
            scan = functools.partial(ops.selective_scan_fn, backend=backend)

        def forward():
            return scan(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.delta_bias, delta_softplus=True)

        with torch.no_grad():
            row["fwd_ms"] = timer(forward)
        grad = torch.randn_like(x.u)

        def forward_backward():
            out = forward()
            torch.autograd.grad(out, x.leaves(), grad)

        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            forward_backward()
            torch.cuda.synchronize()
            row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        row["fwd_bwd_ms"] = timer(forward_backward)
    except Exception as e:  # noqa: BLE001 - one failing backend must not hide the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return row


def run_scan_bench(shapes, backends, d_state: int = 16, dtype_name: str = "bf16", device: str = "cuda",
                   reference_max_elements: int = 1 << 26, progress=print) -> dict:
    """Every backend at every shape. The reference backend is skipped above ``reference_max_elements``. On CUDA
    the first non-reference backend runs once at the first shape untimed before any row (a fresh GPU's first
    timings read high: a first row of 0.518 ms on an H100, 2026-12-07 16:47 UTC, for a forward measured at
    0.379-0.380 ms in every earlier call)."""
    dtype = DTYPES[dtype_name]
    bandwidth = copy_bandwidth(device)
    rows = []
    fast = [b for b in backends if b != "reference"]
    if str(device).startswith("cuda") and shapes and fast:
        progress(f"scan bench: warm-up ({fast[0]} at {shapes[0]}, untimed)")
        bench_one(fast[0], shapes[0], d_state, dtype, device)
    for shape in shapes:
        floor_ms = None
        if bandwidth:
            floor_ms = floor_bytes(*shape, d_state, dtype) / bandwidth * 1e3
        for backend in backends:
            if backend == "reference" and shape[0] * shape[1] * shape[2] > reference_max_elements:
                rows.append({"backend": backend, "batch": shape[0], "dim": shape[1], "seqlen": shape[2],
                             "error": "skipped: too slow at this size"})
                continue
            progress(f"scan bench: {backend} at {shape}")
            row = bench_one(backend, shape, d_state, dtype, device)
            row["floor_ms"] = floor_ms
            rows.append(row)
            progress("  " + (row["error"] if "error" in row else
                             f"fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms"))
    return {"d_state": d_state, "dtype": dtype_name, "copy_bandwidth_GBps": bandwidth and bandwidth / 1e9,
            "rows": rows}


def scan_markdown(result: dict, env: dict) -> str:
    """The report of :func:`run_scan_bench`'s ``result``: the setting (``env``: ``report.environment()``) and one
    table row per backend and shape."""
    from mamba_bio_audio.benchmarks.report import commit_text, markdown_table

    headers = ["backend", "(batch, dim, seqlen)", "fwd ms", "fwd+bwd ms", "peak extra GiB", "HBM floor fwd ms", "note"]
    rows = [[r["backend"], f"({r['batch']}, {r['dim']}, {r['seqlen']})", r.get("fwd_ms"), r.get("fwd_bwd_ms"),
             r.get("peak_extra_gib"), r.get("floor_ms"), r.get("error", "")] for r in result["rows"]]
    return (f"# Selective scan benchmark\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
            f"mamba_ssm {env['mamba_ssm']}, {env['date']}{commit_text(env)}; {result['dtype']} inputs, d_state {result['d_state']}, "
            f"softplus, z present; median of triton.testing.do_bench.\n\n" + markdown_table(headers, rows))
