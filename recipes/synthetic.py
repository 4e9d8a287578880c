"""``mba synthetic ...``: the Mamba paper's synthetic tasks (Section 4.1, Appendix E.1) and its S4/S6 ablation table.

    mba synthetic selective-copy  --out RUN [--preset tiny|paper|gpu-fast] [--layer S6|S4D] [--arch mamba|no-gate]
    mba synthetic induction-heads --out RUN [...]        accuracy at test lengths up to 2^20 (segmented, bounded memory)
    mba synthetic table [--out DIR] [--preset ...] [--runs DIR] [--max-minutes M]      the ablation + induction curve
    mba synthetic evaluate RUN/model --out DIR [--log2-lengths 20,21] [--samples 1024]  more test sequences / lengths

Each run writes RUN/config.yaml, RUN/metrics.json, RUN/model/ (save_pretrained; load a no-gate model with
``SSMOnlyLM.from_pretrained``), Lightning logs and checkpoints. The work is done by
:mod:`mamba_bio_audio.tasks.synthetic` (presets, training, evaluation) and
:mod:`mamba_bio_audio.tasks.synthetic_table` (the table's runs and report).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.recipes.options import (
    common_options,
    config_option,
    device_option,
    out_option,
    overwrite_option,
    parse_int_list,
    seed_option,
)
from mamba_bio_audio.recipes.outputs import check_output_folder, output_folder
from mamba_bio_audio.tasks.synthetic import (
    ARCHS,
    LAYERS,
    PRESETS,
    choose_preset,
    evaluate_induction,
    run_task,
    stop_note,
)
from mamba_bio_audio.tasks.synthetic_table import run_table

PRESET_HELP = ("tiny: CPU-sized; paper: the paper's setup (Appendix E.1; GPU, hours); gpu-fast: ours, not the "
               "paper's (larger batch, higher lr, length curriculum, stop at a target accuracy; minutes on a GPU).")
PRECISIONS = ("bf16-mixed", "32-true")
MAX_MINUTES_HELP = "Wall-clock limit; training stops in time to evaluate, and what did not finish is marked."


@click.group("synthetic")
def synthetic() -> None:
    """The Mamba paper's synthetic tasks: selective copying, induction heads, and the S4/S6 ablation table."""


def _task_command(task: str, summary: str):
    @synthetic.command(task, help=summary)
    @out_option(help_text="Run folder (config.yaml, metrics.json, model/, logs/).")
    @click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True,
                  help=PRESET_HELP)
    @click.option("--layer", type=click.Choice(LAYERS), default="S6", show_default=True,
                  help="S6 (selective) or S4D (time-invariant).")
    @click.option("--arch", type=click.Choice(ARCHS), default="mamba", show_default=True,
                  help="mamba: the full block; no-gate: the SSM layer alone (no conv, no gate).")
    @click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Override the preset's steps.")
    @click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None, help=MAX_MINUTES_HELP)
    @click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="Override the preset's learning rate.")
    @click.option("--min-lr-ratio", type=click.FloatRange(min=0, max=1), default=None,
                  help="Cosine decay of the learning rate to this fraction of --lr at --max-steps (default: the "
                       "preset's schedule; 1 = constant).")
    @click.option("--restore-best", is_flag=True, default=False,
                  help="Save and test the weights of the best validation (accuracy, then loss), not the last ones.")
    @click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                  help="Continue training from a run's model/ folder (same task, --layer and --arch).")
    @click.option("--resume", is_flag=True, default=False,
                  help="Continue the run in --out from its last checkpoint (weights, optimizer, step, data).")
    @click.option("--no-early-stop", is_flag=True, default=False,
                  help="Train to --max-steps / --max-minutes even once the preset's validation target is reached.")
    @click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                  help="Training precision [default: bf16-mixed on a GPU, 32-true on the CPU]; tests run in fp32.")
    @click.option("--val-batch-size", type=click.IntRange(min=1), default=None,
                  help="Validation sequences per forward (the preset's by default); smaller uses less memory.")
    @common_options
    def command(out: Path, preset: str, layer: str, arch: str, max_steps: int | None, max_minutes: float | None,
                lr: float | None, min_lr_ratio: float | None, restore_best: bool, init_from: Path | None,
                resume: bool, no_early_stop: bool, precision: str | None, val_batch_size: int | None,
                device: str, seed: int) -> None:
        if resume and init_from is not None:
            raise UserError("--resume continues --out's own run; it cannot be combined with --init-from")
        chosen = choose_preset(preset, task, max_steps, lr)
        if min_lr_ratio is not None:
            chosen = replace(chosen, min_lr_ratio=min_lr_ratio)
        if restore_best:
            chosen = replace(chosen, restore_best=True)
        if no_early_stop:
            chosen = replace(chosen, target_accuracy=None)
        if val_batch_size is not None:
            chosen = replace(chosen, val_batch_size=val_batch_size)
        metrics = run_task(task, chosen, layer, arch, out, device, seed,
                           time_budget_s=None if max_minutes is None else 60 * max_minutes, init_from=init_from,
                           resume=resume, precision=precision, log=lambda line: click.echo(line, err=True))
        click.echo(f"{task} ({arch}, {layer}): accuracy {metrics['accuracy']:.4f} at length "
                   f"{metrics['train_seqlen']} after {metrics['steps']} steps{stop_note(metrics)}, "
                   f"{metrics['train_seconds']:.0f} s")
        for length, acc in metrics.get("accuracy_by_length", {}).items():
            click.echo(f"  test length {length}: accuracy {acc:.4f}")
        click.echo(f"wrote {out}/metrics.json")

    return command


_task_command("selective-copy", "Selective copying: recall the data tokens scattered among noise, in order.")
_task_command("induction-heads", "Induction heads: recall the token after the special token; test lengths 2^k.")


@synthetic.command("table")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder to write: synthetic_<preset>.{md,json,png} [default: mba-synthetic/<preset>].")
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the five runs (models, logs, checkpoints) [default: runs/synthetic-<preset>].")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True, help=PRESET_HELP)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Override every run's steps.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Wall-clock limit for all five runs: each gets a share of the time left (most important first); "
                   "the report is written with what finished, unfinished rows marked.")
@click.option("--reuse", is_flag=True, default=False,
              help="Take a row from RUNS/<row>/metrics.json when that run exists (trained earlier, e.g. by "
                   "`mba synthetic selective-copy --out RUNS/selective_copy_mamba_S6`) instead of training it again.")
@overwrite_option
@seed_option
@device_option
@config_option
def table(out: Path | None, runs: Path | None, preset: str, max_steps: int | None, max_minutes: float | None,
          reuse: bool, overwrite: bool, seed: int, device: str) -> None:
    """Selective copying for {Mamba block, no gate} x {S6, S4D}; induction heads for Mamba S6 at 2^k lengths."""
    _, md, written = run_table(out or Path("mba-synthetic") / preset, runs or Path("runs") / f"synthetic-{preset}",
                               preset, max_steps, max_minutes, reuse, seed, device,
                               log=lambda line: click.echo(line, err=True), overwrite=overwrite)
    click.echo(md)
    click.echo(f"wrote {written[0]}, {written[1]}" + (f", {written[2]}" if len(written) > 2 else ""))


@synthetic.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@out_option(help_text="Folder to write: induction_eval.json and induction_eval.md.")
@overwrite_option
@click.option("--log2-lengths", default="20", show_default=True, help="Comma-separated k: test at 2^k.")
@click.option("--samples", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Test sequences per length.")
@click.option("--first", type=click.IntRange(min=0), default=128, show_default=True,
              help="First index of the runs' test stream to use (128 skips the sequences a run already scored).")
@click.option("--n-tokens", type=click.IntRange(min=1), default=15, show_default=True,
              help="Ordinary tokens of the induction-heads task (the presets: 15).")
@common_options
def evaluate(model: Path, out: Path, overwrite: bool, log2_lengths: str, samples: int, first: int, n_tokens: int,
             device: str, seed: int) -> None:
    """Test an induction-heads model (a run's model/ folder) on more sequences, or at longer lengths, than its run."""
    lengths = [2**k for k in parse_int_list(log2_lengths, "--log2-lengths")]
    check_output_folder(out, "synthetic evaluate", overwrite=overwrite, inputs=(model,))
    with output_folder(out, "synthetic evaluate", overwrite=overwrite, inputs=(model,)) as tmp:
        evaluate_induction(model, tmp, lengths, samples, first, n_tokens, seed, device,
                           log=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {out}/induction_eval.json, .md")
