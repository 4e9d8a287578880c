"""``mba sc09 ...``: unconditional spoken-digit generation from raw 8-bit audio (the Mamba paper's SC09 benchmark):
``prepare``, ``train``, ``generate``, ``train-classifier``, ``evaluate``; the library is ``tasks.audio_data``,
``tasks.audio_lm`` and ``tasks.audio_generation``; docs/audio.md walks through the real run."""

from __future__ import annotations

from pathlib import Path

import click

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.recipes.audio_options import batch_size_option, checkpoint_option, sampling_options
from mamba_bio_audio.recipes.options import (
    budget_options,
    common_options,
    config_option,
    out_option,
    overwrite_option,
)
from mamba_bio_audio.recipes.outputs import (
    atomic_write_text,
    check_output_folder,
    check_resume_config,
    output_folder,
    report_audio_training,
    run_folder,
    write_json,
    write_yaml,
)

ARCHS = ("sashimi", "mamba-lm")
MODEL_PRESETS = ("tiny", "paper-6m")
CLASSIFIER_PRESETS = ("tiny", "paper")
data_option = click.option("--data", required=True, type=click.Path(path_type=Path),
                           help="Token store written by `mba sc09 prepare`.")


def _options() -> dict:
    """The current command's option values (what ran), paths as strings: replayable with --config."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in click.get_current_context().params.items()}


@click.group("sc09")
def sc09() -> None:
    """SC09 speech generation: prepare, train, generate, train-classifier, evaluate."""


# ---- prepare ------------------------------------------------------------------------------------------------------
@sc09.command("prepare")
@click.option("--from", "src", type=click.Path(file_okay=False, path_type=Path),
              help="Extracted Speech Commands folder (or the folder holding speech_commands_v0.02/).")
@click.option("--from-folder", "folder", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of {digit}_{speaker}_{take}.wav files (FSDD layout; takes 0-4 test, 5-9 val).")
@click.option("--download", is_flag=True, help="First fetch Speech Commands v0.02 (2.3 GB) into the --from folder.")
@out_option(help_text="Token store folder to write (replaced atomically).")
@click.option("--sample-rate", type=click.Choice(["16000", "8000"]), default="16000", show_default=True,
              help="Store rate; other file rates are resampled.")
@click.option("--encoding", type=click.Choice(["mulaw8", "linear8"]), default="mulaw8", show_default=True)
@click.option("--normalization", type=click.Choice(["none", "peak"]), default="none", show_default=True,
              help="Amplitude: as read, or each clip scaled to peak 1.")
@click.option("--clip-seconds", type=click.FloatRange(min=0.01), default=None,
              help="Clip length for --from-folder [default: 1.0; SC09 is always 1 s].")
@click.option("--strict", is_flag=True, help="Stop at the first unusable file (exit 2) instead of skipping it.")
@overwrite_option
@config_option
def prepare(src: Path | None, folder: Path | None, download: bool, out: Path, sample_rate: str, encoding: str,
            normalization: str, clip_seconds: float | None, strict: bool, overwrite: bool) -> None:
    """Audio files -> 8-bit token store (train/val/test splits)."""
    from mamba_bio_audio.tasks.audio_data import prepare_audio_store, speech_commands_tree

    if (src is None) == (folder is None):
        raise UserError("give exactly one of --from DIR (Speech Commands) or --from-folder DIR")
    if download and src is None:
        raise UserError("--download needs --from DIR: the folder to download into")
    if src is not None and clip_seconds not in (None, 1.0):
        raise UserError("--clip-seconds applies to --from-folder; SC09 clips are 1 s")
    inputs = (speech_commands_tree(src, download), folder)  # --out may sit beside the audio in the --from folder
    check_output_folder(out, "sc09 prepare", overwrite=overwrite, inputs=inputs)
    rate = int(sample_rate)
    with output_folder(out, "sc09 prepare", overwrite=overwrite, inputs=inputs) as tmp:
        result = prepare_audio_store(tmp, rate, src=src, folder=folder, download=download,
                                     clip_seconds=clip_seconds or 1.0, encoding=encoding,
                                     normalization=normalization, strict=strict)
    for message in result.skipped:
        click.echo(f"mba sc09 prepare: warning: skipped {message}", err=True)
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    click.echo(f"wrote {out}: {counts} clips at {rate} Hz ({encoding}); {len(result.skipped)} files skipped")


# ---- train --------------------------------------------------------------------------------------------------------
@sc09.command("train")
@data_option
@out_option(help_text="Run folder: config.yaml, checkpoints/, logs/, model/, metrics.json, loss.png.")
@click.option("--preset", type=click.Choice(MODEL_PRESETS), default="paper-6m", show_default=True)
@click.option("--arch", type=click.Choice(ARCHS), default="sashimi", show_default=True,
              help="Multi-scale SaShiMi-style Mamba U-Net, or a plain Mamba LM.")
@budget_options
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Peak AdamW lr (betas 0.9/0.95, weight decay 0.1, 10% warm-up, cosine; grad clip 0.1).")
@click.option("--val-every", type=click.IntRange(min=0), default=0,
              help="Steps between validations [default: max_steps / 10].")
@click.option("--val-clips", type=click.IntRange(min=1), default=64, show_default=True,
              help="Validation clips scored (NLL in bits per sample).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--precision", default=None, help="Lightning precision [default: bf16-mixed on GPU, 32-true on CPU].")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.ckpt (same flags).")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs per node (data parallel with --strategy ddp|fsdp).")
@click.option("--num-nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes (launch one process per GPU: docs/multi_gpu.md).")
@click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True)
@common_options
def train(data: Path, out: Path, preset: str, arch: str, max_steps: int | None, max_minutes: float | None,
          batch_size: int, lr: float,
          val_every: int, val_clips: int, checkpoint_every: int, num_workers: int, precision: str | None,
          resume: bool, devices: int, num_nodes: int, strategy: str, device: str, seed: int) -> None:
    """Train an 8-bit audio LM on next-sample prediction."""
    from mamba_bio_audio.tasks.audio_data import load_clips
    from mamba_bio_audio.tasks.audio_lm import AudioTrainSettings, check_step_plan, train_audio_lm
    from mamba_bio_audio.tasks.windows import is_main_process
    from mamba_bio_audio.training.trainer import TrainerConfig

    train_set = load_clips(data, "train")
    val_set = load_clips(data, "val", required=False)
    TrainerConfig(device=device, strategy=strategy, precision=precision)  # checks them before anything is written
    settings = AudioTrainSettings(arch=arch, preset=preset, max_steps=max_steps, max_minutes=max_minutes,
                                  batch_size=batch_size, lr=lr,
                                  val_every=val_every, val_clips=val_clips, checkpoint_every=checkpoint_every,
                                  num_workers=num_workers, precision=precision, devices=devices,
                                  num_nodes=num_nodes, strategy=strategy, device=device, seed=seed)
    check_step_plan(settings, resume)
    if resume:
        check_resume_config(out, click.get_current_context().params, ("preset", "arch"))
    out = run_folder(out, "sc09 train", resume=resume, inputs=(data,))
    if is_main_process():  # one writer: another process may get here before the folder exists
        write_yaml(out / "config.yaml", _options())
    metrics = train_audio_lm(train_set, val_set, out, settings, resume=resume)
    if metrics is None:  # an extra process of a multi-device run
        return
    report_audio_training(out, metrics, f"sc09 {arch} {preset}: {metrics['sample_rate']} Hz {metrics['encoding']}",
                          "no val split")


# ---- generate -----------------------------------------------------------------------------------------------------
@sc09.command("generate")
@checkpoint_option
@click.option("--num-samples", type=click.IntRange(min=1), default=16, show_default=True, help="Clips to generate.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip length [default: the training clip length].")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@sampling_options
@out_option(help_text="Folder for sample_NNNN.wav, likelihoods.tsv, spectrograms.png, metrics.json "
                      "(written beside it, renamed into place at the end).")
@overwrite_option
@common_options
def generate(checkpoint: Path, num_samples: int, seconds: float | None, batch_size: int, temperature: float,
             top_p: float, cuda_graph: bool | None, out: Path, overwrite: bool, device: str, seed: int) -> None:
    """Sample clips autoregressively (recurrent state, one step per sample) and write 16-bit WAVs."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.audio_generation import clip_length, load_audio_lm, write_samples
    from mamba_bio_audio.tasks.audio_lm import audio_settings
    from mamba_bio_audio.tasks.audio_page import generated_clips, write_listening_page

    where = torch_device(device)
    if cuda_graph and where.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device, not {where}")
    check_output_folder(out, "sc09 generate", overwrite=overwrite, inputs=(checkpoint,))
    model = load_audio_lm(checkpoint, device=where)
    length = clip_length(seconds, audio_settings(model))
    with output_folder(out, "sc09 generate", overwrite=overwrite, inputs=(checkpoint,)) as tmp:
        tmp.mkdir()
        write_yaml(tmp / "config.yaml", _options())
        metrics = write_samples(model, tmp, num_samples, length, batch_size=batch_size, temperature=temperature,
                                top_p=top_p, seed=seed, cuda_graph=cuda_graph, device=where)
        write_json(tmp / "metrics.json", metrics)
        write_listening_page(tmp, generated_clips(tmp), title=f"mba sc09 generate: {checkpoint}",
                             notes="Log-likelihood of each clip under the model.")
    click.echo(f"wrote {num_samples} clips of {length / metrics['sample_rate']:.3f} s to {out} "
               f"({metrics['audio_seconds_per_second']:.3g} s of audio per second)")


# ---- train-classifier ---------------------------------------------------------------------------------------------
@sc09.command("train-classifier")
@data_option
@out_option(help_text="Classifier folder: config.json, model.safetensors, metrics.json, config.yaml.")
@click.option("--preset", type=click.Choice(CLASSIFIER_PRESETS), default="paper", show_default=True,
              help="paper: the s4 SC09 ResNeXt (34 M parameters); tiny: for tests.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@overwrite_option
@common_options
def train_classifier(data: Path, out: Path, preset: str, epochs: int, batch_size: int, lr: float, overwrite: bool,
                     device: str, seed: int) -> None:
    """Train the digit classifier behind FID / IS / mIS / AM."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.audio_data import load_clips
    from mamba_bio_audio.tasks.audio_lm import train_classifier

    train_set = load_clips(data, "train", waveform=True)
    val_set = load_clips(data, "val", waveform=True, required=False)
    test_set = load_clips(data, "test", waveform=True, required=False)
    where = torch_device(device)
    check_output_folder(out, "sc09 train-classifier", overwrite=overwrite, inputs=(data,))
    with output_folder(out, "sc09 train-classifier", overwrite=overwrite, inputs=(data,)) as tmp:
        model, metrics = train_classifier(train_set, val_set, test_set, preset, epochs=epochs,
                                          batch_size=batch_size, lr=lr, device=where, seed=seed,
                                          log=lambda line: click.echo(line, err=True))
        model.save_pretrained(tmp)
        write_yaml(tmp / "config.yaml", _options())
        write_json(tmp / "metrics.json", metrics)
    test_acc = metrics["test_accuracy"]
    shown = "n/a" if test_acc is None else f"{test_acc:.3f}"
    click.echo(f"classifier test accuracy {shown}; wrote {out}")


# ---- evaluate -----------------------------------------------------------------------------------------------------
@sc09.command("evaluate")
@checkpoint_option
@data_option
@click.option("--classifier", type=click.Path(path_type=Path), default=None,
              help="Folder from `mba sc09 train-classifier` (without it: NLL only).")
@click.option("--samples", type=click.Path(path_type=Path), default=None,
              help="Folder of generated WAVs to score (e.g. from `mba sc09 generate`).")
@out_option(help_text="Folder for metrics.json and metrics.md.")
@batch_size_option
@click.option("--max-clips", type=click.IntRange(min=1), default=None, help="Test clips for the NLL [default: all].")
@click.option("--threshold", type=click.Choice(["off", "best", "s4"]), default="off", show_default=True,
              help="Also score the samples inside a likelihood band tuned on a random half (by --seed) and applied "
                   "to the other (SaShiMi's protocol): the band of best IS, or the s4 script's (0.4, 0.95).")
@overwrite_option
@common_options
def evaluate(checkpoint: Path, data: Path, classifier: Path | None, samples: Path | None, out: Path,
             batch_size: int, max_clips: int | None, threshold: str, overwrite: bool, device: str, seed: int) -> None:
    """Test NLL (bits per sample); FID / IS / mIS / AM of generated WAVs beside the real test set."""
    import torch

    from mamba_bio_audio.benchmarks.report import environment
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.audio_data import load_clips, read_samples
    from mamba_bio_audio.tasks.audio_generation import load_audio_lm
    from mamba_bio_audio.tasks.audio_lm import (
        audio_settings,
        check_evaluation_inputs,
        evaluate_audio_lm,
        evaluation_note,
    )

    inputs = (checkpoint, data, classifier, samples)
    check_output_folder(out, "sc09 evaluate", overwrite=overwrite, inputs=inputs)
    where = torch_device(device)
    model = load_audio_lm(checkpoint, device=where)
    test_set = load_clips(data, "test", waveform=True)
    net = check_evaluation_inputs(audio_settings(model), test_set, data, classifier, samples)
    waves, skipped = read_samples(samples, test_set)
    for message in skipped:
        click.echo(f"mba sc09 evaluate: warning: skipped {message}", err=True)
    band, extra = None, {}
    if threshold != "off":
        from mamba_bio_audio.tasks.sc09_protocol import tune_threshold

        if samples is None:
            raise UserError("--threshold needs --samples DIR and --classifier DIR")
        band, all_waves, source = tune_threshold(samples, model, net, test_set, seed=seed, band_choice=threshold,
                                                 device=where)
        extra = {"generated, likelihood band": all_waves[torch.as_tensor(band.kept)]}
    metrics, table = evaluate_audio_lm(model, test_set, classifier=net,
                                       train_set=None if net is None else load_clips(data, "train", waveform=True),
                                       generated=waves, batch_size=batch_size, max_clips=max_clips, device=where,
                                       extra_sets=extra)
    if band is not None:
        metrics["threshold"] = {**band.summary(), "choice": threshold, "log_likelihoods": source, "seed": seed}
    metrics.update(skipped_samples=skipped, options=_options(), environment=environment())
    with output_folder(out, "sc09 evaluate", overwrite=overwrite, inputs=inputs) as tmp:
        tmp.mkdir()
        write_json(tmp / "metrics.json", metrics)
        atomic_write_text(tmp / "metrics.md", table + evaluation_note(test_set))
        if samples is not None:  # the listening page: each sample with its likelihood and the classifier's label
            from mamba_bio_audio.tasks.audio_page import scored_clips, write_listening_page

            clips = scored_clips(samples, model, classifier=net, label_names=test_set.store.meta.get("label_names"),
                                 batch_size=batch_size, device=where)
            write_listening_page(tmp, clips, title=f"mba sc09 evaluate: {samples}",
                                 notes="Log-likelihood under the model; label and confidence from the classifier.")
    click.echo(table)
