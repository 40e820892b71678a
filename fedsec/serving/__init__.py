"""Serving the final global model: model file, FastAPI app, access control, PRADA monitor, query log, scenarios."""

from fedsec.results.model_file import ServedModel, load_final_model, save_final_model

from .access import AccessController, AccessPolicy, Caller, Role, hash_key, make_key, verify_key
from .app import create_app
from .errors import BadInput, Forbidden, ModelFileError, PolicyError, ServingError, TooManyRequests, Unauthenticated
from .local import LocalServer, free_port
from .monitor import PradaMonitor, prada_min_distances
from .querylog import QueryLog, read_query_log

__all__ = [
    "AccessController",
    "AccessPolicy",
    "BadInput",
    "Caller",
    "Forbidden",
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
    "hash_key",
    "load_final_model",
    "make_key",
    "prada_min_distances",
    "read_query_log",
    "save_final_model",
    "verify_key",
]
