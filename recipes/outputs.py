"""Small helpers recipes use to write their outputs atomically (temp file, then rename) and to plot."""

from __future__ import annotations

import csv
import json
import math
import numbers
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

__all__ = ["atomic_write_text", "check_checkpoint_fits", "check_output_file", "check_output_folder",
           "check_resume_config", "output_folder", "plot_curve", "read_csv_metric", "report_audio_training",
           "resume_params", "run_folder", "saved_run_config", "write_json", "write_yaml"]

# Options a --resume may change: where and how fast the run goes on, not what it trains (see resume_params).
RUNTIME_OPTIONS = frozenset({"out", "resume", "max_steps", "max_minutes", "num_workers", "device", "devices",
                             "num_nodes", "strategy", "checkpoint_every", "val_every", "checkpoint_activations"})
# Options whose value config.yaml records as the run resolved it: a saved None there was not recorded (an older or
# broken config.yaml), not a choice of the run's.
RESOLVED_OPTIONS = ("preset", "batch_size", "lr", "max_steps", "train_length")


def check_resume_config(out: Path, params: dict, keys: tuple[str, ...]) -> None:
    """Before ``--resume`` writes anything: the run's ``checkpoints/last.ckpt`` must load safely (weights only;
    truncated, corrupt or planted files are refused in one line), and each of ``keys`` given on this command line
    (not None) must equal the value in the run's ``config.yaml``, so that a resume with another shape (e.g.
    ``--preset``) is refused and the run's own config stays as it was. A run without a readable config.yaml, or a
    key saved as None (not recorded), is not compared. The training recipes use :func:`resume_params`."""
    from mamba_bio_audio.training.trainer import last_checkpoint, load_training_checkpoint

    ckpt = last_checkpoint(out)
    if ckpt is None:
        raise UserError(f"--resume: no checkpoint to resume from in {Path(out) / 'checkpoints'}")
    load_training_checkpoint(ckpt)
    saved = saved_run_config(out)
    for key in keys:
        given = params.get(key)
        if given is None or saved.get(key) is None:  # a saved None was not recorded
            continue
        plain = str(given) if isinstance(given, Path) else given
        if plain != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {plain}: the run in {out} was started with {flag} {saved[key]}; --resume "
                            f"continues it as it was (start a new --out to change it)")


def resume_params(out: Path, ctx: click.Context, resolved: tuple[str, ...] = RESOLVED_OPTIONS) -> dict:
    """The option values a ``--resume`` of the training run in ``out`` continues with: ``ctx.params`` with every
    option not given (neither on the command line nor by ``--config``) taken from the run's ``config.yaml``.

    Planning options (every option but :data:`RUNTIME_OPTIONS`: the data, model, batch, lr, schedule, seed,
    augmentation, validation windows, ...) are the run's: one given with another value than the saved one is a
    one-line UserError naming the option, both values and the run folder. Run-time options may differ: ``out``,
    ``resume``, ``max_steps`` (a resume may train on to more steps; not given: the saved value, the length of the
    run's schedule), ``max_minutes``, ``num_workers``, ``device``, ``devices``, ``num_nodes`` and ``strategy``
    (the hardware; more devices make the global batch larger), ``checkpoint_every``, ``val_every`` and
    ``checkpoint_activations`` (memory only); apart from ``max_steps`` they take this command line's values.
    ``--init-from`` on the command line is refused: the weights come from the checkpoint (the saved value is the
    run's record of its donor; the classifier recipes rebuild the model from the run's architecture.json, without
    reading the donor: :func:`~mamba_bio_audio.tasks.species.recorded_architecture`).

    A saved None of a ``resolved`` option (one the run writes as it resolved it, e.g. ``preset``) or a key missing
    from ``config.yaml`` was not recorded: the given value (or the default) is taken. A run without a readable
    ``config.yaml`` keeps ``ctx.params``. The run's ``checkpoints/last.ckpt`` must load first
    (:func:`check_resume_config`). Nothing is written.
    """
    from click.core import ParameterSource

    check_resume_config(out, {}, ())
    saved = saved_run_config(out)
    params = dict(ctx.params)
    options = {p.name: p for p in ctx.command.params}

    def given(key: str) -> bool:
        return ctx.get_parameter_source(key) not in (None, ParameterSource.DEFAULT)

    if params.get("init_from") is not None and ctx.get_parameter_source("init_from") == ParameterSource.COMMANDLINE:
        raise UserError(f"--init-from {params['init_from']}: --resume continues the run in {out} from its "
                        f"checkpoint, which holds the weights (leave --init-from out)")
    for key, value in ctx.params.items():
        if key not in saved or (key in RUNTIME_OPTIONS and key != "max_steps"):
            continue
        recorded = saved[key]
        if recorded is None and key in resolved:
            continue
        option = options.get(key)
        if not given(key):
            is_path = option is not None and isinstance(option.type, click.Path) and option.type.type is not str
            params[key] = Path(recorded) if is_path and isinstance(recorded, str) else recorded
        elif key not in RUNTIME_OPTIONS and not _same_value(value, recorded):
            raise UserError(f"{_shown(option, key, value)}: the run in {out} was started "
                            f"{_shown(option, key, recorded, started=True)}; --resume continues it as it was (start "
                            f"a new --out to change it)")
    return params


def saved_run_config(out: Path) -> dict:
    """The run's ``out/config.yaml`` as a dict ({} when missing or unreadable): what a ``--resume`` compares with
    and takes the options it was not given from."""
    import yaml

    try:
        saved = yaml.safe_load((Path(out) / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _same_value(given, recorded) -> bool:
    if isinstance(given, Path):
        if recorded is None:
            return False
        return str(given) == str(recorded) or given.resolve() == Path(recorded).resolve()
    if isinstance(given, tuple):
        given = list(given)
    return given == recorded


def _shown(option: click.Parameter | None, key: str, value, started: bool = False) -> str:
    """An option value as the command line spells it: '--batch-size 8', '--no-rcps', 'without --init-from'
    (``started``: 'with --batch-size 8', ...)."""
    flag = "--" + key.replace("_", "-")
    if isinstance(option, click.Option) and option.is_flag and isinstance(value, bool):
        if value:
            text = option.opts[0] if option.opts else flag
        elif option.secondary_opts:
            text = option.secondary_opts[0]
        else:
            return f"without {flag}"
    elif value is None:
        return f"without {flag}"
    else:
        text = f"{flag} {value}"
    return f"with {text}" if started else text


def check_checkpoint_fits(out: Path, module) -> None:
    """Before a ``--resume`` writes anything: the weights of the run's ``checkpoints/last.ckpt`` must have the
    names and shapes of ``module``'s (the planned LightningModule), else a one-line UserError (e.g. a store with
    another number of classes, or another model type)."""
    from mamba_bio_audio.training.trainer import last_checkpoint, load_training_checkpoint

    ckpt = last_checkpoint(out)
    if ckpt is None:
        raise UserError(f"--resume: no checkpoint to resume from in {Path(out) / 'checkpoints'}")
    saved = load_training_checkpoint(ckpt, mmap=True)["state_dict"]  # shapes only: resume_params read it whole
    planned = module.state_dict()
    for name in sorted(set(saved) | set(planned)):
        have = tuple(saved[name].shape) if name in saved else None
        want = tuple(planned[name].shape) if name in planned else None
        if have != want:
            detail = (f"{name} is {list(have)} there, {list(want)} in the planned model"
                      if have is not None and want is not None else
                      f"{name} is only in the {'checkpoint' if have is not None else 'planned model'}")
            raise UserError(f"--resume: the checkpoint in {Path(out) / 'checkpoints'} does not fit the model this "
                            f"command plans ({detail}); --resume continues a run with its own data and options")


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (keys sorted, other objects as ``str``), written atomically. NaN and +-Infinity
    (e.g. an AUROC of a split with one class) are written as ``null``: strict JSON has no such numbers, and Python's
    json would write bare ``NaN`` that other parsers reject."""
    atomic_write_text(path, json.dumps(finite_or_null(data), indent=2, sort_keys=True, default=str,
                                       allow_nan=False) + "\n")


def finite_or_null(data: Any) -> Any:
    """``data`` with every non-finite float (Python's or numpy's) inside dicts, lists and tuples replaced by None."""
    if isinstance(data, dict):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(v) for v in data]
    if isinstance(data, numbers.Real) and not isinstance(data, numbers.Integral) and not math.isfinite(data):
        return None
    return data


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
