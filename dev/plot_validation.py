"""Validation accuracy vs training step for several synthetic-task runs, in one PNG.

    python dev/plot_validation.py --out results/synthetic/induction_validation.png \
        "part 1 (lr 3e-3)=results/synthetic/runs/induction_heads_mamba_S6_part1" \
        "continued, lr 1e-3 cosine=results/synthetic/attempts/induction_continue_lr1e-3_cosine"

Each RUN folder gives its validations from metrics.json's ``val_history`` or, for runs written before that
existed, from the Lightning log ``metrics.csv`` in the folder (or under logs/*/). A run that continued another
(``init_from`` / ``prior_steps`` in metrics.json) is drawn from the step where that one ended.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from mamba_bio_audio.files import pyplot, save_figure


def validations(run: Path) -> list[tuple[int, float]]:
    """[(step, validation accuracy)] of one run folder."""
    metrics = run / "metrics.json"
    if metrics.is_file():
        history = json.loads(metrics.read_text()).get("val_history")
        if history:
            return [(h["step"], h["accuracy"]) for h in history]
    for path in [run / "metrics.csv", *sorted(run.glob("logs/*/metrics.csv"))]:
        if path.is_file():
            with path.open() as f:
                return [(int(r["step"]), float(r["val/accuracy"])) for r in csv.DictReader(f)
                        if r.get("val/accuracy")]
    raise click.UsageError(f"{run}: no val_history in metrics.json and no metrics.csv")


def prior_steps(run: Path) -> int:
    metrics = run / "metrics.json"
    return int(json.loads(metrics.read_text()).get("prior_steps") or 0) if metrics.is_file() else 0


@click.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--title", default="Induction heads: validation accuracy at length 2^20 (trained at 256)")
def main(runs: tuple[str, ...], out: Path, title: str) -> None:
    """RUNS: LABEL=FOLDER pairs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    for item in runs:
        label, _, folder = item.rpartition("=")
        run = Path(folder)
        points = validations(run)
        start = prior_steps(run)
        ax.plot([start + s for s, _ in points], [100 * a for _, a in points], marker=".", label=label or run.name)
    ax.set_xlabel("training step (continued runs from where their start ended)")
    ax.set_ylabel("validation accuracy, %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
