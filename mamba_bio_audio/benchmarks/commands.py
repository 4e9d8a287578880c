"""What each ``mba bench`` command does once click has read its options: check the option values and the report
folder (before any measurement), run the benchmark, write the report folder (``files.output_folder``: a new
folder, or this command's own earlier report with ``overwrite``) and return the text the command prints.

``progress(message)`` receives one line per measurement as it starts and one with its result."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from mamba_bio_audio.benchmarks import options
from mamba_bio_audio.benchmarks.report import environment, write_report
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.files import check_output_folder, output_folder

Progress = Callable[[str], None]


def _device(device: str | None) -> str:
    from mamba_bio_audio.devices import torch_device

    return str(torch_device(device))


def report_kind(command: str) -> str:
    """The ``"kind"`` of a report: "bench train" -> "train"."""
    return command.removeprefix("bench ").strip().replace(" ", "-")


def _save(out: Path, kind: str, name: str, data: dict, markdown: str, overwrite: bool,
          figure: Callable[[Path], object] | None = None) -> str:
    """Write ``name.json`` / ``.md`` (and ``name.png`` through ``figure(path)``) as the report folder ``out``;
    returns the markdown followed by the line naming what was written. The JSON starts with ``"kind"``: the
    command's name ("scan", "train", ...), which ``mba bench summary`` reads to tell the reports apart."""
    data = {"kind": report_kind(kind), **data}
    with output_folder(out, kind, overwrite=overwrite) as tmp:
        write_report(tmp, name, data, markdown)
        if figure is not None:
            figure(tmp / f"{name}.png")
    return f"{markdown}\nwrote {out / name}.json" + (", .md and .png" if figure else " and .md")


def scan(*, shapes: str, backends: str, dtype: str, d_state: int, device: str | None, out: Path, overwrite: bool,
         progress: Progress) -> str:
    """``mba bench scan``: :func:`~mamba_bio_audio.benchmarks.scan.run_scan_bench`, report ``bench_scan``."""
    from mamba_bio_audio.benchmarks.scan import run_scan_bench, scan_markdown

    device = _device(device)
    names, shape_list = options.parse_backends(backends), options.parse_shapes(shapes)
    check_output_folder(out, "bench scan", overwrite=overwrite)
    progress(f"scan bench on {device}: {len(shape_list)} shapes x {len(names)} backends; report into {out}")
    result = run_scan_bench(shape_list, names, d_state, dtype, device, progress=progress)
    result["environment"] = environment()
    return _save(out, "bench scan", "bench_scan", result, scan_markdown(result, result["environment"]), overwrite)


def memory(*, lengths: str, levels: str, segment: int | None, d_model: int, n_layer: int, steps: int,
           device: str | None, out: Path, overwrite: bool, progress: Progress, warmup: int = 1) -> str:
    """``mba bench memory``: :func:`~mamba_bio_audio.benchmarks.memory.measure_step` per length and level,
    report ``bench_memory``."""
    from mamba_bio_audio.benchmarks.memory import measure_step, memory_markdown
    from mamba_bio_audio.recipes.options import parse_int_list

    device = _device(device)
    level_list, length_list = options.parse_levels(levels), parse_int_list(lengths, "--lengths")
    check_output_folder(out, "bench memory", overwrite=overwrite)
    rows = []
    for seqlen in length_list:
        for level in level_list:
            progress(f"memory bench: seqlen {seqlen}, checkpoint level {level}")
            rows.append(measure_step(d_model, n_layer, seqlen, level, device, steps, segment=segment,
                                     warmup=warmup))
    env = environment()
    return _save(out, "bench memory", "bench_memory", {"rows": rows, "environment": env},
                 memory_markdown(rows, env, d_model, n_layer, segment), overwrite)


def packed(*, sequences: int, min_length: int, max_length: int, tokens_per_step: int, d_model: int, n_layer: int,
           backend: str | None, scan_shapes: str, scan_backend: str | None, seed: int, device: str | None, out: Path,
           overwrite: bool, progress: Progress) -> str:
    """``mba bench packed``: :func:`~mamba_bio_audio.benchmarks.packed.run_packed_bench`, report ``bench_packed``."""
    from mamba_bio_audio.benchmarks.packed import packed_markdown, run_packed_bench
    from mamba_bio_audio.benchmarks.train import default_backend

    if not 1 <= min_length <= max_length:
        raise UserError(f"--min-length {min_length} and --max-length {max_length}: need 1 <= min <= max")
    if tokens_per_step < max_length:
        raise UserError(f"--tokens-per-step {tokens_per_step} must hold one --max-length {max_length} sequence")
    device = _device(device)
    backend = default_backend(backend, device)
    scan_backend = scan_backend or ("triton" if device.startswith("cuda") else "reference")
    shape_list = options.parse_shapes(scan_shapes, "--scan-shapes") if scan_shapes else []
    check_output_folder(out, "bench packed", overwrite=overwrite)
    result = run_packed_bench(sequences=sequences, min_length=min_length, max_length=max_length,
                              tokens_per_step=tokens_per_step, d_model=d_model, n_layer=n_layer, backend=backend,
                              scan_shapes=shape_list, scan_backend=scan_backend, device=device, seed=seed,
                              progress=progress)
    result["environment"] = environment()
    return _save(out, "bench packed", "bench_packed", result, packed_markdown(result, result["environment"]),
                 overwrite)


def train(*, shapes: str, d_model: int, n_layer: int, transformer_layers: int, n_head: int, vocab_size: int,
          models: str, backend: str | None, warmup: int, steps: int, device: str | None, out: Path,
          overwrite: bool, progress: Progress, cuda_graphs: bool = False, fused_inner: str = "keep",
          fused_save_every: int | None = None, scan_softplus: str | None = None, rounds: int = 1,
          scan_bwd_maxnreg: int | None = None) -> str:
    """``mba bench train``: :func:`~mamba_bio_audio.benchmarks.train.run_train_bench`, report ``bench_train``
    with its figure. ``cuda_graphs``: the rows of our Mamba and mamba_ssm replay a captured step (CUDA only; the
    Transformer stays eager). ``fused_inner``: our Mamba's ``MambaConfig.fused_inner``, or several
    comma-separated (one row of ours each); ``fused_save_every`` (with a fused value) sets the environment
    variable MBA_FUSED_SAVE_EVERY for this process, ``scan_softplus`` MBA_SCAN_SOFTPLUS, ``scan_bwd_maxnreg``
    MBA_SCAN_BWD_MAXNREG (checked before anything runs). ``rounds``: each shape
    measured that many times, the models' order reversed every other round."""
    from mamba_bio_audio.benchmarks.train import (
        default_backend,
        run_train_bench,
        train_figure,
        train_markdown,
    )

    pairs = options.parse_pairs(shapes, "--shapes")
    names = options.parse_models(models)
    size = options.bench_size(d_model, n_layer, transformer_layers, n_head, vocab_size)
    device = _device(device)
    graph_models = options.cuda_graph_models(cuda_graphs, names, device)
    backend = default_backend(backend, device)
    fused = options.parse_fused_inner(fused_inner)
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    if fused_save_every is not None:
        if fused == ["off"]:
            raise UserError("--fused-save-every applies to the fused inner mixer, not --fused-inner off")
        from mamba_bio_audio.ops import FUSED_SAVE_EVERY_ENV

        os.environ[FUSED_SAVE_EVERY_ENV] = str(fused_save_every)
    if scan_softplus is not None:
        from mamba_bio_audio.ops import SCAN_SOFTPLUS_ENV

        os.environ[SCAN_SOFTPLUS_ENV] = scan_softplus
    if scan_bwd_maxnreg is not None:
        from mamba_bio_audio.kernels.selective_scan.plan import BWD_MAXNREG_ENV

        os.environ[BWD_MAXNREG_ENV] = str(scan_bwd_maxnreg)
    from mamba_bio_audio.kernels.selective_scan.function import bwd_maxnreg_default

    try:
        bwd_maxnreg_default()  # a bad value (flag or environment) stops here, not inside the first step
    except ValueError as e:
        raise UserError(str(e)) from None
    check_output_folder(out, "bench train", overwrite=overwrite)
    rows = run_train_bench(names, pairs, size, device, warmup=warmup, steps=steps, backend=backend,
                           cuda_graph_models=graph_models, fused_inner=fused, rounds=rounds, progress=progress)
    env = environment()
    data = {"rows": rows, "size": asdict(size), "warmup": warmup, "steps": steps, "rounds": rounds,
            "device": device, "cuda_graph_models": list(graph_models), "fused_inner": ",".join(fused),
            "environment": env}
    return _save(out, "bench train", "bench_train", data, train_markdown(rows, env, size, warmup, steps), overwrite,
                 figure=lambda path: train_figure(path, rows))


def generate(*, batch_sizes: str, new_tokens: int, prompt_len: int, repeats: int, d_model: int, n_layer: int,
             transformer_layers: int, n_head: int, vocab_size: int, models: str, backend: str | None,
             cuda_graph: bool | None, attention_bucket: int, largest_batch: bool, largest_new_tokens: int,
             max_batch: int, device: str | None, out: Path, overwrite: bool, progress: Progress) -> str:
    """``mba bench generate``: :func:`~mamba_bio_audio.benchmarks.generate.run_generate_bench` (and, with
    ``largest_batch``, :func:`~mamba_bio_audio.benchmarks.generate.run_largest_batch`), report ``bench_generate``
    with its figure."""
    from mamba_bio_audio.benchmarks.generate import (
        LARGEST_MODELS,
        generate_figure,
        generate_markdown,
        run_generate_bench,
        run_largest_batch,
    )
    from mamba_bio_audio.benchmarks.train import default_backend

    batches = options.parse_batch_sizes(batch_sizes)
    names = options.parse_models(models)
    size = options.bench_size(d_model, n_layer, transformer_layers, n_head, vocab_size)
    device = _device(device)
    backend = default_backend(backend, device)
    check_output_folder(out, "bench generate", overwrite=overwrite)
    rows = run_generate_bench(names, batches, size, device, prompt_len=prompt_len, new_tokens=new_tokens,
                              repeats=repeats, backend=backend, cuda_graph=cuda_graph,
                              attention_bucket=attention_bucket, progress=progress)
    largest = None
    if largest_batch:
        largest = run_largest_batch([m for m in LARGEST_MODELS if m in names] or list(LARGEST_MODELS), size,
                                    device, prompt_len=prompt_len, new_tokens=largest_new_tokens,
                                    max_batch=max_batch, backend=backend, cuda_graph=cuda_graph,
                                    attention_bucket=attention_bucket, progress=progress)
    env = environment()
    data = {"rows": rows, "largest_batch": largest, "size": asdict(size), "device": device, "environment": env}
    return _save(out, "bench generate", "bench_generate", data, generate_markdown(rows, largest, env, size),
                 overwrite, figure=lambda path: generate_figure(path, rows, largest))


def cpu(*, lengths: str, batch: int, d_model: int, n_layer: int, vocab_size: int, threads: int, repeats: int,
        warmup: int, atol: float, out: Path, overwrite: bool, progress: Progress) -> str:
    """``mba bench cpu``: :func:`~mamba_bio_audio.benchmarks.cpu.run_cpu_bench`, report ``bench_cpu``."""
    from mamba_bio_audio.benchmarks.cpu import cpu_markdown, import_transformers, run_cpu_bench
    from mamba_bio_audio.recipes.options import parse_int_list

    length_list = parse_int_list(lengths, "--lengths")
    if min(length_list) < 2:
        raise UserError(f"--lengths: need at least 2 tokens (a next-token loss), got {lengths!r}")
    transformers = import_transformers()
    check_output_folder(out, "bench cpu", overwrite=overwrite)
    progress(f"cpu bench: d_model {d_model} x {n_layer}, lengths {length_list}, {threads} threads; report into {out}")
    result = run_cpu_bench(lengths=length_list, batch=batch, d_model=d_model, n_layer=n_layer,
                           vocab_size=vocab_size, threads=threads, repeats=repeats, warmup=warmup, atol=atol,
                           progress=progress)
    result["environment"] = env = {**environment(), "transformers": transformers.__version__}
    return _save(out, "bench cpu", "bench_cpu", result, cpu_markdown(result, env), overwrite)


def context_parallel(*, args: Callable[[dict], list[str]], nproc_per_node: int | None, device: str, out: Path,
                     overwrite: bool, opts) -> str | None:
    """``mba bench context-parallel``: outside torchrun (no ``RANK``), start ``nproc_per_node`` ranks running the
    same command (``args(extra)``: its command line with ``extra`` options replaced) into a temporary sibling of
    ``out``, renamed at the end; inside, one rank's part
    (:func:`~mamba_bio_audio.benchmarks.context_parallel.run`; rank 0 writes the report). ``opts``: its
    :class:`~mamba_bio_audio.benchmarks.context_parallel.ContextParallelOptions`."""
    import torch

    from mamba_bio_audio.benchmarks.launch import run_process
    from mamba_bio_audio.devices import torch_device

    cuda = torch_device(device).type == "cuda"  # a missing GPU is a one-line error
    options.check_dtypes(opts.check_dtypes)
    if "RANK" in os.environ:
        from mamba_bio_audio.benchmarks.context_parallel import run

        run(opts, device, out)
        return None
    n = nproc_per_node or (torch.cuda.device_count() if cuda else 2)
    if cuda and n > torch.cuda.device_count():
        raise UserError(f"--nproc-per-node {n}: only {torch.cuda.device_count()} GPUs here")
    check_output_folder(out, "bench context-parallel", overwrite=overwrite)
    with output_folder(out, "bench context-parallel", overwrite=overwrite) as tmp:
        run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                     "-m", "mamba_bio_audio", "bench", "context-parallel", *args({"--out": str(tmp)})], "torchrun")
    return f"wrote {out / 'context_parallel.json'} and .md"


def ddp(*, args: Callable[[dict], list[str]], opts, run_name: str | None, overwrite: bool) -> str | None:
    """``mba bench ddp``: the one-device and the N-device runs, each in its own process running the same command
    with ``--run NAME`` (``args(extra)`` as for :func:`context_parallel`), into a temporary sibling of
    ``opts.out``; then the comparison report. With ``run_name``, that run only (inside such a process).
    ``opts``: :class:`~mamba_bio_audio.benchmarks.ddp_curve.DDPCurveOptions`."""
    from mamba_bio_audio.benchmarks.ddp_curve import RUNS, compare, train_run
    from mamba_bio_audio.benchmarks.launch import run_process

    if opts.global_batch % opts.devices:
        raise UserError(f"--global-batch {opts.global_batch} is not divisible by --devices {opts.devices}")
    if opts.accelerator == "gpu":
        import torch

        if torch.cuda.device_count() < opts.devices:
            raise UserError(f"--devices {opts.devices}: only {torch.cuda.device_count()} GPUs here")
    if run_name is not None:  # one of the two runs, in its own process (Lightning re-runs it for the other ranks)
        train_run(opts, run_name)
        return None
    out = opts.out
    check_output_folder(out, "bench ddp", overwrite=overwrite)
    with output_folder(out, "bench ddp", overwrite=overwrite) as tmp:
        for name in RUNS:
            run_process([sys.executable, "-m", "mamba_bio_audio", "bench", "ddp",
                         *args({"--run": name, "--out": str(tmp)})], f"the {name} run")
        data = compare(replace(opts, out=tmp))
    return (f"max |loss difference| over {opts.steps} steps: {data['max_abs_diff']:.3e}; wrote "
            f"{out / 'ddp_loss_curve.json'}, .md, .png")


def summary(*, reports: tuple[Path, ...], out: Path, overwrite: bool, progress: Progress) -> str:
    """``mba bench summary``: :func:`~mamba_bio_audio.benchmarks.summary.summarize` of the given reports, written
    as ``bench_summary``."""
    from mamba_bio_audio.benchmarks.summary import summarize_reports, summary_markdown

    if not reports:
        raise UserError("bench summary: give one or more bench_*.json reports")
    rows, skipped = summarize_reports(list(reports))
    check_output_folder(out, "bench summary", overwrite=overwrite)
    for s in skipped:
        progress(f"skipped {s['file']}: a {s['kind']} report ({s['reason']})")
    progress(f"summary of {len(reports)} reports: {len(rows)} rows")
    data = {"rows": rows, "reports": [str(p) for p in reports], "skipped": skipped, "environment": environment()}
    return _save(out, "bench summary", "bench_summary", data, summary_markdown(rows, skipped), overwrite)
