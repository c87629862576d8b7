"""Files and folders written atomically (every artifact appears whole or not at all), JSON and
arrays read back.

Everything the package writes goes through `atomic_path`: the writer fills a temporary name in
the artifact's own folder (a file, or a folder such as a SavedModel or a checkpoint), which is
then flushed to disk and renamed into place with `os.replace` (atomic on POSIX and Windows
within one file system). A crash leaves at worst a stray `.*.tmp-*` entry, never a truncated
artifact, and the previous version stays intact until the new one is complete. Files get the
usual permissions (0666 minus the umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

TMP_MARK = ".tmp-"  # in the name of every temporary file or folder
_OLD_MARK = ".old-"  # a folder set aside while its replacement moves into place


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _move_into_place(tmp: str, path: str) -> None:
    if not (os.path.isdir(tmp) and os.path.isdir(path)):
        os.replace(tmp, path)
        return
    # rename(2) cannot replace a non-empty folder: set the old one aside first and put it back
    # if the second rename fails, so `path` is only ever the old or the new version.
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{_OLD_MARK}")
    old += secrets.token_hex(4)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a new temporary name beside `path`; moves what the block wrote there onto `path`.

    The block writes a file or a folder at the temporary name (nothing is there yet). Its name
    keeps `path`'s suffix (Keras checks '.keras' / '.weights.h5' suffixes). An existing file or
    folder at `path` is replaced only once the new one is complete. On an exception the
    temporary file or folder is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    suffix = ".weights.h5" if base.endswith(".weights.h5") else os.path.splitext(base)[1]
    tmp = os.path.join(folder, f".{base}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        if os.path.isfile(tmp):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _move_into_place(tmp, path)
        _fsync_dir(folder)
    finally:
        _remove(tmp)


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


def save_weights(path: str, weights: Sequence[np.ndarray]) -> None:
    """Writes a list of arrays (`model.get_weights()`) as one `.npz` file, atomically.

    The one format of every weights file the package writes (`<phase>/best_weights.npz`, a
    checkpoint's `best_weights.npz` and `best_rollback.npz`): the arrays in order, as
    `arr_0`, `arr_1`, ... (what `np.savez(path, *weights)` writes).
    """
    with atomic_path(path) as tmp:
        np.savez(tmp, *weights)


def load_weights(path: str) -> list[np.ndarray]:
    """Reads a list of arrays written by `save_weights`, in order; nothing is unpickled.

    Checkpoints written before this format was the only one named the arrays `w0`, `w1`, ...;
    those read too.
    """
    with np.load(path, allow_pickle=False) as f:
        prefix = "w" if "w0" in f.files else "arr_"
        return [f[f"{prefix}{i}"] for i in range(len(f.files))]
