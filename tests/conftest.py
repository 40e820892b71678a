"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def server_identity():
    """Flower messages take their run/task/node ids from the process's TaskIdentity, which a running ServerApp
    has; set one for tests that build messages outside a run, and restore it after."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved
