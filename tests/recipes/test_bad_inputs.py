"""A table of bad inputs per command, built from small fixtures (CPU, no training beyond one 2-step run): each ends
in exit code 2 with one line on stderr, no traceback, and leaves the output folder as it was.

Also: environment failures (disk full, out of memory) are one line with exit 2; a genuine internal error is one
line with exit 1, its traceback shown only with ``mba --debug``."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
from pathlib import Path

import pytest

from mamba_bio_audio.cli import main
from mamba_bio_audio.data_prep.audio.synthetic import write_synthetic_digits
from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes

from helpers import assert_one_line_error
from helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIES_TRAIN = ["--preset", "tiny", "--length", "64", "--batch-size", "4", "--val-per-species", "0",
                 "--checkpoint-every", "1", "--max-steps", "2", "--device", "cpu"]


def _ok(args):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 0, args


def _unwritable(root: Path) -> Path | None:
    """A folder this process cannot create anything in: a read-only folder, or /sys when running as root."""
    ro = root / "read-only"
    ro.mkdir()
    ro.chmod(0o500)
    for place in (ro, Path("/sys")):
        try:
            (place / "probe").mkdir()
        except OSError:
            return place
        (place / "probe").rmdir()
    return None


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Small fixtures: genomes, a species store and a 2-step run, bad genome files, an sc09 store, a tiny audio
    LM, bad WAVs, corrupt checkpoints, a bad YAML config, a folder of someone's files, an unwritable place."""
    from mamba_bio_audio.tasks.audio_lm import build_audio_lm

    root = tmp_path_factory.mktemp("bad")
    f = {"root": root}
    write_synthetic_genomes(root / "genomes", n_species=2, strains=3, length=1_500, seed=0)
    f["genomes"] = root / "genomes"
    _ok(["species", "prepare", "--genomes", f["genomes"], "--out", root / "store", "--split-by", "strain"])
    f["store"] = root / "store"
    _ok(["species", "train", "--data", f["store"], "--out", root / "run", *SPECIES_TRAIN])
    f["run"] = root / "run"

    for name, content in {"noheader.fa": b"ACGT\n", "bad.fa": b">r\nACGTXACGT\n",
                          "trunc.fa.gz": gzip.compress(b">x\nACGT\n" * 200)[:-20],
                          "bad.2bit": b"\x00\x01\x02not a 2bit file"}.items():
        folder = root / f"genomes_{name.replace('.', '_')}"
        folder.mkdir()
        (folder / "good.fa").write_text(">g\n" + "ACGT" * 40 + "\n")
        (folder / name).write_bytes(content)
        f[name] = folder
    f["empty_genomes"] = root / "empty_genomes"
    f["empty_genomes"].mkdir()
    (f["empty_genomes"] / "readme.txt").write_text("no genomes here")
    (root / "nnn").mkdir()
    (root / "nnn" / "a.fa").write_text(">a\n" + "N" * 400 + "\n")
    f["fasta"] = f["genomes"] / "synth_00.fa"

    write_synthetic_digits(root / "digits", sample_rate=8000, speakers=1, takes=11, seed=0)
    _ok(["sc09", "prepare", "--from-folder", root / "digits", "--out", root / "sc09store", "--sample-rate", "8000",
         "--clip-seconds", "0.1"])
    f["sc09store"] = root / "sc09store"
    _ok(["audio", "prepare", "--from", root / "digits", "--out", root / "rstore", "--sample-rate", "8000"])
    f["rstore"] = root / "rstore"
    audio = {"sample_rate": 8000, "encoding": "mulaw8", "clip_samples": 800}
    build_audio_lm("mamba-lm", "tiny", audio).save_pretrained(root / "audio_lm")
    f["audio_lm"] = root / "audio_lm"
    (root / "badwav").mkdir()
    for name in ("0_x_0.wav", "1_x_1.wav"):
        (root / "badwav" / name).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    f["badwav"] = root / "badwav"

    shutil.copytree(f["run"] / "model", root / "corrupt_model")
    path = root / "corrupt_model" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    f["corrupt_model"] = root / "corrupt_model"
    (root / "bad_config.yaml").write_text("length: [1, 2\n")
    (root / "unknown_config.yaml").write_text("lenght: 64\n")
    (root / "list_config.yaml").write_text("- 1\n- 2\n")
    f["theirs"] = root / "theirs"
    f["theirs"].mkdir()
    (f["theirs"] / "thesis.txt").write_text("years of work\n")
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("x")
    f["unwritable"] = _unwritable(root)

    (root / "labelled").mkdir()
    f["csv"] = root / "labelled" / "seqs.csv"
    bases = "ACGT"
    f["csv"].write_text("sequence,label\n" + "".join(
        "".join(bases[(i * 7 + j * (i % 3 + 1)) % 4] for j in range(40)) + f",{'ab'[i % 2]}\n" for i in range(40)))
    _ok(["dna", "classify", "prepare", f["csv"], "--out", root / "cstore"])
    f["cstore"] = root / "cstore"
    _ok(["bench", "scan", "--shapes", "1,4,8", "--backends", "reference", "--dtype", "fp32", "--device", "cpu",
         "--out", root / "bench_scan"])
    f["bench_scan"] = root / "bench_scan"
    return f


def _their_row(t: Path) -> Path:
    """A --runs folder whose selective-copy row folder holds someone's file."""
    row = t / "runs" / "selective_copy_mamba_S4D"
    row.mkdir(parents=True)
    (row / "notes.txt").write_text("mine\n")
    return t / "runs"


def _copy_run(f, tmp_path, how: str) -> Path:
    """A copy of the 2-step run with its last.ckpt damaged in one way."""
    out = tmp_path / "run_copy"
    shutil.copytree(f["run"], out)
    ckpt = out / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint"}[how])
    return out


# (case id, args builder: (fixtures, tmp_path) -> (args, output path to watch), fragment of the one line)
CASES = [
    # ---- species prepare
    ("prepare-missing-genomes", lambda f, t: (["species", "prepare", "--genomes", t / "nope", "--out", t / "o"],
                                              t / "o"), "not a folder of genomes"),
    ("prepare-no-genome-files", lambda f, t: (["species", "prepare", "--genomes", f["empty_genomes"], "--out",
                                               t / "o"], t / "o"), "no genome files"),
    ("prepare-no-header", lambda f, t: (["species", "prepare", "--genomes", f["noheader.fa"], "--out", t / "o"],
                                        t / "o"), "no FASTA header"),
    ("prepare-bad-character", lambda f, t: (["species", "prepare", "--genomes", f["bad.fa"], "--out", t / "o"],
                                            t / "o"), "invalid character"),
    ("prepare-truncated-gzip", lambda f, t: (["species", "prepare", "--genomes", f["trunc.fa.gz"], "--out",
                                              t / "o"], t / "o"), "trunc.fa.gz"),
    ("prepare-bad-2bit", lambda f, t: (["species", "prepare", "--genomes", f["bad.2bit"], "--out", t / "o"],
                                       t / "o"), "bad.2bit"),
    ("prepare-out-is-the-genomes", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out",
                                                  f["genomes"]], f["genomes"]), "overlaps the input"),
    ("prepare-out-inside-the-genomes", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out",
                                                      f["genomes"] / "store"], f["genomes"]), "overlaps the input"),
    ("prepare-out-holds-their-files", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out",
                                                     f["theirs"]], f["theirs"]), "did not write"),
    ("prepare-out-holds-their-files-overwrite", lambda f, t: (["species", "prepare", "--genomes", f["genomes"],
                                                               "--out", f["theirs"], "--overwrite"], f["theirs"]),
     "did not write"),
    ("prepare-out-is-a-file", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out", f["a_file"]],
                                            f["a_file"]), "is a file"),
    ("prepare-out-is-another-kind", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out",
                                                   f["run"], "--overwrite"], f["run"]), "'species train'"),
    ("prepare-again-without-overwrite", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out",
                                                       f["store"]], f["store"]), "--overwrite"),
    ("prepare-bad-yaml", lambda f, t: (["species", "prepare", "--config", f["root"] / "bad_config.yaml"], t / "o"),
     "not readable YAML"),
    ("prepare-unknown-config-key", lambda f, t: (["species", "prepare", "--config",
                                                  f["root"] / "unknown_config.yaml"], t / "o"), "unknown options"),
    ("prepare-config-not-a-mapping", lambda f, t: (["species", "prepare", "--config",
                                                    f["root"] / "list_config.yaml"], t / "o"), "mapping"),
    ("prepare-bad-split-by", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out", t / "o",
                                            "--split-by", "banana"], t / "o"), "banana"),
    ("prepare-unknown-val-record", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out", t / "o",
                                                  "--val", "nope"], t / "o"), "nope"),
    ("prepare-unwritable-out", lambda f, t: (["species", "prepare", "--genomes", f["genomes"], "--out",
                                              f["unwritable"] / "store"], f["unwritable"] / "store"),
     "cannot write"),
    # ---- species train
    ("train-missing-store", lambda f, t: (["species", "train", "--data", t / "nope", "--out", t / "o",
                                           *SPECIES_TRAIN], t / "o"), "nope"),
    ("train-data-is-genomes", lambda f, t: (["species", "train", "--data", f["genomes"], "--out", t / "o",
                                             *SPECIES_TRAIN], t / "o"), "store"),
    ("train-fsdp-on-cpu", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o",
                                         *SPECIES_TRAIN, "--strategy", "fsdp"], t / "o"), "--strategy fsdp"),
    ("train-bad-strategy", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o",
                                          *SPECIES_TRAIN, "--strategy", "banana"], t / "o"), "banana"),
    ("train-device-banana", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o",
                                           *SPECIES_TRAIN, "--device", "banana"], t / "o"), "--device banana"),
    ("train-length-1", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o", *SPECIES_TRAIN,
                                      "--length", "1"], t / "o"), "--length"),
    ("train-window-longer-than-records", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o",
                                                        *SPECIES_TRAIN, "--length", "100000"], t / "o"), "100000"),
    ("train-out-holds-their-files", lambda f, t: (["species", "train", "--data", f["store"], "--out", f["theirs"],
                                                   *SPECIES_TRAIN], f["theirs"]), "did not write"),
    ("train-out-is-the-store", lambda f, t: (["species", "train", "--data", f["store"], "--out", f["store"],
                                              *SPECIES_TRAIN], f["store"]), "overlaps the input"),
    ("train-fresh-over-a-run", lambda f, t: (["species", "train", "--data", f["store"], "--out", f["run"],
                                              *SPECIES_TRAIN], f["run"]), "already holds a training run"),
    ("train-resume-nothing", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o",
                                            *SPECIES_TRAIN, "--resume"], t / "o"), "no run to resume"),
    ("train-resume-their-folder", lambda f, t: (["species", "train", "--data", f["store"], "--out", f["theirs"],
                                                 *SPECIES_TRAIN, "--resume"], f["theirs"]), "not a run"),
    ("train-resume-truncated-ckpt", lambda f, t: ((o := _copy_run(f, t, "truncated")) and
                                                  ["species", "train", "--data", f["store"], "--out", o,
                                                   *SPECIES_TRAIN, "--resume"], o), "truncated"),
    ("train-resume-empty-ckpt", lambda f, t: ((o := _copy_run(f, t, "empty")) and
                                              ["species", "train", "--data", f["store"], "--out", o,
                                               *SPECIES_TRAIN, "--resume"], o), "truncated"),
    ("train-resume-text-ckpt", lambda f, t: ((o := _copy_run(f, t, "text")) and
                                             ["species", "train", "--data", f["store"], "--out", o,
                                              *SPECIES_TRAIN, "--resume"], o), "last.ckpt"),
    ("train-resume-other-preset", lambda f, t: (["species", "train", "--data", f["store"], "--out", f["run"],
                                                 *SPECIES_TRAIN, "--resume", "--preset", "paper-7m"], f["run"]),
     "--preset paper-7m"),
    ("train-resume-other-length", lambda f, t: (["species", "train", "--data", f["store"], "--out", f["run"],
                                                 *SPECIES_TRAIN, "--resume", "--length", "128"], f["run"]),
     "--length 128"),
    ("train-init-from-missing", lambda f, t: (["species", "train", "--data", f["store"], "--out", t / "o",
                                               *SPECIES_TRAIN, "--init-from", t / "nope"], t / "o"), "nope"),
    ("train-unwritable-out", lambda f, t: (["species", "train", "--data", f["store"], "--out",
                                            f["unwritable"] / "run", *SPECIES_TRAIN], f["unwritable"] / "run"),
     "cannot write"),
    # ---- species evaluate
    ("evaluate-not-a-run", lambda f, t: (["species", "evaluate", "--checkpoint", f["genomes"], "--data", f["store"],
                                          "--out", t / "o", "--device", "cpu"], t / "o"), "not a run folder"),
    ("evaluate-corrupt-weights", lambda f, t: (["species", "evaluate", "--checkpoint", f["corrupt_model"], "--data",
                                                f["store"], "--out", t / "o", "--device", "cpu"], t / "o"),
     "corrupt_model"),
    ("evaluate-bad-lengths", lambda f, t: (["species", "evaluate", "--checkpoint", f["run"], "--data", f["store"],
                                            "--lengths", "a,b", "--out", t / "o", "--device", "cpu"], t / "o"),
     "--lengths"),
    ("evaluate-out-holds-their-files", lambda f, t: (["species", "evaluate", "--checkpoint", f["run"], "--data",
                                                      f["store"], "--out", f["theirs"], "--device", "cpu"],
                                                     f["theirs"]), "did not write"),
    ("evaluate-out-is-the-run", lambda f, t: (["species", "evaluate", "--checkpoint", f["run"], "--data",
                                               f["store"], "--out", f["run"], "--device", "cpu"], f["run"]),
     "overlaps the input"),
    ("evaluate-unwritable-out", lambda f, t: (["species", "evaluate", "--checkpoint", f["run"], "--data",
                                               f["store"], "--out", f["unwritable"] / "e", "--device", "cpu"],
                                              f["unwritable"] / "e"), "cannot write"),
    # ---- species predict
    ("predict-missing-fasta", lambda f, t: (["species", "predict", "--checkpoint", f["run"], t / "nope.fa",
                                             "--out", t / "p.tsv", "--device", "cpu"], t / "p.tsv"), "nope.fa"),
    ("predict-bad-fasta", lambda f, t: (["species", "predict", "--checkpoint", f["run"],
                                         f["bad.fa"] / "bad.fa", "--out", t / "p.tsv", "--device", "cpu"],
                                        t / "p.tsv"), "invalid character"),
    ("predict-out-is-the-fasta", lambda f, t: (["species", "predict", "--checkpoint", f["run"], f["fasta"],
                                                "--out", f["fasta"], "--device", "cpu"], f["fasta"]), "is an input"),
    ("predict-out-is-a-folder", lambda f, t: (["species", "predict", "--checkpoint", f["run"], f["fasta"],
                                               "--out", f["theirs"], "--device", "cpu"], f["theirs"]), "is a directory"),
    ("predict-unwritable-out", lambda f, t: (["species", "predict", "--checkpoint", f["run"], f["fasta"],
                                              "--out", f["unwritable"] / "p.tsv", "--device", "cpu"],
                                             f["unwritable"] / "p.tsv"), "cannot write"),
    ("predict-out-exists", lambda f, t: (["species", "predict", "--checkpoint", f["run"], f["fasta"], "--out",
                                          f["a_file"], "--device", "cpu"], f["a_file"]), "already exists"),
    ("predict-out-inside-a-store", lambda f, t: (["species", "predict", "--checkpoint", f["run"], f["fasta"],
                                                  "--out", f["cstore"] / "index.json", "--device", "cpu"],
                                                 f["cstore"]), "'dna classify prepare' output"),
    # ---- sc09
    ("sc09-prepare-bad-wavs", lambda f, t: (["sc09", "prepare", "--from-folder", f["badwav"], "--out", t / "o"],
                                            t / "o"), "no usable audio"),
    ("sc09-prepare-strict-bad-wav", lambda f, t: (["sc09", "prepare", "--from-folder", f["badwav"], "--out",
                                                   t / "o", "--strict"], t / "o"), ".wav"),
    ("sc09-prepare-out-holds-their-files", lambda f, t: (["sc09", "prepare", "--from-folder", f["badwav"], "--out",
                                                          f["theirs"]], f["theirs"]), "did not write"),
    ("sc09-prepare-again", lambda f, t: (["sc09", "prepare", "--from-folder", f["root"] / "digits", "--out",
                                          f["sc09store"], "--sample-rate", "8000", "--clip-seconds", "0.1"],
                                         f["sc09store"]), "--overwrite"),
    ("sc09-train-precision-banana", lambda f, t: (["sc09", "train", "--data", f["sc09store"], "--out", t / "o",
                                                   "--preset", "tiny", "--device", "cpu", "--precision", "banana"],
                                                  t / "o"), "--precision banana"),
    ("sc09-train-fsdp-on-cpu", lambda f, t: (["sc09", "train", "--data", f["sc09store"], "--out", t / "o",
                                              "--preset", "tiny", "--device", "cpu", "--strategy", "fsdp"], t / "o"),
     "--strategy fsdp"),
    ("sc09-train-budget-on-2-devices", lambda f, t: (["sc09", "train", "--data", f["sc09store"], "--out", t / "o",
                                                      "--preset", "tiny", "--device", "cpu", "--devices", "2",
                                                      "--max-minutes", "1"], t / "o"), "--max-steps"),
    ("species-train-labelled-store", lambda f, t: (["species", "train", "--data", f["cstore"], "--out", t / "o",
                                                    *SPECIES_TRAIN], t / "o"), "labelled-sequence store"),
    ("species-evaluate-labelled-store", lambda f, t: (["species", "evaluate", "--checkpoint", f["run"], "--data",
                                                       f["cstore"], "--out", t / "o", "--device", "cpu"], t / "o"),
     "dna classify train"),
    ("dna-pretrain-labelled-store", lambda f, t: (["dna", "pretrain", "--data", f["cstore"], "--out", t / "o",
                                                   "--preset", "tiny", "--length", "64", "--max-steps", "1",
                                                   "--device", "cpu"], t / "o"), "labelled-sequence store"),
    ("sc09-train-recordings-store", lambda f, t: (["sc09", "train", "--data", f["rstore"], "--out", t / "o",
                                                   "--preset", "tiny", "--device", "cpu"], t / "o"),
     "recordings store"),
    ("sc09-train-species-store", lambda f, t: (["sc09", "train", "--data", f["store"], "--out", t / "o",
                                                "--preset", "tiny", "--device", "cpu"], t / "o"), "store"),
    ("sc09-train-out-holds-their-files", lambda f, t: (["sc09", "train", "--data", f["sc09store"], "--out",
                                                        f["theirs"], "--preset", "tiny", "--device", "cpu"],
                                                       f["theirs"]), "did not write"),
    ("sc09-generate-absurd-seconds", lambda f, t: (["sc09", "generate", "--checkpoint", f["audio_lm"],
                                                    "--seconds", "1e9", "--out", t / "o", "--device", "cpu"],
                                                   t / "o"), "--seconds 1e+09"),
    ("sc09-generate-corrupt-checkpoint", lambda f, t: (["sc09", "generate", "--checkpoint", f["corrupt_model"],
                                                        "--out", t / "o", "--device", "cpu"], t / "o"),
     "corrupt_model"),
    ("sc09-generate-species-model", lambda f, t: (["sc09", "generate", "--checkpoint", f["run"], "--out", t / "o",
                                                   "--device", "cpu"], t / "o"), "run"),
    ("sc09-generate-out-holds-their-files", lambda f, t: (["sc09", "generate", "--checkpoint", f["audio_lm"],
                                                           "--num-samples", "1", "--seconds", "0.01", "--out",
                                                           f["theirs"], "--device", "cpu"], f["theirs"]),
     "did not write"),
    # ---- bench: reports go to a new folder of ours (never ./results, never someone's files)
    ("bench-scan-out-holds-their-files", lambda f, t: (["bench", "scan", "--shapes", "1,4,8", "--backends",
                                                        "reference", "--device", "cpu", "--out", f["theirs"]],
                                                       f["theirs"]), "did not write"),
    ("bench-scan-again-without-overwrite", lambda f, t: (["bench", "scan", "--shapes", "1,4,8", "--backends",
                                                          "reference", "--device", "cpu", "--out", f["bench_scan"]],
                                                         f["bench_scan"]), "pass --overwrite"),
    ("bench-scan-bad-shapes", lambda f, t: (["bench", "scan", "--shapes", "1,4", "--device", "cpu", "--out",
                                             t / "o"], t / "o"), "--shapes"),
    ("bench-memory-out-is-another-kind", lambda f, t: (["bench", "memory", "--lengths", "8", "--device", "cpu",
                                                        "--out", f["bench_scan"], "--overwrite"], f["bench_scan"]),
     "'bench scan'"),
    ("bench-train-out-holds-their-files", lambda f, t: (["bench", "train", "--shapes", "1,8", "--device", "cpu",
                                                         "--out", f["theirs"]], f["theirs"]), "did not write"),
    ("bench-generate-out-holds-their-files", lambda f, t: (["bench", "generate", "--batch-sizes", "1", "--device",
                                                            "cpu", "--out", f["theirs"]], f["theirs"]),
     "did not write"),
    ("bench-context-parallel-out-holds-their-files", lambda f, t: (["bench", "context-parallel", "--device", "cpu",
                                                                    "--out", f["theirs"]], f["theirs"]),
     "did not write"),
    ("bench-ddp-out-holds-their-files", lambda f, t: (["bench", "ddp", "--accelerator", "cpu", "--out",
                                                       f["theirs"]], f["theirs"]), "did not write"),
    # ---- dna classify
    ("classify-prepare-out-holds-their-files", lambda f, t: (["dna", "classify", "prepare", f["csv"], "--out",
                                                              f["theirs"]], f["theirs"]), "did not write"),
    ("classify-prepare-out-is-the-input-folder", lambda f, t: (["dna", "classify", "prepare", f["csv"], "--out",
                                                                f["csv"].parent], f["csv"].parent), "overlaps"),
    ("classify-prepare-again-without-overwrite", lambda f, t: (["dna", "classify", "prepare", f["csv"], "--out",
                                                                f["cstore"]], f["cstore"]), "pass --overwrite"),
    ("classify-prepare-overwrite-another-kind", lambda f, t: (["dna", "classify", "prepare", f["csv"], "--out",
                                                               f["store"], "--overwrite"], f["store"]),
     "'species prepare'"),
    ("classify-train-out-holds-their-files", lambda f, t: (["dna", "classify", "train", "--data", f["cstore"],
                                                            "--out", f["theirs"], "--max-steps", "1", "--device",
                                                            "cpu"], f["theirs"]), "did not write"),
    ("classify-train-resume-nothing", lambda f, t: (["dna", "classify", "train", "--data", f["cstore"], "--out",
                                                     t / "o", "--resume", "--device", "cpu"], t / "o"),
     "no run to resume"),
    ("classify-evaluate-out-holds-their-files", lambda f, t: (["dna", "classify", "evaluate", "--checkpoint",
                                                               f["run"], "--data", f["cstore"], "--out",
                                                               f["theirs"], "--device", "cpu"], f["theirs"]),
     "did not write"),
    ("classify-predict-out-is-the-input", lambda f, t: (["dna", "classify", "predict", "--checkpoint", f["run"],
                                                         f["csv"], "--out", f["csv"], "--device", "cpu"], f["csv"]),
     "is an input"),
    ("classify-predict-out-exists", lambda f, t: (["dna", "classify", "predict", "--checkpoint", f["run"], f["csv"],
                                                   "--out", f["a_file"], "--device", "cpu"], f["a_file"]),
     "already exists"),
    ("classify-predict-out-inside-a-store", lambda f, t: (["dna", "classify", "predict", "--checkpoint", f["run"],
                                                           f["csv"], "--out", f["store"] / "p.tsv", "--device",
                                                           "cpu"], f["store"]), "'species prepare' output"),
    # ---- synthetic
    ("synthetic-task-out-holds-their-files", lambda f, t: (["synthetic", "selective-copy", "--out", f["theirs"],
                                                            "--device", "cpu"], f["theirs"]), "did not write"),
    ("synthetic-table-out-holds-their-files", lambda f, t: (["synthetic", "table", "--out", f["theirs"], "--runs",
                                                             t / "runs", "--device", "cpu"], f["theirs"]),
     "did not write"),
    ("synthetic-table-row-holds-their-files", lambda f, t: (["synthetic", "table", "--out", t / "o", "--runs",
                                                             _their_row(t), "--device", "cpu"], t / "runs"),
     "did not write"),
    ("synthetic-evaluate-out-holds-their-files", lambda f, t: (["synthetic", "evaluate", f["run"] / "model",
                                                                "--out", f["theirs"], "--device", "cpu"],
                                                               f["theirs"]), "did not write"),
    # ---- demo and the top level
    ("demo-out-holds-their-files", lambda f, t: (["demo", "--out", f["theirs"], "--device", "cpu"], f["theirs"]),
     "did not write"),
    ("unknown-command", lambda f, t: (["banana"], t / "o"), "banana"),
    ("unknown-flag", lambda f, t: (["species", "prepare", "--banana"], t / "o"), "--banana"),
]


def snapshot(path: Path):
    """What is at ``path``: None if nothing, the bytes of a file, or {relative path: bytes} of a folder."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("case, build, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(fx, tmp_path, capsys, case, build, fragment):
    if "unwritable" in case and fx["unwritable"] is None:
        pytest.skip("no unwritable place here")
    args, watched = build(fx, tmp_path)
    before = snapshot(watched)
    around = sorted(p.name for p in watched.parent.iterdir()) if watched.parent.is_dir() else None
    code, out, err = run(args, capsys)
    assert_one_line_error(code, err, fragment)
    assert "Traceback" not in out
    assert snapshot(watched) == before
    if around is not None:  # no temporary sibling left behind
        assert sorted(p.name for p in watched.parent.iterdir()) == around


# ---- environment failures and internal errors ---------------------------------------------------------------------
@pytest.mark.parametrize("exc, fragment", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "tokens.u8"), "No space left on device"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "Read-only file system"),
    (MemoryError(), "out of memory"),
])
def test_environment_failures_are_one_line_exit_2(fx, tmp_path, capsys, monkeypatch, exc, fragment):
    import mamba_bio_audio.data_prep.dna.store as store

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(store, "prepare_genomes", fail)
    code, _, err = run(["species", "prepare", "--genomes", fx["genomes"], "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_internal_error_is_one_line_exit_1_and_traceback_with_debug(fx, tmp_path, capsys, monkeypatch):
    import mamba_bio_audio.data_prep.dna.store as store

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(store, "prepare_genomes", bug)
    args = ["species", "prepare", "--genomes", str(fx["genomes"]), "--out", str(tmp_path / "o")]
    code, _, err = run(args, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "internal error" in err and "a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *args])


def test_a_species_of_n_only_is_refused_before_writing(fx, tmp_path, capsys):
    genomes = tmp_path / "g"
    shutil.copytree(fx["genomes"], genomes)
    (genomes / "allN.fa").write_text(">n1\n" + "N" * 2000 + "\n>n2\n" + "N" * 2000 + "\n>n3\n" + "N" * 2000 + "\n")
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", tmp_path / "store", "--split-by",
                        "record"], capsys)
    if code != 0:  # refused at prepare: fine
        assert_one_line_error(code, err, "allN")
        return
    code, _, err = run(["species", "train", "--data", tmp_path / "store", "--out", tmp_path / "run",
                        *SPECIES_TRAIN], capsys)
    assert_one_line_error(code, err, "allN")
    assert not (tmp_path / "run").exists()



def test_predict_warns_about_a_record_shorter_than_the_window(fx, tmp_path, capsys):
    """Before: an 8-base record gave a normal-looking row and nothing else."""
    fasta = tmp_path / "tiny.fa"
    fasta.write_text(">tiny\nACGTACGT\n")
    code, out, err = run(["species", "predict", "--checkpoint", fx["run"], fasta, "--out", tmp_path / "p.tsv",
                          "--device", "cpu"], capsys)
    assert code == 0, err
    assert "warning: tiny (tiny.fa): its row rests on 8 bases, fewer than the 64-base window" in err
    assert (tmp_path / "p.tsv").read_text().splitlines()[1].split("\t")[1:4] == ["tiny", "8", "1"]


def test_prepare_says_when_a_species_has_no_validation_split(fx, tmp_path, capsys):
    """Before: `--split-by strain --test S1` left every species without a val split and said nothing."""
    code, out, err = run(["species", "prepare", "--genomes", fx["genomes"], "--out", tmp_path / "s", "--split-by",
                          "strain", "--test", "S1"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("has no val split" in line and "--val" in line for line in lines), err


@pytest.mark.parametrize("command", ["audio", "sc09"])
def test_an_extra_process_of_a_multi_device_run_writes_nothing(fx, tmp_path, capsys, monkeypatch, command):
    """Before: every process wrote config.yaml; under torchrun a rank other than 0 could reach it before rank 0 had
    created the run folder (FileNotFoundError) and the ranks wrote the same temporary file."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    import mamba_bio_audio.tasks.audio_folder as audio_folder
    import mamba_bio_audio.tasks.audio_lm as audio_lm

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    monkeypatch.setattr(audio_folder, "train_recording_lm", lambda *a, **k: None)  # what an extra process returns
    monkeypatch.setattr(audio_lm, "train_audio_lm", lambda *a, **k: None)
    args = {"audio": ["audio", "train", "--data", fx["rstore"], "--window", "256"],
            "sc09": ["sc09", "train", "--data", fx["sc09store"]]}[command]
    code, _, err = run([*args, "--out", tmp_path / "run", "--preset", "tiny", "--max-steps", "1", "--device", "cpu"],
                       capsys)
    assert code == 0, err
    assert not (tmp_path / "run").exists()
