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
    import torch

    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.benchmarks.scan import run_scan_bench

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here")
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
@click.option("--d-model", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--n-layer", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps (median).")
@click.option("--device", default=None, help="cuda (default when present) or cpu.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@config_option
def memory(lengths: str, d_model: int, n_layer: int, steps: int, device: str | None, out: Path) -> None:
    """Training step time and peak memory vs sequence length, with and without activation checkpointing."""
    import torch

    from mamba_bio_audio.benchmarks.memory import measure_step
    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.recipes.options import parse_int_list

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here")
    rows = []
    for seqlen in parse_int_list(lengths, "--lengths"):
        for checkpointing in (True, False):
            click.echo(f"memory bench: seqlen {seqlen}, checkpointing {checkpointing}", err=True)
            rows.append(measure_step(d_model, n_layer, seqlen, checkpointing, device, steps))
    env = environment()
    table = markdown_table(
        ["seqlen", "activation checkpointing", "s/step", "tokens/s", "peak GiB", "note"],
        [[r["seqlen"], r["checkpointing"], r.get("seconds_per_step"), r.get("tokens_per_second"), r.get("peak_gib"),
          r.get("error", "")] for r in rows])
    md = (f"# Training memory vs length\n\n{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}; "
          f"MambaClassifier d_model {d_model} x {n_layer} layers ({rows[0]['parameters']:,} parameters), batch 1, "
          f"bf16 autocast, AdamW; peak = torch.cuda.max_memory_allocated.\n\n{table}")
    json_path, _ = write_report(out, "bench_memory", {"rows": rows, "environment": env}, md)
    click.echo(md)
    click.echo(f"wrote {json_path} and .md")
