"""Download and safely extract the Speech Commands v0.02 archive (needs a network; nothing here runs offline).

- Resumable: bytes go to ``<archive>.part``; a later call (or a retry after a dropped connection) asks the server
  for the rest with an HTTP ``Range`` header and appends. A server that ignores ``Range`` restarts the file.
- Verified: the size against the server's ``Content-Length`` / ``Content-Range``, then the SHA-256
  (:data:`SPEECH_COMMANDS_SHA256`, the checksum torchaudio records for this URL in
  ``torchaudio/datasets/speechcommands.py`` and checks on its own downloads); the archive must then open as a tar
  and hold ``validation_list.txt``, ``testing_list.txt`` and a file in each digit folder.
- Extracted safely: only regular files and folders, no absolute paths, no ``..``; written into a temporary
  sibling folder that is renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

from mamba_bio_audio.errors import DataError, UserError
from mamba_bio_audio.files import umask_mode

from .sc09 import DIGITS, TESTING_LIST, VALIDATION_LIST

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SPEECH_COMMANDS_SHA256 = "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"
SPEECH_COMMANDS_FOLDER = "speech_commands_v0.02"
SPEECH_COMMANDS_REQUIRED = (VALIDATION_LIST, TESTING_LIST, *(f"{word}/" for word in DIGITS))
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_rest(url: str, part: Path, timeout: float) -> int | None:
    """Append the bytes ``part`` is missing (HTTP Range); returns the full size if the server told it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is already whole (the hash will tell)
            return None
        raise
    with response, open(part, "ab" if have and response.status == 206 else "wb") as f:
        if response.status == 206:
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
        else:
            total = response.headers.get("Content-Length", "")
        while chunk := response.read(CHUNK):
            f.write(chunk)
    return int(total) if total.isdigit() else None


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None, timeout: float = 60.0,
                  retries: int = 3) -> Path:
    """Download ``url`` to ``dest`` through ``dest + ".part"``, resuming across calls and dropped connections.

    Args:
        url: an http(s) URL.
        dest: the file to create; if it exists already it is only verified.
        sha256: expected hex SHA-256 (``None`` checks only the size).
        timeout: seconds a connect or a read may stall.
        retries: further attempts after a dropped or short transfer.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    dest = Path(dest)
    if dest.is_file():
        if sha256 is not None and (got := sha256_of(dest)) != sha256:
            raise DataError(f"{dest}: SHA-256 {got} is not the expected {sha256}; delete it to download again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total = _download_part(url, part, timeout, retries)
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DataError(f"{url}: received {size} bytes, expected {total}; the partial file was deleted")
    if sha256 is not None and (got := sha256_of(part)) != sha256:
        part.unlink()
        raise DataError(f"{url}: SHA-256 {got} is not the expected {sha256}; the download was deleted")
    os.replace(part, dest)
    return dest


def _download_part(url: str, part: Path, timeout: float, retries: int) -> int | None:
    """Fill ``part`` with ``url``'s bytes, retrying short transfers; returns the full size if known."""
    error: Exception | None = None
    for _ in range(retries + 1):
        try:
            total = _fetch_rest(url, part, timeout)
        except HTTPError as e:
            raise UserError(f"{url}: HTTP error {e.code} ({e.reason})") from None
        except (URLError, HTTPException, OSError) as e:
            error = e
            continue
        if total is None or part.stat().st_size >= total:
            return total
        error = ConnectionError(f"transfer stopped at {part.stat().st_size} of {total} bytes")
    raise UserError(f"{url}: download failed ({error}); run again to resume from {part}")


def safe_extract(archive: str | os.PathLike, dest_dir: str | os.PathLike, required: Sequence[str] = ()) -> Path:
    """Extract a tar archive's regular files into ``dest_dir``, atomically, refusing unsafe members.

    Args:
        archive: a tar file (any compression tarfile reads).
        dest_dir: the folder to create (must not exist).
        required: member names that must be present; a name ending in ``/`` needs some file under it.

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it owner-only
    try:
        names = _extract_members(archive, tmp)
        missing = [r for r in required if r not in names and not any(n.startswith(r) for n in names)]
        if missing:
            raise DataError(f"{archive}: not the expected archive, it lacks {', '.join(missing)}")
        os.replace(tmp, dest_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


def _extract_members(archive: Path, into: Path) -> set[str]:
    """Stream the archive's members into ``into``; returns the names of the files written."""
    names = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise DataError(f"{archive}: unsafe member path {member.name!r} (absolute or with '..')")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DataError(f"{archive}: member {member.name!r} is not a regular file or folder")
                target = into.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                names.add(path.as_posix())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e})") from None
    return names


def download_speech_commands(dest: str | os.PathLike, *, url: str = SPEECH_COMMANDS_URL,
                             sha256: str | None = SPEECH_COMMANDS_SHA256, timeout: float = 60.0,
                             retries: int = 3) -> Path:
    """Fetch, verify and extract Speech Commands v0.02 under ``dest``; returns the extracted folder.

    The archive is kept as ``dest/<archive name>`` (about 2.3 GB); the files land in
    ``dest/speech_commands_v0.02/``. A call finding that folder complete returns at once.
    """
    dest = Path(dest)
    folder = dest / SPEECH_COMMANDS_FOLDER
    if (folder / TESTING_LIST).is_file():
        return folder
    archive = download_file(url, dest / PurePosixPath(urlparse(url).path).name, sha256=sha256, timeout=timeout,
                            retries=retries)
    return safe_extract(archive, folder, SPEECH_COMMANDS_REQUIRED)
