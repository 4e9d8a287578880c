"""Training, test NLL, sample scoring and plots for 8-bit audio language models (the SC09 recipe's library).

Training example of a clip of tokens ``x_0 .. x_{L-1}``: ``input_ids = [silence, x_0, ..., x_{L-1}]`` (length
``L + 1``); the LM reads ``input_ids[:-1]`` and predicts ``input_ids[1:]``, so every sample of the clip is predicted
and the NLL is averaged over all ``L`` samples ("bits per sample": ``-log2 p(x_t | x_<t)`` averaged over ``t`` and
clips). The silence token (128) stands for the zero waveform before the clip; sampling starts from it too.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mamba_bio_audio.data_prep.audio.clips import fix_length
from mamba_bio_audio.data_prep.audio.dataset import AudioClipDataset
from mamba_bio_audio.data_prep.audio.io import AUDIO_SUFFIXES, read_audio
from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN
from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.files import pyplot, save_figure

LN2 = float(np.log(2.0))
PAPER_ROW = "Mamba paper, SC09 test at 16 kHz: Mamba 6.1M NLL 1.852, FID 0.94, IS 6.26, mIS 88.54, AM 0.52"


# ---- models -------------------------------------------------------------------------------------------------------
ARCHS = ("sashimi", "mamba-lm")
PRESETS = ("tiny", "paper-6m")
AUDIO_KEYS = ("sample_rate", "encoding", "clip_samples")


def build_audio_lm(arch: str, preset: str, audio: dict):
    """A fresh 256-token LM: ``arch`` "sashimi" (:mod:`mamba_bio_audio.models.sashimi` presets) or "mamba-lm"
    (plain :class:`MambaLM`: "paper-6m" is d_model 256 x 14 blocks, 6.2 M parameters, like the SaShiMi preset).

    ``audio`` (``sample_rate``, ``encoding``, ``clip_samples``) is stored in ``config.extra`` so that a saved model
    says how to turn its tokens back into a waveform.
    """
    from mamba_bio_audio.config import MambaConfig
    from mamba_bio_audio.models.lm import MambaLM
    from mamba_bio_audio.models.sashimi import SashimiLM
    from mamba_bio_audio.models.sashimi import preset as sashimi_preset

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (expected one of {', '.join(PRESETS)})")
    if arch == "sashimi":
        return SashimiLM(sashimi_preset(preset, extra=dict(audio)))
    if arch == "mamba-lm":
        size = {"tiny": {"d_model": 32, "n_layer": 2, "d_state": 4}, "paper-6m": {"d_model": 256, "n_layer": 14}}
        return MambaLM(MambaConfig(vocab_size=256, **size[preset], extra=dict(audio)))
    raise UserError(f"unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")


def audio_settings(model) -> dict:
    """``{"sample_rate", "encoding", "clip_samples"}`` saved with an audio LM; a CheckpointError if absent."""
    from mamba_bio_audio.errors import CheckpointError

    extra = getattr(model.config, "extra", {}) or {}
    missing = [k for k in AUDIO_KEYS if k not in extra]
    if missing:
        raise CheckpointError(f"the checkpoint is not an audio model (its config lacks {', '.join(missing)})")
    return {k: extra[k] for k in AUDIO_KEYS}


# ---- training examples ----------------------------------------------------------------------------------------
def lm_example(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens: (L,)`` -> ``input_ids: (L + 1,)`` with the silence token in front."""
    return torch.cat([torch.tensor([SILENCE_TOKEN], dtype=torch.long), tokens.long()])


def clip_sample_fn(dataset: AudioClipDataset, seed: int) -> Callable[[int], dict]:
    """Sample ``i`` -> ``{"input_ids": (L + 1,)}``: epochs of a seeded shuffle of the clips (``i // len`` is the
    epoch), a pure function of ``i`` so training resumes exactly (see :mod:`mamba_bio_audio.training.data`)."""
    n = len(dataset)
    cache: dict[int, np.ndarray] = {}

    def sample(i: int) -> dict:
        epoch = i // n
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        return {"input_ids": lm_example(dataset[int(cache[epoch][i % n])]["input_ids"])}

    return sample


# ---- training -----------------------------------------------------------------------------------------------------
DEFAULT_STEPS = 200_000  # optimizer steps of an audio run given neither --max-steps nor --max-minutes


@dataclass
class AudioTrainSettings:
    """An SC09 training run: model (``arch``, ``preset``), schedule (AdamW at peak ``lr``, betas 0.9/0.95, weight
    decay 0.1, 10 % warm-up, cosine; grad clip 0.1), validation every ``val_every`` steps (0: a tenth of the run) on
    ``val_clips`` clips, checkpoints, loader workers and devices as :class:`~mamba_bio_audio.training.trainer.
    TrainerConfig` takes them. ``max_steps`` None: the steps a resumed run planned, else with ``max_minutes`` (a
    wall-clock budget) as many as fit it at the measured step time, else :data:`DEFAULT_STEPS`."""

    arch: str = "sashimi"
    preset: str = "paper-6m"
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 16
    lr: float = 2e-3
    val_every: int = 0
    val_clips: int = 64
    checkpoint_every: int = 2000
    num_workers: int = 0
    precision: str | None = None
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    device: str = "auto"
    seed: int = 0


def check_step_plan(settings: AudioTrainSettings, resume: bool) -> None:
    """:func:`~mamba_bio_audio.training.budget.check_budget_plan` for a fresh run (a resumed run reads the planned
    step count from its checkpoint)."""
    from mamba_bio_audio.training.budget import check_budget_plan

    if not resume:
        check_budget_plan(settings.max_steps, settings.max_minutes, settings.devices * settings.num_nodes)


def train_audio_lm(train_set: AudioClipDataset, val_set: AudioClipDataset | None, out: Path,
                   settings: AudioTrainSettings, resume: bool = False) -> dict | None:
    """Train a fresh audio LM on next-sample prediction, save ``out/model`` and score the validation clips.

    Returns the metrics (val bits per sample, seconds, shape, the audio settings), or None in the extra processes
    of a multi-device run (they write nothing).
    """
    import lightning.pytorch as pl

    from mamba_bio_audio.training.data import IndexedDataModule

    s = settings
    pl.seed_everything(s.seed, verbose=False)
    audio = {"sample_rate": train_set.sample_rate, "encoding": train_set.encoding,
             "clip_samples": train_set.clip_samples}
    model = build_audio_lm(s.arch, s.preset, audio)
    val = [] if val_set is None else [{"input_ids": lm_example(val_set[i]["input_ids"])}
                                      for i in range(min(s.val_clips, len(val_set)))]
    datamodule = IndexedDataModule(clip_sample_fn(train_set, s.seed), s.batch_size, val_samples=val,
                                   num_workers=s.num_workers)
    run = fit_audio_lm(model, datamodule, out, s, resume=resume, validate=bool(val))
    if run is None:
        return None
    model.save_pretrained(out / "model")
    val_bits = None
    if val_set is not None:
        val_bits = nll_bits_per_sample(model, val_set, batch_size=s.batch_size, max_clips=s.val_clips,
                                       device=eval_device(s))
    return {"val_bits_per_sample": val_bits, "val_clips": min(s.val_clips, len(val_set or [])), **run,
            "arch": s.arch, "preset": s.preset, "parameters": sum(p.numel() for p in model.parameters()), **audio}


def eval_device(settings: AudioTrainSettings) -> torch.device:
    """Where to score a model after :func:`fit_audio_lm`: the device it trained on. Not the model's own device:
    Lightning's teardown moves the model back to the CPU when ``fit`` returns (scoring 2^19-sample windows
    there took minutes)."""
    from mamba_bio_audio.devices import torch_device

    return torch_device(settings.device)


def fit_audio_lm(model, datamodule, out: Path, settings: AudioTrainSettings, *, resume: bool = False,
                 validate: bool = True, callbacks: Callable[[int], list] | None = None,
                 task_class=None) -> dict | None:
    """The training loop of the audio recipes: plan the steps (``settings.max_steps``, else a resumed run's plan,
    else as many as ``max_minutes`` fits, else :data:`DEFAULT_STEPS`), train ``model`` as ``task_class`` (default
    :class:`~mamba_bio_audio.training.module.LMTask`) on ``datamodule`` with AdamW (betas 0.9/0.95, weight decay
    0.1, 10 % warm-up, cosine, grad clip 0.1) and ``callbacks(max_steps)``, checkpoints in ``out``.

    Returns the run's facts (``max_steps``, ``max_minutes``, ``steps``, ``budget_cut``, ``train_seconds``, ...), or
    None in the extra processes of a multi-device run (they write nothing).
    """
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.training.budget import (
        budget_callback,
        planned_max_steps,
        planned_steps,
        seconds_per_step,
    )
    from mamba_bio_audio.training.module import LMTask, OptimConfig
    from mamba_bio_audio.training.trainer import TrainerConfig, fit

    s = settings
    task_class = task_class or LMTask
    max_steps, step_seconds = s.max_steps, None
    if max_steps is None and resume:
        max_steps = planned_max_steps(out / "checkpoints" / "last.ckpt")
    if max_steps is None and s.max_minutes is not None:
        step_seconds = seconds_per_step(task_class(model, OptimConfig(lr=s.lr)), datamodule, torch_device(s.device),
                                        precision=s.precision)
        max_steps = planned_steps(60 * s.max_minutes, step_seconds)
    max_steps = max_steps or DEFAULT_STEPS
    task = task_class(model, OptimConfig(lr=s.lr, weight_decay=0.1, betas=(0.9, 0.95), warmup=0.1,
                                         max_steps=max_steps))
    trainer_config = TrainerConfig(max_steps=max_steps, max_minutes=s.max_minutes, device=s.device,
                                   devices=s.devices, num_nodes=s.num_nodes,
                                   strategy=s.strategy, precision=s.precision, grad_clip=0.1,
                                   checkpoint_every=s.checkpoint_every,
                                   val_every=(s.val_every or max(1, max_steps // 10)) if validate else 0,
                                   log_every=max(1, min(50, max_steps // 20)),
                                   callbacks=list(callbacks(max_steps)) if callbacks else [])
    started = time.time()
    trainer = fit(task, datamodule, out, trainer_config, resume=resume)
    train_seconds = time.time() - started
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model.float()  # --precision bf16-true / 16-true leave half-precision weights: save and score in fp32
    cut = bool(getattr(budget_callback(trainer), "cut", False))
    if not trainer.is_global_zero:
        return None
    return {"max_steps": max_steps, "max_minutes": s.max_minutes, "steps": int(trainer.global_step),
            "budget_cut": cut, **({"stopped_by": "max_minutes"} if cut else {}),
            **({"measured_seconds_per_step": round(step_seconds, 4)} if step_seconds is not None else {}),
            "train_seconds": train_seconds}


# ---- test NLL ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def nll_bits_per_sample(model, dataset: AudioClipDataset, *, batch_size: int = 16, max_clips: int | None = None,
                        device: str | torch.device = "cpu") -> float:
    """Mean ``-log2 p(x_t | x_<t)`` over every sample of the first ``max_clips`` clips (all by default)."""
    n = len(dataset) if max_clips is None else min(len(dataset), max_clips)
    was_training = model.training
    model.eval().to(device)
    total, count = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            ids = torch.stack([lm_example(dataset[i]["input_ids"]) for i in range(start, min(n, start + batch_size))])
            ids = ids.to(device)
            logits = model(ids[:, :-1]).float()
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count / LN2


def check_evaluation_inputs(audio: dict, test_set: AudioClipDataset, store: Path, classifier: Path | None,
                            samples: Path | None):
    """Before any scoring: the model's rate and encoding (``audio``, :func:`audio_settings`) must match the
    store's, ``samples`` needs a ``classifier``, whose rate must match too. Returns the loaded classifier (or
    None); a mismatch is a one-line :class:`UserError`."""
    from mamba_bio_audio.models.digit_classifier import DigitClassifier

    if audio["sample_rate"] != test_set.sample_rate or audio["encoding"] != test_set.encoding:
        raise UserError(f"the model was trained on {audio['sample_rate']} Hz {audio['encoding']} audio, "
                        f"the store {store} holds {test_set.sample_rate} Hz {test_set.encoding}")
    if samples is not None and classifier is None:
        raise UserError("--samples needs --classifier DIR (from `mba sc09 train-classifier`)")
    if classifier is None:
        return None
    net = DigitClassifier.from_pretrained(classifier)
    if net.config.sample_rate != test_set.sample_rate:
        raise UserError(f"--classifier {classifier}: trained at {net.config.sample_rate} Hz, "
                        f"the store is {test_set.sample_rate} Hz")
    return net


# ---- generated audio in, scores out -------------------------------------------------------------------------------
def read_wav_folder(folder: str | os.PathLike, sample_rate: int,
                    num_samples: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """The audio files of ``folder`` (sorted, not recursive) as ``(n, num_samples)`` float waveforms.

    Conversions as :func:`~mamba_bio_audio.data_prep.audio.io.read_audio` (mono average, resample to
    ``sample_rate``), then cut or zero-padded at the end to ``num_samples``. Unusable files are skipped with a
    warning; returns ``(waves, names, skipped_messages)``. No usable file at all is a DataError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of samples")
    waves, names, skipped = [], [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        try:
            wave, _ = read_audio(path, sample_rate)
        except DataError as e:
            warnings.warn(f"{e} -- skipped", stacklevel=2)
            skipped.append(str(e))
            continue
        waves.append(fix_length(wave, num_samples))
        names.append(path.name)
    if not waves:
        raise DataError(f"{folder}: no usable .wav/.flac files")
    return torch.stack(waves), names, skipped


def classifier_config(preset: str, sample_rate: int, n_classes: int = 10):
    """The digit classifier for ``preset`` ("paper": the s4 SC09 classifier; "tiny": for tests) at ``sample_rate``.

    The STFT scales with the rate (n_fft 2048, hop 512 at 16 kHz; 1024, 256 at 8 kHz) so that a 1 s clip always
    gives 32 frames of 32 mel bands, as the s4 classifier sees at 16 kHz.
    """
    from mamba_bio_audio.models.digit_classifier import DigitClassifierConfig

    stft = {"sample_rate": sample_rate, "n_fft": 2048 * sample_rate // 16000,
            "hop_length": 512 * sample_rate // 16000, "n_classes": n_classes}
    if preset == "paper":
        return DigitClassifierConfig(**stft)
    if preset == "tiny":
        return DigitClassifierConfig(**stft, depth=11, cardinality=2, base_width=4, widen_factor=1, stem_channels=8)
    raise UserError(f"unknown classifier preset {preset!r} (expected paper or tiny)")


def train_classifier(train_set: AudioClipDataset, val_set: AudioClipDataset | None,
                     test_set: AudioClipDataset | None, preset: str, *, epochs: int, batch_size: int, lr: float,
                     device: str | torch.device = "cpu", seed: int = 0,
                     log: Callable[[str], None] = print) -> tuple[object, dict]:
    """Train the digit classifier of ``preset`` (:func:`classifier_config`) on waveform clips; returns the model
    and its metrics ``{"history", "test_accuracy" (None without a test split), "preset", "parameters"}``."""
    from mamba_bio_audio.metrics.classifier_training import train_digit_classifier

    config = classifier_config(preset, train_set.sample_rate, len(train_set.store.meta["label_names"]))
    model, history = train_digit_classifier(train_set, val_data=val_set, config=config, epochs=epochs,
                                            batch_size=batch_size, lr=lr, device=device, seed=seed, log=log)
    test_acc = None if test_set is None else classifier_accuracy(model, test_set, device=device)
    return model, {"history": history, "test_accuracy": test_acc, "preset": preset,
                   "parameters": sum(p.numel() for p in model.parameters())}


def classifier_accuracy(classifier, dataset: AudioClipDataset, *, batch_size: int = 64,
                        device: str | torch.device = "cpu") -> float:
    """Fraction of ``dataset`` (items with ``"waveform"``) whose arg-max class is the label."""
    from mamba_bio_audio.metrics.classifier_training import classifier_outputs

    probs, _ = classifier_outputs(classifier, dataset, batch_size=batch_size, device=device)
    return float((probs.argmax(axis=1) == dataset.labels).mean())


def score_sets(classifier, train_data, sets: dict[str, object], *, batch_size: int = 64,
               device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """FID / IS / mIS / AM (:mod:`mamba_bio_audio.metrics.sample_quality`) of each named set against the training set.

    ``train_data`` and every value of ``sets`` are what
    :func:`~mamba_bio_audio.metrics.classifier_training.classifier_outputs` takes: a dataset with ``"waveform"``
    items or a tensor ``(n, samples)``. Returns ``{name: {"fid", "is", "mis", "am", "n"}}``.
    """
    from mamba_bio_audio.metrics.classifier_training import classifier_outputs
    from mamba_bio_audio.metrics.sample_quality import sample_quality_scores

    for name, data in {"training set": train_data, **sets}.items():
        if len(data) < 2:
            raise DataError(f"the {name} has {len(data)} clip(s); FID needs at least 2")
    train_probs, train_feats = classifier_outputs(classifier, train_data, batch_size=batch_size, device=device)
    rows = {}
    for name, data in sets.items():
        probs, feats = classifier_outputs(classifier, data, batch_size=batch_size, device=device)
        rows[name] = {**sample_quality_scores(train_feats, train_probs, feats, probs), "n": len(probs)}
    return rows


def evaluate_audio_lm(model, test_set: AudioClipDataset, *, classifier=None, train_set=None,
                      generated: torch.Tensor | None = None, batch_size: int = 16, max_clips: int | None = None,
                      device: str | torch.device = "cpu", extra_sets: dict | None = None) -> tuple[dict, str]:
    """Test NLL of ``model`` (bits per sample over ``max_clips`` test clips, all by default) and, with a digit
    ``classifier``, FID / IS / mIS / AM of the real test set and of ``generated`` waveforms ``(n, samples)``
    against ``train_set`` (:func:`score_sets`), and of any further named waveform sets in ``extra_sets``.

    Returns ``(metrics, table)``: ``{"test_nll_bits_per_sample", "nll_test_clips", "scores"}`` and a markdown table
    (:func:`evaluation_note` says how to read it).
    """
    from mamba_bio_audio.benchmarks.report import markdown_table

    sets: dict = {"real test set": test_set}
    if generated is not None:
        sets["generated"] = generated
    sets.update(extra_sets or {})
    scores = {} if classifier is None else score_sets(classifier, train_set, sets, device=device)
    nll = nll_bits_per_sample(model, test_set, batch_size=batch_size, max_clips=max_clips, device=device)
    metrics = {"test_nll_bits_per_sample": nll, "nll_test_clips": min(max_clips or len(test_set), len(test_set)),
               "scores": scores}
    rows = [[name, None, s["fid"], s["is"], s["mis"], s["am"], s["n"]] for name, s in scores.items()]
    rows.insert(0, ["model (test NLL)", nll, None, None, None, None, metrics["nll_test_clips"]])
    return metrics, markdown_table(["set", "NLL bits/sample", "FID", "IS", "mIS", "AM", "clips"], rows)


def evaluation_note(test_set: AudioClipDataset) -> str:
    """The lines under :func:`evaluate_audio_lm`'s table: what FID and AM compare against, and the paper's row."""
    return (f"\n\nFID against the training set's classifier features; AM against its mean prediction "
            f"({test_set.sample_rate} Hz, {test_set.encoding}).\nReference: {PAPER_ROW}.\n")


# ---- plots --------------------------------------------------------------------------------------------------------
def spectrogram_grid(path: str | os.PathLike, waves: torch.Tensor, sample_rate: int, titles: list[str],
                     columns: int = 4) -> Path:
    """Save log-magnitude spectrograms of ``waves: (n, samples)`` as one PNG grid (headless, atomic write).

    STFT: Hann window of ~32 ms (a power of two), hop a quarter of it; dB relative to each clip's peak, floor -80.
    """
    plt = pyplot()

    n_fft = 1 << max(4, round(np.log2(0.032 * sample_rate)))
    n_fft = min(n_fft, 1 << int(np.log2(max(16, waves.shape[-1]))))
    hop = n_fft // 4
    padded = F.pad(waves.float(), (0, max(0, n_fft - waves.shape[-1])))  # very short clips: at least one frame
    spec = torch.stft(padded, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-8))
    db = (db - db.amax(dim=(-2, -1), keepdim=True)).clamp_min(-80.0)
    rows = -(-len(waves) // columns)
    cols = min(columns, len(waves))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), dpi=100, squeeze=False)
    seconds = waves.shape[-1] / sample_rate
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, db, titles):
        ax.imshow(image.numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0.0, seconds, 0.0, sample_rate / 2000))
        ax.set_title(title, fontsize=8)
        ax.axis("on")
        ax.tick_params(labelsize=6)
    axes[-1][0].set_xlabel("s", fontsize=7)
    axes[-1][0].set_ylabel("kHz", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path
