"""ASGI middleware that writes every HTTP request to the query log and closes connections whose body was left unread.

It wraps the whole app (inside Starlette's server-error layer), so 404s for unknown paths, 405s, refusals before
the body is read, 422s and 500s all get one line: the status the client saw, and the ``decision`` and ``reason``
the app left in ``scope["state"]`` (``caller``, ``decision``, ``reason``, ``batch_size``, ``monitor``); a 2xx
without a decision is logged as ``ok``. A response sent before the client's declared body was read in full
carries ``Connection: close``, so the server never reads or drains a body it refused (uvicorn closes the
connection after the response).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .querylog import QueryLog

log = logging.getLogger(__name__)
STARTED = "fedsec_started"  # scope["state"] key: time.monotonic() when the app got the request
MAX_LOGGED_PATH = 256


def _declares_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class RequestLogMiddleware:
    """Log each request once (status, decision, reason, caller, seconds) and close on an unread body."""

    def __init__(self, app: ASGIApp, *, query_log: QueryLog) -> None:
        self.app = app
        self.query_log = query_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state: dict[str, Any] = scope.setdefault("state", {})
        state[STARTED] = started
        unread = _declares_body(scope)
        status, logged = 0, False

        async def tracked_receive() -> Message:
            nonlocal unread
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                unread = False
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if unread:
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and not logged:
                logged = True  # before the last byte goes out: a client that got its answer finds it in the log
                self._write(scope, state, status, started)
            await send(message)

        try:
            await self.app(scope, tracked_receive, tracked_send)
        except Exception as e:
            if not logged:
                self._write(scope, state, 500, started, reason=type(e).__name__, decision="server_error")
            raise
        if not logged:
            self._write(scope, state, status, started)

    def _write(self, scope: Scope, state: dict[str, Any], status: int, started: float, *, reason: str = "",
               decision: str = "") -> None:
        caller = state.get("caller")
        score, flagged = state.get("monitor", (None, False))
        decision = decision or state.get("decision") or ("ok" if 200 <= status < 300 else f"http_{status}")
        client = scope.get("client")
        self.query_log.write(
            key_id=caller.key_id if caller else "-", client=caller.client_id if caller else "-",
            role=caller.role_name if caller else "-", decision=decision, status=status,
            reason=reason or state.get("reason", ""), batch_size=int(state.get("batch_size", 0)),
            monitor_score=score, flagged=flagged, path=str(scope.get("path", ""))[:MAX_LOGGED_PATH],
            method=str(scope.get("method", "")), host=client[0] if client else "-",
            seconds=round(time.monotonic() - started, 6),
        )
        if status >= 400:
            log.info("refused %s %s: %d %s (%s)", scope.get("method"), scope.get("path"), status, decision,
                     state.get("reason", ""))
