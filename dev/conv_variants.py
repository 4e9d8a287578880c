"""Time the Triton causal conv (forward, forward + backward) under several launch tunings on one GPU, beside
causal-conv1d's CUDA kernels when installed (a sweep for choosing ``triton_conv``'s defaults).

    python dev/conv_variants.py --out DIR [--shapes "8,1536,2048;1,1536,65536"] [--configs "32,64,2;..."]

Inputs as the mixer hands them to the conv: x (batch, dim, seqlen) bf16, a channel-major view of a (2 dim, batch
seqlen) product (strides (seqlen, batch seqlen, 1)), weight (dim, 4) and bias (dim,) fp32, SiLU. A config is
``block_d,block_t,num_warps``; the first is the default, and every config's output and gradients are compared
with it. Median of triton.testing.do_bench. Why (#18): in the 2026-11-23 profile of a training step at (8, 2048)
our conv backward took 158 + 55 us per layer (dpre and dx kernels) against causal-conv1d's 58 us. The kernels are
instruction-bound (the forward's 62 SASS instructions per element at the default 32 x 64 tile on 2 warps predict
its 54 us), and a tile of 8 channels x 256 steps compiles to a third fewer (fwd / dpre / dx 42 / 88 / 31 per
element against 62 / 128 / 45, sm_90 with Triton 3.6, counted offline): the configs below sweep around both. Writes
conv_variants.json and .md under --out.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

DEFAULT_CONFIGS = "32,64,2;8,256,2;8,512,4;4,512,4;8,128,1;16,128,2;16,256,4;32,128,4;64,64,2"


def make_inputs(batch: int, dim: int, seqlen: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    xz = torch.randn(2 * dim, batch * seqlen, device="cuda", generator=g).to(torch.bfloat16)
    x = xz[:dim].view(dim, batch, seqlen).transpose(0, 1).detach().requires_grad_()  # channel-major, as in the mixer
    weight = (torch.randn(dim, 4, device="cuda", generator=g) * 0.5).requires_grad_()
    bias = (torch.randn(dim, device="cuda", generator=g) * 0.1).requires_grad_()
    # the conv output's gradient arrives in the conv output's layout (the scan's du): channel-major too
    dout = torch.randn(dim, batch * seqlen, device="cuda", generator=g).to(torch.bfloat16)
    dout = dout.view(dim, batch, seqlen).transpose(0, 1)
    return x, weight, bias, dout


def time_call(fn, leaves, dout) -> tuple[dict, list]:
    from triton.testing import do_bench

    out = fn()
    result = [out.float()] + [g.float() for g in torch.autograd.grad(out, leaves, dout)]
    with torch.no_grad():
        fwd = float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    both = float(do_bench(lambda: torch.autograd.grad(fn(), leaves, dout), warmup=25, rep=200, return_mode="median"))
    return {"fwd_ms": fwd, "fwd_bwd_ms": both, "bwd_ms": both - fwd}, result


def rel(a: list, b: list) -> float:
    return max(((x - y).norm() / y.norm().clamp_min(1e-30)).item() for x, y in zip(a, b))


def sweep_shape(batch: int, dim: int, seqlen: int, configs: list[tuple[int, int, int]]) -> list[dict]:
    """One row per config (then causal-conv1d's, when installed) at one shape."""
    from mamba_bio_audio.kernels.causal_conv1d.triton_conv import causal_conv1d_triton

    x, weight, bias, dout = make_inputs(batch, dim, seqlen)
    leaves = (x, weight, bias)
    rows, reference = [], None
    for block_d, block_t, warps in configs:
        row = {"shape": [batch, dim, seqlen], "impl": "triton", "block_d": block_d, "block_t": block_t,
               "num_warps": warps}
        try:
            timing, result = time_call(lambda: causal_conv1d_triton(x, weight, bias, "silu", block_d=block_d,  # noqa: B023
                                                                    block_t=block_t, num_warps=warps),  # noqa: B023
                                       leaves, dout)
            reference = reference or result
            row.update(timing, max_rel_diff_vs_first=rel(result, reference))
        except Exception as e:  # noqa: BLE001 - a config that fails to compile or launch becomes a row
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        rows.append(row)
        print(row, flush=True)
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return rows
    timing, result = time_call(lambda: causal_conv1d_fn(x, weight, bias, activation="silu"), leaves, dout)
    rows.append({"shape": [batch, dim, seqlen], "impl": "causal-conv1d", **timing,
                 "max_rel_diff_vs_first": rel(result, reference) if reference else None})
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    from mamba_bio_audio.benchmarks.report import environment

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="8,1536,2048;1,1536,65536")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    args = ap.parse_args()
    configs = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";") if c]
    rows = []
    for shape in args.shapes.split(";"):
        rows += sweep_shape(*(int(v) for v in shape.split(",")), configs)
        torch.cuda.empty_cache()
    env = environment()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "conv_variants.json"), "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)
    lines = ["# Causal conv (width 4, SiLU, bf16) under launch tunings\n",
             f"{env.get('device')}, torch {env.get('torch')}, triton {env.get('triton')}, causal-conv1d "
             f"{env.get('causal_conv1d')}, {env.get('date')}. `dev/conv_variants.py`; first config = default.\n",
             "| shape | impl | block_d, block_t, warps | fwd ms | bwd ms | fwd+bwd ms | max rel diff | error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = f"{r['block_d']}, {r['block_t']}, {r['num_warps']}" if r["impl"] == "triton" else ""
        nums = [f"{r[k]:.4f}" if r.get(k) is not None else "" for k in ("fwd_ms", "bwd_ms", "fwd_bwd_ms")]
        diff = r.get("max_rel_diff_vs_first")
        lines.append(f"| {tuple(r['shape'])} | {r['impl']} | {cfg} | {' | '.join(nums)} | "
                     f"{'' if diff is None else f'{diff:.1e}'} | {r.get('error', '')} |")
    with open(os.path.join(args.out, "conv_variants.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
