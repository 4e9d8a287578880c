"""Where one training step's GPU time goes: torch.profiler over AdamW steps of a benchmark model.

    python dev/profile_step.py --out DIR [--model mamba|mamba_ssm|transformer] [--batch 8 --seqlen 2048]
                                 [--backend triton|cuda] [--tag NAME] [--cuda-graphs]

Writes profile_<tag>.txt under --out: the step's wall time, the summed CUDA kernel time and its share of the wall
time (how busy the GPU was), the number of kernels per step, then the CUDA-time table by kernel (top 45) and by
operator and input shapes. ``--cuda-graphs``: the whole step captured once and replayed
(``mamba_bio_audio.training.graphed_step``, AdamW with capturable=True), as ``mba bench train --cuda-graphs``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F


def main() -> None:
    from mamba_bio_audio.benchmarks.train import BenchSize, build_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="mamba", choices=("mamba", "mamba_ssm", "transformer"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--cuda-graphs", action="store_true", help="capture the whole step once, time its replays")
    args = ap.parse_args()
    from mamba_bio_audio.training.graphed_step import make_step

    tag = args.tag or f"{args.model}_{args.backend}_{args.batch}x{args.seqlen}{'_graphed' if args.cuda_graphs else ''}"
    model = build_model(args.model, BenchSize(), "cuda", backend=args.backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=args.cuda_graphs)
    ids = torch.randint(0, 256, (args.batch, args.seqlen + 1), device="cuda")
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def loss_fn(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not args.cuda_graphs):
            logits = model(x)
            logits = getattr(logits, "logits", logits)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    train_step = make_step(model, opt, loss_fn, inputs, targets, cuda_graph=args.cuda_graphs)

    def step():
        train_step(inputs, targets)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) / 5 * 1e3
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    steps = 3
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.device_time for e in kernels) / 1e3 / steps
    head = (f"{tag}: wall {wall_ms:.2f} ms/step (unprofiled, mean of 5), CUDA kernel time {busy_ms:.2f} ms/step "
            f"(GPU busy {busy_ms / wall_ms:.0%} of the wall time), {len(kernels) / steps:.0f} kernels/step, "
            f"tokens/s {args.batch * args.seqlen / wall_ms * 1e3:,.0f}")
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=80)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=40, max_shapes_column_width=100)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"profile_{tag}.txt"), "w") as f:
        f.write(f"{head}\n{args}\n{table}\n\nBy operator and input shapes:\n{by_shape}\n")
    print(head)


if __name__ == "__main__":
    main()
