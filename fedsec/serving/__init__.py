"""Serving the final global model: model file, FastAPI app, access control, request limits, PRADA monitor, query
log, scenarios."""

from fedsec.results.model_file import ServedModel, load_final_model, save_final_model

from .access import AccessController, AccessPolicy, Caller, Role, hash_key, make_key, verify_key
from .app import create_app
from .errors import BadInput, Forbidden, ModelFileError, PolicyError, ServingError, TooManyRequests, Unauthenticated
from .limits import LimitSettings
from .local import LocalServer, free_port
from .monitor import PradaMonitor, prada_min_distances
from .protocol import hardened_protocol, uvicorn_config
from .querylog import QueryLog, read_query_log

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
