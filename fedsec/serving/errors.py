"""Errors of the serving side; each carries the HTTP status the app answers with and a reason a caller can act on."""

from __future__ import annotations

from fedsec.errors import FedsecInputError
from fedsec.results.model_file import ModelFileError

__all__ = ["BadInput", "Forbidden", "ModelFileError", "PolicyError", "ServingError", "TooManyRequests",
           "Unauthenticated"]


class ServingError(FedsecInputError):
    """Base class: bad input or a refused request. ``status`` is the HTTP status, ``decision`` a short log tag."""

    status: int = 400
    decision: str = "bad_request"

    def __init__(self, reason: str, *, status: int | None = None, decision: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        if decision is not None:
            self.decision = decision


class PolicyError(ServingError):
    """An access policy file (ACCESS.toml) is invalid."""

    decision = "policy"


class BadInput(ServingError):
    """A request body the model cannot take (wrong shape, not finite, batch too large, wrong types)."""

    status = 422
    decision = "bad_input"


class Unauthenticated(ServingError):
    """No API key, or a key that matches no stored hash (401)."""

    status = 401
    decision = "unauthenticated"


class Forbidden(ServingError):
    """A known key that may not do this: expired, revoked, missing permission, or blocked by the monitor (403)."""

    status = 403
    decision = "forbidden"


class TooManyRequests(ServingError):
    """Quota or rate limit exceeded (429)."""

    status = 429
    decision = "rate_limited"
