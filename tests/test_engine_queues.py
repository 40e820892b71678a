"""Flower's engine queues without the one-second poll (fedsec/runtime/engine_queues.py): a timed wait is cut to
``POLL_S``, messages still pass at once, the swap is undone, and a run's engine builds its queues from it; its new
messages are looked for sooner (``prompt_extractor``) on a few nodes, at Flower's pace on many."""

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
    scanned: list[int] = []
    extractor = engine_queues.prompt_extractor

    def recording_extractor(state, inbox, nodes_mapping, f_stop):
        scanned.append(len(nodes_mapping))
        extractor(state, inbox, nodes_mapping, f_stop)

    monkeypatch.setattr(engine_queues, "prompt_extractor", recording_extractor)
    result = run_experiment(load_plan(SMOKE, ["rounds=1", "data.num_clients=3", "train.clients_per_round=3"]),
                            tmp_path / "run")
    assert result.summary["rounds_completed"] == 1
    assert len(built) == 2  # Flower's engine: one queue of messages to clients, one of their replies
    assert all(q.empty() for q in built)  # every message and reply went through them
    assert scanned == [3]  # the engine's new messages were looked for by fedsec's extractor, over the 3 nodes


class _Inboxes:
    """Per-node inboxes read as Flower's LinkState serves the engine: ``get_message_ins(node_id=, limit=1)`` hands
    each stored message out once."""

    def __init__(self) -> None:
        self.lock, self.stored, self.scans = threading.Lock(), {}, 0

    def put(self, node_id: int, message: str) -> None:
        with self.lock:
            self.stored.setdefault(node_id, []).append(message)

    def get_message_ins(self, *, node_id: int, limit: int) -> list[str]:
        with self.lock:
            self.scans += node_id == 0
            waiting = self.stored.get(node_id, [])
            taken, self.stored[node_id] = waiting[:limit], waiting[limit:]
            return taken


def _extract(nodes: int, puts: list[tuple[int, str]]) -> tuple[list[str], int]:
    """Messages put 0.5 s after the extractor started: what reached the workers' queue, and how many scans it made."""
    inboxes, inbox, stop = _Inboxes(), queue.Queue(), threading.Event()
    extractor = threading.Thread(target=engine_queues.prompt_extractor, args=(inboxes, inbox, dict.fromkeys(
        range(nodes), 0), stop))
    extractor.start()
    time.sleep(0.5)
    for node_id, message in puts:
        inboxes.put(node_id, message)
    got = [inbox.get(timeout=30) for _ in puts]
    stop.set()
    extractor.join(timeout=30)
    assert not extractor.is_alive()  # the stop event ends it
    return got, inboxes.scans


def test_the_extractor_hands_every_message_over_once_and_stops():
    got, scans = _extract(3, [(0, "a"), (2, "b"), (0, "c")])
    assert sorted(got) == ["a", "b", "c"]
    assert scans >= 20  # in 0.5-0.6 s: Flower's 0.1 s wait allows 6-7 scans, 5 ms about 100 (20 on a slow machine)


def test_many_nodes_keep_flowers_wait_between_scans():
    got, scans = _extract(engine_queues.PROMPT_NODES_MAX + 1, [(5, "a")])
    assert got == ["a"] and scans <= 10  # 0.1 s apart, as Flower's: 6-7 scans in 0.5-0.6 s


def test_the_engine_looks_for_messages_with_the_prompt_extractor_only_inside_the_block():
    from flwr.server.superlink.fleet.vce import vce_api

    flowers = vce_api.add_messages_to_queue
    assert flowers is not engine_queues.prompt_extractor
    with prompt_engine_queues():
        assert vce_api.add_messages_to_queue is engine_queues.prompt_extractor
    assert vce_api.add_messages_to_queue is flowers
