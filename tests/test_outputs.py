"""Output folders (mamba_bio_audio/files.py): a command replaces only its own kind of output, never a folder of
other files nor an input; writes go to a temporary sibling renamed at the end; and a property test that
``species prepare`` never deletes a file it did not create."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamba_bio_audio.data_prep.dna.synthetic import write_synthetic_genomes
from mamba_bio_audio.errors import UserError
from mamba_bio_audio.files import MARKER, check_output_file, output_folder, output_kind, run_folder

from helpers import assert_one_line_error
from helpers import run_cli as run


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_folder_writes_a_sibling_and_renames_it(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "test kind") as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.partial")
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a" and output_kind(out) == "test kind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folder_removes_what_a_killed_writer_left_on_this_machine_only(tmp_path):
    import subprocess
    import sys

    from mamba_bio_audio.files import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    killed = tmp_path / f".out.partial-{_host()}-{dead_pid}"  # a writer killed mid-way (its process is gone)
    killed_second = tmp_path / f".out.partial-{_host()}-{dead_pid}-1"
    live = tmp_path / f".out.partial-{_host()}-{os.getppid()}"  # a writer still running
    elsewhere = tmp_path / f".out.partial-othermachine-{dead_pid}"  # another machine's, on a shared disk
    other_output = tmp_path / f".other.partial-{_host()}-{dead_pid}"
    for folder in (killed, killed_second, live, elsewhere, other_output):
        folder.mkdir()
        (folder / "part.bin").write_bytes(b"x")
    with output_folder(tmp_path / "out", "k") as tmp:
        tmp.mkdir()
    assert not killed.exists() and not killed_second.exists()
    assert live.exists() and elsewhere.exists() and other_output.exists()


def test_output_folder_refuses_other_files_and_other_kinds(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("t")
    with pytest.raises(UserError, match="did not write"), output_folder(out, "k"):
        pass
    (out / "thesis.txt").unlink()
    (out / MARKER).write_text("other kind\n")
    (out / "x").write_text("x")
    with pytest.raises(UserError, match="'other kind'"), output_folder(out, "k", overwrite=True):
        pass
    assert snapshot(out) == {MARKER: b"other kind\n", "x": b"x"}


def test_overwrite_replaces_only_our_own_output(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "k") as tmp:
        tmp.mkdir()
        (tmp / "old.txt").write_text("old")
    with pytest.raises(UserError, match="--overwrite"), output_folder(out, "k"):
        pass
    with output_folder(out, "k", overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert snapshot(out) == {MARKER: b"k\n", "new.txt": b"new"}


def test_an_error_leaves_the_old_output_and_no_sibling(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, "k") as tmp:
        tmp.mkdir()
        (tmp / "old.txt").write_text("old")
    before = snapshot(out)
    with pytest.raises(RuntimeError), output_folder(out, "k", overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("bad input")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_never_an_input_folder(tmp_path, where):
    data = tmp_path / "data"
    data.mkdir()
    (data / MARKER).write_text("k\n")  # even one of ours
    out = {"same": data, "inside": data / "sub", "contains": tmp_path}[where]
    with pytest.raises(UserError, match="overlaps the input"), output_folder(out, "k", overwrite=True,
                                                                              inputs=(data,)):
        pass
    fasta = data / "g.fa"
    fasta.write_text(">r\nACGT\n")
    with pytest.raises(UserError, match="is an input"):
        check_output_file(fasta, inputs=(fasta,))
    assert fasta.read_text() == ">r\nACGT\n"


def test_an_existing_output_file_needs_overwrite(tmp_path):
    """Before: `dna classify predict ... --out mydata.csv` replaced the user's CSV without a word."""
    mine = tmp_path / "mydata.csv"
    mine.write_text("years,of,work\n")
    with pytest.raises(UserError, match="already exists; choose a new file name"):
        check_output_file(mine)  # a command without --overwrite does not offer one
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        check_output_file(mine, overwrite=False)
    assert check_output_file(mine, overwrite=True) == mine
    assert mine.read_text() == "years,of,work\n"
    assert check_output_file(tmp_path / "new.tsv") == tmp_path / "new.tsv"


@pytest.mark.parametrize("where", ["index.json", "preds.tsv", "sub/preds.tsv"])
def test_never_a_file_inside_an_output_folder(tmp_path, where):
    """Before: `species predict ... --out OTHERSTORE/index.json` destroyed a token store."""
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    (store / MARKER).write_text("species prepare\n")
    (store / "index.json").write_text("{}")
    with pytest.raises(UserError, match="a 'species prepare' output"):
        check_output_file(store / where, overwrite=True)
    assert (store / "index.json").read_text() == "{}" and not (store / "preds.tsv").exists()


@pytest.mark.parametrize("env, main", [
    ({}, True),
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"RANK": "3", "LOCAL_RANK": "1"}, False),
    ({"SLURM_PROCID": "2"}, False),  # plain srun sets only this
    ({"SLURM_PROCID": "0"}, True),
    ({"RANK": "0", "SLURM_PROCID": "5"}, True),  # torchrun inside a SLURM job step: RANK is the rank
    ({"RANK": "1", "SLURM_PROCID": "0"}, False),
    ({"NODE_RANK": "1"}, False),  # processes Lightning launches itself
    ({"LOCAL_RANK": "2"}, False),
])
def test_one_rank_check(monkeypatch, tmp_path, env, main):
    from mamba_bio_audio.files import _is_main_rank

    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _is_main_rank() is main
    assert run_folder(tmp_path / "run", "k") == tmp_path / "run"
    assert (tmp_path / "run").is_dir() is main  # an extra process writes nothing


def test_run_folder_resume_needs_a_run_of_the_same_kind(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="no run to resume"):
        run_folder(out, "species train", resume=True)
    run_folder(out, "species train")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(UserError, match="already holds a training run"):
        run_folder(out, "species train")
    assert run_folder(out, "species train", resume=True) == out
    with pytest.raises(UserError, match="'species train'"):
        run_folder(out, "sc09 train", resume=True)


def test_outputs_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with output_folder(tmp_path / "out", "k") as tmp:
            os.makedirs(tmp, mode=0o700)  # as tempfile.mkdtemp makes it
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    finally:
        os.umask(old)


# ---- species prepare: the data-loss reproduction and the property test ------------------------------------------
@pytest.fixture(scope="module")
def genomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("genomes")
    write_synthetic_genomes(root / "g", n_species=2, strains=2, length=1_000, seed=0)
    return root / "g"


def test_prepare_keeps_a_folder_of_other_files(genomes, tmp_path, capsys):
    """Before: `mkdir x; echo t > x/thesis.txt; mba species prepare --genomes G --out x` deleted thesis.txt and
    exited 0."""
    out = tmp_path / "x"
    out.mkdir()
    (out / "thesis.txt").write_text("t\n")
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", out], capsys)
    assert_one_line_error(code, err, "did not write")
    assert snapshot(out) == {"thesis.txt": b"t\n"}


def test_prepare_refuses_the_genomes_folder_itself(genomes, capsys):
    before = snapshot(genomes)
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", genomes], capsys)
    assert_one_line_error(code, err, "overlaps the input")
    assert snapshot(genomes) == before


def test_prepare_again_needs_overwrite(genomes, tmp_path, capsys):
    out = tmp_path / "store"
    assert run(["species", "prepare", "--genomes", genomes, "--out", out], capsys)[0] == 0
    first = snapshot(out)
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", out], capsys)
    assert_one_line_error(code, err, "--overwrite")
    code, _, err = run(["species", "prepare", "--genomes", genomes, "--out", out, "--overwrite"], capsys)
    assert code == 0, err
    assert snapshot(out) == first


names = st.text(alphabet="abcdefghij._-", min_size=1, max_size=8).filter(lambda n: n not in (".", ".."))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(st.lists(names, min_size=1, max_size=3).map(tuple), st.binary(max_size=16), max_size=4),
       nested=st.booleans(), overwrite=st.booleans())
def test_prepare_never_deletes_a_file_it_did_not_create(genomes, tmp_path_factory, capsys, files, nested,
                                                        overwrite):
    """Whatever the --out folder holds (any files, any names, even ones like ours), prepare either refuses it
    and leaves every file as it was, or (an empty or new folder) writes the store."""
    root = tmp_path_factory.mktemp("prop")
    out = root / "a" / "out" if nested else root / "out"
    out.mkdir(parents=True)
    for parts, content in files.items():
        path = out.joinpath(*parts)
        if any(parent.is_file() for parent in path.parents) or path.is_dir():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    before = snapshot(out)
    empty = not any(out.iterdir())
    beside = snapshot(root)
    args = ["species", "prepare", "--genomes", genomes, "--out", out] + (["--overwrite"] if overwrite else [])
    code, _, err = run(args, capsys)
    if not empty:
        assert_one_line_error(code, err)
        assert snapshot(out) == before
    else:
        assert code == 0, err
        assert (out / "index.json").is_file()
    assert {k: v for k, v in snapshot(root).items() if not k.startswith(out.relative_to(root).as_posix())} == \
        {k: v for k, v in beside.items() if not k.startswith(out.relative_to(root).as_posix())}


def test_stores_models_and_wavs_follow_the_umask(genomes, tmp_path, capsys):
    """Before: stores and model folders (tempfile.mkdtemp) were 0700, WAVs (mkstemp) 0600."""
    import numpy as np

    from mamba_bio_audio import MambaConfig, MambaLM
    from mamba_bio_audio.data_prep.audio.io import write_wav
    from mamba_bio_audio.data_prep.store import TokenStoreWriter

    old = os.umask(0o022)
    try:
        assert run(["species", "prepare", "--genomes", genomes, "--out", tmp_path / "store"], capsys)[0] == 0
        with TokenStoreWriter(tmp_path / "plain_store") as writer:
            writer.add(np.zeros(4, np.uint8))
        MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=8)).save_pretrained(tmp_path / "model")
        write_wav(tmp_path / "a.wav", np.zeros(80, np.float32), 8000)
    finally:
        os.umask(old)
    for folder in ("store", "plain_store", "model"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o755, folder
    assert stat.S_IMODE((tmp_path / "a.wav").stat().st_mode) == 0o644


def test_atomic_writes_use_their_own_temporary_files_and_leave_none(tmp_path, monkeypatch):
    """Two writers of one file do not share a temporary name, and a failed write leaves no temporary file."""
    import os

    from mamba_bio_audio import files

    seen = []
    real = files._temporary_sibling
    monkeypatch.setattr(files, "_temporary_sibling", lambda p, s: seen.append(real(p, s)) or seen[-1])
    files.atomic_write_text(tmp_path / "a.yaml", "one")
    files.atomic_write_text(tmp_path / "a.yaml", "two")
    assert (tmp_path / "a.yaml").read_text() == "two" and seen[0] != seen[1]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        files.atomic_write_text(tmp_path / "b.yaml", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml"]
