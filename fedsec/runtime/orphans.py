"""Ray processes a killed run left behind, found and ended by the next fedsec command.

A run that starts its own local Ray records the Ray session directory and its own PID in
``$XDG_CACHE_HOME/fedsec/ray-sessions/<pid>.json`` (default ``~/.cache``) and removes the record when it shuts Ray
down. A run killed with SIGKILL cannot: its raylet, GCS server and agents (``DashboardAgent``,
``RuntimeEnvAgent``) keep running. The next fedsec run reads the records whose driver is gone and ends exactly the
processes whose command line names that session directory or that hold a file of it open (Ray's agents and workers
rename their command line and keep their session's logs open), and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def _records_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fedsec" / "ray-sessions"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_session(session_dir: str) -> Path | None:
    """Note that this process owns the local Ray session at ``session_dir``."""
    try:
        folder = _records_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}.json"
        path.write_text(json.dumps({"driver_pid": os.getpid(), "session_dir": session_dir}))
        return path
    except OSError as e:  # a read-only home must not stop a run
        logger.debug("could not record the Ray session: %s", e)
        return None


def forget_session() -> None:
    """Ray was shut down cleanly: drop this process's record."""
    (_records_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)


def _other_processes() -> Iterator[tuple[Path, str]]:
    """Every other process's ``/proc`` entry and command line (arguments joined by spaces)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            yield entry, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue


def _narrow_session(session_dir: str) -> bool:
    """A session directory specific enough to match command lines and open files by (never match broadly)."""
    return len(session_dir) >= 12 and "session_" in session_dir


def _sigkill(pids: list[int]) -> list[int]:
    """SIGKILL each of ``pids``; returns those signalled."""
    ended = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return ended


def _processes_of(session_dir: str) -> list[int]:
    return [int(entry.name) for entry, cmdline in _other_processes()
            if session_dir in cmdline or _holds_file_in(entry, session_dir)]


def _holds_file_in(proc: Path, session_dir: str) -> bool:
    """Whether the process has a file of ``session_dir`` open (its logs): Ray's agents and workers rename their
    command line (``ray::DashboardAgent``) and blank their environment, but keep their session's log files open."""
    prefix = session_dir.rstrip("/") + "/"
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _parent_of(proc: Path) -> int:
    return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])


def stop_autoscaler_monitor(session_dir: str) -> list[int]:
    """SIGKILL the autoscaler monitor this process's own local Ray started for ``session_dir``, just before
    ``ray.shutdown()``; returns the PIDs signalled.

    Why: ``ray.shutdown()`` stops the GCS server before the monitor, whose SIGTERM handler then tries to report its
    death through the GCS and hangs until Ray's one-second grace ends (Ray 2.55, ``ray/_private/node.py``
    ``_kill_process_impl``): 1.0 of the 1.1 s a shutdown takes on this project's machines, at the end of every run.
    A local single-node Ray has nothing for the autoscaler to take down, and Ray's shutdown skips a process that
    has already exited. Only this process's children whose command line is the monitor's and names this session.
    """
    if not _narrow_session(session_dir) or not Path("/proc").is_dir():
        return []
    monitors = []
    for entry, cmdline in _other_processes():
        if "autoscaler/_private/monitor.py" in cmdline and session_dir in cmdline:
            try:
                if _parent_of(entry) == os.getpid():
                    monitors.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return _sigkill(monitors)


def end_orphans() -> list[int]:
    """End the processes of Ray sessions whose fedsec driver died; returns the PIDs signalled."""
    folder = _records_dir()
    if not folder.is_dir() or not Path("/proc").is_dir():
        return []
    ended: list[int] = []
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            driver, session = int(record["driver_pid"]), str(record["session_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _alive(driver):
            continue
        if not _narrow_session(session):
            path.unlink(missing_ok=True)
            continue
        ended += _sigkill(_processes_of(session))
        path.unlink(missing_ok=True)
        if ended:
            logger.warning("ended %d Ray process(es) left by a killed fedsec run (driver PID %d, %s)", len(ended),
                           driver, session)
    return ended
