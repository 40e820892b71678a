"""The federation's input files: an availability trace (``clients.availability``) and per-client speeds
(``clients.speeds``), both small CSV files with a header, read once by the run plan.

A bad file is a :class:`~fedsec.errors.ConfigError` naming the key, the line and the reason; a file is read only up
to :data:`MAX_BYTES`, so any input costs bounded time and memory.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from fedsec.errors import ConfigError

MAX_BYTES = 64 * 1024 * 1024
"""The largest trace read (64 MiB: about 5 million rows of ``client,round,available``)."""


def _rows(key: str, path: str, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{key}={path!r}: {size} bytes, over the {MAX_BYTES} a trace may have")
        text = file.read_text(encoding="utf-8")
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}={path!r}: cannot be read ({e})") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if tuple(header) != columns:
        raise ConfigError(f"{key}={path!r}: line 1 must be the header {','.join(columns)}, got {','.join(header)!r}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise ConfigError(f"{key}={path!r}: line {line} has {len(row)} fields, expected {len(columns)}")
        rows.append((line, [cell.strip() for cell in row]))
    return rows


def _int(key: str, path: str, line: int, name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{key}={path!r}: line {line}: {name} {text!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{key}={path!r}: line {line}: {name} {value} is outside {low}..{high}")
    return value


def read_availability(path: str, *, num_clients: int, rounds: int) -> frozenset[tuple[int, int]]:
    """The (round, client) pairs a ``client,round,available`` trace marks unavailable (available = 0).

    Clients are partition ids 0..num_clients-1 and rounds 1..rounds; a pair listed twice must agree."""
    key = "clients.availability"
    seen: dict[tuple[int, int], int] = {}
    for line, (c, r, a) in _rows(key, path, ("client", "round", "available")):
        client = _int(key, path, line, "client", c, 0, num_clients - 1)
        server_round = _int(key, path, line, "round", r, 1, rounds)
        available = _int(key, path, line, "available", a, 0, 1)
        if seen.setdefault((server_round, client), available) != available:
            raise ConfigError(f"{key}={path!r}: line {line}: client {client} in round {server_round} is listed both "
                              "available and unavailable")
    return frozenset(pair for pair, available in seen.items() if not available)


def read_speeds(path: str, *, num_clients: int) -> dict[int, float]:
    """Client -> examples per simulated second, from a ``client,speed`` file (each client at most once)."""
    key = "clients.speeds"
    speeds: dict[int, float] = {}
    for line, (c, s) in _rows(key, path, ("client", "speed")):
        client = _int(key, path, line, "client", c, 0, num_clients - 1)
        try:
            speed = float(s)
        except ValueError:
            raise ConfigError(f"{key}={path!r}: line {line}: speed {s!r} is not a number") from None
        if not (math.isfinite(speed) and 0 < speed <= 1e9):
            raise ConfigError(f"{key}={path!r}: line {line}: speed {speed!r} must be in (0, 1e9]")
        if client in speeds:
            raise ConfigError(f"{key}={path!r}: line {line}: client {client} is listed twice")
        speeds[client] = speed
    return speeds
