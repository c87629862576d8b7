"""One writer per workdir: a lock taken before anything is written, released on exit.

Two trainings in one workdir mix their artifacts, and a `--resume` beside a live run reads
checkpoints that run is rotating. So `train` holds `<workdir>/.tl_keras.lock` for as long as it
writes there:

- The lock is an exclusive `flock` on that file, which the kernel releases when the process
  ends in any way (exit, exception, SIGKILL, a reboot), so a dead writer never blocks the next.
- The file records the holder: pid, host, boot id and the process's start time (in clock ticks
  since boot, `/proc/<pid>/stat`), the command and when it started. A refusal names it. Where
  `flock` is unavailable or ignored (some network file systems), the record decides: the holder
  is alive only if a process with that pid runs on that host, since the same boot, started at
  that same tick, so a pid reused after a reboot or by another program is not taken for it.
- A lock file whose holder is gone is taken over with a log line, and what the killed writer
  left (temporary files, `tl_keras.io.remove_leftovers`) is cleaned.

Readers (evaluate, predict, export) take no lock: they go by `run.json`, the commit point, and
so read complete phases only. The lock is re-entrant within a process (the command layer and
the library may both take it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from tl_keras import io
from tl_keras.errors import WorkdirError

try:
    import fcntl
except ImportError:  # not on Windows: the record alone decides
    fcntl = None

log = logging.getLogger("tl_keras")

LOCK_FILE = ".tl_keras.lock"
_HELD: dict[str, list] = {}  # workdir -> [WorkdirLock, depth] held by this process


@dataclasses.dataclass
class WorkdirLock:
    """A held lock: the workdir, the lock file, its open descriptor, and what it took over."""

    workdir: str
    path: str
    fd: int
    took_over: dict[str, Any] | None = None  # the dead holder's record, when there was one


def boot_id() -> str | None:
    """This boot of the machine (Linux), or None."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def _record() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "start_ticks": process_start(os.getpid()),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", sys.argv))[:300],
    }


def is_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process a lock record names still runs; None when it cannot be told.

    Not alive: another boot of this host, no such pid, or a pid that started at another tick
    (reused). Unknown: another host.
    """
    if record.get("host") != socket.gethostname():
        return None
    if record.get("boot_id") and boot_id() and record["boot_id"] != boot_id():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists (another user's)
    started, now = record.get("start_ticks"), process_start(pid)
    return not (started is not None and now is not None and started != now)


def describe(record: dict[str, Any] | None) -> str:
    """'pid 123 on host h, started 2026-...: python -m tl_keras.train ...' for messages."""
    if not record:
        return "a process that left no record"
    return (
        f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
        + (f" ({record['command']})" if record.get("command") else "")
    )


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"command": "unreadable lock record"}
    return value if isinstance(value, dict) else {"command": "unreadable lock record"}


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _busy(workdir: str, record: dict[str, Any] | None, *, unsure: bool = False) -> WorkdirError:
    tail = (
        f"; if that process is gone, remove {os.path.join(workdir, LOCK_FILE)}"
        if unsure
        else "; wait for it to finish or stop it (a stopped run continues with --resume), "
        "or use another --workdir"
    )
    return WorkdirError(
        f"workdir {workdir!r} is in use by another training run: {describe(record)}{tail}"
    )


RECORD_WAIT_S = 2.0  # how long a refused process waits for a just-started holder's record


def _await_record(fd: int) -> dict[str, Any] | None:
    """The holder's record, once it has written it: a holder that took the lock a moment ago
    writes it right after, and the refusal should name it (None when it never comes)."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        record = _read_record(fd)
        if record:
            return record
    return None


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: flock does not work here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP...: a file system without locks
    return True


def acquire(workdir: str) -> WorkdirLock:
    """Takes the workdir's lock, creating the folder; takes over a lock whose holder is gone.

    Raises:
      WorkdirError: another live process holds it (naming that process), or the folder cannot
        be created or written.
    """
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    for _ in range(50):  # another process may remove the file between our open and lock
        try:
            os.makedirs(workdir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise WorkdirError(
                f"workdir {workdir!r} is not writable ({e.strerror}); pass a --workdir you can "
                "write to"
            ) from None
        try:
            held = _flock(fd)
            previous = _read_record(fd)
            if held is False:
                raise _busy(workdir, previous or _await_record(fd))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # released and removed meanwhile: start again on the new file
                os.close(fd)
                continue
            if previous and previous.get("pid") != os.getpid():
                alive = is_alive(previous)
                # flock said free, yet the record names a live process: flock is not working
                # on this file system, so the record decides.
                if alive or (alive is None and held is None):
                    raise _busy(workdir, previous, unsure=alive is None)
            _write_record(fd, _record())
        except BaseException:
            os.close(fd)
            raise
        lock = WorkdirLock(workdir, path, fd, took_over=previous)
        if previous:
            log.warning(
                "took over the lock of workdir %s: its holder, %s, is gone",
                workdir,
                describe(previous),
            )
            io.remove_leftovers(workdir)
        return lock
    raise WorkdirError(f"cannot take the lock {path}: it keeps changing; try again")


def release(lock: WorkdirLock) -> None:
    """Removes the lock file and releases the lock (removing first: see `acquire`)."""
    with contextlib.suppress(OSError):
        os.unlink(lock.path)
    with contextlib.suppress(OSError):
        os.close(lock.fd)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[WorkdirLock]:
    """Holds the workdir's lock for the block (re-entrant within this process).

    Raises:
      WorkdirError: see `acquire`.
    """
    key = os.path.abspath(workdir)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield _HELD[key][0]
        finally:
            _HELD[key][1] -= 1
        return
    lock = acquire(key)
    _HELD[key] = [lock, 1]
    try:
        yield lock
    finally:
        del _HELD[key]
        release(lock)
