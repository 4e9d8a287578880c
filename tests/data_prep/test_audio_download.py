"""Speech Commands download against a local HTTP server (127.0.0.1, bounded): resume, verification, safe extraction."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mamba_bio_audio.data_prep.audio.download import (
    SPEECH_COMMANDS_FOLDER,
    SPEECH_COMMANDS_REQUIRED,
    download_speech_commands,
    safe_extract,
)
from mamba_bio_audio.data_prep.audio.io import write_wav
from mamba_bio_audio.data_prep.audio.sc09 import DIGITS, prepare_speech_commands
from mamba_bio_audio.errors import DataError, UserError

SERVER_LIFETIME_S = 60  # the server shuts itself down after this, whatever happens to the test


def tar_bytes(files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    """A miniature speech_commands_v0.02.tar.gz: one short clip per digit and the two split lists."""
    root = tmp_path_factory.mktemp("sc_src")
    files = {}
    for i, word in enumerate(DIGITS):
        path = write_wav(root / f"{word}.wav", np.full(800, 0.01 * i, np.float32), 16000)
        files[f"./{word}/0000abcd_nohash_0.wav"] = path.read_bytes()
    files["./validation_list.txt"] = b"one/0000abcd_nohash_0.wav\n"
    files["./testing_list.txt"] = b"two/0000abcd_nohash_0.wav\n"
    return tar_bytes(files)


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; honours Range if ``server.honour_range``; cuts the next body short if asked."""

    def do_GET(self):  # noqa: N802 - the http.server API
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/speech_commands_v0.02.tar.gz":
            self.send_error(404)
            return
        data, start = server.payload, 0
        if self.headers.get("Range") and server.honour_range:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_next:
            server.cut_next = False
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(archive):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.payload, httpd.requests, httpd.honour_range, httpd.cut_next = archive, [], True, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/speech_commands_v0.02.tar.gz"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME_S, httpd.shutdown)
    watchdog.start()
    yield httpd
    watchdog.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def fetch(server, dest: Path, **kwargs) -> Path:
    kwargs.setdefault("sha256", hashlib.sha256(server.payload).hexdigest())
    return download_speech_commands(dest, url=server.url, timeout=5, **kwargs)


def test_download_resumes_a_dropped_transfer_and_extracts(server, tmp_path):
    server.cut_next = True
    folder = fetch(server, tmp_path)
    half = len(server.payload) - len(server.payload) // 2
    assert server.requests == [None, f"bytes={len(server.payload) - half}-"]
    assert folder == tmp_path / SPEECH_COMMANDS_FOLDER
    assert (tmp_path / "speech_commands_v0.02.tar.gz").read_bytes() == server.payload
    assert not (tmp_path / "speech_commands_v0.02.tar.gz.part").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPEECH_COMMANDS_FOLDER, "speech_commands_v0.02.tar.gz"]
    result = prepare_speech_commands(folder, tmp_path / "store")
    assert result.counts == {"train": 8, "val": 1, "test": 1}

    assert fetch(server, tmp_path) == folder  # already there: no request at all
    assert len(server.requests) == 2


def test_download_continues_an_existing_part_file(server, tmp_path):
    (tmp_path / "speech_commands_v0.02.tar.gz.part").write_bytes(server.payload[:100])
    fetch(server, tmp_path)
    assert server.requests == ["bytes=100-"]


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.honour_range = False
    (tmp_path / "speech_commands_v0.02.tar.gz.part").write_bytes(b"x" * 100)
    fetch(server, tmp_path)
    assert (tmp_path / "speech_commands_v0.02.tar.gz").read_bytes() == server.payload


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    with pytest.raises(DataError, match="SHA-256 .* is not the expected 0000"):
        fetch(server, tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_http_and_connection_errors_are_one_line_user_errors(server, tmp_path):
    with pytest.raises(UserError, match="HTTP error 404"):
        download_speech_commands(tmp_path, url=server.url.replace(".tar.gz", ".zip"), timeout=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(UserError, match="download failed .* run again to resume"):
        download_speech_commands(tmp_path, url=f"http://127.0.0.1:{closed_port}/a.tar.gz", timeout=2, retries=1)


def test_archive_without_the_expected_files_is_rejected(server, tmp_path):
    server.payload = tar_bytes({"./zero/a.wav": b"x"})
    with pytest.raises(DataError, match="lacks validation_list.txt, testing_list.txt, one/"):
        fetch(server, tmp_path)
    assert not (tmp_path / SPEECH_COMMANDS_FOLDER).exists()


@pytest.mark.parametrize(
    "name, kind, problem",
    [
        ("../evil.txt", tarfile.REGTYPE, "unsafe member path"),
        ("/abs/evil.txt", tarfile.REGTYPE, "unsafe member path"),
        ("zero/link", tarfile.SYMTYPE, "not a regular file or folder"),
        ("zero/hard", tarfile.LNKTYPE, "not a regular file or folder"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path, name, kind, problem):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "../../outside"
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_bytes({"validation_list.txt": b""}, extra=[info]))
    with pytest.raises(DataError, match=problem):
        safe_extract(path, tmp_path / "out", SPEECH_COMMANDS_REQUIRED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_safe_extract_reports_a_corrupt_archive(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(tar_bytes({"validation_list.txt": b"x" * 5000})[:-40])
    with pytest.raises(DataError, match="not a readable tar archive"):
        safe_extract(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]
