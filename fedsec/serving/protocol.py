"""uvicorn HTTP protocol with a header deadline, a header size cap and a connection cap (slow-loris defence).

uvicorn bounds only the idle time between kept-alive requests (``timeout_keep_alive``): a client that opens a
connection and sends a request line a byte at a time, or never finishes its headers, keeps the connection for
ever (measured: 50 such connections stayed open for 60 s). :func:`hardened_protocol` subclasses uvicorn's protocol
(httptools when installed, else h11) so that:

- a request's headers must be complete within ``header_timeout`` seconds of the connection opening, or of the
  first byte of the next request on a kept-alive connection: else ``408`` and the connection is closed;
- request line + headers may not exceed ``max_header_bytes``: else ``431`` and closed (uvicorn's h11 caps
  incomplete events at 16 KiB, its httptools protocol caps nothing);
- at most ``max_connections`` connections are open: the next one gets ``503`` and is closed at once.

Each refusal with request bytes is written to the query log (``path`` ``"-"``); a connection that sent nothing
is closed silently. Body deadlines are the app's (:func:`.inputs.read_body`) so they hold under any ASGI server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from .limits import LimitSettings
from .querylog import QueryLog

log = logging.getLogger(__name__)

_PHRASES = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class HardenedProtocol(asyncio.Protocol):
    """Mixin for uvicorn's HTTP protocols: the deadlines and caps of :class:`LimitSettings` (only uses what
    uvicorn's httptools and h11 protocols share: ``cycle``, ``connections``, ``transport``, ``loop``, ``client``)."""

    limits: LimitSettings = LimitSettings()
    query_log: QueryLog | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._seen_cycle: Any = None
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too_many_connections", f"more than limits.max_connections="
                         f"{self.limits.max_connections} open connections; retry later", log_it=True)
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # first bytes of the next request on a kept-alive connection
        in_headers = self._header_timer is not None
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle  # a request's headers are complete
            self._disarm()
        elif in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, "headers_too_large", f"request line and headers exceed limits.max_header_bytes="
                             f"{self.limits.max_header_bytes}", log_it=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self._refuse(408, "header_timeout", f"request headers not complete within limits.header_timeout="
                     f"{self.limits.header_timeout:g} s", log_it=self._header_bytes > 0)

    def _refuse(self, status: int, decision: str, reason: str, *, log_it: bool) -> None:
        self._disarm()
        host = self.client[0] if self.client else "-"
        if log_it and self.query_log is not None:  # logged before the client can see the answer
            self.query_log.write(key_id="-", client="-", role="-", decision=decision, status=status, reason=reason,
                                 batch_size=0, path="-", method="-", host=host)
        log.info("refused connection from %s: %d %s (%s)", host, status, decision, reason)
        body = json.dumps({"detail": reason, "decision": decision}).encode()
        head = (f"HTTP/1.1 {status} {_PHRASES[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()


def hardened_protocol(limits: LimitSettings, query_log: QueryLog | None = None, *,
                      http: Literal["auto", "httptools", "h11"] = "auto") -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol (``auto``: httptools when installed, else h11) with :class:`HardenedProtocol`
    bound to ``limits`` and ``query_log``; pass it as ``uvicorn.Config(http=...)``."""
    base: type[asyncio.Protocol]
    if http in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        except ImportError:  # uvicorn without httptools
            if http == "httptools":
                raise
            http = "h11"
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type("FedsecHttpProtocol", (HardenedProtocol, base), {"limits": limits, "query_log": query_log})


def uvicorn_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
                   http: Literal["auto", "httptools", "h11"] = "auto", **kwargs: Any) -> uvicorn.Config:
    """uvicorn's config for a fedsec app: the hardened ``http`` protocol and keep-alive timeout of the app's policy
    (``app.state.fedsec``; defaults for any other app); ``kwargs`` go to ``uvicorn.Config``."""
    state = getattr(app.state, "fedsec", None)
    limits = state.access.policy.limits if state is not None else LimitSettings()
    query_log = state.query_log if state is not None else None
    return uvicorn.Config(app, host=host, port=port, http=hardened_protocol(limits, query_log, http=http),
                          timeout_keep_alive=limits.keep_alive_timeout, **kwargs)
