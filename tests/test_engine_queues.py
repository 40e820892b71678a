"""Flower's engine queues without the one-second poll (fedsec/runtime/engine_queues.py): a timed wait is cut to
``POLL_S``, messages still pass at once, the swap is undone, and a run's engine builds its queues from it."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import pytest

from fedsec.runtime import engine_queues
from fedsec.runtime.engine_queues import POLL_S, PromptQueue, prompt_engine_queues

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "digits_smoke.toml"


def test_a_timed_wait_is_cut_to_the_poll_and_the_others_are_left_alone(monkeypatch):
    seen: list[tuple[bool, float | None]] = []

    def recording_get(self, block=True, timeout=None):
        seen.append((block, timeout))
        return "item"

    monkeypatch.setattr(queue.Queue, "get", recording_get)  # what PromptQueue hands to queue.Queue
    q = PromptQueue()
    for kwargs in ({"timeout": 1.0}, {"timeout": 3600}, {"timeout": 0.01}, {}, {"block": False}):
        assert q.get(**kwargs) == "item"
    assert seen == [(True, POLL_S), (True, POLL_S), (True, 0.01), (True, None), (False, None)]
    assert POLL_S < 1.0  # Flower's engine polls with timeout=1.0


def test_a_thread_polling_as_flowers_engine_does_gets_a_message_put_after_many_polls():
    q = PromptQueue()
    got: list[str] = []
    polls = [0]

    def worker() -> None:  # flwr/server/superlink/fleet/vce/vce_api.py's worker loop, without the stop event
        while not got:
            try:
                got.append(q.get(timeout=1.0))
            except queue.Empty:
                polls[0] += 1

    waiting = threading.Thread(target=worker)
    waiting.start()
    time.sleep(0.3)  # several cut polls pass with an empty queue
    q.put("message")
    waiting.join(timeout=30)
    assert got == ["message"] and polls[0] >= 1
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)


def test_the_engine_builds_prompt_queues_only_inside_the_block():
    from flwr.server.superlink.fleet.vce import vce_api

    assert vce_api.Queue is queue.Queue
    with prompt_engine_queues():
        assert vce_api.Queue is PromptQueue
    assert vce_api.Queue is queue.Queue
    with pytest.raises(RuntimeError), prompt_engine_queues():
        raise RuntimeError("a run that fails")
    assert vce_api.Queue is queue.Queue  # put back after a failure too


@pytest.mark.e2e
def test_a_runs_engine_passes_its_messages_through_prompt_queues(tmp_path, shared_ray, monkeypatch):
    from fedsec.plan import load_plan
    from fedsec.runtime.runner import run_experiment

    built: list[PromptQueue] = []
    original_init = PromptQueue.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(engine_queues.PromptQueue, "__init__", recording_init)
    result = run_experiment(load_plan(SMOKE, ["rounds=1", "data.num_clients=3", "train.clients_per_round=3"]),
                            tmp_path / "run")
    assert result.summary["rounds_completed"] == 1
    assert len(built) == 2  # Flower's engine: one queue of messages to clients, one of their replies
    assert all(q.empty() for q in built)  # every message and reply went through them
