"""Child processes: ones that end with the process that started them, free local ports and waiting for a child to
listen on one, and stopping a whole process tree; what the sweep's Ray heads (:mod:`fedsec.studies.sweep`) and
``fedsec deploy`` (:mod:`.deployment`) start and stop their helpers with."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LINUX = sys.platform.startswith("linux")


def die_with_parent(sig: int = signal.SIGTERM) -> None:  # pragma: no cover - runs in the child before exec
    """Linux (``preexec_fn``): the child gets ``sig`` when its parent dies, even by SIGKILL (no orphans)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen, *, timeout: float) -> str | None:
    """Wait until ``process`` listens on 127.0.0.1:``port``; None when it does, else why not: "exited" (it ended
    first) or "timeout"."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            return "exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(0.2)


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Flower's SuperExec and apps start sessions of their own, so a process
    group does not hold them)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pids: list[int]) -> list[int]:
    tree, out, todo = _children(), [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += tree.get(pid, [])
    return out


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_tree(processes: list[subprocess.Popen]) -> None:
    """TERM ``processes`` and all their descendants, then KILL what is left after 10 s; wait (10 s at most) until the
    descendants are gone."""
    pids = _tree([p.pid for p in processes if p.poll() is None])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.1)
    for p in processes:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10  # the descendants are reaped by init once their parents are gone
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)
