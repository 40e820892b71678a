"""Reading and checking a ``/predict`` body: size and time bounds while it streams, then a strict JSON parse.

:func:`read_body` runs after authentication (an unauthenticated request never has its body read): it refuses a
declared ``Content-Length`` above the limit before reading a byte (413), counts bytes while a chunked body streams
(413 at the first byte over), and stops at the body deadline (408). :func:`parse_inputs` then checks, in order:
the number of values against ``max_batch_size`` by counting separators before parsing (413); JSON with no
duplicate keys and no ``NaN``/``Infinity`` literals (422); exactly one key, ``inputs``; no ``true``/``false``/
``null`` where numbers belong (422); a rectangular array of ``max_batch_size`` inputs or fewer of the model's
shape; finite in float32; inside the input range (422).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import anyio
import numpy as np
import torch
from starlette.requests import ClientDisconnect, Request

from .errors import BadInput, ServingError
from .limits import RequestLimits

_LITERAL = re.compile(rb"\b(true|false|null)\b")


async def read_body(request: Request, limits: RequestLimits, *, started: float) -> bytes:
    """The request body, read within ``limits`` (413 too large, 408 too slow); ``started`` is ``time.monotonic()``
    when the request's headers were complete."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_body_bytes:
        raise BadInput(f"body: Content-Length {int(declared)} exceeds limits.max_body_bytes={limits.max_body_bytes}; "
                       "send fewer inputs per request", status=413, decision="body_too_large")
    chunks, size = [], 0
    remaining = limits.body_timeout - (time.monotonic() - started)
    try:
        with anyio.fail_after(max(remaining, 0.0)):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise BadInput(f"body: more than limits.max_body_bytes={limits.max_body_bytes} bytes; send fewer "
                                   "inputs per request", status=413, decision="body_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ServingError(f"body: not received within limits.body_timeout={limits.body_timeout:g} s "
                           f"({size} bytes arrived)", status=408, decision="body_timeout") from None
    except ClientDisconnect:
        raise ServingError("body: client disconnected before sending it all", status=400,
                           decision="client_disconnected") from None
    return b"".join(chunks)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _no_constants(name: str) -> float:
    raise BadInput(f"inputs: {name} is not a finite number; send finite values")


def _structure(shape: tuple[int, ...]) -> tuple[int, int]:
    """(values per input, arrays per input when nested as ``shape``)."""
    flat = math.prod(shape)
    arrays = sum(math.prod(shape[:k]) for k in range(len(shape)))
    return flat, max(arrays, 1)


def parse_inputs(body: bytes, input_shape: tuple[int, ...], limits: RequestLimits) -> torch.Tensor:
    """The batch in ``body`` as a float32 tensor (n, *input_shape); raises :class:`BadInput` (422 or 413)."""
    flat, arrays = _structure(tuple(input_shape))
    m = limits.max_batch_size
    values = body.count(b",") + 1  # a valid body's numbers are separated by exactly its commas
    if values > m * flat:
        raise BadInput(f"inputs: the body holds up to {values} values, more than max_batch_size={m} inputs of "
                       f"{flat} values; split it", status=413, decision="batch_too_large")
    if body.count(b"[") > 1 + m * arrays:
        raise BadInput(f"inputs: more nested arrays than max_batch_size={m} inputs of shape {list(input_shape)} "
                       "can hold")
    if not body.strip():
        raise BadInput('body: empty; send {"inputs": [...]}')
    try:
        raw = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except BadInput:
        raise
    except _DuplicateKey as e:
        raise BadInput(f"body: duplicate key {str(e)!r}; send each key once") from None
    except RecursionError:
        raise BadInput("body: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int literals over 4300 digits
        raise BadInput(f"body: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(raw, dict) or list(raw) != ["inputs"]:
        got = sorted(raw)[:5] if isinstance(raw, dict) else type(raw).__name__
        raise BadInput(f'body: must be a JSON object with the single key "inputs", got {got}')
    inputs = raw["inputs"]
    if not isinstance(inputs, list):
        raise BadInput(f"inputs: must be a list of inputs, got {type(inputs).__name__}")
    if not inputs:
        raise BadInput("inputs: empty batch; send at least one input")
    if len(inputs) > m:
        raise BadInput(f"inputs: batch of {len(inputs)} exceeds max_batch_size={m}; split it", status=413,
                       decision="batch_too_large")
    # a valid body's only letters are the key's and exponents': "r" or "l" means true, false or null (memchr-fast)
    literal = _LITERAL.search(body) if b"r" in body or b"l" in body else None
    if literal and literal.group(1) == b"null":
        raise BadInput("inputs: null is not a number; send numbers only")
    if literal:
        raise BadInput(f"inputs: JSON booleans are not numbers (found {literal.group(1).decode()!r}); send 0 or 1")
    return _to_tensor(inputs, tuple(input_shape), limits)


def _to_tensor(inputs: list[Any], shape: tuple[int, ...], limits: RequestLimits) -> torch.Tensor:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(inputs, dtype=np.float32)  # beyond float32's +-3.4e38 becomes inf, refused below
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"inputs: must be a rectangular array of numbers ({str(e)[:200]})") from None
    flat = math.prod(shape)
    if arr.ndim >= 1 and arr.shape[1:] == (flat,) and shape != (flat,):
        arr = arr.reshape(arr.shape[0], *shape)
    if arr.shape[1:] != shape:
        raise BadInput(f"inputs: each input must have shape {list(shape)} (or {flat} numbers), got "
                       f"{list(arr.shape[1:])}")
    if not np.isfinite(arr).all():
        raise BadInput("inputs: NaN or infinite values are not allowed (nor values beyond float32's +-3.4e38)")
    if limits.input_range is not None:
        lo, hi = limits.input_range
        below, above = float(arr.min()), float(arr.max())
        if below < lo or above > hi:
            raise BadInput(f"inputs: values must lie in [{lo:g}, {hi:g}] (the input range, limits.input_range = "
                           f"{limits.range_source!r}); got min {below:.6g}, max {above:.6g}")
    return torch.from_numpy(arr)
