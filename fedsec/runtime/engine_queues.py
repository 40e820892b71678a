"""Flower's simulation engine without its one-second wait at the end of every run.

Why: Flower 1.42's engine (``flwr/server/superlink/fleet/vce/vce_api.py``) hands client messages to its worker
threads, and their replies to the thread that stores them, through ``queue.Queue`` objects that each thread polls
with ``get(timeout=1.0)``, checking the engine's stop event between polls. When the ServerApp has finished,
``run_simulation`` returns only once every such thread's current poll has timed out: up to a second in which
nothing runs, at the end of every run. On this project's 2-core machine a traced digits smoke run spent 0.9 s at
0% CPU there, and a sweep cell's whole run (Ray and actors kept, ``benchmarks/bench_startup.py``'s "warm whole
run") took 1.55-1.68 s, of which that wait was about 1 s (0.57-0.70 s with this module).

:class:`PromptQueue` is ``queue.Queue`` with every timed wait cut to at most :data:`POLL_S`: a message put in the
queue still wakes a waiting thread at once (``Queue``'s condition variable, as before); only a thread that finds the
queue empty looks at the stop event sooner. Flower has no setting for it: ``vce_api`` builds its queues from the
name ``Queue`` it imported, so :func:`prompt_engine_queues` swaps that module attribute while one
``run_simulation`` runs and puts it back (:func:`fedsec.runtime.engine_swap.swapped`).
``tests/test_engine_queues.py`` checks the queue and that a run's engine used it.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["POLL_S", "PromptQueue", "prompt_engine_queues"]

#: the longest a waiting engine thread sleeps before it looks at the stop event again (Flower: 1.0 s)
POLL_S = 0.05


class PromptQueue(queue.Queue[Any]):
    """``queue.Queue`` whose timed ``get`` waits at most :data:`POLL_S` seconds (then raises ``queue.Empty`` as a
    longer timeout would); untimed and non-blocking gets are unchanged."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if timeout is not None:
            timeout = min(timeout, POLL_S)
        return super().get(block, timeout)


@contextmanager
def prompt_engine_queues() -> Iterator[None]:
    """While inside, Flower's simulation engine builds its message queues as :class:`PromptQueue`."""
    from flwr.server.superlink.fleet.vce import vce_api

    from .engine_swap import swapped

    with swapped(vce_api, "Queue", PromptQueue):
        yield
