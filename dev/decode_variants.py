"""Time one block's decode step up to out_proj, three ways and at several tunings (chooses the defaults), and the
block step through out_proj with out_proj apart (cuBLAS) or inside the state-update kernel.

    python dev/decode_variants.py --out DIR [--batches 1,2,4,8,16] [--head-rows 1,2,4,8,16] [--layers 24]
                                  [--out-block-d 8,16,32]

At the 90.7M model's sizes (d_model 768, d_inner 1536, d_state 16, dt_rank 48, conv 4, bf16 weights, fp32
residual and SSM state), ``--layers`` consecutive blocks' steps captured in one CUDA graph (as generation
replays them), timed with ``triton.testing.do_bench_cudagraph``; reported per layer:

- ``unfused``: Triton add + RMSNorm, cuBLAS in_proj, conv update, cuBLAS x_proj, state update (dt_proj inside);
- ``inner``: add + RMSNorm, in_proj, then the two fused decode kernels (``mamba_decode_inner_triton``);
- ``block rows=R``: ``mamba_block_decode_triton`` with R batch rows per head program;
- ``block + out_proj``: the block step (1 row per head program), then out_proj by cuBLAS, each layer's output
  feeding the next (3 launches per layer);
- ``block, out_proj fused bd=N``: out_proj inside the state-update kernel (``out_proj_weight=``), N channels per
  program, chained the same way (2 launches per layer).

Every block variant runs twice: with ", PDL" its kernels launch as programmatic dependent launches (loading their
weights while the kernel before them runs; ``MBA_DECODE_PDL=1``, Hopper only, off by default), else plainly.

Writes decode_variants.json and .md (device, versions, date) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def layer_weights(d_model: int, d_inner: int, d_state: int, dt_rank: int, width: int, device: str) -> dict:
    bf16, f32 = torch.bfloat16, torch.float32
    g = torch.Generator(device=device).manual_seed(0)

    def r(*shape, dtype=bf16, scale=0.02):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)

    return dict(norm_weight=1 + r(d_model), in_proj_weight=r(2 * d_inner, d_model), in_proj_bias=None,
                conv_weight=r(d_inner, width, scale=0.3), conv_bias=r(d_inner), x_proj_weight=r(dt_rank + 2 * d_state,
                                                                                               d_inner),
                dt_proj_weight=r(d_inner, dt_rank, scale=0.1), dt_bias=r(d_inner, dtype=f32, scale=0.5),
                out_proj_weight=r(d_model, d_inner),
                A=-torch.rand(d_inner, d_state, device=device, generator=g) - 0.5, D=r(d_inner, dtype=f32, scale=1.0))


def make_step(kind: str, w: dict, batch: int, d_model: int, d_inner: int, d_state: int, width: int, layers: int,
              head_rows: int | None, device: str):
    """A function running ``layers`` blocks' steps on fixed buffers (what the graph captures)."""
    from mamba_bio_audio import ops
    from mamba_bio_audio.kernels.mamba_decode.triton_decode import (
        mamba_block_decode_triton,
        mamba_decode_inner_triton,
    )

    hidden = torch.randn(batch, d_model, device=device).to(torch.bfloat16)
    residual = torch.randn(batch, d_model, device=device)
    conv_states = [torch.zeros(batch, d_inner, width, device=device, dtype=torch.bfloat16) for _ in range(layers)]
    ssm_states = [torch.zeros(batch, d_inner, d_state, device=device) for _ in range(layers)]
    scratches = [ops.out_proj_scratch(batch, d_model, hidden) for _ in range(layers)]
    dt_rank = w["dt_proj_weight"].shape[1]
    inner_args = ("conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_bias", "A", "D")

    def run():
        h, r = hidden, residual
        for layer in range(layers):
            conv, ssm = conv_states[layer], ssm_states[layer]
            if kind in ("out_proj_apart", "out_proj_fused"):  # the block's whole step, layer to layer
                fused = kind == "out_proj_fused"
                y, r = mamba_block_decode_triton(
                    h, r, w["norm_weight"], 1e-5, w["in_proj_weight"], None, conv, *(w[k] for k in inner_args),
                    ssm, residual_dtype=torch.float32, block_d=head_rows if fused else None,
                    **({"out_proj_weight": w["out_proj_weight"], "out_scratch": scratches[layer]} if fused else {}))
                h = y if fused else F.linear(y, w["out_proj_weight"])
                continue
            if kind == "block":
                y, _ = mamba_block_decode_triton(hidden, residual, w["norm_weight"], 1e-5, w["in_proj_weight"],
                                                 None, conv, *(w[k] for k in inner_args), ssm,
                                                 residual_dtype=torch.float32, head_rows=head_rows)
                continue
            normed, _ = ops.add_rms_norm(hidden, residual, w["norm_weight"], 1e-5, torch.bfloat16, torch.float32,
                                         backend="triton")
            x, z = F.linear(normed, w["in_proj_weight"]).chunk(2, dim=-1)
            if kind == "inner":
                mamba_decode_inner_triton(x, z, conv, *(w[k] for k in inner_args[:4]), w["dt_bias"], w["A"],
                                          w["D"], ssm)
                continue
            xc = ops.causal_conv1d_update(x, conv, w["conv_weight"], w["conv_bias"], activation="silu",
                                          backend="triton")
            dt, B, C = torch.split(F.linear(xc, w["x_proj_weight"]), [dt_rank, d_state, d_state], dim=-1)
            ops.selective_state_update(ssm, xc, dt, w["A"], B, C, w["D"], z=z, dt_bias=w["dt_bias"],
                                       dt_softplus=True, backend="triton", dt_proj_weight=w["dt_proj_weight"])

    return run


def main() -> None:
    import triton
    from triton.testing import do_bench_cudagraph

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--head-rows", default="1,2,4,8,16")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--out-block-d", default="8,16,32", help="channels per state-update program, out_proj fused")
    args = ap.parse_args()
    d_model, d_inner, d_state, dt_rank, width = 768, 1536, 16, 48, 4
    device = "cuda"
    w = layer_weights(d_model, d_inner, d_state, dt_rank, width, device)
    kinds = ([("unfused", None), ("inner", None)] + [("block", int(r)) for r in args.head_rows.split(",")]
             + [("out_proj_apart", None)] + [("out_proj_fused", int(b)) for b in args.out_block_d.split(",")])
    # the block step's kernels with and without programmatic dependent launch (MBA_DECODE_PDL)
    kinds = [(k, p, pdl) for k, p in kinds for pdl in ((False,) if k in ("unfused", "inner") else (True, False))]
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for kind, head_rows, pdl in kinds:
            if kind == "block" and head_rows > batch:
                continue
            os.environ["MBA_DECODE_PDL"] = "1" if pdl else "0"
            run = make_step(kind, w, batch, d_model, d_inner, d_state, width, args.layers, head_rows, device)
            run()  # compile
            torch.cuda.synchronize()
            ms = do_bench_cudagraph(run, rep=200)
            label = {"block": f"block rows={head_rows}", "out_proj_apart": "block + out_proj (cuBLAS)",
                     "out_proj_fused": f"block, out_proj fused bd={head_rows}"}.get(kind, kind)
            label += ", PDL" if pdl else ""
            rows.append({"batch": batch, "variant": label, "us_per_layer": 1000 * ms / args.layers})
            print(f"batch {batch:3d}  {label:14s} {1000 * ms / args.layers:7.2f} us/layer", flush=True)
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "layers_per_graph": args.layers,
           "sizes": {"d_model": d_model, "d_inner": d_inner, "d_state": d_state, "dt_rank": dt_rank, "d_conv": width}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_variants.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    batches = sorted({r["batch"] for r in rows})
    labels = list(dict.fromkeys(r["variant"] for r in rows))
    table = {(r["batch"], r["variant"]): r["us_per_layer"] for r in rows}
    lines = [f"# Decode step up to out_proj (the last rows: through it), us per layer\n\n{env['device']}, torch {env['torch']}, triton "
             f"{env['triton']}, {env['date']}; {args.layers} layers per CUDA graph, do_bench_cudagraph; sizes "
             f"{env['sizes']}, bf16 weights.\n", "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for label in labels:
        cells = [f"{table[(b, label)]:.2f}" if (b, label) in table else "—" for b in batches]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "decode_variants.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/decode_variants.json and .md")


if __name__ == "__main__":
    main()
