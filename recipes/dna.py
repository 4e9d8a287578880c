"""``mba dna pretrain``: next-base language model on genomes, the starting point of ``species train --init-from``.

    mba dna pretrain --genomes DIR --out RUN --length 1024                 # a folder of FASTA files
    mba dna pretrain --data STORE --out RUN --length 1024                  # a store from 'species prepare'
    mba dna pretrain --bed sequences.bed --fasta hg38.fa.gz --out RUN ...  # HyenaDNA's hg38 intervals
    mba dna pretrain --bed intervals.bed --fasta g.fa --out RUN --length 4096 --pack   # intervals of any length
    mba dna pretrain --data STORE --out RUN --length 1024 --objective mlm  # masked-LM, a Caduceus (RCPS)

The work is done by :mod:`mamba_bio_audio.tasks.dna_lm` (model, training, perplexity) and
:mod:`mamba_bio_audio.data_prep.dna` (genomes or BED intervals -> token store -> windows).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.recipes.classify import classify
from mamba_bio_audio.recipes.options import budget_options, common_options, window_training_options
from mamba_bio_audio.recipes.outputs import (
    check_checkpoint_fits,
    check_output_folder,
    echo_summary,
    resume_params,
    run_folder,
    write_json,
    write_run_config,
)
from mamba_bio_audio.recipes.species import DIR, PRESET_NAMES


@click.group("dna")
def dna() -> None:
    """Genome language-model pretraining."""


dna.add_command(classify)


def launcher_world_size() -> int:
    """The number of processes an external launcher started (torchrun: WORLD_SIZE, SLURM: SLURM_NTASKS; 1 when
    neither is set or readable)."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        try:
            size = int(os.environ.get(name, "1"))
        except ValueError:
            continue
        if size > 1:
            return size
    return 1


def refuse_preparing_under_a_launcher(source: str) -> None:
    """A one-line UserError when ``--genomes``/``--bed`` would be prepared into RUN/store by several processes at
    once: every process of a launcher (torchrun, SLURM) runs this command from the start, and only rank 0 writes
    the store that the others open at once."""
    size = launcher_world_size()
    if size == 1:
        return
    first = ("`mba species prepare --genomes DIR --out STORE` (with --split-by as here)" if source == "--genomes" else
             "this command without the launcher and with --max-steps 1 (it writes RUN/store)")
    raise UserError(f"{source}: under a launcher of {size} processes the store cannot be prepared by every process "
                    f"at once; prepare it first in one process with {first}, then launch with --data STORE")


@dna.command("pretrain")
@click.option("--genomes", type=click.Path(path_type=Path), default=None,
              help="Folder of <species>.fa[.gz]/.2bit files (prepared into RUN/store).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="An existing DNA token store.")
@click.option("--bed", type=click.Path(path_type=Path), default=None,
              help="BED intervals 'chrom start end [split]' over --fasta (HyenaDNA's sequences.bed).")
@click.option("--fasta", type=click.Path(path_type=Path), default=None, help="The genome the --bed intervals cut.")
@click.option("--split-by", type=click.Choice(["record", "strain", "fraction"]), default="record", show_default=True,
              help="Held-out part of --genomes (see 'species prepare').")
@click.option("--out", type=DIR, required=True, help="Run folder: config.yaml, model/, metrics.json, logs.")
@click.option("--length", type=click.IntRange(min=2), default=None,
              help="Window length in bases [required; with --resume: the run's].")
@budget_options
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="tiny", show_default=True, help="Model size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Windows per step [default: the preset's, at most its token budget].")
@click.option("--rc-prob", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability of reverse-complementing a training window.")
@click.option("--pack", is_flag=True,
              help="Fill each training row of --length bases with records / BED intervals of any length end to end "
                   "(the model restarts at each; BED intervals are not widened).")
@click.option("--objective", type=click.Choice(["clm", "mlm"]), default="clm", show_default=True,
              help="clm: predict the next base (a causal MambaLM); mlm: masked-LM as Caduceus, 15% of the bases "
                   "masked (a bidirectional Caduceus).")
@click.option("--model-type", type=click.Choice(["mamba", "caduceus"]), default=None,
              help="mamba: MambaLM (causal); caduceus: CaduceusLM (BiMamba, RC-equivariant RCPS) [default: mamba "
                   "for clm, caduceus for mlm].")
@click.option("--rcps/--no-rcps", default=True, show_default=True,
              help="A Caduceus with reverse-complement parameter sharing (Caduceus-PS), or without (Caduceus-Ph).")
@window_training_options
@common_options
def pretrain(genomes: Path | None, data: Path | None, bed: Path | None, fasta: Path | None, split_by: str,
             out: Path, length: int, max_steps: int | None, max_minutes: float | None, preset: str,
             batch_size: int | None, accumulate: int,
             lr: float | None, warmup_min_length: int | None, warmup_stage_steps: int | None,
             checkpoint_activations: bool | None, rc_prob: float, pack: bool, objective: str, model_type: str | None,
             rcps: bool, val_per_species: int, val_every: int | None,
             checkpoint_every: int, num_workers: int, devices: int, num_nodes: int, strategy: str, resume: bool,
             device: str, seed: int) -> None:
    """Train a MambaLM to predict the next base (or a Caduceus to fill in masked bases); report val perplexity and
    bits per base."""
    from mamba_bio_audio.data_prep.dna.bed import prepare_bed
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.tasks.dna_lm import (
        check_objective,
        plan_packed_pretraining,
        plan_pretraining,
        run_pretraining,
    )
    from mamba_bio_audio.tasks.windows import (
        TrainSettings,
        is_main_process,
        refuse_to_overwrite,
        require_unless_resume,
    )

    ctx = click.get_current_context()
    require_unless_resume(ctx.params, resume, "length")
    refuse_to_overwrite(out, resume)
    p = resume_params(out, ctx) if resume else dict(ctx.params)  # a resume: the run's own options
    genomes, data, bed, fasta = p["genomes"], p["data"], p["bed"], p["fasta"]
    sources = [name for name, value in (("--genomes", genomes), ("--data", data), ("--bed", bed)) if value]
    if len(sources) != 1:
        raise UserError("give exactly one of --genomes DIR, --data STORE or --bed FILE --fasta FILE")
    if (bed is None) != (fasta is None):
        raise UserError("--bed and --fasta go together")
    check_objective(p["objective"], p["model_type"], p["pack"])
    settings = TrainSettings(
        length=p["length"], max_steps=p["max_steps"], max_minutes=max_minutes, preset=p["preset"],
        batch_size=p["batch_size"], lr=p["lr"], accumulate=p["accumulate"], warmup_min_length=p["warmup_min_length"],
        warmup_stage_steps=p["warmup_stage_steps"], checkpoint_activations=checkpoint_activations,
        rc_prob=p["rc_prob"], val_per_species=p["val_per_species"], val_every=val_every,
        checkpoint_every=checkpoint_every, num_workers=num_workers, device=device, devices=devices,
        num_nodes=num_nodes, strategy=strategy, seed=p["seed"])
    store = data or out / "store"
    if data is None and not (store / "index.json").is_file():
        refuse_preparing_under_a_launcher(sources[0])
    if is_main_process():
        check_output_folder(out, "dna pretrain", resume=resume, overwrite=True, inputs=(genomes, data, bed, fasta))
    created = not out.exists()
    try:
        if data is None and is_main_process() and not (resume and (store / "index.json").is_file()):
            run_folder(out, "dna pretrain", resume=resume, inputs=(genomes, bed, fasta))  # ours before RUN/store
            if genomes is not None:
                prepare_genomes(genomes, store, p["split_by"], seed=p["seed"])
            else:
                with warnings.catch_warnings(record=True) as caught:  # the widening's warning, as one line
                    warnings.simplefilter("always")
                    prepare_bed(bed, fasta, store, extend_to=0 if p["pack"] else p["length"])
                for w in caught:
                    click.echo(f"mba dna pretrain: warning: {w.message}", err=True)
        if p["pack"]:
            plan = plan_packed_pretraining(store, settings)
        else:
            plan = plan_pretraining(store, settings, p["objective"], rcps=p["rcps"])
        if resume:
            check_checkpoint_fits(out, plan.task)
    except Exception:
        if created and out.exists() and is_main_process():  # leave no half-made run behind
            shutil.rmtree(out)
        raise
    if is_main_process():
        echo_summary(plan.summary)
        run_folder(out, "dna pretrain", resume=resume, inputs=(genomes, data, bed, fasta))
        write_run_config(out, p, batch_size=plan.summary["batch_size"], lr=plan.summary["lr"],
                         max_steps=plan.summary["max_steps"])
    metrics = run_pretraining(plan, out, resume=resume)
    if is_main_process():
        metrics["data"] = str(store)
        write_json(out / "metrics.json", metrics)
        if "val_perplexity" in metrics:
            masked = " (masked bases)" if p["objective"] == "mlm" else ""
            click.echo(f"val perplexity {metrics['val_perplexity']:.3f}, {metrics['val_bits_per_base']:.3f} bits per "
                       f"base{masked} (uniform over A/C/G/T: 4, 2 bits)")
        click.echo(f"{metrics['train_seconds']:.0f} s; wrote {out}/: model/, metrics.json, config.yaml, logs/")
