"""Unconditional audio sampling from an 8-bit audio LM (:class:`SashimiLM` or :class:`MambaLM`), and loading one.

Both models share the recurrent interface ``state = model.allocate_inference_cache(batch, device, dtype)`` and
``logits = model.step(input_ids, state)`` (``(batch,) -> (batch, vocab)``). Sampling starts from the silence token
(the waveform before a clip is taken to be silence, as in training, where the input sequence is
``[silence, x_0, ..., x_{L-2}]`` and the targets ``x_0 .. x_{L-1}``), then feeds every sampled token back.

Each generated sequence's log-likelihood under the model is accumulated on the way: the untempered, unfiltered
``log p(x_t | x_<t)`` (nats, float64) of the tokens actually drawn, whatever ``temperature`` / ``top_p`` drew them.

GPU: a decode step is a few hundred small kernels, so Python and launch overhead dominate. ``model.step`` has no
data-dependent control flow: its only branch is on the position counter and repeats with the model's
``step_period`` (``prod(pools)`` = 16 for SaShiMi, 1 for MambaLM). On CUDA, :func:`generate` therefore captures one
CUDA graph per phase of that period (:class:`GraphedStep`; all states are updated in place, so replaying the
graphs in order is the recurrence) and replays them; sampling from the logits stays outside the graphs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mamba_bio_audio.checkpoint import CONFIG_NAME
from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.generation.cuda_graph import GraphedStep
from mamba_bio_audio.generation.sampling import sample_next, seeded_generator

MODEL_FOLDER = "model"  # where a training run keeps its save_pretrained folder
MAX_SECONDS = 3600  # longest clip `sc09 generate --seconds` accepts: more is a typo (1e9 s would allocate terabytes)


@dataclass
class GeneratedAudio:
    """``tokens: (batch, num_samples)`` int64 in 0..vocab-1; ``log_likelihood: (batch,)`` float64, nats."""

    tokens: torch.Tensor
    log_likelihood: torch.Tensor

    @property
    def bits_per_sample(self) -> torch.Tensor:
        """``-log2 p(sequence) / num_samples`` per sequence, ``(batch,)``."""
        return -self.log_likelihood / (self.tokens.shape[1] * torch.log(torch.tensor(2.0, dtype=torch.float64)))


@torch.no_grad()
def generate(model, batch_size: int, num_samples: int, *, temperature: float = 1.0, top_p: float = 1.0,
             seed: int | None = None, progress: bool | None = None, device: str | torch.device | None = None,
             start_token: int = SILENCE_TOKEN, cuda_graph: bool | None = None) -> GeneratedAudio:
    """Sample ``batch_size`` sequences of ``num_samples`` tokens, one recurrent step per sample.

    Args:
        model: a :class:`~mamba_bio_audio.models.sashimi.SashimiLM` or :class:`~mamba_bio_audio.models.lm.MambaLM`.
        batch_size, num_samples: sequences and tokens per sequence.
        temperature: 0 = argmax; top_p: nucleus filter (1.0 = off); seed: makes sampling repeatable.
        progress: a tqdm bar (None: only for long runs, >= 4096 samples).
        device: where the states and samples live (default, and normally: the device of the model).
        start_token: the first input (the silence token of the 8-bit encodings).
        cuda_graph: replay the decode step as CUDA graphs (:class:`GraphedStep`); None = on CUDA devices.

    Returns:
        :class:`GeneratedAudio` with tokens ``(batch_size, num_samples)`` on the CPU.
    """
    if batch_size < 1 or num_samples < 1:
        raise ValueError("need batch_size >= 1 and num_samples >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    generator = seeded_generator(seed, device)
    was_training = model.training
    model.eval()
    try:
        state = model.allocate_inference_cache(batch_size, device=device, dtype=param.dtype)
        step = lambda ids: model.step(ids, state)
        if cuda_graph or (cuda_graph is None and device.type == "cuda"):
            step = GraphedStep(step, state, batch_size, device, period=int(getattr(model, "step_period", 1)),
                               fill_token=start_token)
        tokens = torch.empty(batch_size, num_samples, dtype=torch.long, device=device)
        log_likelihood = torch.zeros(batch_size, dtype=torch.float64, device=device)
        current = torch.full((batch_size,), start_token, dtype=torch.long, device=device)
        steps = range(num_samples)
        if progress or (progress is None and num_samples >= 4096):
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="generate", unit="sample")
        for t in steps:
            logits = step(current).float()
            current = sample_next(logits, temperature, 0, top_p, generator)
            log_likelihood += torch.log_softmax(logits, dim=-1).gather(-1, current[:, None])[:, 0].double()
            tokens[:, t] = current
        return GeneratedAudio(tokens=tokens.cpu(), log_likelihood=log_likelihood.cpu())
    finally:
        model.train(was_training)


def generate_clips(model, out: Path, num_samples: int, num_tokens: int, *, batch_size: int = 64,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   cuda_graph: bool | None = None) -> tuple[list[tuple[str, float, float]], list[torch.Tensor]]:
    """Sample ``num_samples`` clips of ``num_tokens`` tokens, ``batch_size`` at a time (batch ``b`` seeded with
    ``seed * 1_000_003 + b``), and write each as 16-bit ``out/sample_NNNN.wav`` at the model's rate and encoding
    (:func:`~mamba_bio_audio.tasks.audio_lm.audio_settings`).

    Returns ``[(file name, bits per sample, log-likelihood in nats)]`` and the waveforms ``(num_tokens,)``.
    """
    from mamba_bio_audio.data_prep.audio.io import write_wav
    from mamba_bio_audio.data_prep.audio.mulaw import decode
    from mamba_bio_audio.tasks.audio_lm import audio_settings

    audio = audio_settings(model)
    rate = int(audio["sample_rate"])
    rows, waves = [], []
    for batch, start in enumerate(range(0, num_samples, batch_size)):
        result = generate(model, min(batch_size, num_samples - start), num_tokens, temperature=temperature,
                          top_p=top_p, seed=seed * 1_000_003 + batch, cuda_graph=cuda_graph)
        for wave, bits, loglik in zip(decode(result.tokens, audio["encoding"]), result.bits_per_sample,
                                      result.log_likelihood):
            name = f"sample_{len(rows):04d}.wav"
            write_wav(out / name, wave, rate)
            rows.append((name, float(bits), float(loglik)))
            waves.append(wave)
    return rows, waves


def clip_length(seconds: float | None, audio: dict) -> int:
    """Tokens per generated clip: ``seconds`` at the model's rate, or its training clip length when None
    (``audio``: :func:`~mamba_bio_audio.tasks.audio_lm.audio_settings`). Under one sample or over
    :data:`MAX_SECONDS` is a one-line :class:`UserError`."""
    rate = int(audio["sample_rate"])
    length = round(seconds * rate) if seconds else int(audio["clip_samples"])
    if length < 1:
        raise UserError(f"--seconds {seconds}: shorter than one sample at {rate} Hz")
    if seconds is not None and seconds > MAX_SECONDS:
        raise UserError(f"--seconds {seconds:g}: at most {MAX_SECONDS} s per clip")
    return length


def write_samples(model, out: Path, num_samples: int, num_tokens: int, *, batch_size: int = 64,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, cuda_graph: bool | None = None,
                  device: torch.device | str = "cpu") -> dict:
    """:func:`generate_clips` into the existing folder ``out``, then ``out/likelihoods.tsv`` and
    ``out/spectrograms.png`` (the first 16 clips); returns the run's metrics (counts, mean bits per sample, seconds,
    audio seconds per second, sampling settings)."""
    from mamba_bio_audio.files import atomic_write_text
    from mamba_bio_audio.tasks.audio_lm import audio_settings, spectrogram_grid

    rate = int(audio_settings(model)["sample_rate"])
    started = time.time()
    rows, waves = generate_clips(model, out, num_samples, num_tokens, batch_size=batch_size,
                                 temperature=temperature, top_p=top_p, seed=seed, cuda_graph=cuda_graph)
    seconds_taken = time.time() - started
    atomic_write_text(out / "likelihoods.tsv", likelihoods_tsv(rows))
    shown = min(16, len(waves))
    spectrogram_grid(out / "spectrograms.png", torch.stack(waves[:shown]), rate,
                     [f"{n} ({b:.2f} bits)" for n, b, _ in rows[:shown]])
    device = torch.device(device)
    return {"num_samples": num_samples, "samples_per_clip": num_tokens, "sample_rate": rate,
            "mean_bits_per_sample": sum(b for _, b, _ in rows) / len(rows), "generation_seconds": seconds_taken,
            "audio_seconds_per_second": num_samples * num_tokens / rate / seconds_taken,
            "batch_size": min(batch_size, num_samples),
            "device": str(device), "cuda_graph": cuda_graph is not False and device.type == "cuda",
            "temperature": temperature, "top_p": top_p}


def likelihoods_tsv(rows: list[tuple[str, float, float]]) -> str:
    """Tab-separated ``file, bits_per_sample, log_likelihood_nats`` of :func:`generate_clips`' rows."""
    return "file\tbits_per_sample\tlog_likelihood_nats\n" + "".join(
        f"{n}\t{b:.6f}\t{ll:.4f}\n" for n, b, ll in rows)


def load_audio_lm(directory: str | os.PathLike, device=None):
    """Load a SaShiMi or plain Mamba LM from a ``save_pretrained`` folder (or a Hub id), or from a training run
    holding one in ``model/`` (the architecture is in config.json).

    Returns the model in eval mode; a missing or foreign folder raises
    :class:`~mamba_bio_audio.errors.CheckpointError` (one line).
    """
    from mamba_bio_audio.hub import resolve
    from mamba_bio_audio.models.lm import MambaLM
    from mamba_bio_audio.models.sashimi import ARCHITECTURE, SashimiLM

    directory = resolve(directory)  # a Hugging Face Hub id org/name[@revision] is downloaded
    if (directory / MODEL_FOLDER / CONFIG_NAME).is_file():
        directory = directory / MODEL_FOLDER
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        what = "a file, not a checkpoint folder" if directory.exists() else "no such checkpoint folder"
        raise CheckpointError(f"{directory}: {what}")
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model checkpoint or training run (no {CONFIG_NAME} or "
                              f"{MODEL_FOLDER}/{CONFIG_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from None
    if isinstance(data, dict) and data.get("architecture") == ARCHITECTURE:
        model = SashimiLM.from_pretrained(directory, device=device)
    else:
        model = MambaLM.from_pretrained(directory, device=device)
    return model.eval()
