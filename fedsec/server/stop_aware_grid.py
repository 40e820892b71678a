"""A Flower grid whose ``send_and_receive`` stops waiting once the run is asked to stop.

Flower's ``Grid.send_and_receive`` waits for every reply or the timeout (``round_timeout``, minutes). When Ctrl-C
or SIGTERM sets the run's stop event (:class:`fedsec.runtime.signals.StopOnSignal`), the ServerApp must return
within one poll so that Flower's simulation engine ends as it does after the last round; this wrapper pushes the
messages and pulls replies exactly as Flower's ``InMemoryGrid.send_and_receive`` does, checking the event on
every poll. Everything else is the wrapped grid's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message


class StopAwareGrid:
    """``grid`` with a ``send_and_receive`` that returns the replies so far once ``stop`` is set."""

    def __init__(self, grid: Any, stop: threading.Event) -> None:
        self.grid = grid
        self.stop = stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        interval = float(getattr(self.grid, "pull_interval", 0.01) or 0.01)
        while pending and not self.stop.is_set():
            got = list(self.grid.pull_messages(pending))
            replies += got
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            self.stop.wait(interval)
        return replies
