"""One of fedsec's objects in place of one that Flower's simulation engine or Ray's start looks up by attribute, while
one ``run_simulation`` or one local ``ray.init`` runs.

Why: Flower 1.42 and Ray 2.55 have no setting for the places fedsec needs: ``vce_api`` takes ``RayBackend`` by name
from ``flwr.server.superlink.fleet.vce.backend.raybackend`` when the engine starts (fedsec's
:func:`fedsec.runtime.warm_actors.kept_actors` puts its backend there) and builds its message queues from the name
``Queue`` it imported (:func:`fedsec.runtime.engine_queues.prompt_engine_queues`); Ray's ``Node`` starts the
dashboard's process and waits for the raylet through two names (:func:`fedsec.runtime.ray_start.prompt_local_start`).
:func:`swapped` sets the attribute and puts the original back on any exit; one re-entrant lock keeps two runs in
threads of one process from swapping at once, while one run nests its swaps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

__all__ = ["swapped"]

_LOCK = threading.RLock()


@contextmanager
def swapped(module: ModuleType | type, name: str, value: Any) -> Iterator[None]:
    """While inside, ``module.name`` is ``value``; the original afterwards."""
    with _LOCK:
        original = getattr(module, name)
        setattr(module, name, value)
        try:
            yield
        finally:
            setattr(module, name, original)
