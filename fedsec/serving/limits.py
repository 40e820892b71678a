"""The ``[limits]`` section of ACCESS.toml: request size, input domain, and connection timeouts.

Each limit answers with a 4xx and a reason, is written to the query log, and leaves the server serving::

    [limits]
    max_body_bytes = 0          # 413 above; 0 = 32 bytes per number x max_batch_size x input size + 4096
    input_range = "model"       # "model" | "none" | [min, max]: 422 for values outside it
    header_timeout = 10.0       # s from connection (or first byte of a request) to complete headers: 408, closed
    body_timeout = 30.0         # s from complete headers to complete body: 408, closed
    keep_alive_timeout = 5.0    # s an idle kept-alive connection stays open
    max_header_bytes = 16384    # request line + headers: 431, closed
    max_connections = 256       # open connections: the next one gets 503 and is closed

``input_range = "model"`` derives the range from the saved model: a model saved with a normalisation, or with an
image input shape (C, H, W), takes pixels in [0, 1] (:class:`fedsec.data.datasets.DatasetSpec`); other models
(e.g. ``synthetic``'s vectors) have no known range, and only non-finite inputs and non-finite outputs are refused.
``header_timeout``, ``keep_alive_timeout``, ``max_header_bytes`` and ``max_connections`` act in the HTTP protocol
(:mod:`.protocol`, uvicorn: ``fedsec serve``); the others act in the app, under any ASGI server (Ray Serve too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsec.results.model_file import ServedModel

BYTES_PER_NUMBER = 32  # a JSON float with sign, 17 digits, exponent, separator and some whitespace


class LimitSettings(BaseModel):
    """``[limits]``: see the module docstring for each key's default and what a client sees."""

    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(0, ge=0, le=2**30, description="413 above; 0 = derived from max_batch_size and the "
                                "model's input size (32 bytes per number + 4096)")
    input_range: tuple[float, float] | Literal["model", "none"] = Field(
        "model", description="allowed input values: 'model' (from the saved model), 'none', or [min, max]")
    header_timeout: float = Field(10.0, gt=0, le=300, description="seconds to receive a request's headers")
    body_timeout: float = Field(30.0, gt=0, le=3600, description="seconds to receive a request's body")
    keep_alive_timeout: float = Field(5.0, gt=0, le=300, description="seconds an idle connection stays open")
    max_header_bytes: int = Field(16_384, ge=1024, le=2**20, description="request line + headers (431 above)")
    max_connections: int = Field(256, ge=1, le=65_536, description="open connections (503 above)")

    @field_validator("max_body_bytes")
    @classmethod
    def _body_floor(cls, v: int) -> int:
        if 0 < v < 1024:
            raise ValueError(f"max_body_bytes={v}: use 0 (derived) or at least 1024")
        return v

    @field_validator("input_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | str) -> tuple[float, float] | str:
        if isinstance(v, tuple) and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError(f"input_range={list(v)}: need finite [min, max] with min < max, e.g. [0.0, 1.0]")
        return v

    def resolve(self, model: ServedModel, *, max_batch_size: int) -> RequestLimits:
        """The limits for ``model``: derived body size and input range filled in."""
        flat = int(np.prod(model.input_shape))
        body = self.max_body_bytes or BYTES_PER_NUMBER * max_batch_size * flat + 4096
        if self.input_range == "none":
            value_range = None
        elif self.input_range == "model":
            value_range = model_input_range(model)
        else:
            value_range = (float(self.input_range[0]), float(self.input_range[1]))
        return RequestLimits(max_body_bytes=body, max_batch_size=max_batch_size, input_range=value_range,
                             body_timeout=self.body_timeout, range_source=self.input_range
                             if isinstance(self.input_range, str) else "limits.input_range")


def model_input_range(model: ServedModel) -> tuple[float, float] | None:
    """Pixels in [0, 1] for a model saved with a normalisation or with an image input shape (C, H, W); else None."""
    if model.normalisation is not None or len(model.input_shape) == 3:
        return (0.0, 1.0)
    return None


@dataclass(frozen=True)
class RequestLimits:
    """What the app checks per request (resolved for one served model)."""

    max_body_bytes: int
    max_batch_size: int
    input_range: tuple[float, float] | None
    body_timeout: float
    range_source: str = "model"
