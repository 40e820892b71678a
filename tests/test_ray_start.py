"""fedsec/runtime/ray_start.py: the two names of Ray's start it swaps exist in the pinned Ray, the swaps last only
while inside, and the registration poll asks Ray once the node is listed (a local Ray started that way:
tests/test_local_ray.py)."""

from __future__ import annotations

import functools

import pytest
import ray._private.node
import ray._private.services
import ray._private.state

from fedsec.runtime import ray_start


def test_the_names_it_swaps_are_rays():
    # Ray is pinned through flwr[simulation]; a Ray that renames these would start with both waits again
    assert callable(ray._private.node.Node.start_api_server)
    assert callable(ray._private.services.get_node)
    assert callable(ray._private.services._get_gcs_client_options)
    assert callable(ray._private.state.GlobalState.node_table)


def test_swaps_last_only_while_inside_even_on_failure():
    start_api_server, get_node = ray._private.node.Node.start_api_server, ray._private.services.get_node
    with pytest.raises(RuntimeError, match="boom"):
        with ray_start.prompt_local_start():
            assert ray._private.node.Node.start_api_server is ray_start._no_dashboard_process
            swapped = ray._private.services.get_node
            assert isinstance(swapped, functools.partial) and swapped.keywords["ask_ray"] is get_node
            raise RuntimeError("boom")
    assert ray._private.node.Node.start_api_server is start_api_server
    assert ray._private.services.get_node is get_node


def test_disabled_leaves_rays_start_alone(monkeypatch):
    monkeypatch.setattr(ray_start, "ENABLED", False)
    start_api_server = ray._private.node.Node.start_api_server
    with ray_start.prompt_local_start():
        assert ray._private.node.Node.start_api_server is start_api_server


def test_an_unlisted_node_is_left_to_ray_after_the_poll(monkeypatch):
    tables: list[int] = []

    class Table:  # the GCS's node table as Ray's GlobalState reads it; the node never appears in it
        def _initialize_global_state(self, options):
            pass

        def node_table(self):
            tables.append(1)
            return [{"NodeID": "other"}]

        def disconnect(self):
            tables.append(0)

    monkeypatch.setattr(ray._private.state, "GlobalState", Table)
    monkeypatch.setattr(ray._private.services, "_get_gcs_client_options", lambda address: address)
    monkeypatch.setattr(ray_start, "REGISTRATION_POLL_S", 0.1)
    asked = []
    got = ray_start.get_node_soon("127.0.0.1:1", "abc", ask_ray=lambda *a: asked.append(a) or "ray's answer")
    assert got == "ray's answer" and asked == [("127.0.0.1:1", "abc")]
    assert tables.count(1) >= 2 and tables[-1] == 0  # polled more than once, then disconnected
