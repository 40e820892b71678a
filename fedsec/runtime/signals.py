"""Ctrl-C during Flower's simulation: stop the run cleanly instead of raising into it.

Raising ``KeyboardInterrupt`` in the driver's main thread while ``flwr.simulation.run_simulation`` runs lets
Flower's ``vce_api.run_api`` leave its worker pool unjoined and call ``RayBackend.terminate`` (which calls
``ray.shutdown()``) while those worker threads still wait on Ray futures: the driver then crashed with SIGSEGV
now and then (exit -11 instead of 130; Flower 1.42, Ray 2.55). While :class:`StopOnSignal` is active the first
Ctrl-C only sets the run's stop event; the ServerApp sees it (:class:`fedsec.server.stop_aware_grid.StopAwareGrid`
stops waiting for replies), records nothing more and returns, and Flower winds its engine down as at the end of
any run. A second Ctrl-C raises ``KeyboardInterrupt`` at once, the old path, for a user who will not wait.

Only SIGINT: Ray's own processes block it (``ray._private.services.start_ray_process``), so Ray stays up for the
wind-down. SIGTERM usually reaches the whole process group (a job scheduler, ``kill -- -PGID``), Ray's processes
included, and the driver's Ray core worker exits the process (status 1) soon after its raylet dies; waiting for the
engine would lose the summary, so SIGTERM keeps stopping at once (the CLI turns it into ``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT,)


class StopOnSignal:
    """While active (in the main thread; elsewhere it does nothing), SIGINT sets ``stop``.

    On exit the handler in place before is restored and, if a signal came, called with it (Python's default raises
    ``KeyboardInterrupt``, which is swallowed here: the run has already stopped and says so in its summary)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: int = 0
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            raise KeyboardInterrupt  # the second one: stop now
        self.received = signum
        self.stop.set()
        sys.stderr.write("fedsec: stopping after the client messages in flight (press Ctrl-C again to stop now)\n")

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in _SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        previous = self._previous.get(self.received)
        self._previous = {}
        if callable(previous):
            try:
                previous(self.received, None)
            except KeyboardInterrupt:
                pass
