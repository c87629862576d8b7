"""Files written atomically (every artifact appears whole or not at all), and JSON read back.

Each file is written under a temporary name in its final folder, flushed to disk, and renamed
into place with `os.replace` (atomic on POSIX and Windows within one file system). A crash leaves
at worst a stray `*.tmp-*` file, never a truncated artifact, and the previous version of the file
stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

TMP_MARK = ".tmp-"


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reserve(folder: str, prefix: str, suffix: str) -> str:
    """Creates an empty file of a new name in `folder`, with the usual permissions.

    Not tempfile.mkstemp: its files are mode 0600, which the rename keeps, so every artifact
    would be readable by its owner alone.
    """
    while True:
        tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds.

    The temporary name keeps `path`'s suffix (Keras checks '.keras' / '.weights.h5' suffixes).
    On an exception the temporary file is removed and `path` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    suffix = ".weights.h5" if base.endswith(".weights.h5") else os.path.splitext(base)[1]
    tmp = _reserve(folder, f".{base}{TMP_MARK}", suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str, payload: Any) -> None:
    """Writes `payload` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
