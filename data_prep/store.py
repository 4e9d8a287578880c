"""The token store shared by the DNA and audio pipelines.

On disk a store is a folder with two files:

- ``tokens.u8``: every record's tokens, one flat uint8 array (read back as a memory map);
- ``index.json``: ``{"format": "mba-token-store", "version": 1, "meta": {...}, "records": [...]}`` where each record
  is a dict with at least ``offset`` and ``length`` (in tokens) plus the pipeline's labels (species, split, ...).

A store is written atomically: :class:`TokenStoreWriter` fills a temporary sibling folder and renames it into place
on :meth:`TokenStoreWriter.commit`, so a crash or a bad input never leaves a half-written store behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mamba_bio_audio.errors import DataError
from mamba_bio_audio.files import umask_mode

TOKENS_FILE = "tokens.u8"
INDEX_FILE = "index.json"
FORMAT = "mba-token-store"
VERSION = 1


class TokenStoreWriter:
    """Append records, then :meth:`commit` (or use as a context manager: commit on success, discard on error).

    Example::

        with TokenStoreWriter(out_dir, meta={"domain": "dna"}) as w:
            w.add(np.frombuffer(b"...", np.uint8), species="ecoli", split="train")
    """

    def __init__(self, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None, overwrite: bool = True):
        """``out_dir`` may be new, an empty folder, or (with ``overwrite``) a token store (its ``index.json`` says
        so); anything else is refused with a one-line DataError, so that no folder of other files is replaced."""
        self.out_dir = Path(out_dir)
        check_replaceable(self.out_dir, overwrite)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        os.chmod(self._tmp, umask_mode(0o777))  # mkdtemp makes it owner-only
        self._fh = open(self._tmp / TOKENS_FILE, "wb")
        self.meta = dict(meta or {})
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._done = False

    def add(self, tokens: np.ndarray, **fields: Any) -> dict[str, Any]:
        """Append one record's tokens (any integer array with values in 0..255); returns its index entry."""
        arr = np.asarray(tokens)
        if arr.dtype != np.uint8:
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise ValueError("token values must lie in 0..255 for a uint8 store")
            arr = arr.astype(np.uint8)
        self._fh.write(np.ascontiguousarray(arr).tobytes())
        rec = {**fields, "offset": self._offset, "length": int(arr.size)}
        self.records.append(rec)
        self._offset += int(arr.size)
        return rec

    def commit(self) -> Path:
        """Write the index and move the store into place; returns its path."""
        self._fh.close()
        index = {"format": FORMAT, "version": VERSION, "meta": self.meta, "records": self.records}
        with open(self._tmp / INDEX_FILE, "w") as f:
            json.dump(index, f, indent=1)
        check_replaceable(self.out_dir, overwrite=True)  # nothing else appeared there meanwhile
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.out_dir, old)
            os.replace(self._tmp, self.out_dir)
            shutil.rmtree(old)
        else:
            os.replace(self._tmp, self.out_dir)
        self._done = True
        return self.out_dir

    def discard(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> TokenStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def is_token_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a token store's ``index.json`` (of :data:`FORMAT`)."""
    try:
        with open(Path(path) / INDEX_FILE) as f:
            head = f.read(256)
    except (OSError, UnicodeDecodeError):
        return False
    return f'"format": "{FORMAT}"' in head


def check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """Refuse, as a one-line DataError, to write a store over ``out_dir`` unless it does not exist, is an empty
    folder, or (with ``overwrite``) is a token store."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; refusing to replace it with a token store")
    if next(out_dir.iterdir(), None) is None:
        return
    if not overwrite:
        raise DataError(f"{out_dir}: already exists")
    if not is_token_store(out_dir):
        raise DataError(f"{out_dir}: exists and is not a token store; refusing to replace it")


class TokenStore:
    """A token store opened read-only: ``store.records`` (list of dicts), ``store.meta``, ``store.tokens(i)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        if not index_path.is_file():
            raise DataError(f"{self.path}: not a token store (no {INDEX_FILE})")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{index_path}: unreadable index ({e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise DataError(f"{index_path}: not a {FORMAT} index")
        self.meta: dict[str, Any] = index.get("meta", {})
        self.records: list[dict[str, Any]] = index["records"]
        tokens_path = self.path / TOKENS_FILE
        size = tokens_path.stat().st_size if tokens_path.is_file() else -1
        expected = sum(r["length"] for r in self.records)
        if size != expected:
            raise DataError(f"{tokens_path}: holds {size} bytes, the index describes {expected}")
        self.data = np.memmap(tokens_path, dtype=np.uint8, mode="r") if size > 0 else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.records)

    def tokens(self, i: int) -> np.ndarray:
        """Record i's tokens as a read-only memmap view, shape (length,)."""
        r = self.records[i]
        return self.data[r["offset"]: r["offset"] + r["length"]]

    def window(self, i: int, start: int, length: int) -> np.ndarray:
        """A copy of tokens [start, start + length) of record i; raises if it runs past the record's end."""
        r = self.records[i]
        if start < 0 or start + length > r["length"]:
            raise IndexError(f"window [{start}, {start + length}) outside record {i} of length {r['length']}")
        o = r["offset"] + start
        return np.array(self.data[o: o + length])
