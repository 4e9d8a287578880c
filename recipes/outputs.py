"""Small helpers recipes use to write their outputs atomically (temp file, then rename) and to plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.files import (
    atomic_write_text,
    check_output_file,
    check_output_folder,
    output_folder,
    pyplot,
    run_folder,
    save_figure,
)

__all__ = ["atomic_write_text", "check_output_file", "check_output_folder", "check_resume_config", "output_folder",
           "plot_curve", "read_csv_metric", "report_audio_training", "run_folder", "write_json", "write_yaml"]


def check_resume_config(out: Path, params: dict, keys: tuple[str, ...]) -> None:
    """Before ``--resume`` writes anything: the run's ``checkpoints/last.ckpt`` must load safely (weights only;
    truncated, corrupt or planted files are refused in one line), and each of ``keys`` given on this command line
    (not None) must equal the value in the run's ``config.yaml``, so that a resume with another shape (e.g.
    ``--preset``) is refused and the run's own config stays as it was. A run without a readable config.yaml is
    not compared."""
    import yaml

    from mamba_bio_audio.training.trainer import last_checkpoint, load_training_checkpoint

    ckpt = last_checkpoint(out)
    if ckpt is None:
        raise UserError(f"--resume: no checkpoint to resume from in {Path(out) / 'checkpoints'}")
    load_training_checkpoint(ckpt)

    try:
        saved = yaml.safe_load((Path(out) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(saved, dict):
        return
    for key in keys:
        given = params.get(key)
        if given is None or key not in saved:
            continue
        plain = str(given) if isinstance(given, Path) else given
        if plain != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {plain}: the run in {out} was started with {flag} {saved[key]}; --resume "
                            f"continues it as it was (start a new --out to change it)")


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_csv_metric(logs_dir: Path, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one column over every ``version_*/metrics.csv`` of Lightning's CSVLogger in
    ``logs_dir`` (a resumed run adds a version), in step order; rows without the column are skipped."""
    points: dict[int, float] = {}
    for path in sorted(Path(logs_dir).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get(column) not in (None, ""):
                    points[int(row["step"])] = float(row[column])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_curve(path: Path, xs, ys, xlabel: str, ylabel: str, title: str, ylim: tuple[float, float] | None = None,
               marker: str | None = None, reference: tuple[float, str] | None = None,
               vline: tuple[float, str] | None = None) -> None:
    """A line plot saved as PNG (headless matplotlib), written atomically. ylim: fixed y range (e.g. 0-100 % for
    accuracies, so that a flat curve is not drawn on a zoomed axis); reference: (y, label) drawn as a dashed
    horizontal line; vline: (x, label) drawn as a dotted vertical line."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(xs, ys, marker=marker, label="ours" if reference else None)
    if reference is not None:
        ax.axhline(reference[0], color="gray", linestyle="--", linewidth=1, label=reference[1])
    if vline is not None:
        ax.axvline(vline[0], color="gray", linestyle=":", linewidth=1, label=vline[1])
    if reference is not None or vline is not None:
        ax.legend(fontsize=7, loc="lower left")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def run_config_value(out: Path, key: str):
    """The value of ``key`` in the run's ``out/config.yaml`` (None when the file or the key is missing): what a
    ``--resume`` takes for options it was not given, e.g. the ``max_steps`` a ``--max-minutes`` run planned."""
    import yaml

    try:
        saved = yaml.safe_load((Path(out) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return saved.get(key) if isinstance(saved, dict) else None


def write_run_config(out: Path, params: dict, **resolved) -> None:
    """``out/config.yaml``: the command's option values (``resolved`` ones replaced by what the run used), so that
    ``--config out/config.yaml`` repeats the run."""
    values = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
              for k, v in {**params, **resolved}.items()}
    write_yaml(out / "config.yaml", values)


def echo_summary(summary: dict) -> None:
    click.echo(f"model: {summary['n_layer']} layers x d_model {summary['d_model']}, {summary['parameters']:,} "
               f"parameters; batch {summary['batch_size']}, lr {summary['lr']:g}; validation: {summary['validation']}")
    if summary.get("sequence_length_warmup"):
        stages = summary["sequence_length_warmup"]["stages"]
        click.echo("sequence-length warm-up: " + ", ".join(f"{s['length']} from step {s['from_step']}"
                                                           for s in stages))


def report_audio_training(out: Path, metrics: dict, title: str, no_val: str) -> None:
    """After an audio LM run (sc09 or audio train): ``out/loss.png`` from its training log, ``out/metrics.json``, and
    one line with the val NLL (``no_val`` says why there is none when it is None)."""
    steps, bits = read_csv_metric(out / "logs", "train/bits_per_token")
    if steps:
        plot_curve(out / "loss.png", steps, bits, "step", "train NLL (bits per sample)", title)
    write_json(out / "metrics.json", metrics)
    val_bits = metrics["val_bits_per_sample"]
    shown = f"n/a ({no_val})" if val_bits is None else f"{val_bits:.4f}"
    click.echo(f"val NLL {shown} bits/sample after {metrics['steps']} steps ({metrics['train_seconds']:.0f} s); "
               f"wrote {out}/model")
