"""Ctrl-C during a run sets the stop event instead of raising into Flower's engine, and the server stops
waiting for replies once it is set (the end-to-end exit codes are in tests/test_e2e_resume.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fedsec.runtime.signals import StopOnSignal
from fedsec.server.stop_aware_grid import StopAwareGrid


def test_the_first_ctrl_c_sets_stop_the_second_raises_and_the_callers_handler_hears_of_it():
    heard: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: heard.append(signum))
    try:
        stop = threading.Event()
        with StopOnSignal(stop) as signals:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs between bytecodes of the main thread
            assert stop.is_set() and signals.received == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert heard == [signal.SIGINT]  # handed on once the run has stopped
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_under_the_default_handler_is_swallowed_once_the_run_stopped():
    stop = threading.Event()
    with StopOnSignal(stop):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert stop.is_set()


class _SilentGrid:
    """A grid whose nodes never answer (a client stuck in training)."""

    pull_interval = 0.01

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        return []

    def get_node_ids(self):
        return [1, 2]


def test_the_server_stops_waiting_for_replies_once_stop_is_set():
    stop, grid = threading.Event(), _SilentGrid()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert StopAwareGrid(grid, stop).send_and_receive([object(), object()], timeout=60.0) == []
    assert time.monotonic() - started < 5.0  # not the 60 s timeout
    assert grid.pulls >= 1
    assert StopAwareGrid(grid, stop).get_node_ids() == [1, 2]  # the rest is the wrapped grid's
