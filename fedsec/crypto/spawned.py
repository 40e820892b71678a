"""One call in a spawned process of its own: where keys are made that the calling process must never hold.

The caller gets the function's return value (what the child chose to send: public halves, the server's info) or
its exception raised again; the child's memory, with the secrets it made and wrote to files, ends with it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

from .ckks import CryptoError

__all__ = ["call_spawned"]


def _child(target: Callable[..., Any], args: tuple[Any, ...], conn: Any) -> None:  # pragma: no cover - child
    try:
        conn.send(("ok", target(*args)))
    except Exception as e:  # noqa: BLE001 - report it to the parent
        conn.send(("error", e))


def call_spawned(target: Callable[..., Any], *args: Any, name: str, what: str) -> Any:
    """``target(*args)`` in a fresh spawned process (``target`` a module-level function); its value, or its
    exception; :class:`CryptoError` naming ``what`` when the process ends without an answer."""
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    process = mp.Process(target=_child, args=(target, args, child), name=name)
    process.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError as e:
        raise CryptoError(f"{what} failed: the process ended without an answer") from e
    finally:
        process.join(timeout=30)
    if status == "error":
        raise value
    return value
