"""One writer per output: a lock file next to the output, holding the holder's pid, host, start time and command.

``with output_lock(path):`` takes ``.NAME.lock`` beside ``path`` (a file or a directory) or refuses with one line
naming the process that holds it. The lock is an exclusive ``flock`` on that file, so the kernel releases it when
its holder dies, even by ``kill -9``: a lock file left behind is stale and is taken over. Where ``flock`` is not
available (some network file systems), the file is created exclusively and a lock whose pid is gone on this host
is stale. Re-entrant within one process (the cache runner and its HDF5 writer take the same lock).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError

try:
    import fcntl
except ImportError:  # not on POSIX: the exclusive-create fallback below
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth), the locks this process holds


def lock_path(target: str | Path) -> Path:
    """Where the lock of ``target`` lives: ``.NAME.lock`` in the same directory."""
    t = Path(os.path.abspath(target))
    return t.parent / f".{t.name or 'root'}.lock"


def holder(lock: Path) -> dict[str, Any]:
    """What the lock file says about its holder (empty when unreadable)."""
    try:
        data = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextmanager
def output_lock(target: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold the lock of ``target`` for the block; refuse (:class:`AfprobeError`) while another process holds it."""
    lock = lock_path(target)
    key = str(lock)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield lock
        finally:
            if key in _HELD:  # (an outer holder that already let go leaves nothing to count down)
                fd, depth = _HELD[key]
                _HELD[key] = (fd, depth - 1)
        return
    fd = _acquire(lock, target, what)
    _HELD[key] = (fd, 1)
    try:
        yield lock
    finally:
        del _HELD[key]
        _release(lock, fd)


def _acquire(lock: Path, target: str | Path, what: str) -> int:
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):  # retried only when another process replaced the file between our open and lock
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _flock(fd):
                os.close(fd)
                return _acquire_exclusive(lock, target, what)
        except BlockingIOError:
            os.close(fd)
            raise AfprobeError(_refusal(lock, target, what)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _write_holder(fd)
            return fd
        os.close(fd)  # the holder we waited on removed its file: lock the new one
    raise AfprobeError(f"could not take the lock {lock} (it keeps changing); is another afprobe running?")


def _flock(fd: int) -> bool:
    """Take an exclusive non-blocking flock: True when taken, False when flock is unsupported here; raises
    ``BlockingIOError`` when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BlockingIOError(e.errno, e.strerror) from None
        return False
    return True


def _acquire_exclusive(lock: Path, target: str | Path, what: str) -> int:
    """The fallback without flock: create the file exclusively; a lock whose pid is gone on this host is stale."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = holder(lock)
            pid = info.get("pid")
            if info.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its holder died without removing it
                continue
            raise AfprobeError(_refusal(lock, target, what)) from None
        _write_holder(fd)
        return fd
    raise AfprobeError(_refusal(lock, target, what))


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["afprobe", *sys.argv[1:]])[:300],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _release(lock: Path, fd: int) -> None:
    try:
        lock.unlink(missing_ok=True)  # while still holding it, so nobody locks a file about to vanish
    finally:
        os.close(fd)


def _refusal(lock: Path, target: str | Path, what: str) -> str:
    info = holder(lock)
    who = f"afprobe process {info['pid']}" if "pid" in info else "another afprobe process"
    if info.get("host") and info.get("host") != socket.gethostname():
        who += f" on {info['host']}"
    since = f" since {info['started']}" if info.get("started") else ""
    cmd = f" (`{info['command']}`)" if info.get("command") else ""
    return (
        f"{what} {target} is in use by {who}{since}{cmd}; wait for it to finish, or delete {lock} if that "
        "process is gone"
    )
