"""``mba demo``: the species-classification job end to end on built-in SYNTHETIC genomes (offline, CPU-sized).

    synthetic genomes (data_prep/dna/synthetic.py) -> token store, whole strains held out -> small MambaClassifier
    -> accuracy at several window lengths beside a 6-mer logistic regression on the same test windows

The genomes are not biology: each "species" is drawn from its own short-word statistics (GC content and
context-dependent base frequencies, as real genomes differ), with repeat families, strains and assembly gaps; a
short window carries less species signal than a long one. The model (the ``demo`` preset: one block, d_state 1, dt_min
0.01, several times ``tiny``'s tokens per second on a CPU) is mean-pooled, so it trains on short windows (--length 256: many windows
per second) and reads any length. Its head is first fitted on its untrained pooled states (a linear probe), then the
whole model is fine-tuned for --max-minutes; the demo keeps whichever of the two scores higher on 1,024-base windows
of the validation strain (tasks.species.train_keeping_the_better). The same functions serve ``mba species train`` and ``mba species evaluate`` (:mod:`mamba_bio_audio.tasks.species`).
Writes --out (default ./mba-demo; a previous demo's folder is replaced, a folder of other files refused): genomes/,
store/, run/ (the trained model, logs), metrics.json, accuracy_vs_length.png and config.yaml, all written into a
temporary folder beside it and renamed into place at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.recipes.options import common_options, out_option, parse_int_list
from mamba_bio_audio.recipes.outputs import check_output_folder, output_folder, write_json, write_yaml

#: Training budget and learning rate of the demo (measured on a loaded 2-core CPU: results/cpu_speed.md; the lr and
#: the training window were chosen on the val strain: results/dna/README.md).
DEMO_MINUTES = 1.5
DEMO_LR = 5e-3
DEMO_PRESET = "demo"
SELECT_LENGTH = 1024  # the val-strain windows that choose between the probed and the fine-tuned model
SELECT_PER_SPECIES = 32


@click.command("demo")
@out_option(required=False, help_text="Output folder [default: ./mba-demo].")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Training steps [default: as many as fit --max-minutes at the measured speed].")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=DEMO_MINUTES, show_default=True,
              help="Wall-clock budget for training (the whole demo takes about 15 s more on a 2-core CPU).")
@click.option("--length", type=click.IntRange(min=8), default=256, show_default=True,
              help="Training window (the mean-pooled model reads any length).")
@click.option("--eval-lengths", default="256,1024,4096", show_default=True, help="Comma-separated window lengths.")
@click.option("--per-species", type=click.IntRange(min=1), default=20, show_default=True,
              help="Test windows per species and length (20 x 5 species: one window is 0.01 of accuracy).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEMO_LR, show_default=True,
              help="Peak learning rate.")
@click.option("--pooling", type=click.Choice(["last", "mean"]), default="mean", show_default=True,
              help="Classifier head: the last base's hidden state (the paper's) or the window's mean.")
@click.option("--head-init", type=click.Choice(["random", "probe"]), default="probe", show_default=True,
              help="The classifier head before training: random, or fitted on the untrained model's features.")
@click.option("--rc-prob", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability of reverse-complementing a training window (the demo's test windows, like its "
                   "training windows, are read along the assemblies' strand).")
@click.option("--species", "n_species", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--genome-length", type=click.IntRange(min=1000), default=50_000, show_default=True,
              help="Bases per synthetic strain (3 strains per species).")
@common_options
def demo(out: Path | None, max_steps: int | None, max_minutes: float, length: int, eval_lengths: str,
         per_species: int, batch_size: int, lr: float, pooling: str, head_init: str, rc_prob: float,
         n_species: int, genome_length: int, device: str,
         seed: int) -> None:
    """Species classification on synthetic genomes: prepare, train a tiny model, evaluate across window lengths."""
    from mamba_bio_audio.data_prep.dna.store import prepare_genomes
    from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.species import (
        SpeciesSettings,
        accuracy_table,
        evaluate_lengths,
        plan_training,
        plot_accuracy_vs_length,
        run_training,
        train_keeping_the_better,
    )

    started = time.time()
    lengths = parse_int_list(eval_lengths, "--eval-lengths")
    if max(length, *lengths) > genome_length or min(lengths) < 8:
        raise UserError(f"window lengths must lie in 8..--genome-length ({genome_length}), got {length} and "
                        f"{eval_lengths}")
    settings = SpeciesSettings(length=length, max_steps=max_steps, max_minutes=max_minutes, preset=DEMO_PRESET,
                               batch_size=batch_size, lr=lr, pooling=pooling, head_init=head_init, rc_prob=rc_prob, val_per_species=0, checkpoint_every=0, device=device, seed=seed,
                               progress=False)
    torch_dev = torch_device(device)
    out = out or Path("mba-demo")
    check_output_folder(out, "demo", overwrite=True)  # the previous demo's outputs are replaced, nothing else
    with output_folder(out, "demo", overwrite=True) as tmp:  # written beside it, renamed into place at the end
        tmp.mkdir()
        write_yaml(tmp / "config.yaml", {"command": "demo", **click.get_current_context().params, "out": str(out)})
        write_synthetic_genomes(tmp / "genomes", n_species=n_species, strains=3, length=genome_length, seed=seed)
        store = prepare_genomes(tmp / "genomes", tmp / "store", "strain", seed=seed)
        click.echo(f"synthetic genomes: {n_species} species x 3 strains x ~{genome_length:,} bases; "
                   f"held-out test strain per species")
        plan = plan_training(store, settings)
        s = plan.summary
        steps = f"{max_steps} steps" if max_steps else f"up to {max_minutes:g} min"
        click.echo(f"training a {s['parameters']:,}-parameter Mamba ({s['n_layer']} layers x d_model "
                   f"{s['d_model']}, {pooling} pooling) for {steps} on batches of {batch_size} windows of {length} "
                   f"bases ...")
        if head_init == "probe":
            select = min(max(length, SELECT_LENGTH), genome_length)
            train_metrics = train_keeping_the_better(plan, tmp / "run", store, select,
                                                     val_per_species=SELECT_PER_SPECIES, seed=seed)
            click.echo(f"val-strain accuracy at {select} bases: {train_metrics['val_accuracy_probe']:.3f} with the "
                       f"probed head, {train_metrics['val_accuracy_fine_tuned']:.3f} after "
                       f"{train_metrics['steps']} steps of fine-tuning; keeping the {train_metrics['kept']} model")
        else:
            train_metrics = run_training(plan, tmp / "run")
        click.echo(f"evaluating on {per_species} test windows per species and length ...")
        result = evaluate_lengths(plan.model, store, lengths, per_species=per_species, seed=seed, device=torch_dev)
        result.update(train=train_metrics, synthetic=True, seconds=round(time.time() - started, 1))
        write_json(tmp / "metrics.json", result)
        plot_accuracy_vs_length(tmp / "accuracy_vs_length.png", result,
                                title=f"mba demo (synthetic genomes): tiny Mamba, {train_metrics['steps']} steps at "
                                      f"{length} bases")
    click.echo(accuracy_table(result))
    click.echo("The 6-mer baseline shows how much species signal a window of each length holds. The model reads "
               "the same short-word statistics through its pooled states; longer training (--max-minutes) and the "
               "real recipe on a GPU are in the README.")
    click.echo(f"{result['seconds']:.0f} s; wrote {out}/: metrics.json, accuracy_vs_length.png, config.yaml, run/model/")
