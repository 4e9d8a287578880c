"""Context parallelism on several devices: exactness against one device, then s/step and peak memory per rank.

One sequence is split over the ranks (:mod:`mamba_bio_audio.parallel.context`); states go forward and state
gradients backward between neighbouring ranks. ``mba bench context-parallel`` starts one process per device with
torchrun and each calls :func:`run`:

- check: the loss and every parameter gradient of a MambaLM on ``check_seqlen`` tokens split over the ranks,
  beside rank 0 running the whole sequence alone (fp32 and bf16 autocast on CUDA; fp64 and fp32 on CPU);
- bench: AdamW steps of the MambaLM (default d_model 256 x 8 layers, vocab 16) on ``seqlen`` tokens split over
  the ranks, bf16 autocast and per-block activation checkpointing on CUDA; beside it each rank's segment alone
  (the same work with no passing: the bound the relay is measured against) and, with ``single``, rank 0 on the
  whole sequence.

Rank 0 writes OUT/context_parallel.json and .md. NCCL on CUDA (point-to-point messages of a few tens of KB),
gloo on CPU.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
from mamba_bio_audio.parallel import context_parallel_lm_backward, local_lm_ids, segment_bounds

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ContextParallelOptions:
    """What one ``mba bench context-parallel`` run measures (the command's flags)."""

    seqlen: int = 2 ** 22  # bench: tokens of the sequence split over the ranks
    batch: int = 1
    d_model: int = 256
    n_layer: int = 8
    vocab: int = 16
    steps: int = 3  # timed optimizer steps (median reported)
    warmup: int = 1  # untimed steps first (kernel compilation)
    checkpointing: bool = True  # per-block activation checkpointing
    check: bool = False  # compare with one device on check_seqlen first
    check_seqlen: int | None = None  # default: 2^18 on CUDA, 256 on CPU
    check_dtypes: str | None = None  # default: "float32,bfloat16" on CUDA, "float64,float32" on CPU
    bench: bool = True
    single: bool = False  # also time rank 0 alone on the whole seqlen


def setup(device_name: str) -> torch.device:
    """Join the torchrun process group (RANK etc. in the environment): NCCL with one GPU per process, gloo on CPU."""
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        local_rank = int(os.environ["LOCAL_RANK"])
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        dist.init_process_group("gloo")
    return device


def make_model(opts: ContextParallelOptions, device, dtype=torch.float32) -> MambaLM:
    torch.manual_seed(0)  # the same weights on every rank
    config = MambaConfig(d_model=opts.d_model, n_layer=opts.n_layer, vocab_size=opts.vocab)
    model = MambaLM(config).to(device=device, dtype=dtype)
    model.gradient_checkpointing = opts.checkpointing
    return model


def make_ids(opts: ContextParallelOptions, seqlen: int) -> torch.Tensor:
    """(batch, seqlen + 1) random tokens, the same on every rank."""
    return torch.randint(0, opts.vocab, (opts.batch, seqlen + 1), generator=torch.Generator().manual_seed(1))


def autocast(device, dtype):
    low = dtype in (torch.bfloat16, torch.float16)
    return torch.autocast(device.type, dtype=dtype if low else torch.bfloat16, enabled=low)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    denom = ref.norm().item()
    return (x - ref).norm().item() / (denom if denom > 0 else 1.0)


# ---- exactness -------------------------------------------------------------------------------------------------


def one_device_loss(model, ids) -> torch.Tensor:
    logits = model(ids[:, :-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp64 stays fp64
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def check(opts: ContextParallelOptions, device, dtype: torch.dtype, seqlen: int) -> dict | None:
    """Rank 0's one-device loss and gradients vs the context-parallel ones (returned on rank 0)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model(opts, device, torch.float64 if dtype == torch.float64 else torch.float32)
    ids = make_ids(opts, seqlen)
    ref = None
    if rank == 0:
        with autocast(device, dtype):
            loss = one_device_loss(model, ids.to(device))
        loss.backward()
        ref = {"loss": loss.item(), "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}
        model.zero_grad(set_to_none=True)
    dist.barrier()
    with autocast(device, dtype):
        cp_loss = context_parallel_lm_backward(model, local_lm_ids(ids, rank, world).to(device))
    synchronize(device)
    if rank != 0:
        return None
    errors = {n: rel_err(p.grad, ref["grads"][n]) for n, p in model.named_parameters()}
    worst = max(errors, key=errors.get)
    return {"dtype": str(dtype).replace("torch.", ""), "seqlen": seqlen, "world_size": world,
            "loss_one_device": ref["loss"], "loss_context_parallel": cp_loss,
            "loss_rel_err": abs(cp_loss - ref["loss"]) / abs(ref["loss"]),
            "max_grad_rel_err": errors[worst], "worst_parameter": worst, "grad_rel_err": errors}


# ---- speed and memory ------------------------------------------------------------------------------------------


def time_steps(step, opts: ContextParallelOptions, device, collective: bool) -> dict:
    """Median seconds of ``step()`` after warm-up, and this process's peak memory (CUDA). Out of memory in a step
    of one process alone is that row's error; in a ``collective`` step (ranks pass states to each other) it ends
    this process with exit code 2 and one line, since its neighbours would otherwise wait for it forever (torchrun
    then stops them)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    try:
        for i in range(opts.warmup + opts.steps):
            synchronize(device)
            if collective:
                dist.barrier()
            t0 = time.perf_counter()
            step()
            synchronize(device)
            if i >= opts.warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        if collective:
            print(f"mba bench context-parallel: rank {dist.get_rank()}: out of GPU memory in the context-parallel "
                  "step; stopping every rank", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return {"error": "out of memory"}
    row = {"seconds_per_step": sorted(times)[len(times) // 2], "all_seconds": times}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        row["reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2 ** 30
    return row


def bench(opts: ContextParallelOptions, device) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    amp = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = make_model(opts, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = make_ids(opts, opts.seqlen)
    local = local_lm_ids(ids, rank, world).to(device)

    def cp_step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            context_parallel_lm_backward(model, local)
        opt.step()

    def alone_step(chunk):
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = one_device_loss(model, chunk)
        loss.backward()
        opt.step()

    rows = {"context_parallel": time_steps(cp_step, opts, device, collective=True)}
    rows["segment_alone"] = time_steps(lambda: alone_step(local), opts, device, collective=False)
    per_rank = [None] * world
    dist.all_gather_object(per_rank, rows)
    result = {"world_size": world, "seqlen": opts.seqlen, "batch": opts.batch,
              "segments": segment_bounds(opts.seqlen, world), "checkpointing": opts.checkpointing,
              "autocast": "bfloat16" if amp == torch.bfloat16 else None, "per_rank": per_rank,
              "checkpoint_level": getattr(model.backbone, "checkpoint_level", None),
              "parameters": sum(p.numel() for p in model.parameters()),
              "message_bytes_per_layer": message_bytes(model, opts.batch)}
    cp = [r["context_parallel"] for r in per_rank]
    if all("error" not in r for r in cp):
        result["seconds_per_step"] = max(r["seconds_per_step"] for r in cp)
        result["tokens_per_second"] = opts.batch * opts.seqlen / result["seconds_per_step"]
    else:
        result["error"] = "out of memory"
    if opts.single:
        dist.barrier()
        if rank == 0:
            full = ids.to(device)
            result["one_device"] = time_steps(lambda: alone_step(full), opts, device, collective=False)
            del full
        dist.barrier()
    return result


def message_bytes(model, batch: int) -> int:
    """Bytes of one layer's carry on the wire (fp32): conv inputs and SSM state."""
    mixer = model.backbone.layers[0].mixer
    return batch * mixer.d_inner * (mixer.d_conv - 1 + mixer.d_state) * 4


# ---- report ----------------------------------------------------------------------------------------------------


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [f"# Context parallelism: one sequence over {data['world_size']} ranks", "",
             f"{env['device']}, torch {env['torch']}, {env['date']}. Model: MambaLM d_model {data['d_model']} x "
             f"{data['n_layer']} layers, vocab {data['vocab']}, batch {data['batch']}. "
             "States are passed forward and state gradients backward between neighbouring ranks "
             "(mamba_bio_audio.parallel.context).", ""]
    if data["check"]:
        lines += ["## Exactness against one device", "",
                  markdown_table(["dtype", "seqlen", "ranks", "loss (one device)", "loss rel. error",
                                  "max grad rel. error", "worst parameter"],
                                 [[c["dtype"], c["seqlen"], c["world_size"], c["loss_one_device"],
                                   f"{c['loss_rel_err']:.1e}", f"{c['max_grad_rel_err']:.1e}", c["worst_parameter"]]
                                  for c in data["check"]]),
                  "", "Relative errors are ||a - b|| / ||b|| per parameter tensor (the maximum over tensors).", ""]
    b = data.get("bench")
    if b:
        rows = []
        for name, label in (("context_parallel", f"context parallel, {b['world_size']} ranks"),
                            ("segment_alone", "one rank's segment alone (no passing)")):
            for r, per in enumerate(b["per_rank"]):
                row = per[name]
                lo, hi = b["segments"][r]
                rows.append([label, r, hi - lo, row.get("seconds_per_step", row.get("error")), row.get("peak_gib")])
        if "one_device" in b:
            row = b["one_device"]
            rows.append(["one device, whole sequence", 0, b["seqlen"], row.get("seconds_per_step", row.get("error")),
                         row.get("peak_gib")])
        n_layer, world = data["n_layer"], b["world_size"]
        lines += [f"## Speed and memory at seqlen {b['seqlen']:,}", "",
                  f"AdamW steps, {b['autocast'] or 'no'} autocast, activation checkpointing "
                  f"{'on' if b['checkpointing'] else 'off'}; median of {data['steps']} steps after {data['warmup']}"
                  " warm-up; peak = torch.cuda.max_memory_allocated per rank.", "",
                  markdown_table(["setup", "rank", "tokens on the rank", "s/step", "peak GiB"], rows), "",
                  "Context parallel recomputes each block on the rank's whole segment in the backward; the one-device "
                  f"rows use the model's own checkpointing (checkpoint level {b['checkpoint_level']}).", "",
                  f"The relay is a wavefront over layers: at best {n_layer + world - 1}/{n_layer} of one segment's "
                  f"step time ({(n_layer + world - 1) / n_layer:.2f}x), i.e. at most {n_layer * world / (n_layer + world - 1):.2f}x "
                  f"faster than one device on the whole sequence. Each message: {b['message_bytes_per_layer']:,} "
                  "bytes per layer per boundary and direction."]
    return "\n".join(lines)


def run(opts: ContextParallelOptions, device_name: str, out: Path) -> dict | None:
    """One rank's part: join the group, check and/or bench, rank 0 writes the report (and returns its data)."""
    device = setup(device_name)
    rank = dist.get_rank()
    cuda = device.type == "cuda"
    check_seqlen = opts.check_seqlen or (2 ** 18 if cuda else 256)
    check_dtypes = opts.check_dtypes or ("float32,bfloat16" if cuda else "float64,float32")
    data = {"environment": environment(), "world_size": dist.get_world_size(), "d_model": opts.d_model,
            "n_layer": opts.n_layer, "vocab": opts.vocab, "batch": opts.batch, "steps": opts.steps,
            "warmup": opts.warmup, "check": []}
    if opts.check:
        for name in check_dtypes.split(","):
            result = check(opts, device, DTYPES[name.strip()], check_seqlen)
            if rank == 0:
                data["check"].append(result)
                print(f"check {result['dtype']}: loss rel err {result['loss_rel_err']:.2e}, max grad rel err "
                      f"{result['max_grad_rel_err']:.2e} ({result['worst_parameter']})", flush=True)
    if opts.bench:
        data["bench"] = bench(opts, device)
        if rank == 0:
            print(f"bench: {data['bench'].get('seconds_per_step')} s/step over {data['world_size']} ranks", flush=True)
    if rank == 0:
        json_path, _ = write_report(out, "context_parallel", {"kind": "context-parallel", **data}, markdown(data))
        print(f"wrote {json_path} and .md", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return data if rank == 0 else None
