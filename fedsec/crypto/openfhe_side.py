"""OpenFHE from fedsec's Python: one side process per calling process, running :mod:`.openfhe_worker`.

OpenFHE's PyPI wheel imports only on CPython 3.10 and fedsec runs on 3.11, so the threshold trust model
(:mod:`.threshold`) calls OpenFHE in a child process of a Python that has it: ``FEDSEC_OPENFHE_PYTHON`` when set,
else ``.venv-openfhe/bin/python`` in the source tree (``bash scripts/openfhe_venv.sh`` makes it). The child is the
caller's own (started on first use, ended with it; a pipe nobody else holds), so a client's secret share stays
with the client: requests name the share's file, and only partial decryptions come back.
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

from .ckks import CryptoError

__all__ = ["OPENFHE_PYTHON_ENV", "OpenFheSide", "openfhe_python", "side"]

OPENFHE_PYTHON_ENV = "FEDSEC_OPENFHE_PYTHON"
WORKER = Path(__file__).with_name("openfhe_worker.py")
_SOURCE_TREE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-openfhe" / "bin" / "python"
_HOW = "bash scripts/openfhe_venv.sh makes one (.venv-openfhe, Python 3.10), or set FEDSEC_OPENFHE_PYTHON"


def openfhe_python() -> str | None:
    """The interpreter that runs OpenFHE, or None when there is none."""
    named = os.environ.get(OPENFHE_PYTHON_ENV, "")
    if named:
        return named if os.access(named, os.X_OK) else None
    return str(_SOURCE_TREE_PYTHON) if os.access(_SOURCE_TREE_PYTHON, os.X_OK) else None


def missing_reason() -> str:
    """'' when OpenFHE is reachable; otherwise why not and how to fix it."""
    python = openfhe_python()
    if python is None:
        named = os.environ.get(OPENFHE_PYTHON_ENV, "")
        where = f"{OPENFHE_PYTHON_ENV}={named} is not an executable" if named else f"no {_SOURCE_TREE_PYTHON}"
        return f"threshold CKKS runs OpenFHE in a Python 3.10 side process and {where}; {_HOW}"
    return ""


class OpenFheSide:
    """A side process answering :mod:`.openfhe_worker`'s operations; :meth:`call` is thread-safe."""

    def __init__(self, python: str | None = None) -> None:
        python = python or openfhe_python()
        if python is None:
            raise CryptoError(missing_reason())
        self.python = python
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            try:
                # -I: the caller's PYTHONPATH (Ray sets one) must not reach a Python of another version
                self._process = subprocess.Popen([self.python, "-I", str(WORKER)], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE)  # stderr: the caller's
            except OSError as e:
                raise CryptoError(f"cannot start the OpenFHE side process {self.python}: {e}; {_HOW}") from e
        return self._process

    def call(self, op: str, **kwargs: Any) -> Any:
        """Run ``op`` in the side process; its value, or :class:`CryptoError` with the side's reason."""
        with self._lock:
            process = self._start()
            assert process.stdin is not None and process.stdout is not None  # noqa: S101 - Popen with PIPEs
            data = pickle.dumps((op, kwargs), protocol=4)
            try:
                process.stdin.write(struct.pack(">Q", len(data)) + data)
                process.stdin.flush()
                header = process.stdout.read(8)
                if len(header) < 8:
                    raise EOFError
                status, value = pickle.loads(process.stdout.read(struct.unpack(">Q", header)[0]))  # noqa: S301
            except (OSError, EOFError) as e:
                code = process.poll()
                self._process = None
                raise CryptoError(f"the OpenFHE side process ({self.python}) ended during {op!r} (exit code "
                                  f"{code}; its stderr is this process's)") from e
        if status != "ok":
            raise CryptoError(f"OpenFHE: {value}")
        return value

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.stdin.close()  # type: ignore[union-attr]  # the worker ends at end of input
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
            self._process = None


_SIDE: OpenFheSide | None = None
_SIDE_LOCK = threading.Lock()


def side() -> OpenFheSide:
    """This process's side process (one per process, started on first use, closed at exit)."""
    global _SIDE
    with _SIDE_LOCK:
        if _SIDE is None:
            _SIDE = OpenFheSide()
            atexit.register(_SIDE.close)
        return _SIDE
