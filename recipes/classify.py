"""``mba dna classify prepare | train | evaluate | predict``: classify the user's own labelled DNA sequences.

    mba dna classify prepare  seqs.csv --out STORE [--sequence-column seq --label-column y --split-column split]
    mba dna classify prepare  labelled.fa.gz --out STORE [--label-key label]       # '>id label=X [split=test]'
    mba dna classify prepare  human_nontata_promoters/ --out STORE                 # Genomic Benchmarks folder
    mba dna classify prepare  --download human_nontata_promoters --out STORE       # ... fetched by name
    mba dna classify prepare  promoter_all/ --out STORE                            # NT task: train.csv, test.csv
    mba dna classify prepare  external.csv --split-column split --out TEST_STORE   # every row 'test': test-only
    mba dna classify train    --data STORE --out RUN [--init-from PRETRAINED] [--class-weights] [--pack]
    mba dna classify evaluate --checkpoint RUN --data STORE --out EVAL             # beside the 6-mer baseline
    mba dna classify evaluate --checkpoint RUN --data TEST_STORE --out EVAL        # an external test set
    mba dna classify predict  --checkpoint RUN seqs.csv --out preds.tsv

The work is done by :mod:`mamba_bio_audio.tasks.classify`; these commands parse flags and write outputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.recipes.options import (
    budget_options,
    common_options,
    config_option,
    device_option,
    overwrite_file_option,
    overwrite_option,
)
from mamba_bio_audio.recipes.outputs import (
    check_checkpoint_fits,
    check_output_file,
    check_output_folder,
    output_folder,
    resume_params,
    run_folder,
    write_json,
)

DIR = click.Path(file_okay=False, path_type=Path)
FORMAT_CHOICES = ("auto", "table", "nt", "fasta", "genomic-benchmarks")
PRESET_NAMES = ("tiny", "paper-1.4m", "paper-7m")


def reader_options(f):
    """How to read an input file: its format, columns or header key, and --lenient."""
    for option in reversed([
        click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="auto", show_default=True,
                     help="Input layout (auto: a folder of train/test class folders is Genomic Benchmarks, of "
                          "train.csv/test.csv an NT task; a file starting with '>' FASTA; else CSV/TSV; table: "
                          "one CSV/TSV file)."),
        click.option("--sequence-column", default="sequence", show_default=True,
                     help="CSV/TSV column of bases (NT task files too)."),
        click.option("--label-column", default="label", show_default=True,
                     help="CSV/TSV column of labels (NT task files too)."),
        click.option("--split-column", default=None,
                     help="CSV/TSV column of splits (train, val/dev, test); an empty cell is train (and so may be "
                          "drawn for val); no split at all: every row is drawn."),
        click.option("--id-column", default=None,
                     help="CSV/TSV column of ids [default: the line number; NT task files: 'name' if present]."),
        click.option("--label-key", default="label", show_default=True,
                     help="FASTA header key of the label ('>id label=X')."),
        click.option("--lenient", is_flag=True, help="Encode invalid characters as [UNK] instead of failing."),
    ]):
        f = option(f)
    return f


def _columns(fmt: str, sequence_column: str, label_column: str, split_column: str | None, id_column: str | None,
             label_key: str) -> dict:
    """The reader keywords of ``fmt`` (the table columns only for CSV/TSV and NT task files, the header key only
    for FASTA)."""
    columns = {}
    if fmt in ("auto", "table", "nt"):
        columns.update(sequence_column=sequence_column, label_column=label_column, split_column=split_column,
                       id_column=id_column)
    if fmt in ("auto", "fasta"):
        columns.update(label_key=label_key)
    return columns


@click.group("classify")
def classify() -> None:
    """Classify your own labelled sequences (CSV/TSV, FASTA, Genomic Benchmarks, NT tasks)."""


@classify.command("prepare")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=DIR, required=True, help="Token store folder to write (replaced atomically).")
@click.option("--download", default=None, help="Fetch this Genomic Benchmarks data set by name (needs network).")
@click.option("--download-dir", type=DIR, default=None, help="Where --download puts it [~/.genomic_benchmarks].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of train drawn for validation when the input gives no val split (drawn per distinct "
                   "sequence: identical ones share a split).")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share drawn for test when the input gives no split at all. Input whose rows are all test "
                   "(or val) makes a test-only store, for 'classify evaluate'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the drawn splits.")
@reader_options
@overwrite_option
@config_option
def prepare(source: Path | None, out: Path, download: str | None, download_dir: Path | None, val_fraction: float,
            test_fraction: float, seed: int, fmt: str, sequence_column: str, label_column: str,
            split_column: str | None, id_column: str | None, label_key: str, lenient: bool, overwrite: bool) -> None:
    """Labelled sequences -> a token store (one entry per sequence, its label and split).

    Sequences without a split are train; when none has a split, val and test are drawn (seeded, per distinct
    sequence). Identical sequences in train and val/test of the input's own splits are kept, with a warning.
    """
    from mamba_bio_audio.tasks.classify import prepare as prepare_store
    from mamba_bio_audio.tasks.classify import split_summary

    fmt_for_columns = "genomic-benchmarks" if download else fmt
    inputs = (source, download_dir)
    check_output_folder(out, "dna classify prepare", overwrite=overwrite, inputs=inputs)
    with output_folder(out, "dna classify prepare", overwrite=overwrite, inputs=inputs) as tmp, \
            _unread_columns_as_lines("mba dna classify prepare"):
        store = prepare_store(source, tmp, fmt=fmt, download=download, download_dir=download_dir,
                              val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, lenient=lenient,
                              **_columns(fmt_for_columns, sequence_column, label_column, split_column, id_column,
                                         label_key))
        summary, count, meta = split_summary(store), len(store), store.meta
    click.echo(summary)
    if sum(meta["duplicates"].values()):
        held_out = " and ".join(f"{n:,} {split}" for split, n in meta["duplicates"].items() if n)
        click.echo(f"mba dna classify prepare: warning: {held_out} sequence(s) are identical to a train sequence "
                   f"(the input's own splits; counted in the store's meta 'duplicates')", err=True)
    if meta["test_only"]:
        click.echo(f"test-only store (no train split): evaluate a trained model on it with "
                   f"'mba dna classify evaluate --checkpoint RUN --data {out}'")
    click.echo(f"wrote {out} ({count:,} sequences, labels {', '.join(meta['labels'])})")


@classify.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Store from 'classify prepare' [required; with --resume: the run's].")
@click.option("--out", type=DIR, required=True, help="Run folder: config.yaml, model/, metrics.json, logs.")
@budget_options
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Model size [default: tiny, or the shape of --init-from].")
@click.option("--init-from", type=click.Path(path_type=Path), default=None,
              help="A 'dna pretrain' run, or a trained species/classify model, whose backbone starts the model.")
@click.option("--bidirectional/--unidirectional", default=None,
              help="Each mixer also reads the sequence backwards [default: off, or as the --init-from model].")
@click.option("--pooling", type=click.Choice(["last", "mean"]), default=None,
              help="Classify from the mean hidden state or the last base's [default: mean, or the --init-from "
                   "classifier's].")
@click.option("--class-weights", is_flag=True, help="Weigh the loss by inverse class frequency (imbalance).")
@click.option("--max-length", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train on random windows of this many bases of longer sequences (0: whole sequences).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Sequences per step [default: the preset's, at most its token budget].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate [default: the preset's].")
@click.option("--rc-prob", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability of reverse-complementing a training sequence.")
@click.option("--pack", is_flag=True,
              help="Pack many train sequences per row (no compute on padding); each is pooled on its own.")
@click.option("--pack-length", type=click.IntRange(min=0), default=0, show_default=True,
              help="Tokens per packed row (0: the longest train sequence, after --max-length); a longer sequence "
                   "gives a random window of it.")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help="[default: max-steps / 5]")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@common_options
def train(data: Path, out: Path, max_steps: int | None, max_minutes: float | None, preset: str | None,
          init_from: Path | None, bidirectional: bool | None, pooling: str | None, class_weights: bool, max_length: int,
          batch_size: int | None, lr: float | None, rc_prob: float, pack: bool, pack_length: int,
          val_every: int | None, checkpoint_every: int, num_workers: int, resume: bool, device: str, seed: int) -> None:
    """Train a MambaClassifier on the train split (length-bucketed, padded batches; or packed rows)."""
    from mamba_bio_audio.models.classifier import MambaClassifier
    from mamba_bio_audio.tasks.classify import (
        ClassifySettings,
        open_labelled_store,
        plan_training,
        run_training,
    )
    from mamba_bio_audio.tasks.species import record_architecture, recorded_architecture
    from mamba_bio_audio.tasks.windows import is_main_process, refuse_to_overwrite, require_unless_resume

    ctx = click.get_current_context()
    require_unless_resume(ctx.params, resume, "data")
    refuse_to_overwrite(out, resume)
    check_output_folder(out, "dna classify train", resume=resume, overwrite=True, inputs=(data, init_from))
    p = resume_params(out, ctx) if resume else dict(ctx.params)  # a resume: the run's own options
    if open_labelled_store(p["data"]).meta.get("test_only"):
        raise UserError(f"{p['data']}: a test-only store (no train split) is for 'classify evaluate'; train on a "
                        f"store with train sequences")
    settings = ClassifySettings(
        length=p["max_length"], max_steps=p["max_steps"], max_minutes=max_minutes, preset=p["preset"],
        batch_size=p["batch_size"], lr=p["lr"], rc_prob=p["rc_prob"], val_every=val_every,
        checkpoint_every=checkpoint_every, num_workers=num_workers, device=device, seed=p["seed"],
        bidirectional=p["bidirectional"], pooling=p["pooling"], class_weights=p["class_weights"],
        init_from=None if p["init_from"] is None else str(p["init_from"]), pack=p["pack"],
        pack_length=p["pack_length"])
    architecture = recorded_architecture(out) if resume else None  # a resume's model: the run's, not the donor's
    plan = plan_training(p["data"], settings, architecture=architecture)
    if resume:
        check_checkpoint_fits(out, plan.task)
    if is_main_process():
        s = plan.summary
        click.echo(f"model: {s['n_layer']} layers x d_model {s['d_model']}, {s['parameters']:,} parameters; batch "
                   f"{s['batch_size']}, lr {s['lr']:g}; {s['train_sequences']:,} train sequences; validation: "
                   f"{s['validation']}")
        run_folder(out, "dna classify train", resume=resume, inputs=(p["data"], init_from))
        named = s["preset"] in PRESET_NAMES and isinstance(plan.model, MambaClassifier)  # not a Caduceus' shape
        preset_name = s["preset"] if named else p["preset"]
        _write_config(out, {**p, "batch_size": s["batch_size"], "lr": s["lr"], "max_steps": s["max_steps"],
                            "preset": preset_name, "bidirectional": s["bidirectional"], "pooling": s["pooling"]})
        if architecture is None or not architecture["recorded"]:
            record_architecture(out, plan.model, settings.init_from)  # what a --resume builds the model from
    metrics = run_training(plan, out, resume=resume)
    if is_main_process():
        metrics["data"] = str(p["data"])
        write_json(out / "metrics.json", metrics)
        val = f"val accuracy {metrics['val']['accuracy']:.3f}, " if "val" in metrics else ""
        click.echo(f"{val}{metrics['train_seconds']:.0f} s; wrote {out}/: model/, metrics.json, config.yaml, logs/")


@classify.command("evaluate")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A 'classify train' run folder.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Store from 'classify prepare'.")
@click.option("--out", type=DIR, required=True, help="Folder for metrics.json and the confusion matrix PNGs.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score the 6-mer logistic regression fit on the train split.")
@click.option("--baseline-max-train", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Train sequences the baseline fits on at most (a seeded subset beyond).")
@click.option("--rc-average/--no-rc-average", default=False, show_default=True,
              help="Score each sequence as the mean of its and its reverse complement's probabilities, the model's "
                   "and the baseline's (for labels that do not depend on the strand).")
@overwrite_option
@common_options
def evaluate(checkpoint: Path, data: Path, out: Path, split: str, batch_size: int, baseline: bool,
             baseline_max_train: int, rc_average: bool, overwrite: bool, device: str, seed: int) -> None:
    """Accuracy, MCC, macro-F1, AUROC (binary) and the confusion matrix, beside the k-mer baseline (left out for a
    test-only store: it fits on the train split)."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.metrics.classification import plot_confusion_matrix
    from mamba_bio_audio.tasks.classify import evaluate as evaluate_store
    from mamba_bio_audio.tasks.classify import open_labelled_store, results_table
    from mamba_bio_audio.tasks.species import load_classifier
    from mamba_bio_audio.tasks.windows import weights_input

    inputs = (weights_input(checkpoint), data)  # --out RUN/eval is fine: the weights are RUN/model
    check_output_folder(out, "dna classify evaluate", overwrite=overwrite, inputs=inputs)
    if baseline and "train" not in open_labelled_store(data).meta["counts"]:
        click.echo(f"{data} has no train split: the 6-mer baseline (fit on train) is left out")
        baseline = False
    torch_dev = torch_device(device)
    model = load_classifier(checkpoint, torch_dev)
    result = evaluate_store(model, data, split=split, batch_size=batch_size, device=torch_dev, baseline=baseline,
                            baseline_max_train=baseline_max_train, seed=seed, rc_average=rc_average)
    result.update(checkpoint=str(checkpoint), data=str(data))
    plots = ["confusion_matrix.png", *(["confusion_matrix_baseline.png"] if "baseline" in result else [])]
    with output_folder(out, "dna classify evaluate", overwrite=overwrite, inputs=inputs) as tmp:
        tmp.mkdir()
        _write_config(tmp, click.get_current_context().params)
        write_json(tmp / "metrics.json", result)
        plot_confusion_matrix(tmp / plots[0], result["model"]["confusion_matrix"], result["labels"],
                              f"Mamba, {split} split: accuracy {result['model']['accuracy']:.3f}")
        if "baseline" in result:
            plot_confusion_matrix(tmp / plots[1], result["baseline"]["confusion_matrix"], result["labels"],
                                  f"6-mer LR, {split} split: accuracy {result['baseline']['accuracy']:.3f}")
    click.echo(results_table(result))
    click.echo(f"wrote {out}/: metrics.json, {', '.join(plots)}, config.yaml")


@classify.command("predict")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A 'classify train' run folder.")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="TSV file to write.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--rc-average/--no-rc-average", default=False, show_default=True,
              help="Each sequence's probabilities averaged with its reverse complement's (both strands).")
@reader_options
@overwrite_file_option
@device_option
@config_option
def predict(checkpoint: Path, source: Path, out: Path, batch_size: int, rc_average: bool, fmt: str,
            sequence_column: str, label_column: str, split_column: str | None, id_column: str | None, label_key: str,
            lenient: bool, overwrite: bool, device: str) -> None:
    """Class probabilities of every sequence of a file (labels optional), as TSV."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.classify import predict_file
    from mamba_bio_audio.tasks.species import load_classifier
    from mamba_bio_audio.tasks.windows import weights_input

    # --out RUN/preds.tsv is fine: the run's weights (RUN/model) are the input
    check_output_file(out, inputs=(weights_input(checkpoint), source), overwrite=overwrite,
                      inside_ok=(checkpoint,))
    torch_dev = torch_device(device)
    model = load_classifier(checkpoint, torch_dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    no_bases: list[str] = []
    with _unread_columns_as_lines("mba dna classify predict"):
        rows = predict_file(model, source, out, fmt=fmt, batch_size=batch_size, device=torch_dev, lenient=lenient,
                            no_bases=no_bases, rc_average=rc_average,
                            **_columns(fmt, sequence_column, label_column, split_column, id_column, label_key))
    if no_bases:
        click.echo(f"mba dna classify predict: warning: {len(no_bases)} sequence(s) hold no A/C/G/T base (all N), so "
                   f"no prediction (empty 'predicted', nan probabilities): {', '.join(no_bases[:3])}"
                   f"{', ...' if len(no_bases) > 3 else ''}", err=True)
    click.echo(f"wrote {rows} rows to {out}")


@contextmanager
def _unread_columns_as_lines(command: str) -> Iterator[None]:
    """Print each CSV/TSV column that looks like the ids but no flag reads (an
    :class:`~mamba_bio_audio.data_prep.dna.labelled.UnreadColumnWarning`) as one warning line, once."""
    from mamba_bio_audio.data_prep.dna.labelled import UnreadColumnWarning

    shown: set[str] = set()

    def show(message, category, *args, **kwargs):
        if issubclass(category, UnreadColumnWarning):
            if str(message) not in shown:
                shown.add(str(message))
                click.echo(f"{command}: warning: {message}", err=True)
        else:
            previous(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UnreadColumnWarning)
        previous = warnings.showwarning
        warnings.showwarning = show
        yield


def _write_config(out: Path, params: dict) -> None:
    """``out/config.yaml``: the option values of this run (``--config`` repeats it)."""
    from mamba_bio_audio.recipes.outputs import write_yaml

    write_yaml(out / "config.yaml", {k: str(v) if isinstance(v, Path) else v for k, v in params.items()})
