"""Where one training step's GPU time goes: torch.profiler over AdamW steps of a benchmark model.

    python dev/profile_step.py --out DIR [--model mamba|mamba_ssm|transformer] [--batch 8 --seqlen 2048]
                                 [--backend triton|cuda] [--tag NAME] [--cuda-graphs]

Writes profile_<tag>.txt under --out: the step's wall time, the summed CUDA kernel time and its share of the wall
time (how busy the GPU was), per step the kernels that ran on the GPU (memcpy and memset counted apart), the kernel
launches from the host and the CUDA-graph launches (a replayed graph runs its kernels with one host launch: kernels
>> launches), how long a step's call takes to return on the host and which calls inside it synchronise host and
GPU (:func:`host_side`), then the CUDA-time table by kernel (top 45), by operator and input shapes, and the table
by host (self CPU) time. ``--cuda-graphs``: the whole step captured once and replayed
(``mamba_bio_audio.training.graphed_step``, AdamW with capturable=True), as ``mba bench train --cuda-graphs``; it
captures mamba_ssm's step too.

Why the host side (2026-12-07): eagerly at (8, 2048) our step took 116.8 ms against 79.5 ms graphed (mamba_ssm
104.3 against 87.0), and running steps back to back was no faster than one at a time, which a host that merely
lagged would not give: either the host needs ~117 ms per step, or something inside the step waits for the GPU so
host and GPU time add up. The host table and the synchronising calls tell the two apart.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

#: host-side CUDA runtime / driver calls that launch one kernel
KERNEL_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                       "cudaLaunchCooperativeKernel")
#: host-side calls that launch a captured CUDA graph
GRAPH_LAUNCH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")


def count_events(events, steps: int) -> dict[str, float]:
    """Per-step counts from profiler events (objects with ``name`` and ``device_type``): "kernels" (device events
    that are kernels), "memcpy" and "memset" (device copies and fills, not kernels), "kernel_launches" and
    "graph_launches" (host calls launching a kernel or a captured graph); "kernel_us": the kernels' device time
    (microseconds, from ``device_time``)."""
    cuda = torch.autograd.DeviceType.CUDA
    counts = dict.fromkeys(("kernels", "memcpy", "memset", "kernel_launches", "graph_launches", "kernel_us"), 0.0)
    for e in events:
        name = e.name
        if e.device_type == cuda:
            lowered = name.lower()
            if lowered.startswith("memcpy"):
                counts["memcpy"] += 1
            elif lowered.startswith("memset"):
                counts["memset"] += 1
            else:
                counts["kernels"] += 1
                counts["kernel_us"] += getattr(e, "device_time", 0.0)
        elif name in KERNEL_LAUNCH_CALLS:
            counts["kernel_launches"] += 1
        elif name in GRAPH_LAUNCH_CALLS:
            counts["graph_launches"] += 1
    return {k: v / steps for k, v in counts.items()}


def host_side(step, repeats: int = 5) -> tuple[float, list[str]]:
    """(median ms for ``step()`` to return after a synchronisation, the places that synchronised host and GPU
    inside one step). A step with no synchronisation inside returns once its kernels are enqueued, so the first
    figure is the host's own cost; ``torch.cuda.set_sync_debug_mode("warn")`` names each synchronising call (a
    ``.item()``, a boolean index, a blocking copy) by the first frame of this repository or mamba_ssm in its
    stack, so the eager step's host time can be told from host time spent waiting for the GPU."""
    import traceback
    import warnings

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    places = []

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "mamba_bio_audio" in f.filename or "mamba_ssm" in f.filename or "/kernels/" in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else f"{filename}:{lineno}"
        places.append(f"{where}: {str(message).splitlines()[0][:120]}")

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():  # restores showwarning and the filters on exit
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2], places


def main() -> None:
    from mamba_bio_audio.benchmarks.train import BenchSize, build_model, peer_fast_path

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
    if args.model == "mamba_ssm":  # a profile of its slow torch path would say nothing about mamba_ssm
        fast = peer_fast_path(model)
        if not fast["peer_fast_path"]:
            tag += "_SLOW_PATH"
            print(f"mamba_ssm is off its fast path: {fast['peer_fast_path_note']}")
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
    host_ms, syncs = host_side(step)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    steps = 3
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    counts = count_events(prof.events(), steps)
    busy_ms = counts["kernel_us"] / 1e3
    head = (f"{tag}: wall {wall_ms:.2f} ms/step (unprofiled, mean of 5), CUDA kernel time {busy_ms:.2f} ms/step "
            f"(GPU busy {busy_ms / wall_ms:.0%} of the wall time), {counts['kernels']:.0f} kernels/step on the GPU "
            f"(+ {counts['memcpy']:.0f} memcpy, {counts['memset']:.0f} memset), launches from the host/step: "
            f"{counts['kernel_launches']:.0f} kernels, {counts['graph_launches']:.0f} CUDA graphs, "
            f"tokens/s {args.batch * args.seqlen / wall_ms * 1e3:,.0f}")
    head += (f"\nhost: a step's call returns after {host_ms:.2f} ms (median of 5, each after a synchronisation: the "
             f"host's time to enqueue the step, unless it waits inside); synchronising calls in one step: "
             f"{len(syncs)}" + "".join(f"\n  {where}" for where in syncs[:12]))
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=80)
    host_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=80)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=40, max_shapes_column_width=100)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"profile_{tag}.txt"), "w") as f:
        f.write(f"{head}\n{args}\n{table}\n\nBy operator and input shapes:\n{by_shape}\n\n"
                f"By host (self CPU) time:\n{host_table}\n")
    print(head)


if __name__ == "__main__":
    main()
