"""An exclusive, advisory lock on a run directory: ``run.lock`` holds the writer's PID, host and start time.

The lock is ``fcntl.flock`` on an open file, so the kernel releases it when its process exits for any reason
(a crash or SIGKILL included): a lock file nobody holds is only a trace of an interrupted run. The descriptor is
not inherited by programs the run starts (Python opens files non-inheritable, PEP 446), so Ray's workers and
agents never keep it alive. A clean release unlinks the file; an acquirer re-checks after locking that the file
it locked is still the one at the path (the classic unlink race). POSIX only; on NFS, flock may be local to a host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedsec.errors import FedsecInputError

LOCK_NAME = "run.lock"


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or last held) a run directory's lock."""

    pid: int | None
    host: str
    started_at: str

    def describe(self) -> str:
        pid = self.pid if self.pid is not None else "unknown"
        return f"PID {pid} on host {self.host or 'unknown'} since {self.started_at or 'an unknown time'}"


class RunDirectoryLocked(FedsecInputError):
    """Another process is writing the run directory; ``holder`` says who."""

    def __init__(self, message: str, holder: LockInfo) -> None:
        super().__init__(message)
        self.holder = holder


def read_lock_info(path: Path) -> LockInfo | None:
    """The holder recorded in lock file ``path`` (None if there is no file; fields empty if it is unreadable)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return LockInfo(None, "", "")
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return LockInfo(pid if isinstance(pid, int) else None, str(data.get("host", "")), str(data.get("started_at", "")))


class RunLock:
    """``fcntl.flock`` on ``<directory>/run.lock``: :meth:`acquire` or refuse, :meth:`release` (idempotent).

    Parameters:
        directory: the run directory (must exist).
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None
        self.stale: LockInfo | None = None  # the record a dead holder left behind (an interrupted run), if any

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write this process's PID, host and start time into it; raise
        :class:`RunDirectoryLocked` naming the holder if another process (or another :class:`RunLock` in this
        one) holds it."""
        if self._fd is not None:
            return
        for _ in range(100):  # each retry means another process unlinked the file between our open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_lock_info(self.path) or LockInfo(None, "", "")
                raise RunDirectoryLocked(
                    f"run directory {str(self.path.parent)!r} is in use by {holder.describe()}: another run is "
                    "writing it; wait for it to end, stop it, or choose another directory (--out)",
                    holder,
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - needs 100 lost races in a row
            raise RunDirectoryLocked(f"run directory {str(self.path.parent)!r}: could not take {LOCK_NAME}",
                                     LockInfo(None, "", ""))
        previous = os.read(fd, 4096)
        if previous.strip():
            self.stale = read_lock_info(self.path)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self, *, restore_stale: bool = False) -> None:
        """Unlink the lock file and release the lock (a no-op if not held); ``restore_stale``: put back the record
        of the dead holder found by :meth:`acquire` instead (a refused open leaves the trace as it found it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if restore_stale and self.stale is not None:
                record = {"pid": self.stale.pid, "host": self.stale.host, "started_at": self.stale.started_at}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            else:
                self.path.unlink(missing_ok=True)  # while still locked: nobody can have it at this path
        finally:
            os.close(fd)  # releases the flock

    def __del__(self) -> None:  # the kernel releases the lock with the descriptor anyway; this tidies the file
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
