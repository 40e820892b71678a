"""The Ray actor that runs fedsec's ClientApp inside Flower's simulation engine, from a module that imports only
what a client needs.

Why not Flower's own: Flower 1.42's ``ClientAppActor`` is defined in ``flwr.simulation.ray_transport.ray_actor``,
and importing that module runs ``flwr/simulation/__init__.py``, which imports the simulation app, the SuperLink's
state (SQLAlchemy, Alembic) and FastAPI: 0.6 s of CPU in every actor process on this project's 2-core machine,
before the client has imported torch, and nothing a client uses. :class:`ClientActor` does what
``ClientAppActor.run`` does (call the function the message comes with to get the ClientApp, pass the message and
its context through it, return the partition id, the reply and the context, and raise Flower's exception types so
that the engine reports a failing client as it would its own) and imports ``ray``, ``flwr.app`` and
``flwr.clientapp`` only (``tests/test_client_actor.py`` checks it in a fresh process and in a run).

:func:`client_actor_backend_class` is Flower's ``RayBackend`` building its pool from :class:`ClientActor`;
:func:`engine_backend` puts a backend class in place of Flower's while one ``run_simulation`` runs (Flower has no
setting that chooses the backend class: ``vce_api`` imports ``RayBackend`` by name when the engine starts).
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError

__all__ = ["ClientActor", "client_actor_backend_class", "engine_backend"]

logger = logging.getLogger(__name__)

_SWAP_LOCK = threading.Lock()


@ray.remote
class ClientActor:
    """One Ray actor process that runs the ClientApp for whichever client a message is for.

    Parameters
    ----------
    on_actor_init_fn : callable or None (default: None)
        Called once when the actor starts (Flower passes one for TensorFlow's GPU memory growth).
    preload : tuple of str (default: ())
        Modules to import when the actor starts, before its first message (fedsec's runner names the client's, so
        that an actor started early imports torch while the driver prepares the run). One that fails to import is
        left for the first message to report, as it would without preloading.
    """

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None, preload: tuple[str, ...] = ()) -> None:
        if on_actor_init_fn is not None:
            on_actor_init_fn()
        for module in preload:
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 - the first message imports it again and reports the error
                logger.debug("preloading %s failed: %s", module, e)

    def run(self, client_app_fn: Callable[[], ClientApp], message: Message, cid: str,
            context: Context) -> tuple[str, Message, Context]:
        """Pass ``message`` through the ClientApp ``client_app_fn`` returns; the partition id ``cid`` comes back so
        that the engine pairs the reply with its node."""
        try:
            app = client_app_fn()
            reply = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as e:  # noqa: BLE001 - the engine expects every client failure as ClientAppException
            raise ClientAppException(str(e)) from e
        return cid, reply, context

    def terminate(self) -> None:
        """End this actor (Flower's pool calls it when the simulation ends)."""
        ray.actor.exit_actor()


@functools.cache
def client_actor_backend_class() -> type:
    """Flower's ``RayBackend`` with a pool of :class:`ClientActor` (defined on first use: importing Flower's engine
    costs a second, and the actor processes never need it)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    class ClientActorBackend(RayBackend):  # type: ignore[misc, valid-type]
        """Flower's ``RayBackend``, its actors :class:`ClientActor`."""

        def new_pool(self) -> Any:
            """An empty pool sized to what the cluster fits (``actors_capacity``)."""
            return BasicActorPool(actor_type=ClientActor, client_resources=self.client_resources,
                                  actor_kwargs=self.actor_kwargs)

        def build(self, app_fn: Callable[[], ClientApp]) -> None:
            pool = self.new_pool()
            pool.add_actors_to_pool(pool.actors_capacity)
            self.pool = pool
            self.app_fn = app_fn

    return ClientActorBackend


@contextmanager
def engine_backend(backend_class: type) -> Iterator[None]:
    """While inside, Flower's simulation engine builds ``backend_class`` instead of its ``RayBackend``."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    with _SWAP_LOCK:
        original = raybackend.RayBackend
        raybackend.RayBackend = backend_class
        try:
            yield
        finally:
            raybackend.RayBackend = original
