"""FastAPI app serving a :class:`ServedModel` behind an access policy, a query monitor (PRADA or the extraction
warning) and a query log.

Layout as in FastAPI's "bigger applications": a router per concern (``/health``, ``/predict``), dependencies for
authentication, rate limiting and the body, and exception handlers that turn fedsec's :class:`ServingError` and
Starlette's HTTP errors into a 4xx JSON ``{"detail": reason, "decision": tag}``. Every request, whatever its path,
method or status, is written to the query log by :class:`.middleware.RequestLogMiddleware`.

``/predict`` checks, in order, before reading a byte of the body: the key (401/403), the rate limit (429), the
permission and the monitor's block (403), the declared ``Content-Length`` (413); then it reads the body within
``limits.max_body_bytes`` and ``limits.body_timeout`` (413, 408) and parses it strictly (:mod:`.inputs`: 413 for
too many inputs, 422 for malformed JSON, duplicate keys, booleans, non-finite values, values outside the input
range, a wrong shape); the quota (429) is charged only for inputs the model answered with finite outputs.
A response sent before the body was read closes the connection (the body is never drained).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedsec.results.model_file import ServedModel

from .access import AccessController, AccessPolicy, Caller
from .errors import BadInput, Forbidden, PolicyError, ServingError
from .extraction_warning import ExtractionWarningMonitor
from .inputs import parse_inputs, read_body
from .limits import RequestLimits
from .middleware import STARTED, RequestLogMiddleware
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
    limits: RequestLimits


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


def may_predict(request: Request, caller: Annotated[Caller, Depends(rate_limited)]) -> Caller:
    """Dependency: the role may predict and the monitor has not blocked the client (403)."""
    st = _state(request)
    AccessController.require(caller, "predict")
    if st.monitor_mode == "block" and st.monitor is not None and st.monitor.is_flagged(caller.client_id):
        raise Forbidden(f"client {caller.client_id!r} is blocked: query stream flagged by the "
                        f"{st.monitor.name} monitor", decision="blocked_by_monitor")
    return caller


async def predict_body(request: Request, caller: Annotated[Caller, Depends(may_predict)]) -> bytes:
    """Dependency: the raw body, read only after the caller passed :func:`may_predict` (413/408 past the limits)."""
    started = request.scope.get("state", {}).get(STARTED, time.monotonic())
    return await read_body(request, _state(request).limits, started=started)


health_router = APIRouter(tags=["health"])
predict_router = APIRouter(tags=["predict"])
_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": PredictRequest.model_json_schema()}}}}


@health_router.get("/health", response_model=HealthResponse)
def health(request: Request) -> HealthResponse:
    m = _state(request).model
    return HealthResponse(
        status="ok", model=m.model_name, dataset=m.dataset, server_round=m.server_round,
        input_shape=list(m.input_shape), num_classes=m.num_classes,
    )


@predict_router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
                     openapi_extra=_PREDICT_BODY)
def predict(
    request: Request, caller: Annotated[Caller, Depends(may_predict)], body: Annotated[bytes, Depends(predict_body)]
) -> PredictResponse:
    st = _state(request)
    x = parse_inputs(body, st.model.input_shape, st.limits)
    request.state.batch_size = x.shape[0]
    probs = st.model.probabilities(x)
    if not torch.isfinite(probs).all():
        raise BadInput("inputs: the model's output is not finite for these inputs; send values in its input range")
    st.access.charge(caller, x.shape[0])
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
    request.state.decision = "allowed"
    return out


def _refusal(request: Request, status: int, decision: str, reason: str,
             headers: dict[str, str] | None = None) -> JSONResponse:
    request.state.decision, request.state.reason = decision, reason
    return JSONResponse({"detail": reason, "decision": decision}, status_code=status, headers=headers)


async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return _refusal(request, exc.status, exc.decision, exc.reason)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    reason = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return _refusal(request, 422, "bad_input", reason)


_HTTP_DECISIONS = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    decision = _HTTP_DECISIONS.get(exc.status_code, f"http_{exc.status_code}")
    if exc.status_code == 404:
        reason = f"no route {request.url.path[:200]!r}; use POST /predict or GET /health"
    elif exc.status_code == 405:
        reason = f"method {request.method} not allowed on {request.url.path}; allowed: {exc.headers.get('Allow', '')}"
    else:
        reason = str(exc.detail)
    return _refusal(request, exc.status_code, decision, reason, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)  # logged to the query log by the middleware
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
    docs = policy.docs if policy.docs != "auto" else ("off" if policy.require_key else "open")
    open_docs = docs == "open"
    app = FastAPI(title="fedsec model server", version="1", docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None, openapi_url="/openapi.json" if open_docs else None)
    query_log = query_log if query_log is not None else QueryLog(None)
    limits = policy.limits.resolve(model, max_batch_size=policy.max_batch_size)
    app.state.fedsec = ServingState(
        model=model, access=AccessController(policy), monitor=monitor, monitor_mode=mode, query_log=query_log,
        limits=limits,
    )
    app.include_router(health_router)
    app.include_router(predict_router)
    if docs == "key":
        @app.get("/openapi.json", include_in_schema=False)
        def openapi(caller: Annotated[Caller, Depends(authenticate)]) -> dict[str, Any]:
            return app.openapi()

    app.add_middleware(RequestLogMiddleware, query_log=query_log)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    log.info("serving %s (%s, round %d): require_key=%s, monitor=%s, %d keys, %d roles, docs=%s, max_batch_size=%d, "
             "max_body_bytes=%d, input_range=%s, limits=%s", model.model_name, model.dataset, model.server_round,
             policy.require_key, mode, len(policy.keys), len(policy.roles), docs, policy.max_batch_size,
             limits.max_body_bytes, limits.input_range, policy.limits.model_dump())
    return app
