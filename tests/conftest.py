"""Shared fixtures."""

from __future__ import annotations

import sys

import pytest
import torch


@pytest.fixture
def server_identity():
    """Flower messages take their run/task/node ids from the process's TaskIdentity, which a running ServerApp
    has; set one for tests that build messages outside a run, and restore it after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): attacks
    and tiny models run many small kernels, and torch's default pool oversubscribes the shared 2-core test machine
    (about 20x slower under contention); restored after the module."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def shared_ray():
    """Runs in the test keep the test process's local Ray and its client actors for the next test that asks for
    them too (fedsec.runtime.runner.keep_ray, fedsec/runtime/warm_actors.py): one Ray start and one pair of actors
    importing torch and fedsec instead of one per run. Only for runs on a local Ray (a run joined to another
    cluster would leave its connection open); a run in a test without it stops the kept Ray and starts its own."""
    from fedsec.runtime.runner import keep_ray

    with keep_ray():
        yield


@pytest.fixture(scope="session", autouse=True)
def _stop_the_shared_ray():
    """The Ray that tests with ``shared_ray`` kept ends with the session."""
    yield
    runner = sys.modules.get("fedsec.runtime.runner")
    if runner is not None:
        runner.shutdown_ray()
