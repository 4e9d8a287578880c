"""The ``mba`` command line (also ``python -m mamba_bio_audio``).

Recipes register their click groups in :func:`mamba_bio_audio.recipes.register`. Every user mistake (bad flag,
bad file, bad checkpoint) ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from mamba_bio_audio import __version__
from mamba_bio_audio.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="mba")
def cli() -> None:
    """mamba_bio_audio: Mamba selective state-space models for genomics and raw audio."""


def _register() -> None:
    from mamba_bio_audio.recipes import register

    register(cli)


_register()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    """Run ``mba``; exit codes: 0 ok, 2 user error, 130 interrupted."""
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
    except KeyboardInterrupt:
        click.echo("mba: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
