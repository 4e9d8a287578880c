"""The ``mba`` command line (also ``python -m mamba_bio_audio``).

Recipes register their click groups in :func:`mamba_bio_audio.recipes.register`. Every user mistake (bad flag,
bad file, bad checkpoint) and every failure of the environment (a read-only or full disk, out of memory) ends in
one line on stderr and exit code 2, never a traceback. Training stopped by SIGTERM / SIGINT exits 143 / 130 after
saving a resumable checkpoint. Anything else is an internal error: one line and exit code 1, the traceback only
with ``mba --debug`` (or ``MBA_DEBUG=1``).
"""

from __future__ import annotations

import errno
import os
import sys

import click

from mamba_bio_audio import __version__
from mamba_bio_audio.errors import TrainingStopped, UserError

_debug = False

# OSError numbers that say the environment, not the program, failed
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT,
                      errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENOMEM,
                      errno.EIO, errno.EFBIG}


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    global _debug
    _debug = _debug or bool(value)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="mba")
@click.option("--debug", is_flag=True, is_eager=True, expose_value=False, callback=_set_debug,
              help="Show the full traceback of an internal error.")
def cli() -> None:
    """mamba_bio_audio: Mamba selective state-space models for genomics and raw audio."""


def _register() -> None:
    from mamba_bio_audio.recipes import register

    register(cli)


_register()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _environment_message(e: BaseException) -> str | None:
    """One line for a failure of the environment (disk, permissions, memory), or None for anything else."""
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or os.strerror(e.errno)}"
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller batch, length or model)"
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(e, oom):
        return "out of GPU memory (try a smaller --batch-size or length, or --checkpoint-activations)"
    return None


def main(argv: list[str] | None = None) -> None:
    """Run ``mba``; exit codes: 0 ok, 1 internal error, 2 user or environment error, 130 interrupted (SIGINT),
    143 stopped by SIGTERM."""
    global _debug
    _debug = os.environ.get("MBA_DEBUG", "") not in ("", "0")
    try:
        cli.main(args=argv, prog_name="mba", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("mba: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "mba"
        click.echo(f"{where}: error: {_one_line(e.format_message())}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"mba: error: {_one_line(e.format_message())}", err=True)
        sys.exit(2)
    except UserError as e:
        click.echo(f"mba: error: {_one_line(e)}", err=True)
        sys.exit(2)
    except TrainingStopped as e:
        click.echo(f"mba: {_one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("mba: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 (the last line of defence: one line, the traceback behind --debug)
        if _debug:
            raise
        message = _environment_message(e)
        if message is not None:
            click.echo(f"mba: error: {_one_line(message)}", err=True)
            sys.exit(2)
        click.echo(f"mba: internal error: {type(e).__name__}: {_one_line(e)[:300]} (run 'mba --debug ...' for the "
                   f"traceback)", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
