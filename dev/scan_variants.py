"""Time the Triton selective scan under several tunings on one GPU (a sweep for choosing defaults).

    python dev/scan_variants.py --out DIR [--shapes "8,1536,2048;1,1536,65536"] [--configs "chunk=8,block_d=8,..."]

Each config is keyword arguments of ``selective_scan_triton`` (chunk_size, block_d, num_warps, num_stages,
n_segments, save_every), plus ``deterministic=1`` for torch.use_deterministic_algorithms during the call. Inputs as in ``mba bench scan`` (bf16, d_state 16, softplus, z); median of triton.testing.do_bench.
Every config's out and input gradients are compared with the first config's, so a fast but wrong tuning shows up.
Writes scan_variants.json and .md under --out.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

DEFAULT_CONFIGS = ";".join([  # the defaults first (the reference for the differences), then one change each
    "num_stages=3",
    "num_stages=3,deterministic=1",
    "num_stages=3,save_every=2",
    "num_stages=3,save_every=4",
    "num_stages=3,save_every=8",
    "num_stages=2",
    "chunk_size=4,num_stages=3",
    "chunk_size=16,num_stages=3",
])


def parse_configs(text: str) -> list[dict]:
    return [{k: int(v) for k, v in (kv.split("=") for kv in part.split(","))} for part in text.split(";") if part]


def time_config(x, grad, cfg: dict, reference: list | None) -> tuple[dict, list | None]:
    """fwd and fwd+bwd ms of one tuning, and its outputs' largest relative difference from ``reference``."""
    from triton.testing import do_bench

    from mamba_bio_audio.kernels.selective_scan.function import selective_scan_triton

    cfg = dict(cfg)
    torch.use_deterministic_algorithms(bool(cfg.pop("deterministic", 0)))

    def forward():
        return selective_scan_triton(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.delta_bias, delta_softplus=True,
                                     **cfg)

    row: dict = {}
    try:
        out = forward()
        result = [out.float()] + [g.float() for g in torch.autograd.grad(out, x.leaves(), grad)]
        reference = reference or result
        row["max_rel_diff_vs_first"] = max(((a - r).norm() / r.norm().clamp_min(1e-30)).item()
                                           for a, r in zip(result, reference))
        del out, result
        with torch.no_grad():
            row["fwd_ms"] = float(do_bench(forward, warmup=25, rep=200, return_mode="median"))
        row["fwd_bwd_ms"] = float(do_bench(lambda: torch.autograd.grad(forward(), x.leaves(), grad),
                                           warmup=25, rep=200, return_mode="median"))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.autograd.grad(forward(), x.leaves(), grad)
        torch.cuda.synchronize()
        row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    except Exception as e:  # noqa: BLE001 - a config that fails to compile or run is a row, not the end
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    torch.use_deterministic_algorithms(False)
    return row, reference


def main() -> None:
    from mamba_bio_audio.benchmarks.report import environment
    from mamba_bio_audio.benchmarks.scan import make_inputs

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="8,1536,2048;1,1536,65536;1,512,1048576")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    args = ap.parse_args()
    configs = parse_configs(args.configs)
    rows = []
    for shape_text in args.shapes.split(";"):
        batch, dim, seqlen = (int(v) for v in shape_text.split(","))
        x = make_inputs(batch, dim, seqlen, 16, torch.bfloat16, "cuda", requires_grad=True)
        grad = torch.randn_like(x.u)
        reference = None
        for cfg in configs:
            result, reference = time_config(x, grad, cfg, reference)
            row = {"batch": batch, "dim": dim, "seqlen": seqlen, **cfg, **result}
            print(json.dumps(row), flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    env = environment()
    with open(os.path.join(args.out, "scan_variants.json"), "w") as f:
        json.dump({"rows": rows, "environment": env}, f, indent=1)
    keys = ["batch", "dim", "seqlen", "chunk_size", "block_d", "num_warps", "num_stages", "n_segments", "save_every",
            "deterministic", "fwd_ms", "fwd_bwd_ms", "peak_extra_gib",
            "max_rel_diff_vs_first", "error"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                       for k in keys) + " |")
    with open(os.path.join(args.out, "scan_variants.md"), "w") as f:
        f.write(f"# Scan tunings\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}\n\n"
                + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
