"""Run an app with uvicorn in a background thread on a free local port (tests, scenarios, benchmarks), with the
hardened HTTP protocol of the app's access policy (:mod:`.protocol`)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI

from .protocol import uvicorn_config


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalServer:
    """Context manager: ``with LocalServer(app) as url: ...`` serves ``app`` on ``url`` until the block ends
    (``http``: uvicorn's HTTP protocol, hardened by :func:`.protocol.hardened_protocol`)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 20.0,
                 http: Literal["auto", "httptools", "h11"] = "auto"):
        self.host, self.port = host, port or free_port(host)
        # log_config=None: uvicorn's default runs logging.config.dictConfig, which closes every logging handler of
        # this process (the caller's, a run's log file, absl's) for a server that is one part of a larger command
        config = uvicorn_config(app, host=self.host, port=self.port, http=http, log_level="warning", access_log=False,
                                log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{self.port}")
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self.url
            except httpx.TransportError:
                time.sleep(0.05)
        self.server.should_exit = True
        raise RuntimeError(f"server on {self.url} did not answer /health within {self.timeout} s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
