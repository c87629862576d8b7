"""Files and folders written atomically (every artifact appears whole or not at all), JSON and
arrays read back.

Everything the package writes goes through `atomic_path`: the writer fills a temporary name in
the artifact's own folder (a file, or a folder such as a SavedModel or a checkpoint), which is
then flushed to disk and renamed into place with `os.replace` (atomic on POSIX and Windows
within one file system). A crash leaves at worst a stray `.*.tmp-<pid>-*` entry, never a
truncated artifact, and the previous version stays intact until the new one is complete;
`remove_leftovers` clears what a killed writer left. Files get the usual permissions (0666 minus
the umask). A write that fails because the disk is full raises `DiskFullError` naming the path
and the space left, with nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from tl_keras import _failpoints
from tl_keras.errors import DiskFullError

log = logging.getLogger("tl_keras")

TMP_MARK = ".tmp-"  # in the name of every temporary file or folder: .NAME.tmp-PID-HEX[SUFFIX]
_OLD_MARK = ".old-"  # a folder set aside while its replacement moves into place: .NAME.old-PID-HEX
# The package's own temporary names, and the pid of the process that made them.
_LEFTOVER = re.compile(r"^\.(?P<name>.+?)(?P<mark>\.tmp-|\.old-)(?:(?P<pid>\d+)-)?[0-9a-f]{8}")
_DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: str) -> None:
    """Removes a file, link or folder tree if it is there."""
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
    old += f"{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove(old)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a new temporary name beside `path`; moves what the block wrote there onto `path`.

    The block writes a file or a folder at the temporary name (nothing is there yet). Its name
    keeps `path`'s suffix (Keras checks '.keras' / '.weights.h5' suffixes). An existing file or
    folder at `path` is replaced only once the new one is complete. On an exception the
    temporary file or folder is removed and `path` is left as it was.

    Raises:
      DiskFullError: the file system is full (or over quota); `path` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(path)
    suffix = ".weights.h5" if base.endswith(".weights.h5") else os.path.splitext(base)[1]
    tmp = os.path.join(folder, f".{base}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        _failpoints.hit(f"write:{os.path.abspath(path)}")
        _failpoints.check_disk_full(os.path.abspath(path))
        if os.path.isfile(tmp):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _move_into_place(tmp, path)
        _fsync_dir(folder)
    except Exception as e:
        if is_disk_full(e):  # named by the outermost write: the artifact, not a file inside it
            raise disk_full(path) from None
        raise
    finally:
        remove(tmp)


def is_disk_full(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) says the disk is full or over quota.

    Libraries that write through C (h5py, TensorFlow) report it in their own exceptions, so
    the message is read too.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(error)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full(path: str) -> DiskFullError:
    """The `DiskFullError` of a write to `path` that failed: the path and the space left."""
    folder = os.path.dirname(os.path.abspath(path))
    free = free_bytes(folder)
    return DiskFullError(
        f"the disk is full: writing {path} failed (no space left on the file system of "
        f"{folder}, {format_bytes(free)} free); nothing was half-written",
        path=path,
        free_bytes=free,
    )


def free_bytes(folder: str) -> int | None:
    """The space left to this user on `folder`'s file system (its nearest existing parent)."""
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder.rstrip(os.sep)) or os.sep
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def format_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KB' (powers of 1000, as disk tools print them); None -> 'unknown'."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def folder_bytes(path: str) -> int:
    """The bytes of the files in a folder, recursively (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_writable(folder: str) -> None:
    """Proves files can be written in `folder`, or in the nearest existing folder above it that
    it would be created in; leaves nothing behind.

    Raises:
      OSError: it cannot (read-only, permission, a file in the way).
    """
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
        folder = os.path.dirname(folder)
    probe = os.path.join(folder, f".write-test{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    with open(probe, "w") as f:
        f.write("ok\n")
    os.unlink(probe)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(root: str) -> list[str]:
    """Removes the temporary files and folders that killed writers left under `root`.

    Only the package's own temporary names (`.NAME.tmp-PID-HEX...`, `.NAME.old-PID-HEX`) whose
    process is gone are touched: a live process's (a concurrent export's) are left alone. A
    folder set aside while its replacement moved into place (`.old-`) is put back when the
    replacement never arrived, else removed.

    Returns:
      The paths removed or put back, relative to `root`.
    """
    done = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            m = _LEFTOVER.match(name)
            if m is None or (m["pid"] and _pid_alive(int(m["pid"]))):
                continue
            full = os.path.join(folder, name)
            target = os.path.join(folder, m["name"])
            if m["mark"] == _OLD_MARK and not os.path.lexists(target):
                os.replace(full, target)  # the replacement never arrived: the old one is it
            else:
                remove(full)
            done.append(os.path.relpath(full, root))
            if name in dirs:
                dirs.remove(name)
    if done:
        log.info(
            "removed %d temporary file(s) a killed writer left in %s: %s",
            len(done),
            root,
            ", ".join(done[:5]) + (", ..." if len(done) > 5 else ""),
        )
    return done


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


def available_memory() -> int | None:
    """Bytes of memory available to this process now (the kernel's MemAvailable, and the
    cgroup's limit minus its use when that is lower), or None when it cannot be read."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit, encoding="ascii") as f, open(usage, encoding="ascii") as g:
                text = f.read().strip()
                if text != "max" and int(text) < 1 << 60:
                    found.append(int(text) - int(g.read().strip()))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def cache_root() -> str:
    """Where tl_keras remembers what it learned or made once (decode checks, TFDS indexes,
    converted weights): $TL_KERAS_CACHE_DIR, else $XDG_CACHE_HOME/tl_keras, else
    ~/.cache/tl_keras."""
    root = os.environ.get("TL_KERAS_CACHE_DIR")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tl_keras")
