"""A sweep's cell worker: one process per sweep slot that runs the slot's cells one after another, each exactly as
``fedsec run`` would from the command line.

Why: a cell used to be a fresh ``python -m fedsec.cli run`` process, and a small cell spent most of its time
starting: importing torch, Flower, Ray and fedsec (about 5 s here) before joining the sweep's Ray head. The worker
imports them once, while the sweep starts its Ray head, and keeps them for every cell of its slot
(docs/performance.md, "Start-up", has the before and after).

Protocol (the worker is ``python -m fedsec.sweep_worker SWEEP_DIR``, :mod:`fedsec.sweep_worker`; the sweep
directory is named so a leftover worker can be found by its command line): the sweep writes one JSON line per cell
on the worker's stdin, ``{"argv": [...], "log": path, "append": bool}``; the worker points its file descriptors 1
and 2 at the cell's log (so Ray's, Flower's and the CLI's output all land there, as with a cell process of its
own), runs the ``fedsec`` command line ``argv`` in process, and answers ``{"code": exit code}`` on the stdout it
was started with. Nothing of one cell is kept for the next but imported modules: each run builds its plan, data,
Ray connection and actors anew, so a cell's rows are those of ``fedsec run`` (tests/test_sweep.py compares them). A
run that ends its process (an interrupted run exits at once; a crash) ends the worker: :class:`CellWorker` reads
the exit status as the cell's and starts a new worker for the next cell.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["CellWorker"]


class CellWorker:
    """The sweep's side: a worker process started with ``command`` (its stdin and stdout are the protocol's pipes,
    its stderr goes to ``log``), restarted when it has died."""

    def __init__(self, command: list[str], *, log: Path, env: dict[str, str],
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.command, self.log, self.env, self.preexec_fn = command, log, env, preexec_fn
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self) -> subprocess.Popen[bytes]:
        """The live worker process, started if there is none."""
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                with self.log.open("ab") as log:
                    self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=log, env=self.env, start_new_session=True,
                                                    preexec_fn=self.preexec_fn)
            return self.process

    def run(self, argv: list[str], *, log: Path, append: bool) -> int:
        """Run ``fedsec argv`` with its output in ``log``; its exit code (or, if the worker died, the worker's exit
        status: negative for a signal, as ``subprocess`` reports it)."""
        process = self.start()
        request = json.dumps({"argv": argv, "log": str(log), "append": append}) + "\n"
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(request.encode())
            process.stdin.flush()
            reply = process.stdout.readline()
        except (BrokenPipeError, OSError):
            reply = b""
        if not reply:  # the worker ended while it ran the cell
            return process.wait()
        return int(json.loads(reply)["code"])

    def stop(self) -> None:
        """Close the worker's stdin (it exits after its current cell) and wait for it; kill it if it does not go."""
        with self._lock:
            process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def terminate(self) -> None:
        """SIGTERM to the worker (a running cell stops cleanly, as ``fedsec run`` does)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
