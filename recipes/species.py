"""``mba species prepare | train | evaluate | predict``: which species does a DNA window come from?

    mba species prepare  --genomes DIR --out STORE --split-by strain
    mba species train    --data STORE --out RUN --length 1024 [--preset paper-7m] [--init-from PRETRAINED]
    mba species evaluate --checkpoint RUN --data STORE --lengths 1024,4096,16384 --out EVAL
    mba species predict  --checkpoint RUN genome.fa ... --out preds.tsv [--window 1024]

The work is done by :mod:`mamba_bio_audio.tasks.species` (models, training, evaluation, baseline, prediction) and
:mod:`mamba_bio_audio.data_prep.dna` (genomes -> token store -> windows); these commands parse flags and write
outputs. Every input is checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import click

from mamba_bio_audio.recipes.options import (
    budget_options,
    common_options,
    config_option,
    device_option,
    overwrite_file_option,
    overwrite_option,
    parse_int_list,
    window_training_options,
)
from mamba_bio_audio.recipes.outputs import (
    atomic_write_text,
    check_checkpoint_fits,
    check_output_file,
    check_output_folder,
    echo_summary,
    output_folder,
    resume_params,
    run_folder,
    write_json,
    write_run_config,
)

PRESET_NAMES = ("tiny", "paper-1.4m", "paper-7m")
DIR = click.Path(file_okay=False, path_type=Path)


@click.group("species")
def species() -> None:
    """DNA species classification: prepare genomes, train, evaluate across window lengths, predict."""


# ---- prepare ------------------------------------------------------------------------------------------------------
@species.command("prepare")
@click.option("--genomes", type=click.Path(path_type=Path), required=True,
              help="Folder of <species>.fa[.gz]/.2bit files or <species>/ folders of them.")
@click.option("--out", type=DIR, required=True, help="Token store folder to write (replaced atomically).")
@click.option("--split-by", type=click.Choice(["record", "strain", "fraction"]), default="record", show_default=True,
              help="Hold out whole records (chromosomes), whole strains, or a region of every record.")
@click.option("--val", "val_names", default=None, help="Comma-separated records/strains for val (default: drawn; record/strain splits only).")
@click.option("--test", "test_names", default=None, help="Comma-separated records/strains for test (default: drawn; record/strain splits only).")
@click.option("--lenient", is_flag=True, help="Encode invalid characters as [UNK] instead of failing.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the drawn held-out records/strains.")
@overwrite_option
@config_option
def prepare(genomes: Path, out: Path, split_by: str, val_names: str | None, test_names: str | None,
            lenient: bool, seed: int, overwrite: bool) -> None:
    """Genome FASTA files -> a token store with species labels and train/val/test splits."""
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.data_prep.store import TokenStore

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    check_output_folder(out, "species prepare", overwrite=overwrite, inputs=(genomes,))
    with output_folder(out, "species prepare", overwrite=overwrite, inputs=(genomes,)) as tmp:
        prepare_genomes(genomes, tmp, split_by, val=names(val_names), test=names(test_names), seed=seed,
                        lenient=lenient)
    bases: dict[str, dict[str, int]] = {}
    units: dict[tuple[str, str], list[str]] = {}  # (species, split) -> the strains / records held there
    unit = {"strain": "strain", "record": "record"}.get(split_by)  # --split-by fraction: regions, no names
    for rec in TokenStore(out).records:
        per_split = bases.setdefault(rec["species"], {})
        per_split[rec["split"]] = per_split.get(rec["split"], 0) + rec["length"]
        held = units.setdefault((rec["species"], rec["split"]), [])
        if unit and rec.get(unit) and rec[unit] not in held:
            held.append(rec[unit])

    def named(species: str, split: str) -> str:  # which strains (records) a split holds: "(DH1)"
        held = units.get((species, split), [])
        return (f" ({', '.join(held[:3])}{f', ... {len(held)} {unit}s' if len(held) > 3 else ''})"
                if held and split != "train" else "")

    for name, per_split in bases.items():
        click.echo(f"{name}: " + ", ".join(f"{split} {n:,}{named(name, split)}" for split, n
                                           in sorted(per_split.items())) + " bases")
    for name, per_split in bases.items():  # e.g. --test named without --val: say what is missing
        missing = [split for split in ("val", "test") if split not in per_split]
        if missing:
            click.echo(f"mba species prepare: warning: species {name} has no {' or '.join(missing)} split "
                       f"(--split-by {split_by}; name one with --{missing[0]}, or use --split-by fraction)", err=True)
    click.echo(f"wrote {out}")


# ---- train --------------------------------------------------------------------------------------------------------
@species.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Token store from 'species prepare' [required; with --resume: the run's].")
@click.option("--out", type=DIR, required=True, help="Run folder: config.yaml, model/, metrics.json, logs.")
@click.option("--length", type=click.IntRange(min=2), default=None,
              help="Window length in bases [required; with --resume: the run's].")
@budget_options
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Model size [default: paper-1.4m, or the shape of --init-from; tiny for a quick CPU run].")
@click.option("--init-from", type=click.Path(path_type=Path), default=None,
              help="A 'dna pretrain' run (or its model/ folder) whose backbone starts the classifier.")
@click.option("--bidirectional/--unidirectional", default=None,
              help="Each mixer also reads the window backwards (shared weights) [default: off, or as the --init-from "
                   "model].")
@click.option("--pooling", type=click.Choice(["mean", "last"]), default=None,
              help="Classify from the window's mean hidden state or the last base's (the paper's causal head) "
                   "[default: mean, or the --init-from classifier's].")
@click.option("--train-length", type=click.IntRange(min=2), default=None,
              help="Training window in bases [default: --length with --pooling last, else at most 1024]; --length "
                   "is the window the model is meant for (evaluation and prediction default to it).")
@click.option("--head-init", type=click.Choice(["random", "probe"]), default="random", show_default=True,
              help="The classifier head before training: random, or a logistic regression fitted on the untrained "
                   "model's pooled features (linear probe, then fine-tuning; its time counts in --max-minutes).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Windows per step [default: the preset's, at most its token budget].")
@click.option("--rc-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability of reverse-complementing a training window.")
@window_training_options
@common_options
def train(data: Path, out: Path, length: int, max_steps: int | None, max_minutes: float | None,
          preset: str | None, init_from: Path | None, bidirectional: bool | None, pooling: str | None,
          train_length: int | None,
          head_init: str, batch_size: int | None, accumulate: int, lr: float | None, warmup_min_length: int | None,
          warmup_stage_steps: int | None, checkpoint_activations: bool | None, rc_prob: float, val_per_species: int,
          val_every: int | None, checkpoint_every: int, num_workers: int, devices: int, num_nodes: int,
          strategy: str, resume: bool, device: str, seed: int) -> None:
    """Train a MambaClassifier on random RC-augmented windows of the train split."""
    from mamba_bio_audio.models.classifier import MambaClassifier
    from mamba_bio_audio.tasks.pretrain_overlap import check_pretrain_overlap
    from mamba_bio_audio.tasks.species import (
        SpeciesSettings,
        plan_training,
        record_architecture,
        recorded_architecture,
        run_training,
    )
    from mamba_bio_audio.tasks.windows import is_main_process, refuse_to_overwrite, require_unless_resume

    ctx = click.get_current_context()
    require_unless_resume(ctx.params, resume, "data", "length")
    refuse_to_overwrite(out, resume)
    check_output_folder(out, "species train", resume=resume, overwrite=True, inputs=(data, init_from))
    p = resume_params(out, ctx) if resume else dict(ctx.params)  # a resume: the run's own options
    settings = SpeciesSettings(
        length=p["length"], max_steps=p["max_steps"], max_minutes=max_minutes, preset=p["preset"],
        batch_size=p["batch_size"], lr=p["lr"], accumulate=p["accumulate"], warmup_min_length=p["warmup_min_length"],
        warmup_stage_steps=p["warmup_stage_steps"], checkpoint_activations=checkpoint_activations,
        rc_prob=p["rc_prob"], val_per_species=p["val_per_species"], val_every=val_every,
        checkpoint_every=checkpoint_every, num_workers=num_workers, device=device, devices=devices,
        num_nodes=num_nodes, strategy=strategy, seed=p["seed"], bidirectional=p["bidirectional"],
        pooling=p["pooling"], train_length=p["train_length"], head_init=p["head_init"],
        init_from=None if p["init_from"] is None else str(p["init_from"]))
    architecture = recorded_architecture(out) if resume else None  # a resume's model: the run's, not the donor's
    plan = plan_training(p["data"], settings, resume=resume, architecture=architecture)
    if resume:
        check_checkpoint_fits(out, plan.task)
    overlap = None
    if is_main_process():
        echo_summary(plan.summary)
        # held-out bases the backbone has read; a resume: as the run's first part found them (the donor may be gone)
        overlap = None if architecture is None else architecture["pretrain_overlap"]
        if overlap is None and (architecture is None or not architecture["recorded"]):
            overlap = check_pretrain_overlap(p["data"], p["init_from"])
        run_folder(out, "species train", resume=resume, inputs=(p["data"], init_from))
        named = plan.summary["preset"] in PRESET_NAMES and isinstance(plan.model, MambaClassifier)  # not a Caduceus'
        write_run_config(out, p, batch_size=plan.summary["batch_size"], lr=plan.summary["lr"],
                         max_steps=plan.summary["max_steps"], train_length=plan.summary["train_length"],
                         preset=plan.summary["preset"] if named else p["preset"],
                         bidirectional=plan.summary["bidirectional"], pooling=plan.summary["pooling"])
        if architecture is None or not architecture["recorded"]:
            record_architecture(out, plan.model, settings.init_from, overlap)  # what a --resume builds it from
    metrics = run_training(plan, out, resume=resume)
    if is_main_process():
        if overlap is not None:
            metrics["pretrain_overlap"] = overlap
        write_json(out / "metrics.json", metrics)
        val = f"val accuracy {metrics['val_accuracy']:.3f}, " if "val_accuracy" in metrics else ""
        click.echo(f"{val}{metrics['train_seconds']:.0f} s; wrote {out}/: model/, metrics.json, config.yaml, logs/")


# ---- evaluate -----------------------------------------------------------------------------------------------------
@species.command("evaluate")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A 'species train' run folder.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Token store to evaluate on.")
@click.option("--lengths", default=None, help="Comma-separated window lengths [default: the training length].")
@click.option("--out", type=DIR, required=True, help="Folder for metrics.json and accuracy_vs_length.png.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--per-species", type=click.IntRange(min=1), default=100, show_default=True,
              help="Fixed evaluation windows per species and length; the k-mer baseline trains on as many "
                   "train-split windows (at least 32).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: by length]")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also score the 6-mer baseline.")
@click.option("--rc-average/--no-rc-average", default=False, show_default=True,
              help="Average each window's probabilities with those of its reverse complement (both strands).")
@overwrite_option
@common_options
def evaluate(checkpoint: Path, data: Path, lengths: str | None, out: Path, split: str, per_species: int,
             batch_size: int | None, baseline: bool, rc_average: bool, overwrite: bool, device: str, seed: int) -> None:
    """Accuracy and confusion matrix per window length, beside a 6-mer logistic regression on the same windows."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.species import (
        accuracy_table,
        evaluate_lengths,
        load_classifier,
        model_window,
        plot_accuracy_vs_length,
    )
    from mamba_bio_audio.tasks.windows import weights_input

    inputs = (weights_input(checkpoint), data)  # --out RUN/eval is fine: the weights are RUN/model
    check_output_folder(out, "species evaluate", overwrite=overwrite, inputs=inputs)
    torch_dev = torch_device(device)
    model = load_classifier(checkpoint, torch_dev)
    window_lengths = parse_int_list(lengths, "--lengths") if lengths else [model_window(model) or 0]
    if min(window_lengths) < 2:
        raise click.BadParameter("window lengths must be at least 2 (the model does not record its own)",
                                 param_hint="--lengths")
    result = evaluate_lengths(model, data, window_lengths, split=split, per_species=per_species, seed=seed,
                              batch_size=batch_size, device=torch_dev, baseline=baseline, rc_average=rc_average,
                              log=lambda line: click.echo(line, err=True))
    result.update(checkpoint=str(checkpoint), data=str(data))
    with output_folder(out, "species evaluate", overwrite=overwrite, inputs=inputs) as tmp:
        tmp.mkdir()
        write_run_config(tmp, click.get_current_context().params, lengths=",".join(map(str, window_lengths)))
        write_json(tmp / "metrics.json", result)
        plot_accuracy_vs_length(tmp / "accuracy_vs_length.png", result,
                                title=f"{Path(checkpoint).name} on {Path(data).name}, {split} split")
    click.echo(accuracy_table(result))
    click.echo(f"wrote {out}/: metrics.json, accuracy_vs_length.png, config.yaml")


# ---- predict ------------------------------------------------------------------------------------------------------
@species.command("predict")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="A 'species train' run folder.")
@click.argument("fasta", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="TSV file to write.")
@click.option("--window", type=click.IntRange(min=2), default=None,
              help="One row per window of this length (default: one row per record, the mean over windows of "
                   "the training length).")
@click.option("--max-windows", type=click.IntRange(min=0), default=None,
              help="At most this many evenly spaced windows per record, 0: all [default: 256 per record, all with "
                   "--window].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: by window length]")
@click.option("--lenient", is_flag=True, help="Encode invalid characters as [UNK] instead of failing.")
@click.option("--rc-average/--no-rc-average", default=False, show_default=True,
              help="Average each window's probabilities with those of its reverse complement (both strands).")
@overwrite_file_option
@device_option
@config_option
def predict(checkpoint: Path, fasta: tuple[Path, ...], out: Path, window: int | None, max_windows: int | None,
            batch_size: int | None, lenient: bool, rc_average: bool, overwrite: bool, device: str) -> None:
    """Species probabilities per record (or per window) of FASTA/2bit files, as a TSV."""
    import numpy as np

    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.species import load_classifier, model_window, predict_records, predictions_tsv
    from mamba_bio_audio.tasks.windows import weights_input

    # --out RUN/preds.tsv is fine: the run's weights (RUN/model) are the input
    check_output_file(out, inputs=(weights_input(checkpoint), *fasta), overwrite=overwrite,
                      inside_ok=(checkpoint,))
    torch_dev = torch_device(device)
    model = load_classifier(checkpoint, torch_dev)
    if max_windows is None:
        max_windows = 0 if window else 256
    rows = list(predict_records(model, fasta, window=window, per_window=window is not None,
                                max_windows=max_windows, batch_size=batch_size, device=torch_dev, lenient=lenient,
                                rc_average=rc_average))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, predictions_tsv(rows, model.labels))
    span = window or model_window(model)
    blank = [row for row in rows if np.isnan(row["probs"]).any()]  # all N: one line for them all
    if blank:
        first = ", ".join(f"{row['record']} ({Path(row['file']).name})" + (f" {row['start']}-{row['end']}"
                                                                            if window else "") for row in blank[:3])
        what = "window(s)" if window else "record(s)"
        click.echo(f"mba species predict: warning: {len(blank)} {what} hold no A/C/G/T base (all N), so no "
                   f"prediction (empty 'predicted', nan probabilities): {first}{', ...' if len(blank) > 3 else ''}",
                   err=True)
    for row in rows:  # a row read from fewer bases than the window looks like any other: say so
        bases = row["length"] if "length" in row else row["end"] - row["start"]
        if np.isnan(row["probs"]).any():
            continue
        if span and bases < span:
            click.echo(f"mba species predict: warning: {row['record']} ({Path(row['file']).name}): its row rests on "
                       f"{bases} bases, fewer than the {span}-base window", err=True)
    click.echo(f"wrote {len(rows)} rows to {out}")
