"""A rule's aggregation under a time bound (config key ``backend.aggregate_timeout``).

Python cannot kill a thread, and a kernel is plain Python and torch, so :func:`call_with_deadline` runs the call in
a worker thread and waits for it at most ``seconds``. Past that it raises an exception *inside* the worker, at the
worker's next Python instruction (CPython's ``PyThreadState_SetAsyncExc``, part of its stable C API), so that an
iterative kernel (Weiszfeld steps, centered clipping, DnC's SVDs: Python loops of torch calls) stops within one
iteration, and raises :class:`DeadlineExceeded` in the caller. A worker stuck in one long native call (a single huge
SVD) stops only when that call returns: the caller waits ``grace`` seconds for it, then goes on without it and
says so (``stopped``), so that it can stop sharing buffers with it.

What the interrupted call changed stays changed: a stateful rule may keep part of the interrupted round in its
state (FoolsGold's per-client histories are updated before its weights are computed; DnC's generator has advanced).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call ran past its deadline and was interrupted (``stopped``) or abandoned in a native call."""

    def __init__(self, seconds: float, *, stopped: bool) -> None:
        super().__init__(f"did not finish within {seconds:g} s" + ("" if stopped else "; still running"))
        self.seconds, self.stopped = seconds, stopped


class _Interrupted(BaseException):  # a BaseException: a kernel's `except Exception` does not swallow it
    pass


def call_with_deadline(fn: Callable[[], T], seconds: float | None, *, name: str, grace: float = 1.0) -> T:
    """``fn()``, or :class:`DeadlineExceeded` once it has run ``seconds`` (None: no bound, called in this thread).

    Exceptions of ``fn`` reach the caller unchanged; ``name`` names the worker thread (seen in a stack dump)."""
    if seconds is None:
        return fn()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except _Interrupted:
            box["interrupted"] = True
        except BaseException as e:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = e

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive() and not box:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Interrupted))
        worker.join(grace)
        if "value" not in box and "error" not in box:
            raise DeadlineExceeded(seconds, stopped=not worker.is_alive())
    worker.join()  # it has finished (or is finishing after setting its result)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
