"""One lock per run directory, so that two workers never train the same run.

A lock is a file ``<run_dir>/lock`` created whole: written to a private file, then hard-linked into
place (atomic on local disks and on NFS/Lustre, where SLURM clusters keep results; ``O_CREAT | O_EXCL``
where hard links are not supported). It holds the owner's pid, host and a random
token; a heartbeat thread touches its mtime while the owner lives. A lock is *stale* when its
owner is gone: the pid no longer exists on this host, or the heartbeat is older than
``stale_after`` seconds (an owner on another host, or a frozen node), or the file is empty or
half-written and older than ``UNREADABLE_GRACE_S`` (its owner died between creating and writing it:
a live owner writes its few bytes right after creating the file). A stale lock is taken over.

Taking over is serialised by a second O_EXCL file (``lock.break``), so that two workers that both
saw the same stale lock cannot both remove it: the second one re-reads the lock under the breaker
and finds the first one's fresh lock instead.

Example::

    with RunLock(run_dir / "lock") as lock:
        if not lock.acquired:
            return "running elsewhere"
        train()
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LockInfo", "RunLock", "read_lock", "is_stale"]

HEARTBEAT_S = 30.0  # how often a live owner touches its lock
STALE_AFTER_S = 600.0  # a lock untouched this long is stale, whatever its host (20 missed heartbeats)
UNREADABLE_GRACE_S = 5.0  # an empty/half-written lock this old has no live owner
LOCK_BYTES = 4096


@dataclass(frozen=True)
class LockInfo:
    pid: int
    host: str
    token: str
    started: float  # unix time the lock was taken
    heartbeat: float  # unix time of the last heartbeat (the file's mtime)

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return f"pid {self.pid} on {self.host}, last heartbeat {age:.0f} s ago"


def read_lock(path: Path) -> LockInfo | None:
    """The lock at ``path``; None if there is none. A half-written or unreadable lock reads as
    pid 0 on host '?' with the file's mtime, so it goes stale by age and is never trusted forever."""
    try:
        mtime = path.stat().st_mtime
        with path.open("rb") as f:
            doc: dict[str, Any] = json.loads(f.read(LOCK_BYTES))  # a lock is ~100 bytes: read no more
        return LockInfo(int(doc["pid"]), str(doc["host"]), str(doc["token"]), float(doc["started"]), mtime)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # damaged or forged: unreadable
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return LockInfo(0, "?", "", mtime, mtime)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_stale(info: LockInfo, stale_after: float = STALE_AFTER_S) -> bool:
    age = time.time() - info.heartbeat
    if age > stale_after or (not info.token and age > min(stale_after, UNREADABLE_GRACE_S)):
        return True
    return info.host == socket.gethostname() and not _pid_alive(info.pid)


def _create_exclusive(path: Path, doc: dict[str, Any]) -> bool:
    """Create ``path`` holding ``doc`` if it does not exist. The content is written to a private file
    first and hard-linked into place (``link`` fails when the name exists: atomic on local disks and
    NFS, the classic NFS lock), so a lock is never seen empty or half-written: a worker killed at any
    moment leaves either no lock or one naming its pid, which is taken over at once once that pid is
    gone. File systems without hard links get ``O_EXCL`` and the grace for an empty lock."""
    new = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
    try:
        _write_new(new, doc)
    except OSError:
        new.unlink(missing_ok=True)
        raise
    try:
        os.link(new, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        return _create_excl(path, doc)
    finally:
        new.unlink(missing_ok=True)


def _write_new(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides the mode
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc))
        f.flush()
        os.fsync(f.fileno())


def _create_excl(path: Path, doc: dict[str, Any]) -> bool:
    try:
        _write_new(path, doc)
    except FileExistsError:
        return False
    except BaseException:  # e.g. a full disk: leave no empty lock behind
        path.unlink(missing_ok=True)
        raise
    return True


def _remove_dead_new_files(lock: Path) -> None:
    """The private files of creators killed between writing and unlinking them (a live one takes
    microseconds); removed by the lock's owner."""
    for f in lock.parent.glob(f".{lock.name}.*.new"):
        try:
            if time.time() - f.stat().st_mtime > UNREADABLE_GRACE_S:
                f.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


class RunLock:
    """Context manager: ``acquired`` tells whether this process owns the lock; ``holder`` who does
    when it does not. Released (file removed) on exit only by its owner."""

    def __init__(
        self, path: Path | str, heartbeat: float = HEARTBEAT_S, stale_after: float = STALE_AFTER_S
    ) -> None:
        if heartbeat >= stale_after:
            raise ValueError(f"heartbeat ({heartbeat} s) must be shorter than stale_after ({stale_after} s)")
        self.path = Path(path)
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.token = secrets.token_hex(8)
        self.acquired = False
        self.took_over: LockInfo | None = None  # the stale lock this one replaced
        self.holder: LockInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- acquire / release ------------------------------------------------------------------------
    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token, "started": time.time()}
        for _ in range(3):  # at most: create fails, stale lock removed, create again (lost races retry)
            if _create_exclusive(self.path, doc):
                self.acquired = True
                self._start_heartbeat()
                _remove_dead_new_files(self.path)
                return True
            info = read_lock(self.path)
            if info is None:
                continue  # released between our create and our read
            if not is_stale(info, self.stale_after) or not self._break(info):
                self.holder = info
                return False
        self.holder = read_lock(self.path)
        return False

    def _break(self, seen: LockInfo) -> bool:
        """Remove the stale lock ``seen``, under the breaker file; False if someone else is on it."""
        breaker = self.path.with_name(self.path.name + ".break")
        b = read_lock(breaker)
        if b is not None and is_stale(b, min(self.stale_after, 60.0)):  # a breaker died mid-way
            breaker.unlink(missing_ok=True)
        if not _create_exclusive(breaker, {"pid": os.getpid(), "host": socket.gethostname(),
                                           "token": self.token, "started": time.time()}):  # fmt: skip
            return False
        try:
            now = read_lock(self.path)
            if now is None:
                return True
            if now.token != seen.token or not is_stale(now, self.stale_after):
                return False  # someone took it over (fresh) since we looked
            self.path.unlink(missing_ok=True)
            self.took_over = seen
            return True
        finally:
            breaker.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.acquired:
            info = read_lock(self.path)
            if info is not None and info.token == self.token:  # never remove a lock taken over from us
                self.path.unlink(missing_ok=True)
            self.acquired = False

    # --- heartbeat ----------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat-{self.path.parent.name}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # removed by hand; nothing to keep alive
                return

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
