"""``mba bench ...``: speed and memory benchmarks (``mamba_bio_audio.benchmarks``), written as JSON + markdown
into a new report folder (--out, default ``mba-bench/COMMAND``)."""

from __future__ import annotations

from pathlib import Path

import click

from mamba_bio_audio.recipes.options import config_option, overwrite_option

DEFAULT_OUT = Path("mba-bench")  # each command's report goes to its own folder under it


@click.group("bench")
def bench() -> None:
    """Benchmarks (GPU timings with CUDA events; CPU works at small sizes)."""


def _out_option(name: str):
    """--out (default mba-bench/NAME, a new folder; never the repository's results/) and --overwrite."""
    def deco(f):
        f = overwrite_option(f)
        return click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                            default=DEFAULT_OUT / name, show_default=True,
                            help="Report folder to write (a new or empty folder, or this command's own earlier "
                                 "report with --overwrite).")(f)
    return deco


def _progress(message: str) -> None:
    click.echo(message, err=True)


@bench.command("scan")
@click.option("--shapes", default="8,1536,2048;1,1536,65536;1,512,1048576", show_default=True,
              help="'batch,dim,seqlen' list separated by ';'.")
@click.option("--backends", default="triton,cuda,reference", show_default=True,
              help="Comma-separated: triton, cuda (mamba_ssm, if importable), reference; and Triton variants: "
                   "triton-kernel-softplus (softplus inside the kernels: no fp32 dt buffer), triton-lean (that, and "
                   "every 4th chunk-start state kept).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--d-state", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@_out_option("scan")
@config_option
def scan(**params) -> None:
    """Selective scan: forward and forward+backward ms per backend, peak memory, HBM floor."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.scan(**params, progress=_progress))


@bench.command("summary")
@click.argument("reports", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_out_option("summary")
def summary(**params) -> None:
    """One table of ours beside the peer, with the ratio, from bench_scan / train / generate / cpu JSON reports."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.summary(**params, progress=_progress))


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
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed steps first (Triton compilation and autotuning); the peak is taken over the timed "
                   "steps.")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@_out_option("memory")
@config_option
def memory(**params) -> None:
    """Training step time and peak memory vs sequence length, per activation checkpoint level."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.memory(**params, progress=_progress))


@bench.command("packed")
@click.option("--sequences", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Sequences of the length distribution (one pass over them per mode).")
@click.option("--min-length", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Lengths are log-uniform in [--min-length, --max-length] (Genomic Benchmarks-like).")
@click.option("--tokens-per-step", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Token budget per step: tokens-per-step // max-length sequences (padded) or rows (packed).")
@click.option("--d-model", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--n-layer", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "reference", "triton", "cuda"]), default=None,
              help="Ops backend of the model [default: triton on CUDA, auto (torch reference) on CPU].")
@click.option("--scan-shapes", default="8,1536,2048;1,1536,65536;1,512,1048576", show_default=True,
              help="'batch,dim,seqlen' list separated by ';' for the scan with and without seq_idx ('': none).")
@click.option("--scan-backend", type=click.Choice(["triton", "reference", "cuda"]), default=None,
              help="Backend of the scan timings [default: triton on CUDA, reference on CPU].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the lengths and the batch order.")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@_out_option("packed")
@config_option
def packed(**params) -> None:
    """Packed vs padded batches on mixed lengths: useful tokens/s and peak memory; the scan with/without seq_idx."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.packed(**params, progress=_progress))


# ---- whole-model training and generation throughput (mamba_bio_audio.benchmarks.train / .generate) ------------
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


@bench.command("train")
@click.option("--shapes", default="8,2048;1,16384;1,65536", show_default=True,
              help="'batch,seqlen' list separated by ';'.")
@_size_options
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps first.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps (median).")
@click.option("--cuda-graphs", is_flag=True,
              help="Capture the whole step of our Mamba and of mamba_ssm (forward, loss, backward, AdamW with "
                   "capturable=True) once per shape as a CUDA graph and time its replays; the capture is reported "
                   "apart (capture s). CUDA only; the Transformer stays eager.")
@click.option("--fused-inner", default="keep", show_default=True,
              help="Our Mamba's MambaConfig.fused_inner, off, keep, triton or all: conv -> x_proj -> dt_proj -> "
                   "scan as one autograd Function; keep: keeping what the unfused mixer keeps; triton / all: "
                   "recomputing the conv output and delta in the backward (less memory, as mamba_ssm's fast path "
                   "does). Comma-separated for a row of ours per value, e.g. off,keep,triton.")
@click.option("--fused-save-every", type=click.IntRange(min=1), default=None,
              help="With --fused-inner: keep every K-th chunk-start state of the fused scan (as the environment "
                   "variable MBA_FUSED_SAVE_EVERY) [default: the scan's choice].")
@click.option("--scan-softplus", type=click.Choice(["pass", "kernel"]), default=None,
              help="Where our Triton scan computes softplus (as the environment variable MBA_SCAN_SOFTPLUS): an "
                   "elementwise pass into an fp32 buffer, or inside the scan kernels (no buffer) [default: the "
                   "variable's value, else pass].")
@click.option("--scan-bwd-maxnreg", type=click.IntRange(min=0, max=255), default=None,
              help="Registers per thread our Triton scan's backward kernel may use (as the environment variable "
                   "MBA_SCAN_BWD_MAXNREG; 0: the compiler's choice) [default: the variable's value, else auto: 168 "
                   "where that fits an otherwise two-wave grid in one wave].")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure each shape this many times, the models' order reversed every other round; a row is "
                   "the median round, with the spread.")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@_out_option("train")
@config_option
def train(**params) -> None:
    """Whole-model training tokens/s and peak memory: our Mamba, mamba_ssm, a same-size Transformer."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.train(**params, progress=_progress))


@bench.command("generate")
@click.option("--batch-sizes", default="1,64", show_default=True, help="Comma-separated batch sizes.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--prompt-len", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed runs (median).")
@_size_options
@click.option("--cuda-graph/--eager", "cuda_graph", default=None,
              help="Our decode step as a CUDA graph [default: on CUDA].")
@click.option("--attention-bucket", type=click.IntRange(min=0), default=256, show_default=True,
              help="The Transformer under CUDA graphs (on CUDA, beside its eager rows) attends to the filled cache "
                   "positions rounded up to a multiple of this, one graph per multiple; 0: the whole cache.")
@click.option("--largest-batch", is_flag=True,
              help="Also find the largest batch that fits --largest-new-tokens for ours and the Transformer, and "
                   "compare their throughput there.")
@click.option("--largest-new-tokens", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Upper end of the largest-batch search.")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@_out_option("generate")
@config_option
def generate(**params) -> None:
    """Generation tokens/s and ms/step: our Mamba (CUDA graph), mamba_ssm (cg=True), the KV-cache Transformer
    (eager, and under CUDA graphs on CUDA)."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.generate(**params, progress=_progress))


@bench.command("cpu")
@click.option("--lengths", default="4096", show_default=True, help="Comma-separated sequence lengths.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--d-model", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--n-layer", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--vocab-size", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch threads.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed steps of each model (median, min, max).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed steps of each model first.")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Largest |logits difference| between the two models accepted before timing.")
@_out_option("cpu")
@config_option
def cpu(**params) -> None:
    """CPU forward+backward: our MambaLM vs transformers' MambaForCausalLM slow path, same weights."""
    from mamba_bio_audio.benchmarks import commands

    click.echo(commands.cpu(**params, progress=_progress))


# ---- several processes: context parallelism and the DDP loss curve; each command starts its own processes, which
# run the same command again (mamba_bio_audio.benchmarks.commands) ---------------------------------------------
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
@_out_option("context-parallel")
@config_option
@click.pass_context
def context_parallel(ctx: click.Context, nproc_per_node: int | None, device: str, seqlen: int, batch: int,
                     d_model: int, n_layer: int, vocab: int, steps: int, warmup: int, checkpointing: bool,
                     check: bool, check_seqlen: int | None, check_dtypes: str | None, run_bench: bool, single: bool,
                     out: Path, overwrite: bool) -> None:
    """Context parallelism: one sequence over several devices, exactness vs one device, s/step, peak memory."""
    from mamba_bio_audio.benchmarks import commands
    from mamba_bio_audio.benchmarks.context_parallel import ContextParallelOptions
    from mamba_bio_audio.benchmarks.launch import command_args

    opts = ContextParallelOptions(seqlen=seqlen, batch=batch, d_model=d_model, n_layer=n_layer, vocab=vocab,
                                  steps=steps, warmup=warmup, checkpointing=checkpointing, check=check,
                                  check_seqlen=check_seqlen, check_dtypes=check_dtypes, bench=run_bench,
                                  single=single)
    text = commands.context_parallel(args=lambda extra: command_args(ctx, extra), nproc_per_node=nproc_per_node,
                                     device=device, out=out, overwrite=overwrite, opts=opts)
    if text is not None:
        click.echo(text)


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
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Report folder to write (a new or empty folder, or this command's own earlier report with "
                   "--overwrite).")
@overwrite_option
@config_option
@click.pass_context
def ddp(ctx: click.Context, accelerator: str, devices: int, strategy: str, steps: int, global_batch: int,
        seqlen: int, d_model: int, n_layer: int, vocab: int, lr: float, precision: str, seed: int,
        run_name: str | None, out: Path, overwrite: bool) -> None:
    """The loss curve of DDP on N devices beside one device at the same global batch (they should coincide)."""
    from mamba_bio_audio.benchmarks import commands
    from mamba_bio_audio.benchmarks.ddp_curve import DDPCurveOptions
    from mamba_bio_audio.benchmarks.launch import command_args

    opts = DDPCurveOptions(out=out, accelerator=accelerator, devices=devices, strategy=strategy, steps=steps,
                           global_batch=global_batch, seqlen=seqlen, d_model=d_model, n_layer=n_layer, vocab=vocab,
                           lr=lr, precision=precision, seed=seed)
    text = commands.ddp(args=lambda extra: command_args(ctx, extra), opts=opts, run_name=run_name,
                        overwrite=overwrite)
    if text is not None:
        click.echo(text)
