"""The listening page: index.html parses, every player and image points at a file that exists (relative paths,
no server), label columns appear with a classifier, the per-clip log-likelihood is the model's; and, when Chromium
is installed, a headless browser loads every clip and image and sorts by a column."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_bio_audio.data_prep.audio.mulaw import SILENCE_TOKEN, encode
from mamba_bio_audio.tasks.audio_page import (
    PageClip,
    clip_log_likelihoods,
    generated_clips,
    scored_clips,
    write_listening_page,
)

RATE = 8000


class PageParser(HTMLParser):
    """Collects the page's audio / image sources, header cells and body rows."""

    def __init__(self):
        super().__init__()
        self.audio, self.images, self.headers, self.rows, self._in_th = [], [], [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "audio":
            self.audio.append(attrs["src"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "tr":
            self.rows += 1
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)
            self._in_th = False


def parse(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text())
    parser.close()
    return parser


def write_clips(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        t = np.arange(int(0.1 * RATE * (i + 1))) / RATE
        path = folder / f"sample_{i:04d}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * (i + 1) * t)).astype(np.float32), RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def test_page_links_resolve_and_columns(tmp_path):
    paths = write_clips(tmp_path / "gen dir")  # a space in the path: links are URL-quoted
    (tmp_path / "gen dir" / "likelihoods.tsv").write_text(
        "file\tbits_per_sample\tlog_likelihood_nats\n" + "".join(f"{p.name}\t{i + 1.5}\t{-10.0 * i}\n"
                                                                  for i, p in enumerate(paths)))
    clips = generated_clips(tmp_path / "gen dir")
    assert [(c.bits_per_sample, c.log_likelihood) for c in clips] == [(1.5, 0.0), (2.5, -10.0), (3.5, -20.0)]
    page = write_listening_page(tmp_path / "gen dir", clips, title="t <&>")
    parsed = parse(page)
    assert parsed.rows == 4 and len(parsed.audio) == len(parsed.images) == 3
    assert "predicted label" not in parsed.headers and "bits / sample" in parsed.headers
    for src in parsed.audio + parsed.images:
        assert not src.startswith(("/", "http", "file:")) and (page.parent / unquote(src)).is_file(), src
    assert (page.parent / unquote(parsed.images[0])).read_bytes()[:4] == b"\x89PNG"
    assert "t &lt;&amp;&gt;" in page.read_text() and "function sortBy" in page.read_text()
    other = tmp_path / "eval"  # a page elsewhere links back to the clips
    other.mkdir()
    labelled = [PageClip(p, 2.0, -5.0, label="seven", confidence=0.75) for p in paths]
    parsed = parse(write_listening_page(other, labelled, title="eval"))
    assert {"predicted label", "confidence"} <= set(parsed.headers)
    assert all(src.startswith("../gen%20dir/") and (other / unquote(src)).is_file() for src in parsed.audio)
    assert "seven" in (other / "index.html").read_text()


def test_scored_clips_use_the_model_and_the_classifier(tmp_path):
    from mamba_bio_audio.metrics.classifier_training import classifier_outputs
    from mamba_bio_audio.models.digit_classifier import DigitClassifier
    from mamba_bio_audio.tasks.audio_lm import build_audio_lm, classifier_config

    torch.manual_seed(0)
    model = build_audio_lm("sashimi", "tiny", {"sample_rate": RATE, "encoding": "mulaw8", "clip_samples": 800})
    classifier = DigitClassifier(classifier_config("tiny", RATE)).eval()
    paths = write_clips(tmp_path / "s", 2)
    clips = scored_clips(tmp_path / "s", model, classifier=classifier, label_names=[str(d) for d in range(10)])
    assert [c.path for c in clips] == paths
    wave = torch.from_numpy(sf.read(paths[1], dtype="float32")[0])  # 1,600 samples: two windows of 800
    assert (clips[1].bits_per_sample, clips[1].log_likelihood) == pytest.approx(
        clip_log_likelihoods(model, wave[None], "mulaw8", 800)[0])
    ids = torch.cat([torch.tensor([SILENCE_TOKEN]), encode(wave, "mulaw8").long()])
    expected = 0.0
    with torch.no_grad():
        for start in (0, 800):  # [silence, x_0 .. x_799] predicts x_0 .. x_799; [x_799 .. x_1598] the rest
            segment = ids[start:start + 801][None]
            logp = torch.log_softmax(model(segment[:, :-1]).double(), -1)[0].gather(-1, segment[0, 1:, None])
            expected += logp.sum().item()
    assert clips[1].log_likelihood == pytest.approx(expected, rel=1e-6)
    assert clips[1].bits_per_sample == pytest.approx(-expected / (1600 * np.log(2)), rel=1e-6)
    first = torch.from_numpy(sf.read(paths[0], dtype="float32")[0])  # 800 samples: the classifier's clip length
    probs, _ = classifier_outputs(classifier, first[None])
    assert clips[0].label == str(int(np.argmax(probs[0]))) and clips[0].confidence == pytest.approx(probs[0].max())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell") or shutil.which("chromium-browser")

HARNESS = """
<pre id="result">pending</pre>
<script>
window.addEventListener("load", async () => {
  const players = Array.from(document.querySelectorAll("audio"));
  const loaded = await Promise.all(players.map(a => new Promise(done => {
    if (a.readyState >= 1) return done(a.duration);
    a.addEventListener("loadedmetadata", () => done(a.duration));
    a.addEventListener("error", () => done(-1));
    a.preload = "metadata"; a.load(); })));
  const images = Array.from(document.querySelectorAll("img")).map(i => i.complete ? i.naturalWidth : -1);
  const th = Array.from(document.querySelectorAll("th")).find(h => h.textContent === "bits / sample");
  sortBy(th); sortBy(th);
  const order = Array.from(document.querySelectorAll("tbody tr")).map(r => r.cells[0].textContent);
  document.getElementById("result").textContent = JSON.stringify({durations: loaded, images, order});
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium / chromium-headless-shell installed")
def test_chromium_loads_every_clip_and_image_and_sorts(tmp_path):
    paths = write_clips(tmp_path / "gen")
    clips = [PageClip(p, bits, -bits) for p, bits in zip(paths, (2.0, 5.0, 1.0))]
    page = write_listening_page(tmp_path / "gen", clips, title="chromium")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", HARNESS + "</body>"))
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=60)
    found = re.search(r'<pre id="result">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1) != "pending", run.stderr[-2000:]
    result = json.loads(found.group(1))
    assert result["durations"] == pytest.approx([0.1, 0.2, 0.3], abs=1e-3)
    assert all(w == 320 for w in result["images"]), result  # every spectrogram decoded (width attribute 320)
    assert result["order"] == ["1", "0", "2"]  # descending bits per sample after two clicks
