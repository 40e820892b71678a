"""Flower's simulation engine without its one-second wait at the end of every run, and with its new messages
picked up sooner.

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

The engine also looks for the ServerApp's new messages on a clock: ``add_messages_to_queue`` scans every node's
inbox in the LinkState, then waits 0.1 s on the stop event, so each message exchange (the handshake and every
round) starts on average 0.05 s late, up to 0.1 s. :func:`prompt_extractor` is that loop with the wait fitted to the
scan (:func:`extract_wait`: ten times as long as the last scan took, between 5 ms and Flower's 0.1 s, so the
scanning thread takes at most about a tenth of the time) for an engine of up to :data:`PROMPT_NODES_MAX` nodes (a
cohort run's few nodes, a small run's one per client); with more it keeps Flower's 0.1 s: at 1,000 nodes, one per
client, scanning sooner made the handshake slower (``benchmarks/bench_scale.py --sizes 1000:100 --messages
per_client``: start-up 12.0-12.4 s -> 12.5-14.3 s with faster scans). Measured on this project's 2-core machine,
2026-12-05: a warm digits smoke run (Ray and actors kept, as a sweep's cell) 0.62 -> 0.44 s whole (medians of six,
alternating); 100 clients / 10 per round, one node each, 0.11 -> 0.09 s a round. :func:`prompt_engine_queues` swaps
``vce_api.add_messages_to_queue`` too, which ``run_api`` looks up when it starts the thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["EXTRACT_MIN_S", "POLL_S", "PROMPT_NODES_MAX", "PromptQueue", "extract_wait", "prompt_engine_queues",
           "prompt_extractor"]

#: the longest a waiting engine thread sleeps before it looks at the stop event again (Flower: 1.0 s)
POLL_S = 0.05
#: the shortest wait between two scans for new messages (Flower: always 0.1 s)
EXTRACT_MIN_S = 0.005
_EXTRACT_MAX_S = 0.1  # Flower's
#: more nodes than this (one per client in a large run): Flower's 0.1 s between scans
PROMPT_NODES_MAX = 128


class PromptQueue(queue.Queue[Any]):
    """``queue.Queue`` whose timed ``get`` waits at most :data:`POLL_S` seconds (then raises ``queue.Empty`` as a
    longer timeout would); untimed and non-blocking gets are unchanged."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if timeout is not None:
            timeout = min(timeout, POLL_S)
        return super().get(block, timeout)


def extract_wait(scan_seconds: float) -> float:
    """Seconds to wait after a scan for new messages that took ``scan_seconds``: ten times the scan, within
    [:data:`EXTRACT_MIN_S`, 0.1].

    >>> extract_wait(0.0001), extract_wait(0.002), extract_wait(0.5)
    (0.005, 0.02, 0.1)
    """
    return min(_EXTRACT_MAX_S, max(EXTRACT_MIN_S, 10 * scan_seconds))


def prompt_extractor(state: Any, inbox: queue.Queue[Any], nodes_mapping: dict[int, int],
                     f_stop: threading.Event) -> None:
    """Flower's ``vce_api.add_messages_to_queue`` (each node's next message from the LinkState into the workers'
    queue, until ``f_stop``) with :func:`extract_wait` between scans instead of 0.1 s, for an engine of at most
    :data:`PROMPT_NODES_MAX` nodes."""
    flowers_wait = len(nodes_mapping) > PROMPT_NODES_MAX
    while not f_stop.is_set():
        started = time.perf_counter()
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                inbox.put(message)
        f_stop.wait(_EXTRACT_MAX_S if flowers_wait else extract_wait(time.perf_counter() - started))


@contextmanager
def prompt_engine_queues() -> Iterator[None]:
    """While inside, Flower's simulation engine builds its message queues as :class:`PromptQueue` and looks for new
    messages with :func:`prompt_extractor`."""
    from flwr.server.superlink.fleet.vce import vce_api

    from .engine_swap import swapped

    with swapped(vce_api, "Queue", PromptQueue), swapped(vce_api, "add_messages_to_queue", prompt_extractor):
        yield
