"""Options shared by ``mba audio`` and ``mba sc09`` generate / evaluate: --checkpoint, the sampler's --temperature,
--top-p and --cuda-graph/--eager, and --batch-size at its default of 16 (``sc09 generate`` keeps its own 64)."""

from __future__ import annotations

from pathlib import Path

import click

checkpoint_option = click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
                                 help="Training run folder (or its model/ folder).")
batch_size_option = click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)


def sampling_options(f):
    """``--temperature``, ``--top-p`` and ``--cuda-graph/--eager`` of the autoregressive sampler."""
    for option in reversed([
        click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
        click.option("--cuda-graph/--eager", "cuda_graph", default=None,
                     help="Replay the decode step as CUDA graphs [default: on CUDA devices]."),
    ]):
        f = option(f)
    return f
