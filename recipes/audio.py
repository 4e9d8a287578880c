"""``mba audio ...``: 8-bit audio LMs on any folder of recordings: ``prepare``, ``train``, ``generate``,
``evaluate``; the library is ``data_prep.audio.recordings``, ``tasks.audio_folder`` and the SC09 recipe's
training loop and sampler (``tasks.audio_lm``, ``tasks.audio_generation``); docs/audio.md has a walk-through."""

from __future__ import annotations

import warnings
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
from mamba_bio_audio.recipes.sc09 import ARCHS, MODEL_PRESETS

data_option = click.option("--data", required=True, type=click.Path(path_type=Path),
                           help="Recordings store written by `mba audio prepare`.")
short_files_option = click.option(
    "--short-files", type=click.Choice(["skip", "pad"]), default="skip", show_default=True,
    help="Files shorter than the window: left out with a warning, or padded with silence and masked out of the loss.")
train_short_files_option = click.option(
    "--short-files", type=click.Choice(["skip", "pad", "pack"]), default="skip", show_default=True,
    help="Files shorter than the window: left out with a warning, padded with silence and masked out of the loss, "
         "or packed several per training row (seq_idx; no compute on padding; val windows padded).")


def _options() -> dict:
    """The current command's option values (what ran), paths as strings: replayable with --config."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in click.get_current_context().params.items()}


def _warn(command: str, messages) -> None:
    for message in messages:
        click.echo(f"mba audio {command}: warning: {message}", err=True)


def left_out_lines(names: list[str], window: int, shown: int = 3) -> list[str]:
    """The warning for train files shorter than the window: one line naming the first ``shown`` of them (a folder of
    short clips would otherwise print a line per file), where the full list is, and the flag that keeps them."""
    if not names:
        return []
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return [f"{len(names)} train file{'s' if len(names) > 1 else ''} shorter than the {window}-sample window left out "
            f"of training ({', '.join(names[:shown])}{more}; all in metrics.json files_left_out): --short-files pad "
            f"or pack keeps them"]


def _load_audio_lm(checkpoint: Path, device):
    """The audio LM of ``checkpoint`` (:func:`~mamba_bio_audio.tasks.audio_generation.load_audio_lm`); a model
    without the audio settings is a one-line CheckpointError naming the folder."""
    from mamba_bio_audio.errors import CheckpointError
    from mamba_bio_audio.tasks.audio_generation import load_audio_lm
    from mamba_bio_audio.tasks.audio_lm import audio_settings

    model = load_audio_lm(checkpoint, device=device)
    try:
        audio_settings(model)
    except CheckpointError as e:
        raise CheckpointError(f"--checkpoint {checkpoint}: {e}") from None
    return model


def _sample_files(samples: Path) -> list[Path]:
    """The audio files directly in ``samples`` that ``evaluate --samples`` scores (scored_clips' choice), or a
    one-line UserError when there are none."""
    from mamba_bio_audio.data_prep.audio.io import AUDIO_SUFFIXES

    files = sorted(p for p in samples.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"--samples {samples}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
    return files


def _left_out(files: list[Path], clips) -> list[str]:
    """One line per file of ``files`` that is not among the scored ``clips``: its read problem (unreadable, empty,
    NaN)."""
    from mamba_bio_audio.data_prep.audio.io import read_audio
    from mamba_bio_audio.errors import DataError

    scored, problems = {clip.path for clip in clips}, []
    for path in files:
        if path not in scored:
            try:
                read_audio(path)
                problems.append(f"{path}: not scored")
            except DataError as e:
                problems.append(str(e))
    return problems


@click.group("audio")
def audio() -> None:
    """Audio LMs on any folder of recordings: prepare, train, generate, evaluate."""


# ---- prepare ------------------------------------------------------------------------------------------------------
@audio.command("prepare")
@click.option("--from", "src", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of .wav / .flac / .ogg files (searched recursively; any length, rate, channels).")
@out_option(help_text="Token store folder to write (replaced atomically).")
@click.option("--sample-rate", type=click.IntRange(min=1000, max=192000), default=16000, show_default=True,
              help="Store rate in Hz; every file is resampled to it (mono: channels averaged).")
@click.option("--encoding", type=click.Choice(["mulaw8", "linear8"]), default="mulaw8", show_default=True)
@click.option("--normalization", type=click.Choice(["none", "peak"]), default="none", show_default=True,
              help="Amplitude: as read, or each file scaled to peak 1.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of the files (seeded shuffle by --seed) in the val split.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--split-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Lines '<file> <split>' (file relative to --from; split train|val|test) instead of the "
                   "fractions; files not listed are train.")
@click.option("--max-file-seconds", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
              help="Longer files are skipped as huge.")
@click.option("--max-clipped-fraction", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Files with more of their samples at full scale are skipped as clipped.")
@click.option("--strict", is_flag=True, help="Stop at the first unusable file (exit 2) instead of skipping it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split by file.")
@overwrite_option
@config_option
def prepare(src: Path, out: Path, sample_rate: int, encoding: str, normalization: str, val_fraction: float,
            test_fraction: float, split_list: Path | None, max_file_seconds: float, max_clipped_fraction: float,
            strict: bool, seed: int, overwrite: bool) -> None:
    """Audio files -> 8-bit token store of whole recordings, split by file."""
    from mamba_bio_audio.data_prep.audio.recordings import prepare_recordings

    if split_list is not None and not split_list.is_file():
        raise UserError(f"--split-list {split_list}: no such file")
    check_output_folder(out, "audio prepare", overwrite=overwrite, inputs=(src,))
    with output_folder(out, "audio prepare", overwrite=overwrite, inputs=(src,)) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = prepare_recordings(src, tmp, sample_rate, encoding=encoding, normalization=normalization,
                                    val_fraction=val_fraction, test_fraction=test_fraction, split_list=split_list,
                                    seed=seed, max_file_seconds=max_file_seconds,
                                    max_clipped_fraction=max_clipped_fraction, strict=strict)
    _warn("prepare", (f"skipped {m}" for m in result.skipped))
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    click.echo(f"wrote {out}: {counts} files at {sample_rate} Hz ({encoding}); {len(result.skipped)} files skipped")


# ---- train --------------------------------------------------------------------------------------------------------
@audio.command("train")
@data_option
@out_option(help_text="Run folder: config.yaml, checkpoints/, logs/, model/, metrics.json, loss.png.")
@click.option("--window", type=click.IntRange(min=2, max=2**20), default=16384, show_default=True,
              help="Samples per training window, cut at random from within the files.")
@train_short_files_option
@click.option("--preset", type=click.Choice(MODEL_PRESETS), default="paper-6m", show_default=True)
@click.option("--arch", type=click.Choice(ARCHS), default="sashimi", show_default=True,
              help="Multi-scale SaShiMi-style Mamba U-Net, or a plain Mamba LM.")
@budget_options
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Peak AdamW lr (betas 0.9/0.95, weight decay 0.1, 10% warm-up, cosine; grad clip 0.1).")
@click.option("--warmup-min-length", type=click.IntRange(min=0), default=None,
              help="Sequence-length warm-up from this length, doubling to --window at constant samples per batch "
                   "[default: 16384 above 16384, else off; 0: off].")
@click.option("--warmup-stage-steps", type=click.IntRange(min=1), default=None,
              help="Steps per warm-up stage [default: max-steps / 10].")
@click.option("--checkpoint-activations/--no-checkpoint-activations", default=None,
              help="Recompute activations in the backward pass (--arch mamba-lm) [default: on from 131072].")
@click.option("--val-every", type=click.IntRange(min=0), default=0,
              help="Steps between validations [default: max_steps / 10].")
@click.option("--val-windows", type=click.IntRange(min=1), default=64, show_default=True,
              help="Validation windows scored (NLL in bits per sample).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--precision", default=None, help="Lightning precision [default: bf16-mixed on GPU, 32-true on CPU].")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.ckpt (same flags).")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--num-nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--strategy", type=click.Choice(["auto", "ddp", "fsdp"]), default="auto", show_default=True)
@common_options
def train(data: Path, out: Path, window: int, short_files: str, preset: str, arch: str, max_steps: int | None,
          max_minutes: float | None, batch_size: int, lr: float, warmup_min_length: int | None,
          warmup_stage_steps: int | None, checkpoint_activations: bool | None, val_every: int, val_windows: int,
          checkpoint_every: int, num_workers: int, precision: str | None, resume: bool, devices: int, num_nodes: int,
          strategy: str, device: str, seed: int) -> None:
    """Train an 8-bit audio LM on random windows of the training recordings."""
    from mamba_bio_audio.tasks.audio_folder import (
        RecordingTrainSettings,
        RecordingWindows,
        build_recording_lm,
        open_recordings,
        packing_align,
        train_recording_lm,
        warmup_plan,
    )
    from mamba_bio_audio.tasks.audio_lm import check_step_plan
    from mamba_bio_audio.tasks.windows import is_main_process
    from mamba_bio_audio.training.trainer import TrainerConfig

    store = open_recordings(data)
    settings = RecordingTrainSettings(
        arch=arch, preset=preset, max_steps=max_steps, max_minutes=max_minutes, batch_size=batch_size, lr=lr,
        val_every=val_every, val_clips=val_windows, checkpoint_every=checkpoint_every, num_workers=num_workers,
        precision=precision, devices=devices, num_nodes=num_nodes, strategy=strategy, device=device, seed=seed,
        window=window, short_files=short_files, warmup_min_length=warmup_min_length,
        warmup_stage_steps=warmup_stage_steps, checkpoint_activations=checkpoint_activations)
    # every refusal before anything is written: trainer options, window against the files, warm-up, memory level
    TrainerConfig(device=device, strategy=strategy, precision=precision)
    check_step_plan(settings, resume)
    align = packing_align(build_recording_lm(settings, {"sample_rate": 1, "encoding": "mulaw8",
                                                         "clip_samples": window}))
    RecordingWindows(store, "train", window, seed, short_files, align)
    warmup_plan(settings, align)
    if resume:
        check_resume_config(out, click.get_current_context().params, ("preset", "arch", "window"))
    out = run_folder(out, "audio train", resume=resume, inputs=(data,))
    if is_main_process():  # one writer: another process may get here before the folder exists
        write_yaml(out / "config.yaml", _options())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*left out of training")
        metrics = train_recording_lm(store, out, settings, resume=resume)
    if metrics is None:  # an extra process of a multi-device run
        return
    _warn("train", left_out_lines(metrics["files_left_out"], window))
    report_audio_training(out, metrics, f"audio {arch} {preset}: {metrics['sample_rate']} Hz {metrics['encoding']}, "
                                         f"window {window}", "no val windows")


# ---- generate -----------------------------------------------------------------------------------------------------
@audio.command("generate")
@checkpoint_option
@click.option("--num-samples", type=click.IntRange(min=1), default=4, show_default=True, help="Clips to generate.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Audio to generate per clip, after the prompt [default: the training window].")
@click.option("--prompt", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Audio file to continue (mono: channels averaged; another rate: resampled; both with a warning).")
@click.option("--prompt-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Continue the prompt's first seconds [default: the whole file].")
@batch_size_option
@sampling_options
@click.option("--batch-1-speed/--no-batch-1-speed", default=True, show_default=True,
              help="Also time 1,024 recurrent steps at batch 1 (metrics.json: batch_1).")
@out_option(help_text="Folder for sample_NNNN.wav, likelihoods.tsv, metrics.json, index.html (written beside it, "
                      "renamed into place at the end).")
@overwrite_option
@common_options
def generate(checkpoint: Path, num_samples: int, seconds: float | None, prompt: Path | None,
             prompt_seconds: float | None, batch_size: int, temperature: float, top_p: float,
             cuda_graph: bool | None, batch_1_speed: bool, out: Path, overwrite: bool, device: str, seed: int) -> None:
    """Sample clips, or continue a prompt, one recurrent step per sample; WAVs grow on disk as they are sampled
    (in a temporary folder beside OUT, named on stderr, renamed to OUT when every clip is done)."""
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.audio_continuation import check_prompt_options, load_prompt, write_generations
    from mamba_bio_audio.tasks.audio_generation import clip_length, likelihoods_tsv
    from mamba_bio_audio.tasks.audio_lm import audio_settings
    from mamba_bio_audio.tasks.audio_page import generated_clips, write_listening_page

    where = torch_device(device)
    if cuda_graph and where.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device, not {where}")
    check_prompt_options(prompt, prompt_seconds)
    check_output_folder(out, "audio generate", overwrite=overwrite, inputs=(checkpoint, prompt))
    model = _load_audio_lm(checkpoint, where)
    audio_info = audio_settings(model)
    length = clip_length(seconds, audio_info)
    tokens, notes = (None, []) if prompt is None else load_prompt(prompt, audio_info, prompt_seconds)
    _warn("generate", notes)
    with output_folder(out, "audio generate", overwrite=overwrite, inputs=(checkpoint, prompt)) as tmp:
        tmp.mkdir()
        click.echo(f"mba audio generate: sampling into {tmp} (renamed to {out} when done)", err=True)
        write_yaml(tmp / "config.yaml", _options())
        rows, metrics = write_generations(model, tmp, num_samples, length, prompt=tokens, batch_size=batch_size,
                                          temperature=temperature, top_p=top_p, seed=seed, cuda_graph=cuda_graph,
                                          device=where, measure_batch_1=batch_1_speed)
        metrics.update(prompt=None if prompt is None else str(prompt), prompt_notes=notes)
        atomic_write_text(tmp / "likelihoods.tsv", likelihoods_tsv(rows))
        write_json(tmp / "metrics.json", metrics)
        shown = "" if prompt is None else f"continuing the first {metrics['prompt_samples']} samples of {prompt.name}; "
        write_listening_page(tmp, generated_clips(tmp), title=f"mba audio generate: {checkpoint}",
                             notes=f"{shown}log-likelihood of the generated samples under the model.")
    what = "continuations" if prompt is not None else "clips"
    click.echo(f"wrote {num_samples} {what} of {length / metrics['sample_rate']:.3f} s to {out} "
               f"({metrics['audio_seconds_per_second']:.3g} s of audio per second at batch {metrics['batch_size']})")


# ---- evaluate -----------------------------------------------------------------------------------------------------
@audio.command("evaluate")
@checkpoint_option
@data_option
@short_files_option
@out_option(help_text="Folder for metrics.json and metrics.md.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--max-windows", type=click.IntRange(min=1), default=None,
              help="Windows scored, evenly spaced over the split [default: all].")
@batch_size_option
@click.option("--samples", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of WAVs (e.g. from `mba audio generate`) to score and list in OUT/index.html.")
@overwrite_option
@common_options
def evaluate(checkpoint: Path, data: Path, short_files: str, out: Path, split: str, max_windows: int | None,
             batch_size: int, samples: Path | None, overwrite: bool, device: str, seed: int) -> None:
    """NLL in bits per sample on consecutive windows (the training length) of the test recordings; with
    --samples, a listening page of the WAVs with their log-likelihood."""
    from mamba_bio_audio.benchmarks.report import environment, markdown_table
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.tasks.audio_folder import evaluate_recording_lm, open_recordings

    if samples is not None and not samples.is_dir():
        raise UserError(f"--samples {samples}: no such folder")
    sample_files = _sample_files(samples) if samples is not None else []
    inputs = (checkpoint, data, samples)
    check_output_folder(out, "audio evaluate", overwrite=overwrite, inputs=inputs)
    where = torch_device(device)
    model = _load_audio_lm(checkpoint, where)
    store = open_recordings(data)
    metrics = evaluate_recording_lm(model, store, split=split, short_files=short_files, max_windows=max_windows,
                                    batch_size=batch_size, device=where)
    metrics.update(options=_options(), environment=environment())
    from mamba_bio_audio.metrics.markov import markov_baseline

    baseline = markov_baseline(store, split=split)
    metrics["baseline"] = baseline
    table = markdown_table(["model", "split", "NLL bits/sample", "windows", "window", "files"],
                           [["audio LM", split, metrics[f"{split}_bits_per_sample"], metrics[f"{split}_windows"],
                             metrics["window"], metrics["files"]],
                            [f"order-{baseline['order']} Markov chain (baseline)", split,
                             baseline["bits_per_sample"], "-", "-", metrics["files"]]])
    with output_folder(out, "audio evaluate", overwrite=overwrite, inputs=inputs) as tmp:
        tmp.mkdir()
        if samples is not None:
            from mamba_bio_audio.tasks.audio_page import scored_clips, write_listening_page

            clips = scored_clips(samples, model, device=where)
            left_out = _left_out(sample_files, clips)
            if not clips:
                raise UserError(f"--samples {samples}: no readable audio file (the first: {left_out[0]})")
            write_listening_page(tmp, clips, title=f"mba audio evaluate: {samples}",
                                 notes="Log-likelihood of each whole clip under the model, in windows of its "
                                       "training length.")
            metrics["samples"] = {"folder": str(samples), "clips": len(clips), "left_out": left_out}
        write_json(tmp / "metrics.json", metrics)
        atomic_write_text(tmp / "metrics.md", table + f"\n\n{metrics['sample_rate']} Hz, {metrics['encoding']}; "
                          f"each window scored on its own (its first sample is context only). Baseline: an order-"
                          f"{baseline['order']} Markov chain of the samples (add-{baseline['alpha']:g}) fitted on "
                          f"the train files, scored over every {split} sample after each file's first "
                          f"{baseline['order']}.\n")
    _warn("evaluate", (f"--samples: {m} -- left out of the page" for m in metrics.get("samples", {}).get(
        "left_out", [])))
    click.echo(table)


# ---- context-sweep ------------------------------------------------------------------------------------------------
@audio.command("context-sweep")
@data_option
@out_option(help_text="Folder for window_W/ runs, sweep.json, sweep.md and sweep.png (a stopped sweep continues).")
@click.option("--windows", default="8192,32768,131072,524288,1048576", show_default=True,
              help="Training window lengths in samples, comma-separated (2 .. 2^20).")
@click.option("--tokens-per-batch", type=click.IntRange(min=2), default=2**20, show_default=True,
              help="Samples per step in every run (batch = this // window): equal compute per run.")
@budget_options
@click.option("--preset", type=click.Choice(MODEL_PRESETS), default="paper-6m", show_default=True)
@click.option("--arch", type=click.Choice(ARCHS), default="sashimi", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
@click.option("--warmup-min-length", type=click.IntRange(min=0), default=None,
              help="Sequence-length warm-up in each run from this length [default: off].")
@click.option("--eval-window", type=click.IntRange(min=2, max=2**20), default=None,
              help="The common test window every model is also scored at [default: the longest --windows].")
@click.option("--max-test-windows", type=click.IntRange(min=1), default=None,
              help="Test windows per score, evenly spaced [default: all].")
@click.option("--val-windows", type=click.IntRange(min=1), default=8, show_default=True)
@short_files_option
@click.option("--precision", default=None, help="Lightning precision [default: bf16-mixed on GPU, 32-true on CPU].")
@common_options
def context_sweep(data: Path, out: Path, windows: str, tokens_per_batch: int, max_steps: int | None,
                  max_minutes: float | None, preset: str, arch: str, lr: float, warmup_min_length: int | None,
                  eval_window: int | None, max_test_windows: int | None, val_windows: int, short_files: str,
                  precision: str | None, device: str, seed: int) -> None:
    """Test NLL against training context: the same model trained at each window length with equal samples per
    step and equal steps (the Mamba paper's long-context audio experiment)."""
    from mamba_bio_audio.recipes.options import parse_int_list
    from mamba_bio_audio.tasks.audio_context_sweep import SweepSettings, check_sweep, run_sweep, sweep_table
    from mamba_bio_audio.tasks.audio_folder import MAX_WINDOW, RecordingTrainSettings, open_recordings
    from mamba_bio_audio.training.trainer import TrainerConfig

    lengths = parse_int_list(windows, "--windows")
    if any(not 2 <= w <= MAX_WINDOW for w in lengths):
        raise UserError(f"--windows {windows}: every window must be 2 .. {MAX_WINDOW} samples")
    store = open_recordings(data)
    base = RecordingTrainSettings(arch=arch, preset=preset, max_steps=max_steps, max_minutes=max_minutes, lr=lr,
                                  val_clips=val_windows, precision=precision, device=device, seed=seed,
                                  short_files=short_files, warmup_min_length=warmup_min_length,
                                  checkpoint_every=10**9)
    settings = SweepSettings(lengths, tokens_per_batch, base, eval_window, max_test_windows)
    TrainerConfig(device=device, precision=precision)
    check_sweep(store, settings, out)
    out = run_folder(out, "audio context-sweep", inputs=(data,))
    write_yaml(out / "config.yaml", _options())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*left out of training")
        result = run_sweep(store, out, settings, progress=lambda m: click.echo(f"mba audio context-sweep: {m}",
                                                                                err=True))
    click.echo(sweep_table(result["rows"], result["common_window"]))
    click.echo(f"wrote {out}/sweep.md, sweep.json, sweep.png")
