"""A local Ray that fedsec starts (fedsec/runtime/runner.py): its raylet retries its object-store connection every
50 ms rather than Ray's 1 s (``ray_start.LOCAL_RAY_CONFIG``; a sweep's Ray head, fedsec/studies/sweep.py
``local_ray_head``, too); it starts without the dashboard's head process (fedsec/runtime/ray_start.py); its
shutdown ends the autoscaler monitor first (fedsec/runtime/orphans.py ``stop_autoscaler_monitor``), only that
process, and leaves nothing of the session."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from fedsec.config import BackendConfig
from fedsec.runtime import orphans, ray_start, runner


def _monitors_of(session: str) -> list[int]:
    return [pid for pid in orphans._processes_of(session)
            if "autoscaler/_private/monitor.py" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child stays one until Ray's shutdown reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _gone(pids: list[int], within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(_running(p) for p in pids)


@pytest.mark.e2e
def test_shutdown_ends_the_monitor_first_and_leaves_nothing_of_the_session():
    import ray

    runner.init_ray(BackendConfig())
    try:
        session = runner._RAY["session"]
        assert session and Path(session).is_dir()
        import ray._private.state

        system = ray._private.state.state.get_system_config()  # what Ray's GCS hands the raylet and workers
        assert system["raylet_client_connect_timeout_milliseconds"] == 50  # Ray's default: 1000
        assert system["raylet_client_num_connect_attempts"] == 200  # 10 s before Ray gives up, as by default
        processes = orphans._processes_of(session)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes]
        # started without the dashboard's head process (fedsec/runtime/ray_start.py; Ray's own start has one) ...
        assert not any(b"dashboard/dashboard.py" in c for c in commands)
        assert any(b"dashboard/agent.py" in c for c in commands)  # ... and with the raylet's agent as Ray has it
        import ray._private.node
        import ray._private.services

        # the two swaps last only while Ray starts
        assert ray._private.node.Node.start_api_server is not ray_start._no_dashboard_process
        assert not isinstance(ray._private.services.get_node, functools.partial)
        gcs, node_id = ray._private.worker.global_worker.node.gcs_address, ray.get_runtime_context().get_node_id()
        asked: list[tuple[str, str]] = []
        assert ray_start.get_node_soon(gcs, node_id, ask_ray=lambda *a: asked.append(a) or {"NodeID": a[1]}) == {
            "NodeID": node_id}
        assert asked == [(gcs, node_id)]
        monitors = _monitors_of(session)
        assert len(monitors) == 1 and len(processes) > 3  # GCS, raylet, agents, ...
        assert orphans.stop_autoscaler_monitor(session.replace("session_", "session_0")) == []  # another session
        assert orphans.stop_autoscaler_monitor(session) == monitors
        assert _gone(monitors)
        assert [p for p in processes if p not in monitors and not _running(p)] == []  # only the monitor

        @ray.remote
        def one() -> int:
            return 1

        assert ray.get(one.remote(), timeout=60) == 1  # Ray works without it
    finally:
        runner.shutdown_ray()
    assert not ray.is_initialized() and runner._RAY["session"] is None
    assert _gone(processes)


@pytest.mark.e2e
def test_a_sweeps_ray_head_gets_the_same_settings_and_start(tmp_path):
    import json
    import subprocess
    import sys

    from fedsec.studies.sweep import local_ray_head

    read = ("import json, sys, ray, ray._private.state\n"
            "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
            "system = ray._private.state.state.get_system_config()\n"
            "print(json.dumps({k: system.get(k) for k in json.loads(sys.argv[2])}))\n"
            "print(ray._private.worker._global_node.get_session_dir_path())\n"
            "ray.shutdown()\n")
    with local_ray_head(1, log_path=tmp_path / "head.log") as address:
        done = subprocess.run([sys.executable, "-c", read, address, json.dumps(list(ray_start.LOCAL_RAY_CONFIG))],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        settings, session = done.stdout.strip().splitlines()[-2:]
        processes = orphans._processes_of(session)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes]
    # stopped whole (SIGKILL to the head's process group): no process of the session is left
    assert len(processes) > 3 and _gone(processes)
    assert json.loads(settings) == ray_start.LOCAL_RAY_CONFIG
    # started as a lone run's Ray (fedsec/runtime/ray_start.py): no dashboard head process, the raylet's agent
    assert not any(b"dashboard/dashboard.py" in c for c in commands)
    assert any(b"dashboard/agent.py" in c for c in commands)
