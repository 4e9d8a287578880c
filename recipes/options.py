"""Options shared by every recipe: --device, --seed, --out, --config FILE.yaml (flags override it)."""

from __future__ import annotations

from pathlib import Path

import click

from mamba_bio_audio.errors import UserError

ACTION_FLAGS = ("resume", "overwrite")
"""What a command does to its --out: given on the command line each time, never taken from a --config file (a run's
own config.yaml records them, and ``--config RUN/config.yaml --out NEW`` is a new run with the same options)."""


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None):
    """Eager: read YAML into ctx.default_map so that flags given on the command line still win (the
    :data:`ACTION_FLAGS` are left out)."""
    if value is None:
        return None
    import yaml

    path = Path(value)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise click.BadParameter(f"{path}: no such file", ctx=ctx, param=param) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise click.BadParameter(f"{path}: not readable YAML ({_first_line(e)})", ctx=ctx, param=param) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a mapping of option names to values", ctx=ctx, param=param)
    names = {p.name for p in ctx.command.params}
    normalized = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(normalized) - names)
    if unknown:
        raise click.BadParameter(f"{path}: unknown options {', '.join(unknown)}", ctx=ctx, param=param)
    normalized = {k: v for k, v in normalized.items() if k not in ACTION_FLAGS}
    ctx.default_map = {**(ctx.default_map or {}), **normalized}
    return path


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def config_option(f):
    return click.option("--config", "config_file", type=click.Path(dir_okay=False), is_eager=True,
                        expose_value=False, callback=_load_config_file,
                        help="YAML file of option values; flags on the command line override it.")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="auto | cpu | cuda | cuda:N")(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def out_option(required: bool = True, help_text: str = "Output folder."):
    def deco(f):
        return click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=required,
                            help=help_text)(f)
    return deco


def overwrite_file_option(f):
    return click.option("--overwrite", is_flag=True, help="Replace --out if the file exists.")(f)


def overwrite_option(f):
    return click.option("--overwrite", is_flag=True,
                        help="Replace --out when it holds this command's own earlier output (never other files).")(f)


def common_options(f):
    """--device, --seed and --config (apply --out and --preset per command: their help differs)."""
    return config_option(seed_option(device_option(f)))


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise UserError(f"{what}: empty list")
    return values


MAX_STEPS_HELP = "Optimizer steps [default: 1000, or with --max-minutes as many as fit the budget at the measured speed]."
MAX_MINUTES_HELP = ("Wall-clock budget for training: the step count is planned from a measured step time and the run "
                    "stops at the first step past the budget (metrics.json: stopped_by, budget_cut); the model is "
                    "then saved and evaluated.")


def budget_options(f):
    """``--max-steps`` and ``--max-minutes`` of every training command."""
    f = click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                     help=MAX_MINUTES_HELP)(f)
    return click.option("--max-steps", type=click.IntRange(min=1), default=None, help=MAX_STEPS_HELP)(f)


def window_training_options(f):
    """Options shared by ``species train`` and ``dna pretrain``: batch, schedule, sequence-length warm-up,
    activation checkpointing, validation, checkpoints, workers, devices and ``--resume``."""
    for option in reversed([
        click.option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Batches per optimizer step."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Peak learning rate [default: the preset's]."),
        click.option("--warmup-min-length", type=click.IntRange(min=0), default=None,
                     help="Sequence-length warm-up from this length, doubling to --length at constant tokens per batch "
                          "[default: 16384 above 16384, else off; 0: off]."),
        click.option("--warmup-stage-steps", type=click.IntRange(min=1), default=None,
                     help="Steps per warm-up stage [default: max-steps / 10]."),
        click.option("--checkpoint-activations/--no-checkpoint-activations", default=None,
                     help="Recompute activations in the backward pass [default: on from 131072 bases]."),
        click.option("--val-per-species", type=click.IntRange(min=0), default=8, show_default=True),
        click.option("--val-every", type=click.IntRange(min=1), default=None, help="[default: max-steps / 5]"),
        click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True),
        click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
                     help="GPUs per node (data parallel with --strategy ddp|fsdp)."),
        click.option("--num-nodes", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Nodes (launch one process per GPU: docs/multi_gpu.md)."),
        click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
    ]):
        f = option(f)
    return f
