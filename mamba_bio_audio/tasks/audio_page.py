"""A listening page for generated audio: ``index.html`` with a player, a spectrogram, the log-likelihood and (with
a classifier) the predicted label and its confidence per clip, sortable by any column.

The page works from the local folder, with no server: every link is a relative path (the WAVs beside it, or in a
samples folder next to it), the spectrograms are PNG files in ``spectrograms/`` beside the page, and the sorting is a
few lines of inline JavaScript (click a column header; click again to reverse). Everything is written to temporary
names and renamed into place.

Spectrogram of a clip (:func:`log_spectrogram`): the STFT of its first :data:`SPECTROGRAM_SECONDS` seconds, Hann
window of ~32 ms (a power of two), hop a quarter of it, dB relative to the clip's peak with a floor of -80 dB.

Per-clip log-likelihood (:func:`clip_log_likelihoods`): the model reads ``[silence, x_0, ...]`` in segments of
``window`` predicted samples (its training window), each segment scored on its own, as the test NLL is.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import soundfile as sf
import torch

from mamba_bio_audio.files import atomic_write_text, pyplot, save_figure

PAGE = "index.html"
SPECTROGRAM_FOLDER = "spectrograms"
SPECTROGRAM_SECONDS = 30.0


@dataclass
class PageClip:
    """One row of the page: ``path`` of the WAV; ``bits_per_sample`` and ``log_likelihood`` (nats) under the model
    (None: not scored); ``label`` / ``confidence`` from a classifier (None: no classifier)."""

    path: Path
    bits_per_sample: float | None = None
    log_likelihood: float | None = None
    label: str | None = None
    confidence: float | None = None


def log_spectrogram(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``wave: (samples,)`` -> dB ``(freq, frames)`` relative to its peak, floor -80 (module docstring)."""
    n_fft = 1 << max(4, round(np.log2(0.032 * sample_rate)))
    n_fft = min(n_fft, 1 << int(np.log2(max(16, wave.shape[-1]))))
    padded = torch.nn.functional.pad(wave.float(), (0, max(0, n_fft - wave.shape[-1])))
    spec = torch.stft(padded, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp_min(1e-8))
    return (db - db.max()).clamp_min(-80.0)


def spectrogram_png(wav: Path, png: Path) -> float:
    """Save the spectrogram of ``wav`` (its first :data:`SPECTROGRAM_SECONDS`) as ``png``; returns the clip's
    length in seconds."""
    info = sf.info(str(wav))
    frames = min(info.frames, int(SPECTROGRAM_SECONDS * info.samplerate))
    wave, rate = sf.read(str(wav), frames=frames, dtype="float32", always_2d=True)
    db = log_spectrogram(torch.from_numpy(wave.mean(axis=1)), rate)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 1.6), dpi=100)
    ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
              extent=(0.0, frames / rate, 0.0, rate / 2000))
    ax.set_xlabel("s", fontsize=6)
    ax.set_ylabel("kHz", fontsize=6)
    ax.tick_params(labelsize=5)
    fig.tight_layout(pad=0.2)
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    return info.frames / info.samplerate


SORT_SCRIPT = """
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
  const dir = th.dataset.dir === "asc" ? "desc" : "asc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir;
  const key = r => { const c = r.cells[col], v = c.dataset.value ?? c.textContent;
                     const n = parseFloat(v); return isNaN(n) ? v : n; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return dir === "asc" ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}
"""

STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th.sortable { cursor: pointer; user-select: none; }
th[data-dir=asc]::after { content: " \\25B2"; }
th[data-dir=desc]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _number_cell(value: float | None, digits: int) -> str:
    if value is None:
        return '<td class="num" data-value="">&ndash;</td>'
    return f'<td class="num" data-value="{value!r}">{value:.{digits}f}</td>'


def write_listening_page(folder: str | os.PathLike, clips: list[PageClip], *, title: str,
                         notes: str = "") -> Path:
    """Write ``folder/index.html`` and ``folder/spectrograms/*.png`` for ``clips`` (module docstring); returns
    the page's path. The WAV links are relative to ``folder``; label columns appear when any clip has a label."""
    folder = Path(folder)
    labelled = any(c.label is not None for c in clips)
    head = ["#", "clip", "spectrogram", "seconds", "bits / sample", "log-likelihood (nats)"]
    if labelled:
        head += ["predicted label", "confidence"]
    rows = []
    for number, clip in enumerate(clips):
        link = quote(Path(os.path.relpath(clip.path, folder)).as_posix())
        png = folder / SPECTROGRAM_FOLDER / f"{number:04d}_{clip.path.stem}.png"
        seconds = spectrogram_png(clip.path, png)
        image = quote(png.relative_to(folder).as_posix())
        name = html.escape(clip.path.name)
        cells = [f'<td class="num" data-value="{number}">{number}</td>',
                 f'<td data-value="{name}"><div>{name}</div><audio controls preload="none" src="{link}"></audio></td>',
                 f'<td><img src="{image}" alt="spectrogram of {name}" width="320" height="160"></td>',
                 _number_cell(seconds, 2), _number_cell(clip.bits_per_sample, 3), _number_cell(clip.log_likelihood, 1)]
        if labelled:
            cells += [f"<td>{html.escape(clip.label or '')}</td>", _number_cell(clip.confidence, 3)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th class="sortable" onclick="sortBy(this)">{html.escape(h)}</th>' for h in head)
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n<script>{SORT_SCRIPT}</script>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(notes)} Click a column header to sort.</p>\n"
            f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n"
            "</body>\n</html>\n")
    return atomic_write_text(folder / PAGE, page)


def read_likelihoods(folder: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """``{file: (bits_per_sample, log_likelihood_nats)}`` from ``folder/likelihoods.tsv`` (empty when absent)."""
    path = Path(folder) / "likelihoods.tsv"
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        name, bits, loglik = line.split("\t")
        rows[name] = (float(bits), float(loglik))
    return rows


def generated_clips(folder: str | os.PathLike) -> list[PageClip]:
    """The ``sample_*.wav`` files of a ``generate`` folder with their likelihoods (``likelihoods.tsv``)."""
    folder = Path(folder)
    scores = read_likelihoods(folder)
    return [PageClip(path, *scores.get(path.name, (None, None))) for path in sorted(folder.glob("sample_*.wav"))]


@torch.no_grad()
def clip_log_likelihoods(model, waves: torch.Tensor, encoding: str, window: int, *,
                         device: str | torch.device = "cpu") -> list[tuple[float, float]]:
    """``[(bits per sample, log-likelihood in nats)]`` of each clip of ``waves: (n, samples)`` under ``model``
    (module docstring: ``[silence, x...]`` in segments of ``window`` predicted samples)."""
    from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN, encode

    was_training = model.training
    model.eval().to(device)
    out = []
    try:
        for wave in waves:
            ids = torch.cat([torch.tensor([SILENCE_TOKEN]), encode(wave, encoding).long()]).to(device)
            total = 0.0
            for start in range(0, ids.numel() - 1, window):
                segment = ids[start:start + window + 1][None]
                logits = model(segment[:, :-1]).double()
                total += torch.log_softmax(logits, -1)[0].gather(-1, segment[0, 1:, None]).sum().item()
            out.append((-total / ((ids.numel() - 1) * np.log(2)), total))
    finally:
        model.train(was_training)
    return out


def scored_clips(samples: str | os.PathLike, model, *, classifier=None, label_names: list[str] | None = None,
                 batch_size: int = 64, device: str | torch.device = "cpu") -> list[PageClip]:
    """The audio files of ``samples`` (sorted; unreadable ones left out) scored under ``model`` (bits per sample
    and log-likelihood, :func:`clip_log_likelihoods` over the whole file at the model's rate) and, with a digit
    ``classifier``, its arg-max label (a name from ``label_names``) and probability on the clip cut or padded to
    the model's clip length."""
    from mamba_bio_audio.data_prep.audio.clips import fix_length
    from mamba_bio_audio.data_prep.audio.io import AUDIO_SUFFIXES, read_audio
    from mamba_bio_audio.errors import DataError
    from mamba_bio_audio.tasks.audio_lm import audio_settings

    audio = audio_settings(model)
    rate, window = int(audio["sample_rate"]), int(audio["clip_samples"])
    paths, waves = [], []
    for path in sorted(p for p in Path(samples).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        try:
            waves.append(read_audio(path, rate)[0])
            paths.append(path)
        except DataError:
            continue
    clips = [PageClip(path, bits, loglik) for path, (bits, loglik)
             in zip(paths, (clip_log_likelihoods(model, w[None], audio["encoding"], window, device=device)[0]
                            for w in waves))]
    if classifier is not None and clips:
        from mamba_bio_audio.metrics.classifier_training import classifier_outputs

        fixed = torch.stack([fix_length(w, window) for w in waves])
        probs, _ = classifier_outputs(classifier, fixed, batch_size=batch_size, device=device)
        for clip, p in zip(clips, probs):
            k = int(np.argmax(p))
            clip.label = label_names[k] if label_names and k < len(label_names) else str(k)
            clip.confidence = float(p[k])
    return clips
