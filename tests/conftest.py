"""Shared fixtures."""

from __future__ import annotations

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
