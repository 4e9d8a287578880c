"""Options shared by every recipe: --device, --seed, --out, --config FILE.yaml (flags override it)."""

from __future__ import annotations

from pathlib import Path

import click

from mamba_bio_audio.errors import UserError


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None):
    """Eager: read YAML into ctx.default_map so that flags given on the command line still win."""
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
