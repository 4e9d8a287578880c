"""Generation for ``mba audio generate``: unconditional clips or continuations of a prompt, of any length, streamed
to WAV files in constant memory, with each clip's log-likelihood and the batch and batch-1 decoding speed.

The model's input is ``[silence, p_0, ..., p_{T-1}]`` (the silence token, then the prompt's tokens; without a
prompt ``T = 0``). It is prefilled in parallel once at batch 1 (:func:`~mamba_bio_audio.generation.prefill.
prefill`, the scan), its state copied into every row of a batch, and the continuation sampled one recurrent step
per sample (:func:`~mamba_bio_audio.generation.streaming.stream_tokens`; CUDA graphs on CUDA as in
:mod:`~mamba_bio_audio.tasks.audio_generation`). Each clip is the prompt (decoded from its 8-bit tokens, so after
the mu-law round trip) followed by the continuation, written chunk by chunk into a growing WAV
(:class:`~mamba_bio_audio.generation.streaming.WavStream`) and renamed into place when complete.

The prompt (:func:`load_prompt`) is read like training data: channels averaged to mono (a warning says so), another
rate resampled to the model's (a warning says so), no amplitude normalisation, then quantized with the model's
encoding; ``prompt_seconds`` keeps its first seconds. A prompt longer than an hour (``MAX_SECONDS``, as for
``--seconds``) is refused from its header before it is read: the parallel prefill's memory grows with its length.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import soundfile as sf
import torch

from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN, decode, encode
from mamba_bio_audio.errors import DataError, UserError

CHUNK = 16384  # samples per streamed chunk
SPEED_STEPS = 1024  # recurrent steps timed at batch 1


def load_prompt(path: str | os.PathLike, audio: dict, seconds: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """The prompt file as the model's tokens ``(T,)`` int64, and warnings (downmixed, resampled, shorter than
    asked). ``audio``: :func:`~mamba_bio_audio.tasks.audio_lm.audio_settings` of the model."""
    from mamba_bio_audio.data_prep.audio.io import read_audio

    path = Path(path)
    rate = int(audio["sample_rate"])
    check_prompt_length(path, seconds)
    try:
        wave, _ = read_audio(path, rate)
    except DataError as e:  # missing, unreadable, empty, NaN: say which option named the file
        raise DataError(f"--prompt {e}") from None
    info = sf.info(str(path))
    notes = []
    if info.channels > 1:
        notes.append(f"--prompt {path}: {info.channels} channels, averaged to mono")
    if info.samplerate != rate:
        notes.append(f"--prompt {path}: {info.samplerate} Hz, resampled to the model's {rate} Hz")
    if seconds is not None:
        keep = round(seconds * rate)
        if keep < 1:
            raise UserError(f"--prompt-seconds {seconds}: shorter than one sample at {rate} Hz")
        if keep > wave.numel():
            notes.append(f"--prompt {path}: {wave.numel() / rate:.3f} s long, shorter than --prompt-seconds "
                         f"{seconds:g}; the whole file is the prompt")
        wave = wave[:keep]
    return encode(wave, audio["encoding"]).long(), notes


def check_prompt_length(path: Path, seconds: float | None) -> None:
    """Refuse, from the header and before reading, a prompt (its first ``seconds`` when given) longer than
    :data:`~mamba_bio_audio.tasks.audio_generation.MAX_SECONDS` with a one-line UserError; an unreadable header is
    left to :func:`~mamba_bio_audio.data_prep.audio.io.read_audio` to name."""
    from mamba_bio_audio.tasks.audio_generation import MAX_SECONDS

    try:
        duration = sf.info(str(path)).duration
    except (sf.SoundFileError, RuntimeError, ValueError):
        return
    if seconds is None and duration > MAX_SECONDS:
        raise UserError(f"--prompt {path}: {duration:.0f} s long, more than the {MAX_SECONDS} s a prompt may be; "
                        f"pass --prompt-seconds to continue its start")
    if seconds is not None and min(duration, seconds) > MAX_SECONDS:
        raise UserError(f"--prompt-seconds {seconds:g}: more than the {MAX_SECONDS} s a prompt may be")


def make_step(model, state, batch_size: int, device: torch.device, cuda_graph: bool | None):
    """``ids (batch,) -> logits`` through ``model.step`` on ``state``; CUDA graphs on CUDA unless ``cuda_graph`` is
    False (the capture zeroes ``state``: fill it after)."""
    from mamba_bio_audio.generation.cuda_graph import GraphedStep

    def step(ids):
        return model.step(ids, state)

    if cuda_graph or (cuda_graph is None and device.type == "cuda"):
        return GraphedStep(step, state, batch_size, device, period=int(getattr(model, "step_period", 1)),
                           fill_token=SILENCE_TOKEN)
    return step


@torch.no_grad()
def decode_speed(model, batch_size: int, steps: int, device: torch.device, cuda_graph: bool | None) -> dict:
    """Recurrent samples per second per sequence at ``batch_size`` over ``steps`` timed steps (after as many as
    the step's period untimed); ``{"batch_size", "steps", "samples_per_second", "seconds"}``."""
    param = next(model.parameters())
    state = model.allocate_inference_cache(batch_size, device=device, dtype=param.dtype)
    step = make_step(model, state, batch_size, device, cuda_graph)
    ids = torch.full((batch_size,), SILENCE_TOKEN, dtype=torch.long, device=device)
    for _ in range(int(getattr(model, "step_period", 1))):
        step(ids)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        ids = step(ids).argmax(-1)
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"batch_size": batch_size, "steps": steps, "samples_per_second": steps / seconds, "seconds": seconds}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def write_generations(model, out: Path, num_samples: int, num_tokens: int, *, prompt: torch.Tensor | None = None,
                      batch_size: int = 16, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                      cuda_graph: bool | None = None, chunk: int = CHUNK, device: str | torch.device = "cpu",
                      measure_batch_1: bool = True) -> tuple[list[tuple[str, float, float]], dict]:
    """Write ``num_samples`` clips ``out/sample_NNNN.wav``: the ``prompt`` tokens ``(T,)`` (if any), then
    ``num_tokens`` sampled ones; batch ``b`` seeded with ``seed * 1_000_003 + b``.

    Returns ``[(file, bits per generated sample, log-likelihood of the generated samples in nats)]`` and the
    metrics: counts, the prompt's own bits per sample under the model (parallel pass), seconds, the speed at
    the batch size run (``batch_size``, at most ``num_samples``; generated samples per second per sequence, audio seconds per second) and, with
    ``measure_batch_1``, at batch 1.
    """
    from mamba_bio_audio.generation.prefill import copy_state, prefill
    from mamba_bio_audio.generation.sampling import seeded_generator
    from mamba_bio_audio.generation.streaming import WavStream, stream_tokens
    from mamba_bio_audio.tasks.audio_lm import LN2, audio_settings

    audio = audio_settings(model)
    rate, encoding = int(audio["sample_rate"]), audio["encoding"]
    device = torch.device(device)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    prompt = torch.zeros(0, dtype=torch.long) if prompt is None else prompt.long().cpu()
    ids = torch.cat([torch.tensor([SILENCE_TOKEN]), prompt])[None].to(device)
    started = time.perf_counter()
    try:
        single = model.allocate_inference_cache(1, device=device, dtype=param.dtype)
        logits = prefill(model, ids, single).float()  # (1, T + 1, vocab)
        prompt_bits = None
        if prompt.numel():
            logp = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None])
            prompt_bits = float(-logp.double().mean() / LN2)
        last = logits[:, -1]
        prompt_wave = decode(prompt, encoding)
        rows = []
        for batch, first in enumerate(range(0, num_samples, batch_size)):
            size = min(batch_size, num_samples - first)
            state = model.allocate_inference_cache(size, device=device, dtype=param.dtype)
            step = make_step(model, state, size, device, cuda_graph)
            copy_state(state, single)
            if hasattr(step, "t"):
                step.t = ids.shape[1]
            generator = seeded_generator(seed * 1_000_003 + batch, device)
            names = [f"sample_{first + k:04d}.wav" for k in range(size)]
            with contextlib.ExitStack() as stack:
                writers = [stack.enter_context(WavStream(out / name, rate)) for name in names]
                for writer in writers:
                    writer.write(prompt_wave)
                log_likelihood = torch.zeros(size, dtype=torch.float64)
                for tokens, running in stream_tokens(step, last.expand(size, -1), num_tokens, chunk=chunk,
                                                     temperature=temperature, top_p=top_p, generator=generator,
                                                     progress=num_tokens >= 4 * chunk):
                    for writer, wave in zip(writers, decode(tokens, encoding)):
                        writer.write(wave)
                    log_likelihood = running
            for name, ll in zip(names, log_likelihood.tolist()):
                rows.append((name, -ll / (num_tokens * LN2), ll))
        synchronize(device)
        seconds = time.perf_counter() - started
        metrics = {"num_samples": num_samples, "samples_per_clip": prompt.numel() + num_tokens,
                   "generated_samples_per_clip": num_tokens, "prompt_samples": prompt.numel(),
                   "prompt_bits_per_sample": prompt_bits, "sample_rate": rate, "encoding": encoding,
                   "mean_bits_per_sample": sum(b for _, b, _ in rows) / len(rows), "generation_seconds": seconds,
                   "audio_seconds_per_second": num_samples * num_tokens / rate / seconds,
                   "samples_per_second_per_sequence": num_tokens * -(-num_samples // batch_size) / seconds,
                   "batch_size": min(batch_size, num_samples), "chunk": chunk, "device": str(device),
                   "cuda_graph": cuda_graph is not False and device.type == "cuda", "temperature": temperature,
                   "top_p": top_p}
        if measure_batch_1:
            speed = decode_speed(model, 1, min(SPEED_STEPS, num_tokens), device, cuda_graph)
            metrics["batch_1"] = {**speed, "audio_seconds_per_second": speed["samples_per_second"] / rate}
        return rows, metrics
    finally:
        model.train(was_training)


def check_prompt_options(prompt: Path | None, prompt_seconds: float | None) -> None:
    """``--prompt-seconds`` needs ``--prompt``; the prompt must be a file (one-line errors)."""
    if prompt_seconds is not None and prompt is None:
        raise UserError("--prompt-seconds needs --prompt FILE")
    if prompt is not None and not prompt.is_file():
        raise DataError(f"--prompt {prompt}: no such audio file")
