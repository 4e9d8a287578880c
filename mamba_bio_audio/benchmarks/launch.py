"""Benchmarks that run in several processes start the same ``mba bench`` command again in each: the command line
that reproduces a click command's option values, and running a child process."""

from __future__ import annotations

import subprocess

import click

from mamba_bio_audio.errors import UserError


def command_args(ctx: click.Context, extra: dict[str, str] | None = None) -> list[str]:
    """The options of ``ctx``'s command as a command line (visible options that are set; flags by their on/off
    name), with ``extra`` ``{flag: value}`` replacing or adding options (e.g. ``--out`` of the child's folder)."""
    extra = extra or {}
    args = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or not param.expose_value or param.hidden or param.opts[0] in extra:
            continue
        value = ctx.params[param.name]
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            args += [param.opts[0]] if value else []
        elif value is not None:
            args += [param.opts[0], str(value)]
    for flag, value in extra.items():
        args += [flag, value]
    return args


def run_process(cmd: list[str], what: str) -> None:
    """Run ``cmd``; a non-zero exit is a one-line :class:`UserError` naming ``what``."""
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise UserError(f"{what} exited with code {code}")
