"""``mba bench ...``: speed and memory benchmarks, written as JSON + markdown under --out (default results/)."""

from __future__ import annotations

from pathlib import Path

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.recipes.options import config_option


@click.group("bench")
def bench() -> None:
    """Benchmarks (GPU timings with CUDA events; CPU works at small sizes)."""


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for part in text.split(";"):
        try:
            b, d, L = (int(v) for v in part.split(","))
        except ValueError:
            raise UserError(f"--shapes: expected 'batch,dim,seqlen;...', got {part!r}") from None
        if min(b, d, L) < 1:
            raise UserError(f"--shapes: sizes must be positive, got {part!r}")
        shapes.append((b, d, L))
    return shapes


@bench.command("scan")
@click.option("--shapes", default="8,1536,2048;1,1536,65536;1,512,1048576", show_default=True,
              help="'batch,dim,seqlen' list separated by ';'.")
@click.option("--backends", default="triton,cuda,reference", show_default=True,
              help="Comma-separated: triton, cuda (mamba_ssm, if importable), reference.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--d-state", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@config_option
def scan(shapes: str, backends: str, dtype: str, d_state: int, device: str | None, out: Path) -> None:
    """Selective scan: forward and forward+backward ms per backend, peak memory, HBM floor."""
    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.benchmarks.scan import run_scan_bench
    from mamba_bio_audio.devices import torch_device

    device = str(torch_device(device))
    names = [b.strip() for b in backends.split(",") if b.strip()]
    for name in names:
        if name not in ("triton", "cuda", "reference"):
            raise UserError(f"--backends: unknown backend {name!r}")
    result = run_scan_bench(_parse_shapes(shapes), names, d_state, dtype, device,
                            progress=lambda m: click.echo(m, err=True))
    result["environment"] = environment()
    headers = ["backend", "(batch, dim, seqlen)", "fwd ms", "fwd+bwd ms", "peak extra GiB", "HBM floor fwd ms", "note"]
    rows = [[r["backend"], f"({r['batch']}, {r['dim']}, {r['seqlen']})", r.get("fwd_ms"), r.get("fwd_bwd_ms"),
             r.get("peak_extra_gib"), r.get("floor_ms"), r.get("error", "")] for r in result["rows"]]
    env = result["environment"]
    md = (f"# Selective scan benchmark\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, "
          f"mamba_ssm {env['mamba_ssm']}, {env['date']}; {dtype} inputs, d_state {d_state}, softplus, z present; "
          f"median of triton.testing.do_bench.\n\n" + markdown_table(headers, rows))
    json_path, _ = write_report(out, "bench_scan", result, md)
    click.echo(md)
    click.echo(f"wrote {json_path} and .md")


@bench.command("memory")
@click.option("--lengths", default="131072,1048576", show_default=True, help="Comma-separated sequence lengths.")
@click.option("--checkpoint-level", "levels", default="0,1,2", show_default=True,
              help="Comma-separated MambaConfig.checkpoint_level values to measure: 0 keeps all activations, "
                   "1 recomputes each block, 2 recomputes each block in time segments.")
@click.option("--segment", type=click.IntRange(min=1), default=None,
              help="Steps per recomputed segment at level 2 (default: 2^26 / (batch * d_inner)).")
@click.option("--d-model", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--n-layer", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps (median).")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@config_option
def memory(lengths: str, levels: str, segment: int | None, d_model: int, n_layer: int, steps: int,
           device: str | None, out: Path) -> None:
    """Training step time and peak memory vs sequence length, per activation checkpoint level."""
    from mamba_bio_audio.benchmarks.memory import LEVEL_NAMES, measure_step
    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.recipes.options import parse_int_list

    device = str(torch_device(device))
    level_list = parse_int_list(levels, "--checkpoint-level")
    for level in level_list:
        if level not in LEVEL_NAMES:
            raise UserError(f"--checkpoint-level: expected values among {sorted(LEVEL_NAMES)}, got {level}")
    rows = []
    for seqlen in parse_int_list(lengths, "--lengths"):
        for level in level_list:
            click.echo(f"memory bench: seqlen {seqlen}, checkpoint level {level}", err=True)
            rows.append(measure_step(d_model, n_layer, seqlen, level, device, steps, segment=segment))
    env = environment()
    table = markdown_table(
        ["seqlen", "checkpoint level", "s/step", "tokens/s", "peak GiB", "note"],
        [[r["seqlen"], f"{r['checkpoint_level']} ({LEVEL_NAMES[r['checkpoint_level']]})", r.get("seconds_per_step"),
          r.get("tokens_per_second"), r.get("peak_gib"), r.get("error", "")] for r in rows])
    md = (f"# Training memory vs length\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}; "
          f"MambaClassifier d_model {d_model} x {n_layer} layers ({rows[0]['parameters']:,} parameters), batch 1, "
          f"bf16 autocast, AdamW; peak = torch.cuda.max_memory_allocated; level 2 segments: "
          f"{segment or 'automatic'}.\n\n{table}")
    json_path, _ = write_report(out, "bench_memory", {"rows": rows, "environment": env}, md)
    click.echo(md)
    click.echo(f"wrote {json_path} and .md")


# ---- whole-model training and generation throughput (mamba_bio_audio.benchmarks.train / .generate) ------------
def _parse_pairs(text: str, what: str) -> list[tuple[int, int]]:
    """'batch,seqlen;batch,seqlen' -> [(batch, seqlen), ...] (positive integers), else a one-line UserError."""
    pairs = []
    for part in text.split(";"):
        try:
            b, L = (int(v) for v in part.split(","))
        except ValueError:
            raise UserError(f"{what}: expected 'batch,seqlen;...', got {part!r}") from None
        if min(b, L) < 1:
            raise UserError(f"{what}: sizes must be positive, got {part!r}")
        pairs.append((b, L))
    return pairs


def _parse_models(text: str) -> list[str]:
    from mamba_bio_audio.benchmarks.train import MODELS

    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        if name not in MODELS:
            raise UserError(f"--models: unknown model {name!r}; choose from {', '.join(MODELS)}")
    if not names:
        raise UserError("--models: empty list")
    return list(dict.fromkeys(names))


def _size_options(f):
    """--d-model --n-layer --transformer-layers --n-head --vocab-size (defaults: the 90.7M / 85.3M pair)."""
    options = [
        click.option("--d-model", type=click.IntRange(min=1), default=768, show_default=True,
                     help="Width of both models."),
        click.option("--n-layer", type=click.IntRange(min=1), default=24, show_default=True, help="Mamba blocks."),
        click.option("--transformer-layers", type=click.IntRange(min=1), default=12, show_default=True),
        click.option("--n-head", type=click.IntRange(min=1), default=12, show_default=True,
                     help="Transformer heads (must divide --d-model)."),
        click.option("--vocab-size", type=click.IntRange(min=2), default=256, show_default=True),
        click.option("--models", default="mamba,mamba_ssm,transformer", show_default=True,
                     help="Comma-separated: mamba (ours), mamba_ssm (when importable), transformer."),
        click.option("--backend", type=click.Choice(["auto", "reference", "triton", "cuda"]), default=None,
                     help="Ops backend of our Mamba [default: triton on CUDA, auto (torch reference) on CPU]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _bench_size(d_model: int, n_layer: int, transformer_layers: int, n_head: int, vocab_size: int):
    from mamba_bio_audio.benchmarks.train import BenchSize

    if d_model % n_head:
        raise UserError(f"--n-head {n_head} must divide --d-model {d_model}")
    return BenchSize(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size,
                     transformer_layers=transformer_layers, n_head=n_head)


@bench.command("train")
@click.option("--shapes", default="8,2048;1,16384;1,65536", show_default=True,
              help="'batch,seqlen' list separated by ';'.")
@_size_options
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps first.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps (median).")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@config_option
def train(shapes: str, d_model: int, n_layer: int, transformer_layers: int, n_head: int, vocab_size: int,
          models: str, backend: str | None, warmup: int, steps: int, device: str | None, out: Path) -> None:
    """Whole-model training tokens/s and peak memory: our Mamba, mamba_ssm, a same-size Transformer."""
    from dataclasses import asdict

    from mamba_bio_audio.benchmarks.report import environment, write_report
    from mamba_bio_audio.benchmarks.train import (
        default_backend,
        run_train_bench,
        train_figure,
        train_markdown,
    )
    from mamba_bio_audio.devices import torch_device

    pairs = _parse_pairs(shapes, "--shapes")
    names = _parse_models(models)
    size = _bench_size(d_model, n_layer, transformer_layers, n_head, vocab_size)
    device = str(torch_device(device))
    backend = default_backend(backend, device)
    rows = run_train_bench(names, pairs, size, device, warmup=warmup, steps=steps, backend=backend,
                           progress=lambda m: click.echo(m, err=True))
    env = environment()
    md = train_markdown(rows, env, size, warmup, steps)
    data = {"rows": rows, "size": asdict(size), "warmup": warmup, "steps": steps, "device": device,
            "environment": env}
    json_path, _ = write_report(out, "bench_train", data, md)
    train_figure(Path(out) / "bench_train.png", rows)
    click.echo(md)
    click.echo(f"wrote {json_path}, .md and .png")


@bench.command("generate")
@click.option("--batch-sizes", default="1,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--prompt-len", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs (median).")
@_size_options
@click.option("--cuda-graph/--eager", "cuda_graph", default=None,
              help="Our decode step as a CUDA graph [default: on CUDA].")
@click.option("--largest-batch", is_flag=True,
              help="Also find the largest batch that fits --largest-new-tokens for ours and the Transformer, and "
                   "compare their throughput there.")
@click.option("--largest-new-tokens", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Upper end of the largest-batch search.")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@config_option
def generate(batch_sizes: str, new_tokens: int, prompt_len: int, repeats: int, d_model: int, n_layer: int,
             transformer_layers: int, n_head: int, vocab_size: int, models: str, backend: str | None,
             cuda_graph: bool | None, largest_batch: bool, largest_new_tokens: int, max_batch: int,
             device: str | None, out: Path) -> None:
    """Generation tokens/s and ms/step: our Mamba (CUDA graph), mamba_ssm (cg=True), the KV-cache Transformer."""
    from dataclasses import asdict

    from mamba_bio_audio.benchmarks.generate import (
        LARGEST_MODELS,
        generate_figure,
        generate_markdown,
        run_generate_bench,
        run_largest_batch,
    )
    from mamba_bio_audio.benchmarks.report import environment, write_report
    from mamba_bio_audio.benchmarks.train import default_backend
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.recipes.options import parse_int_list

    batches = parse_int_list(batch_sizes, "--batch-sizes")
    if min(batches) < 1:
        raise UserError(f"--batch-sizes: sizes must be positive, got {batch_sizes!r}")
    names = _parse_models(models)
    size = _bench_size(d_model, n_layer, transformer_layers, n_head, vocab_size)
    device = str(torch_device(device))
    backend = default_backend(backend, device)
    progress = lambda m: click.echo(m, err=True)
    rows = run_generate_bench(names, batches, size, device, prompt_len=prompt_len, new_tokens=new_tokens,
                              repeats=repeats, backend=backend, cuda_graph=cuda_graph, progress=progress)
    largest = None
    if largest_batch:
        largest = run_largest_batch([m for m in LARGEST_MODELS if m in names] or list(LARGEST_MODELS), size,
                                    device, prompt_len=prompt_len, new_tokens=largest_new_tokens,
                                    max_batch=max_batch, backend=backend, cuda_graph=cuda_graph, progress=progress)
    env = environment()
    md = generate_markdown(rows, largest, env, size)
    data = {"rows": rows, "largest_batch": largest, "size": asdict(size), "device": device, "environment": env}
    json_path, _ = write_report(out, "bench_generate", data, md)
    generate_figure(Path(out) / "bench_generate.png", rows, largest)
    click.echo(md)
    click.echo(f"wrote {json_path}, .md and .png")


# ---- several processes: context parallelism and the DDP loss curve (mamba_bio_audio.benchmarks.context_parallel
# / .ddp_curve); the command starts its own processes and each runs the same command again --------------------
def _command_args(ctx: click.Context, extra: dict[str, str] | None = None) -> list[str]:
    """The command line that reproduces this command's option values (for the processes it starts)."""
    args = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or not param.expose_value or param.hidden:
            continue
        value = ctx.params[param.name]
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            args += [param.opts[0]] if value else []
        elif value is not None:
            args += [param.opts[0], str(value)]
    for flag, value in (extra or {}).items():
        args += [flag, value]
    return args


def _run_process(cmd: list[str], what: str) -> None:
    import subprocess

    code = subprocess.run(cmd).returncode
    if code != 0:
        raise UserError(f"{what} exited with code {code}")


@bench.command("context-parallel")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Processes to start, one per GPU [default: the GPUs present; 2 on CPU]. Under torchrun (RANK "
                   "set) the command is one rank and starts nothing.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="cuda: NCCL, one GPU per process; cpu: gloo.")
@click.option("--seqlen", type=click.IntRange(min=2), default=2 ** 22, show_default=True,
              help="Bench: tokens of the one sequence split over the ranks.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--d-model", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--n-layer", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--vocab", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps (median).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed steps first.")
@click.option("--checkpointing/--no-checkpointing", default=True, show_default=True,
              help="Per-block activation checkpointing.")
@click.option("--check", is_flag=True, help="First compare the loss and gradients with one device.")
@click.option("--check-seqlen", type=click.IntRange(min=2), default=None,
              help="Tokens of the check [default: 2^18 on CUDA, 256 on CPU].")
@click.option("--check-dtypes", default=None,
              help="Comma-separated float64, float32, bfloat16 [default: float32,bfloat16 on CUDA; "
                   "float64,float32 on CPU].")
@click.option("--bench/--no-bench", "run_bench", default=True, show_default=True,
              help="Time the steps (--no-bench: only the check).")
@click.option("--single", is_flag=True, help="Also time one device on the whole --seqlen.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@config_option
@click.pass_context
def context_parallel(ctx: click.Context, nproc_per_node: int | None, device: str, seqlen: int, batch: int,
                     d_model: int, n_layer: int, vocab: int, steps: int, warmup: int, checkpointing: bool,
                     check: bool, check_seqlen: int | None, check_dtypes: str | None, run_bench: bool, single: bool,
                     out: Path) -> None:
    """Context parallelism: one sequence over several devices, exactness vs one device, s/step, peak memory."""
    import os
    import sys

    import torch

    from mamba_bio_audio.devices import torch_device

    cuda = torch_device(device).type == "cuda"  # a missing GPU is a one-line error
    if check_dtypes is not None:
        unknown = [d for d in check_dtypes.split(",") if d.strip() not in ("float64", "float32", "bfloat16")]
        if unknown:
            raise UserError(f"--check-dtypes: unknown dtype {unknown[0]!r}; choose from float64, float32, bfloat16")
    if "RANK" not in os.environ:  # start the ranks: torchrun runs this same command in each
        n = nproc_per_node or (torch.cuda.device_count() if cuda else 2)
        if cuda and n > torch.cuda.device_count():
            raise UserError(f"--nproc-per-node {n}: only {torch.cuda.device_count()} GPUs here")
        _run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                      "-m", "mamba_bio_audio", "bench", "context-parallel", *_command_args(ctx)], "torchrun")
        return
    from mamba_bio_audio.benchmarks.context_parallel import ContextParallelOptions, run

    opts = ContextParallelOptions(seqlen=seqlen, batch=batch, d_model=d_model, n_layer=n_layer, vocab=vocab,
                                  steps=steps, warmup=warmup, checkpointing=checkpointing, check=check,
                                  check_seqlen=check_seqlen, check_dtypes=check_dtypes, bench=run_bench,
                                  single=single)
    run(opts, device, out)


@bench.command("ddp")
@click.option("--accelerator", type=click.Choice(["cpu", "gpu"]), default="gpu", show_default=True)
@click.option("--devices", type=click.IntRange(min=2), default=2, show_default=True,
              help="Devices of the data-parallel run.")
@click.option("--strategy", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--global-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Sequences per optimizer step, over all devices (divisible by --devices).")
@click.option("--seqlen", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--d-model", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--n-layer", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--vocab", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--precision", default="32-true", show_default=True, help="Lightning precision of both runs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--run", "run_name", type=click.Choice(["single", "ddp"]), default=None, hidden=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@config_option
@click.pass_context
def ddp(ctx: click.Context, accelerator: str, devices: int, strategy: str, steps: int, global_batch: int,
        seqlen: int, d_model: int, n_layer: int, vocab: int, lr: float, precision: str, seed: int,
        run_name: str | None, out: Path) -> None:
    """The loss curve of DDP on N devices beside one device at the same global batch (they should coincide)."""
    import sys

    from mamba_bio_audio.benchmarks.ddp_curve import RUNS, DDPCurveOptions, compare, train_run

    if global_batch % devices:
        raise UserError(f"--global-batch {global_batch} is not divisible by --devices {devices}")
    if accelerator == "gpu":
        import torch

        if torch.cuda.device_count() < devices:
            raise UserError(f"--devices {devices}: only {torch.cuda.device_count()} GPUs here")
    opts = DDPCurveOptions(out=out, accelerator=accelerator, devices=devices, strategy=strategy, steps=steps,
                           global_batch=global_batch, seqlen=seqlen, d_model=d_model, n_layer=n_layer, vocab=vocab,
                           lr=lr, precision=precision, seed=seed)
    if run_name is not None:  # one of the two runs, in its own process (Lightning re-runs it for the other ranks)
        train_run(opts, run_name)
        return
    for name in RUNS:
        _run_process([sys.executable, "-m", "mamba_bio_audio", "bench", "ddp", *_command_args(ctx, {"--run": name})],
                     f"the {name} run")
    data = compare(opts)
    click.echo(f"max |loss difference| over {steps} steps: {data['max_abs_diff']:.3e}; wrote "
               f"{out / 'ddp_loss_curve.json'}, .md, .png")
