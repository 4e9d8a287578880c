"""``mba push RUN_OR_MODEL_FOLDER ORG/NAME``: publish a trained model on the Hugging Face Hub.

    mba push runs/pretrain me/dna-mamba                        config.json, model.safetensors, README.md card
    mba push runs/pretrain me/dna-mamba-hf --layout transformers   loadable by transformers' MambaForCausalLM

The card holds the run's config.yaml and metrics.json when the folder is a run (or a run's ``model/``). The token
is ``HF_TOKEN`` (or ``hf auth login``'s); the work is done by :mod:`mamba_bio_audio.publish`.
"""

from __future__ import annotations

from pathlib import Path

import click

LAYOUT_HELP = ("mamba_ssm: ours (MambaLM.from_pretrained, mamba_ssm); transformers: MambaForCausalLM's keys and "
               "names (a Mamba LM only).")


@click.command("push")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--layout", type=click.Choice(["mamba_ssm", "transformers"]), default="mamba_ssm", show_default=True,
              help=LAYOUT_HELP)
@click.option("--private/--public", default=None, help="Visibility of a new repository [default: the Hub's].")
@click.option("--revision", default=None, help="Branch to push to (created if missing) [default: main].")
@click.option("--message", default=None, help="Commit message [default: 'Upload model'].")
def push(folder: Path, repo_id: str, layout: str, private: bool | None, revision: str | None,
         message: str | None) -> None:
    """Upload a run's (or a model folder's) model to the Hugging Face Hub model repository REPO_ID."""
    from mamba_bio_audio.publish import push_folder

    url = push_folder(folder, repo_id, layout=layout, private=private, revision=revision, commit_message=message)
    click.echo(f"pushed {folder} to {repo_id} ({layout} layout): {url}")
