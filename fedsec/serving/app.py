"""FastAPI app serving a :class:`ServedModel` behind an access policy, a query monitor (PRADA or the extraction
warning) and a query log.

Layout as in FastAPI's "bigger applications": a router per concern (``/health``, ``/predict``), dependencies for
authentication and rate limiting, pydantic bodies, and one exception handler that turns fedsec's
:class:`ServingError` (and request-validation errors) into a 4xx JSON ``{"detail": reason}`` and a query-log line.

Statuses: 401 no/invalid key; 403 expired/revoked key, missing permission, or client blocked by the monitor;
413 batch larger than ``max_batch_size``; 422 malformed body (not JSON, wrong types, wrong shape, NaN/inf);
429 quota or rate limit exceeded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from fedsec.results.model_file import ServedModel

from .access import AccessController, AccessPolicy, Caller
from .errors import BadInput, Forbidden, PolicyError, ServingError
from .extraction_warning import ExtractionWarningMonitor
from .monitor import PradaMonitor
from .querylog import QueryLog

log = logging.getLogger(__name__)
API_KEY_HEADER = "X-API-Key"


@dataclass
class ServingState:
    model: ServedModel
    access: AccessController
    monitor: PradaMonitor | ExtractionWarningMonitor | None
    monitor_mode: str
    query_log: QueryLog


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(description="batch of inputs, shape (n, *input_shape) or (n, prod(input_shape))")


class PredictResponse(BaseModel):
    output: str = Field(description="probabilities | label | rounded: what the caller's role gets")
    labels: list[int]
    probabilities: list[list[float]] | None = None


class HealthResponse(BaseModel):
    status: str
    model: str
    dataset: str
    server_round: int
    input_shape: list[int]
    num_classes: int


def _state(request: Request) -> ServingState:
    return request.app.state.fedsec


_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def authenticate(request: Request, key: Annotated[str | None, Depends(_key_header)]) -> Caller:
    """Dependency: the caller for the request's API key (401/403 otherwise)."""
    host = request.client.host if request.client else "unknown"
    caller = _state(request).access.authenticate(key, host=host)
    request.state.caller = caller
    return caller


def rate_limited(request: Request, caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
    """Dependency: applies the key's token bucket (429 when empty)."""
    _state(request).access.rate_limit(caller)
    return caller


def to_batch(inputs: list[Any], model: ServedModel, *, max_batch_size: int) -> torch.Tensor:
    """Validate a JSON batch and return it as a float32 tensor (n, *input_shape); raises :class:`BadInput`."""
    if len(inputs) == 0:
        raise BadInput("inputs: empty batch; send at least one input")
    if len(inputs) > max_batch_size:
        raise BadInput(
            f"inputs: batch of {len(inputs)} exceeds max_batch_size={max_batch_size}; split it",
            status=413, decision="batch_too_large",
        )
    try:
        arr = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"inputs: must be a rectangular array of numbers ({e})") from e
    shape = tuple(model.input_shape)
    flat = int(np.prod(shape))
    if arr.shape[1:] == (flat,) and shape != (flat,):
        arr = arr.reshape(arr.shape[0], *shape)
    if arr.shape[1:] != shape:
        got = list(arr.shape[1:])
        raise BadInput(f"inputs: each input must have shape {list(shape)} (or {flat} numbers), got {got}")
    if not np.isfinite(arr).all():
        raise BadInput("inputs: NaN or infinite values are not allowed")
    return torch.from_numpy(arr)


health_router = APIRouter(tags=["health"])
predict_router = APIRouter(tags=["predict"])


@health_router.get("/health", response_model=HealthResponse)
def health(request: Request) -> HealthResponse:
    m = _state(request).model
    return HealthResponse(
        status="ok", model=m.model_name, dataset=m.dataset, server_round=m.server_round,
        input_shape=list(m.input_shape), num_classes=m.num_classes,
    )


@predict_router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
def predict(
    body: PredictRequest, request: Request, caller: Annotated[Caller, Depends(rate_limited)]
) -> PredictResponse:
    st = _state(request)
    request.state.batch_size = len(body.inputs)
    AccessController.require(caller, "predict")
    if st.monitor_mode == "block" and st.monitor is not None and st.monitor.is_flagged(caller.client_id):
        raise Forbidden(f"client {caller.client_id!r} is blocked: query stream flagged by the "
                        f"{st.monitor.name} monitor", decision="blocked_by_monitor")
    x = to_batch(body.inputs, st.model, max_batch_size=st.access.policy.max_batch_size)
    st.access.charge(caller, x.shape[0])
    probs = st.model.probabilities(x)
    labels = probs.argmax(dim=1)
    score, flagged = None, False
    if st.monitor is not None and st.monitor_mode != "off":
        verdict = st.monitor.observe(caller.client_id, x, labels)
        score, flagged = verdict.score, verdict.flagged
        request.state.monitor = (score, flagged)
        if flagged and st.monitor_mode == "block":
            raise Forbidden(f"client {caller.client_id!r} is blocked: query stream flagged by the "
                            f"{st.monitor.name} monitor (score {score:.3f})", decision="blocked_by_monitor")
    role = caller.role
    out = PredictResponse(output=role.output, labels=labels.tolist())
    if role.output == "probabilities":
        out.probabilities = probs.tolist()
    elif role.output == "rounded":
        out.probabilities = np.round(probs.numpy(), role.decimals).tolist()
    st.query_log.write(
        key_id=caller.key_id, client=caller.client_id, role=caller.role_name, decision="allowed", status=200,
        batch_size=x.shape[0], monitor_score=score, flagged=flagged,
    )
    return out


def _log_refusal(request: Request, status: int, decision: str, reason: str) -> None:
    caller: Caller | None = getattr(request.state, "caller", None)
    score, flagged = getattr(request.state, "monitor", (None, False))
    st = _state(request)
    batch = getattr(request.state, "batch_size", 0)
    st.query_log.write(
        key_id=caller.key_id if caller else "-", client=caller.client_id if caller else "-",
        role=caller.role_name if caller else "-", decision=decision, status=status, reason=reason,
        batch_size=batch, monitor_score=score, flagged=flagged, path=request.url.path,
    )
    log.info("refused %s %s: %d %s (%s)", request.method, request.url.path, status, decision, reason)


async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    _log_refusal(request, exc.status, exc.decision, exc.reason)
    return JSONResponse({"detail": exc.reason, "decision": exc.decision}, status_code=exc.status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    reason = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    _log_refusal(request, 422, "bad_input", reason)
    return JSONResponse({"detail": reason, "decision": "bad_input"}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    _log_refusal(request, 500, "server_error", type(exc).__name__)
    return JSONResponse({"detail": "internal error", "decision": "server_error"}, status_code=500)


def build_monitor(model: ServedModel, policy: AccessPolicy) -> PradaMonitor | ExtractionWarningMonitor:
    """The monitor of ``policy.monitor``: PRADA, or the extraction warning scored on ``validation_size`` test
    inputs of the model's dataset (drawn with seed 0) labelled by the served model."""
    m = policy.monitor
    if m.kind == "prada":
        return PradaMonitor(delta=m.delta, min_queries=m.min_queries or 100)
    from .reference import raw_dataset

    try:
        x_test = raw_dataset(model.dataset)[2]
    except ValueError as e:
        raise PolicyError(f"monitor.kind='extraction_warning': no validation inputs for dataset "
                          f"{model.dataset!r} ({e})") from None
    pick = np.random.default_rng(0).permutation(len(x_test))[: m.validation_size]
    validation = torch.from_numpy(x_test[pick]).reshape(len(pick), *model.input_shape)
    served = model.probabilities(validation).argmax(dim=1)
    return ExtractionWarningMonitor(validation, served, threshold=m.threshold, min_queries=m.min_queries or 200,
                                    check_every=m.check_every, num_classes=model.num_classes)


def create_app(
    model: ServedModel,
    policy: AccessPolicy,
    *,
    monitor: PradaMonitor | ExtractionWarningMonitor | None = None,
    query_log: QueryLog | None = None,
) -> FastAPI:
    """The FastAPI app; ``monitor`` defaults to the one ``policy.monitor`` describes (:func:`build_monitor`)."""
    mode = policy.monitor.mode
    if monitor is None and mode != "off":
        monitor = build_monitor(model, policy)
    app = FastAPI(title="fedsec model server", version="1")
    app.state.fedsec = ServingState(
        model=model, access=AccessController(policy), monitor=monitor, monitor_mode=mode,
        query_log=query_log if query_log is not None else QueryLog(None),
    )
    app.include_router(health_router)
    app.include_router(predict_router)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    log.info("serving %s (%s, round %d): require_key=%s, monitor=%s, %d keys, %d roles", model.model_name,
             model.dataset, model.server_round, policy.require_key, mode, len(policy.keys), len(policy.roles))
    return app
