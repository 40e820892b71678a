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

Flower's engine builds its pool from :class:`ClientActor` through fedsec's backend
(:func:`fedsec.runtime.warm_actors.warm_backend_class`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import ray
from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError

__all__ = ["ClientActor"]

logger = logging.getLogger(__name__)


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
