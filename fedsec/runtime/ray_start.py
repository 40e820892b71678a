"""How fedsec starts a local Ray (:func:`fedsec.runtime.runner.init_ray`, and a sweep's or a privacy study's head):
one setting Ray takes (:data:`LOCAL_RAY_CONFIG`), and two waits that Ray 2.55 (pinned through
``flwr[simulation]==1.42.0``) has no setting for:

- **The dashboard's head process.** ``ray.init(include_dashboard=False)``, as fedsec calls it, still starts
  ``ray/dashboard/dashboard.py`` with ``--modules-to-load=UsageStatsHead`` (``ray/_private/services.py``,
  ``start_api_server``) and polls the GCS every 0.1 s until that process has written its address: about 0.6 s on
  this project's 2-core machine, a Python process importing aiohttp and Ray's dashboard before the raylet may
  start. Loaded that way it serves nothing a run uses (the job and state APIs are among the modules it does not
  load) and only reports Ray's usage statistics, which a simulator should not send (fedsec turns Flower's telemetry
  off too, :func:`fedsec.runtime.runner.quiet_frameworks`). While fedsec starts a local Ray,
  ``ray._private.node.Node.start_api_server`` does nothing; the raylet, its dashboard agent (metrics, logs) and
  every other process start as Ray starts them.
- **The registration poll.** After starting the raylet, ``Node.__init__`` asks the GCS for the new node through
  ``ray._private.services.get_node``, whose C++ accessor waits a whole second between its tries. The raylet
  registers only once its dashboard agent listens (0.70-0.79 s after the first try in five starts here), so that
  call returned after 1.01-1.03 s each time, and after about 2 s when the agent is slower than a second. Here
  :func:`get_node_soon` first polls the GCS's node table every 20 ms (for at most ``REGISTRATION_POLL_S``), then asks
  as Ray does, which then answers at once.

``python benchmarks/bench_startup.py --parts ray`` measures both (``--as-before start`` without them,
:data:`ENABLED`); docs/performance.md has the numbers. A joined cluster is started by whoever runs it and keeps its
own processes; the Ray heads a sweep or a privacy study starts (``ray start --head``) run Ray's command line
through :func:`main`, so they start as a lone run's Ray does. Ray's pin makes the two private names stable;
``tests/test_ray_start.py`` fails first if they move.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .engine_swap import swapped

__all__ = ["ENABLED", "LOCAL_RAY_CONFIG", "REGISTRATION_POLL_S", "get_node_soon", "main", "prompt_local_start"]

#: Ray system settings for a local Ray that fedsec starts. The raylet connects to its own object store right after
#: starting the store's thread, and when the socket is not listening yet it retries only after
#: ``raylet_client_connect_timeout_milliseconds`` (Ray's default 1,000 ms, 10 attempts): in 10 of 24 local starts on
#: this project's 2-core machine the raylet's log shows 1.00 s between "Starting object store" and "ObjectManager
#: server started", and ``ray.init`` took 3.4-3.7 s instead of 2.4-2.7 s. Retrying every 50 ms (200 attempts: the
#: same 10 s before Ray gives up), 16 starts left 0.05-0.10 s at most there (docs/performance.md). A joined cluster
#: keeps its own settings (Ray refuses ``_system_config`` when joining).
LOCAL_RAY_CONFIG = {"raylet_client_connect_timeout_milliseconds": 50, "raylet_client_num_connect_attempts": 200}
#: False: Ray's own start, with both waits (``benchmarks/bench_startup.py --as-before start``)
ENABLED = True
#: how long :func:`get_node_soon` polls before it leaves the wait to Ray's own one-second tries
REGISTRATION_POLL_S = 10.0
_POLL_EVERY_S = 0.02


def _no_dashboard_process(self: Any, **_: Any) -> None:
    """``Node.start_api_server`` for a local Ray fedsec starts: no dashboard head process (see the module)."""


def get_node_soon(gcs_address: str, node_id: str, *, ask_ray: Callable[[str, str], dict[str, Any]]) -> dict[str, Any]:
    """``ask_ray`` (Ray's ``get_node``), asked once the GCS lists the node, polled every 20 ms for at most
    :data:`REGISTRATION_POLL_S`, instead of at once and then through Ray's accessor, which waits a second between
    tries."""
    import ray._private.services as services
    import ray._private.state as state

    table = state.GlobalState()
    table._initialize_global_state(services._get_gcs_client_options(gcs_address))
    try:
        deadline = time.monotonic() + REGISTRATION_POLL_S
        while time.monotonic() < deadline:
            if any(row.get("NodeID") == node_id for row in table.node_table()):
                break
            time.sleep(_POLL_EVERY_S)
    finally:
        table.disconnect()
    return ask_ray(gcs_address, node_id)


@contextmanager
def prompt_local_start() -> Iterator[None]:
    """While inside, a local Ray started in this process (``ray.init`` without an address) skips the two waits in the
    module's docstring; nothing changes when :data:`ENABLED` is False."""
    if not ENABLED:
        yield
        return
    import ray._private.node as node
    import ray._private.services as services

    get_node = functools.partial(get_node_soon, ask_ray=services.get_node)
    with swapped(node.Node, "start_api_server", _no_dashboard_process), swapped(services, "get_node", get_node):
        yield


def main() -> None:
    """Ray's command line (``python -m fedsec.runtime.ray_start start --head ...``) with a head started as
    :func:`prompt_local_start` has it: how a sweep's and a privacy study's Ray heads start
    (:func:`fedsec.studies.sweep.local_ray_head`)."""
    from ray.scripts.scripts import main as ray_command

    with prompt_local_start():
        ray_command()


if __name__ == "__main__":
    main()
