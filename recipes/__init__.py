"""Recipes: thin click commands registered under ``mba`` (installed as ``mamba_bio_audio.recipes``).

A recipe parses flags and calls the library and data_prep; it holds no math. Heavy imports happen inside commands
so that ``mba --help`` stays fast.
"""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add every recipe's command or group to the ``mba`` group."""
    from mamba_bio_audio.recipes.audio import audio
    from mamba_bio_audio.recipes.bench import bench
    from mamba_bio_audio.recipes.demo import demo
    from mamba_bio_audio.recipes.dna import dna
    from mamba_bio_audio.recipes.push import push
    from mamba_bio_audio.recipes.sc09 import sc09
    from mamba_bio_audio.recipes.species import species
    from mamba_bio_audio.recipes.synthetic import synthetic

    cli.add_command(demo)
    cli.add_command(bench)
    cli.add_command(dna)
    cli.add_command(species)
    cli.add_command(sc09)
    cli.add_command(audio)
    cli.add_command(synthetic)
    cli.add_command(push)
