"""One of fedsec's classes in place of one Flower's simulation engine looks up by module attribute, while one
``run_simulation`` runs.

Why: Flower 1.42 has no setting for either place fedsec needs: ``vce_api`` takes ``RayBackend`` by name from
``flwr.server.superlink.fleet.vce.backend.raybackend`` when the engine starts (fedsec's
:func:`fedsec.runtime.warm_actors.kept_actors` puts its backend there) and builds its message queues from the name
``Queue`` it imported (:func:`fedsec.runtime.engine_queues.prompt_engine_queues`). :func:`swapped` sets the
attribute and puts the original back on any exit; one re-entrant lock keeps two runs in threads of one process from
swapping at once, while one run nests both swaps.
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
def swapped(module: ModuleType, name: str, value: Any) -> Iterator[None]:
    """While inside, ``module.name`` is ``value``; the original afterwards."""
    with _LOCK:
        original = getattr(module, name)
        setattr(module, name, value)
        try:
            yield
        finally:
            setattr(module, name, original)
