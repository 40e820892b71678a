"""Client actors kept warm from one run to the next in a process that runs many runs (a sweep's cell worker, a
privacy study): Flower's simulation engine gets the actors the previous run used instead of starting new ones.

Why: Flower 1.42's engine (``flwr/server/superlink/fleet/vce/vce_api.py``) builds a ``RayBackend`` for every
``run_simulation``; its ``BasicActorPool`` starts fresh actors (each a new process that imports torch, Flower and
fedsec, about 8 s of a small digits cell's round 0 on this project's 2-core machine) and its ``terminate()`` kills
them and shuts Ray down. A client actor holds nothing of a run between messages (``ClientActor.run`` loads the
ClientApp the message came with); what fedsec's clients cache per process is keyed by what it is computed from
(the data's object ref, the config's JSON, the model's shape), so a kept actor serves the next run as a fresh one
would (``tests/test_warm_actors.py`` compares the rows).

:func:`kept_actors` puts ``WarmRayBackend`` in place of Flower's ``RayBackend`` while one ``run_simulation`` runs.
Every run of :func:`fedsec.runtime.runner.run_experiment` uses it: a lone run starts its actors with
:func:`start_actors` right after Ray and ends them with Ray; runs inside
:func:`fedsec.runtime.runner.one_ray_for_many_runs` keep them for the next run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["kept_actors", "kept_actor_count", "release_kept_actors", "start_actors", "warm_backend_class"]

logger = logging.getLogger(__name__)

#: the actors kept in this process, by the client resources they were started with
_KEPT: dict[tuple[tuple[str, float], ...], list[Any]] = {}
#: how long ``build`` waits for a kept actor to answer (one started by :func:`start_actors` may still be importing)
_ALIVE_TIMEOUT_S = 120.0


def _key(client_resources: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in client_resources.items()))


def start_actors(client_resources: dict[str, float], *, preload: tuple[str, ...] = ()) -> int:
    """Start the client actors the next run on this Ray takes (as many as the cluster fits, each with
    ``client_resources``), each importing ``preload`` at once; returns how many there are.

    Why: Flower's engine starts its actors when the simulation starts, and each imports torch and fedsec's client
    with its first message, after the driver has put the data in the object store and built the server; started
    right after Ray, they import while the driver does that (a lone digits smoke run reaches round 0 sooner,
    ``benchmarks/bench_startup.py``). Actors kept with these resources are used as they are; kept ones of other
    resources are ended (they hold the CPUs)."""
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    from .client_actor import ClientActor

    key = _key(client_resources)
    _end_actors_other_than(key)
    if key not in _KEPT:
        count = pool_size_from_resources(client_resources)
        _KEPT[key] = [ClientActor.options(**client_resources).remote(preload=preload) for _ in range(count)]
    return len(_KEPT[key])


def _end_actors_other_than(key: tuple[tuple[str, float], ...]) -> None:
    """Kill the kept actors started with other resources (they hold the CPUs a pool of ``key`` needs)."""
    for other in [k for k in _KEPT if k != key]:
        for actor in _KEPT.pop(other):
            _kill_quietly(actor)


def kept_actor_count() -> int:
    """How many client actors this process keeps for its next run."""
    return sum(len(actors) for actors in _KEPT.values())


def release_kept_actors() -> None:
    """Kill the kept actors (when this process leaves Ray; they die with its Ray connection anyway)."""
    import ray

    actors = [a for kept in _KEPT.values() for a in kept]
    _KEPT.clear()
    if ray.is_initialized():
        for actor in actors:
            _kill_quietly(actor)


def _all_alive(actors: list[Any]) -> bool:
    import ray

    try:
        ray.get([a.__ray_ready__.remote() for a in actors], timeout=_ALIVE_TIMEOUT_S)
        return True
    except Exception:  # noqa: BLE001 - a dead or stuck actor: the pool is started anew
        return False


@functools.cache
def warm_backend_class() -> type:
    """:class:`WarmRayBackend`, defined on first use (importing Flower's engine costs seconds)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    from .client_actor import ClientActor

    class WarmRayBackend(RayBackend):  # type: ignore[misc, valid-type]
        """Flower's ``RayBackend`` with fedsec's :class:`~fedsec.runtime.client_actor.ClientActor`, whose actor
        pool outlives the simulation: ``build`` takes the actors kept from the previous run when they are still
        alive and as many as the cluster fits now; ``terminate`` keeps them (and Ray) for the next run."""

        def build(self, app_fn: Callable[[], Any]) -> None:
            key = _key(self.client_resources)
            pool = BasicActorPool(actor_type=ClientActor, client_resources=self.client_resources,
                                  actor_kwargs=self.actor_kwargs)
            kept = _KEPT.pop(key, None)
            _end_actors_other_than(key)
            if kept is not None and len(kept) == pool.actors_capacity and _all_alive(kept):
                pool.pool = list(kept)
                pool.num_actors = len(kept)
                logger.info("reusing %d warm client actor(s)", len(kept))
            else:
                if kept is not None:  # the cluster changed or an actor died: start them anew
                    for actor in kept:
                        _kill_quietly(actor)
                pool.add_actors_to_pool(pool.actors_capacity)
            _KEPT[key] = list(pool.pool)
            self.pool = pool
            self.app_fn = app_fn

        def terminate(self) -> None:
            """Keep the actors and Ray (Flower's kills both)."""

    return WarmRayBackend


def _kill_quietly(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - already gone
        pass


@contextmanager
def kept_actors() -> Iterator[None]:
    """While inside, Flower's simulation engine builds :class:`WarmRayBackend` instead of its ``RayBackend``
    (:func:`fedsec.runtime.engine_swap.swapped`: Flower has no setting that chooses the backend class)."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from .engine_swap import swapped

    with swapped(raybackend, "RayBackend", warm_backend_class()):
        yield
