"""Append-only query log: one JSON object per line (JSONL).

JSONL rather than SQLite: a line per request is written with one ``write`` on a file opened in append mode
(``O_APPEND``), so entries are never rewritten, several servers can share a file, ``tail -f``/pandas read it
directly, and there is no schema to migrate. Fields: ``time`` (UNIX seconds), ``key_id`` (never the key),
``client`` (key id or anonymous@host), ``role``, ``decision``, ``status``, ``reason``, ``monitor_score`` (PRADA's
W or null), ``flagged``, ``batch_size``, ``path``, ``method``, ``host`` (the client's address) and ``seconds``
(time in the app). Every HTTP request gets a line (:mod:`.middleware`), and so does a connection the HTTP
protocol refuses before a request exists (:mod:`.protocol`: header timeout or size, connection limit; ``path`` and
``method`` are then ``"-"``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class QueryLog:
    """Thread-safe JSONL appender; ``path=None`` keeps entries in memory only (``entries``)."""

    def __init__(self, path: str | Path | None = None, *, keep_in_memory: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.keep_in_memory = keep_in_memory or path is None
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the log

    def write(
        self,
        *,
        key_id: str,
        client: str,
        role: str,
        decision: str,
        status: int,
        batch_size: int,
        reason: str = "",
        monitor_score: float | None = None,
        flagged: bool = False,
        path: str = "/predict",
        method: str = "POST",
        host: str = "-",
        seconds: float | None = None,
    ) -> dict[str, Any]:
        entry = {
            "time": round(time.time(), 6),
            "key_id": key_id,
            "client": client,
            "role": role,
            "decision": decision,
            "status": status,
            "reason": reason,
            "monitor_score": monitor_score,
            "flagged": flagged,
            "batch_size": batch_size,
            "path": path,
            "method": method,
            "host": host,
            "seconds": seconds,
        }
        line = json.dumps(entry) + "\n"
        with self._lock:
            if self._fh is not None:
                self._fh.write(line)
            if self.keep_in_memory:
                self.entries.append(entry)
        return entry

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_query_log(path: str | Path) -> list[dict[str, Any]]:
    """All entries of a JSONL query log (skips a torn last line)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
