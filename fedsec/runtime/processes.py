"""Child processes that end with the process that started them, and free local ports: what the sweep's Ray heads
(:mod:`fedsec.studies.sweep`) and ``fedsec deploy`` (:mod:`.deployment`) start their helpers with."""

from __future__ import annotations

import ctypes
import signal
import socket
import sys

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
