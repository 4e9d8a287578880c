"""Writing outputs safely: every file is written under a temporary name and renamed into place, so a crash or a
bad input never leaves a half-written file behind; figures render headless (matplotlib's Agg backend).

Output folders (:func:`output_folder`, :func:`run_folder`) carry a marker file naming the command that wrote them:
a command replaces only its own kind of output (with ``--overwrite``), never a folder of someone else's files nor
an input folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mamba_bio_audio.errors import UserError


def _temporary_sibling(path: Path, suffix: str) -> Path:
    """A unique hidden name beside ``path`` (two writers of the same file never share one; the file is created by
    its writer, so it gets the usual permissions)."""
    import uuid

    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: readers see the old file or
    the new one, never a part; a failed write leaves no temporary file."""
    path = Path(path)
    tmp = _temporary_sibling(path, ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported on first use: plotting is never on a hot path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically and close it."""
    path = Path(path)
    tmp = _temporary_sibling(path, ".tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
    return path


# ---- output folders ------------------------------------------------------------------------------------------------
MARKER = ".mba-output"
"""The file that marks a folder as written by ``mba``; it holds the command's kind (e.g. "species prepare")."""


def output_kind(folder: str | os.PathLike) -> str | None:
    """The kind written in ``folder``'s marker, or None when ``folder`` has no marker (it is not ours)."""
    try:
        return (Path(folder) / MARKER).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _is_empty_folder(path: Path) -> bool:
    return path.is_dir() and next(path.iterdir(), None) is None


def _is_main_rank() -> bool:
    """False in the extra processes a multi-device run launches: they neither check nor write output folders.

    The global rank is read from ``RANK`` (torchrun, Lightning), else ``SLURM_PROCID`` (plain ``srun``); without
    either, a process is the main one when its ``NODE_RANK`` and ``LOCAL_RANK`` are both 0 (or unset), as in the
    processes Lightning launches itself."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "").strip()
        if value:
            return value == "0"
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in ("NODE_RANK", "LOCAL_RANK"))


def _overlaps(a: Path, b: Path) -> bool:
    """Whether ``a`` equals, contains or lies inside ``b`` (both resolved)."""
    return a == b or a in b.parents or b in a.parents


def check_output_folder(out: str | os.PathLike, kind: str, *, overwrite: bool = False, resume: bool = False,
                        inputs: tuple = (), flag: str = "--out") -> Path:
    """Refuse, as a :class:`UserError`, an output folder this command must not write; returns ``out``.

    Refused: a path that exists and is not a folder; a folder that equals, contains or lies inside one of
    ``inputs``; an existing non-empty folder without our marker (it holds someone's files); one of ours of another
    kind; one of ours of this kind without ``overwrite`` (or ``resume``); with ``resume``, a folder that is not a run
    of this kind (a run written before markers existed is recognised by its ``checkpoints/last.ckpt``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a folder")
    resolved = out.resolve()
    for source in inputs:
        if source is not None and _overlaps(resolved, Path(source).resolve()):
            raise UserError(f"{flag} {out}: overlaps the input {source}; choose another folder")
    if resume:
        if not out.is_dir():
            raise UserError(f"{flag} {out}: no run to resume (the folder does not exist)")
        found = output_kind(out)
        legacy = found is None and (out / "checkpoints" / "last.ckpt").is_file()
        if found != kind and not legacy:
            what = f"holds a '{found}' output" if found else "is not a run written by mba"
            raise UserError(f"{flag} {out}: {what}; --resume continues a '{kind}' run")
        return out
    if not out.exists() or _is_empty_folder(out):
        _probe_writable(out, flag)
        return out
    found = output_kind(out)
    if found is None:
        raise UserError(f"{flag} {out}: exists and holds files mba did not write; refusing to replace it "
                        f"(choose a new or empty folder)")
    if found != kind:
        raise UserError(f"{flag} {out}: holds a '{found}' output, not '{kind}'; refusing to replace it")
    if not overwrite:
        raise UserError(f"{flag} {out}: already holds a '{kind}' output; pass --overwrite to replace it")
    _probe_writable(out, flag)
    return out


def _probe_writable(out: Path, flag: str) -> None:
    """Create and remove a folder beside ``out`` (in its nearest existing ancestor): a read-only or unwritable
    place fails here, before any work, as a one-line UserError."""
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"{flag} {out}: {parent} is not a folder")
    probe = parent / f".mba-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except FileExistsError:
        pass
    except OSError as e:
        raise _writable_error(out, e, flag) from None


def _writable_error(path: Path, e: OSError, flag: str) -> UserError:
    return UserError(f"{flag} {path}: cannot write here ({e.strerror or type(e).__name__})")


@contextmanager
def output_folder(out: str | os.PathLike, kind: str, *, overwrite: bool = False, inputs: tuple = (),
                  flag: str = "--out") -> Iterator[Path]:
    """Write a command's output folder atomically; yields the temporary sibling to write into (it does not exist:
    create it, or let a writer that makes its own folder create it).

    After :func:`check_output_folder`'s checks (call it earlier too, before any work, to fail fast) the body writes
    the sibling ``.NAME.partial-HOST-PID`` (those a killed writer on this machine left are deleted first); on
    success our marker is added and the sibling is renamed to ``out`` (an old output of ours, with ``overwrite``, is
    moved aside first and deleted after); on any error the sibling is deleted and ``out`` is left as it was. A folder we did not create is never deleted. In the extra processes of a
    multi-device run this yields ``out`` itself and does nothing else.
    """
    out = Path(out)
    if not _is_main_rank():
        yield out
        return
    check_output_folder(out, kind, overwrite=overwrite, inputs=inputs, flag=flag)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise _writable_error(out, e, flag) from None
    _remove_dead_partials(parent, out.name)
    tmp = parent / f".{out.name}.partial-{_host()}-{os.getpid()}"
    n = 0
    while tmp.exists():  # a leftover of a live process is not deleted: pick a new name
        n += 1
        tmp = parent / f".{out.name}.partial-{_host()}-{os.getpid()}-{n}"
    try:
        yield tmp
        tmp.mkdir(exist_ok=True)
        os.chmod(tmp, umask_mode(0o777))  # a writer's mkdtemp makes it owner-only
        (tmp / MARKER).write_text(kind + "\n")
        check_output_folder(out, kind, overwrite=overwrite, inputs=inputs, flag=flag)  # nothing appeared meanwhile
        old = None
        if out.exists() and not _is_empty_folder(out):
            old = parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        elif out.exists():
            out.rmdir()
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _host() -> str:
    """This machine's name as it goes into temporary folder names (letters, digits, ``_`` and ``.`` only)."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _remove_dead_partials(parent: Path, name: str) -> None:
    """Delete the temporary ``.NAME.partial-HOST-PID[-n]`` folders that a killed writer of ``NAME`` on this machine
    left beside it (its process is gone); those of another machine (a shared file system) or of a live process
    stay."""
    import re

    pattern = re.compile(rf"\.{re.escape(name)}\.partial-{re.escape(_host())}-(\d+)(-\d+)?")
    for leftover in parent.glob(f".{name}.partial-*"):
        match = pattern.fullmatch(leftover.name)
        if match and leftover.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)


def run_folder(out: str | os.PathLike, kind: str, *, resume: bool = False, inputs: tuple = (),
               flag: str = "--out") -> Path:
    """Claim a training run's folder, written in place (so that a killed run can be resumed): after
    :func:`check_output_folder`, create it with our marker. With ``resume`` the folder must be a run of ``kind``;
    without, a run of ours that holds no checkpoint yet may be started again.
    A folder that cannot be written is a one-line :class:`UserError`. Does nothing in a multi-device run's extra
    processes."""
    out = Path(out)
    if not _is_main_rank():
        return out
    if not resume and (out / "checkpoints" / "last.ckpt").is_file():
        raise UserError(f"{flag} {out}: already holds a training run (checkpoints/last.ckpt); pass --resume to "
                        f"continue it, or choose another folder")
    # past that check, a run of ours without a checkpoint (it stopped before its first one) may start again
    check_output_folder(out, kind, resume=resume, inputs=inputs, flag=flag, overwrite=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(kind + "\n")
    except OSError as e:
        raise _writable_error(out, e, flag) from None
    return out


def umask_mode(mode: int = 0o777) -> int:
    """``mode`` with the process umask applied: the permissions a plain ``open``/``mkdir`` would give."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def check_output_file(out: str | os.PathLike, *, inputs: tuple = (), overwrite: bool | None = None,
                      flag: str = "--out", inside_ok: tuple = ()) -> Path:
    """Refuse, before any work, an output file that is a folder, one of the ``inputs`` (or inside an input folder),
    a path inside a folder marked as an ``mba`` output (another command's: a token store, a run), an existing file
    unless ``overwrite`` is true, or a file whose folder cannot be written; returns ``out``. The file is then
    written atomically by the caller. ``overwrite=None``: the command has no ``--overwrite`` flag, so the message
    for an existing file does not offer one. ``inside_ok``: output folders the file may lie in (the run a
    ``predict`` reads: ``RUN/preds.tsv`` beside its weights, as ``evaluate --out RUN/eval``)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; expected a file name")
    resolved = out.resolve()
    for source in inputs:
        if source is not None and (resolved == Path(source).resolve() or Path(source).resolve() in resolved.parents):
            raise UserError(f"{flag} {out}: is an input ({source}); choose another file")
    allowed = {Path(p).resolve() for p in inside_ok if p is not None}
    for folder in resolved.parents:
        kind = output_kind(folder)
        if kind is not None and folder not in allowed:
            raise UserError(f"{flag} {out}: lies inside {folder}, a '{kind}' output; choose a file outside it")
    if (out.exists() or out.is_symlink()) and not overwrite:
        how = "pass --overwrite to replace it" if overwrite is False else "choose a new file name or remove it first"
        raise UserError(f"{flag} {out}: already exists; {how}")
    _probe_writable(out, flag)
    return out
