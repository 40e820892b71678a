"""Serving the final global model: model file, FastAPI app, access control, request limits, PRADA monitor, query
log, scenarios.

The names below load on first use (PEP 562), so ``fedsec.serving.cli`` (the ``fedsec serve`` and ``fedsec attack``
commands) can be imported when the CLI starts without importing torch, FastAPI or uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsec.results.model_file import ServedModel, load_final_model, save_final_model

    from .access import AccessController, AccessPolicy, Caller, Role, hash_key, make_key, verify_key
    from .app import create_app
    from .errors import (
        BadInput,
        Forbidden,
        ModelFileError,
        PolicyError,
        ServingError,
        TooManyRequests,
        Unauthenticated,
    )
    from .limits import LimitSettings
    from .local import LocalServer, free_port
    from .monitor import PradaMonitor, prada_min_distances
    from .protocol import hardened_protocol, uvicorn_config
    from .querylog import QueryLog, read_query_log

_WHERE = {
    "fedsec.results.model_file": ("ServedModel", "load_final_model", "save_final_model"),
    ".access": ("AccessController", "AccessPolicy", "Caller", "Role", "hash_key", "make_key", "verify_key"),
    ".app": ("create_app",),
    ".errors": ("BadInput", "Forbidden", "ModelFileError", "PolicyError", "ServingError", "TooManyRequests",
                "Unauthenticated"),
    ".limits": ("LimitSettings",),
    ".local": ("LocalServer", "free_port"),
    ".monitor": ("PradaMonitor", "prada_min_distances"),
    ".protocol": ("hardened_protocol", "uvicorn_config"),
    ".querylog": ("QueryLog", "read_query_log"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = [
    "AccessController",
    "AccessPolicy",
    "BadInput",
    "Caller",
    "Forbidden",
    "LimitSettings",
    "LocalServer",
    "ModelFileError",
    "PolicyError",
    "PradaMonitor",
    "QueryLog",
    "Role",
    "ServedModel",
    "ServingError",
    "TooManyRequests",
    "Unauthenticated",
    "create_app",
    "free_port",
    "hardened_protocol",
    "hash_key",
    "load_final_model",
    "make_key",
    "prada_min_distances",
    "read_query_log",
    "save_final_model",
    "uvicorn_config",
    "verify_key",
]
