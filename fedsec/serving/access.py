"""Access control for the served model: API keys, roles, output modes, quotas, rate limits, expiry, revocation.

Keys look like ``fsk.<key id>.<secret>``: the key id is public (it names the key in logs), the secret is 32 random
bytes (``secrets.token_urlsafe``). Only ``sha256(salt || key)`` is stored, with a per-key random salt, and it is
compared with ``hmac.compare_digest``. A fast salted hash suffices because the keys carry 256 bits of entropy;
slow hashes (scrypt, PBKDF2) protect low-entropy passwords and would add tens of ms to every request.

Statuses (one choice, used everywhere): no key or a key whose hash matches nothing -> 401; a valid key that is
expired or revoked, or whose role lacks the permission -> 403; quota or rate limit exceeded -> 429.

ACCESS.toml::

    require_key = true            # false: keys optional; a request without a valid key gets `anonymous_role`
    anonymous_role = ""
    max_batch_size = 256          # inputs per request (413 above), also checked before the body is parsed
    docs = "auto"                 # /docs, /redoc, /openapi.json: auto (off when require_key) | off | open | key

    [roles.analyst]
    permissions = ["predict", "predict_probabilities"]
    output = "probabilities"       # probabilities | label | rounded
    decimals = 2                   # for output = "rounded"

    [[keys]]
    id = "alice"
    role = "analyst"
    hash = "sha256:<salt hex>:<digest hex>"   # from `fedsec serve-keygen` / make_key()
    expires = 2027-01-01T00:00:00Z            # optional
    revoked = false
    quota = 0                                 # total inputs answered; 0 = unlimited
    rate = 0.0                                # requests per second (token bucket); 0 = unlimited
    burst = 10                                # bucket size

    [monitor]
    mode = "off"                   # off | log | block
    kind = "prada"                 # prada (.monitor) | extraction_warning (.extraction_warning)
    delta = 0.9                    # prada: flag when Shapiro-Wilk W < delta
    min_queries = 100              # inputs before the first test (extraction_warning: default 200)
    threshold = 0.8                # extraction_warning: flag when the proxy's agreement reaches this
    check_every = 200              # extraction_warning: refit the proxy every N inputs
    validation_size = 1000         # extraction_warning: server-held test inputs the proxy is scored on

    [limits]                       # body size, input domain, timeouts: see fedsec.serving.limits
    max_body_bytes = 0             # 0 = 32 bytes per number x max_batch_size x input size + 4096
    input_range = "model"          # "model" | "none" | [min, max]
    header_timeout = 10.0
    body_timeout = 30.0
    keep_alive_timeout = 5.0
    max_header_bytes = 16384
    max_connections = 256
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import Forbidden, PolicyError, TooManyRequests, Unauthenticated
from .limits import LimitSettings

PERMISSIONS = ("predict", "predict_probabilities")
_KEY_RE = re.compile(r"^fsk\.([A-Za-z0-9-]{1,64})\.([A-Za-z0-9_-]{16,128})$")
_DUMMY_HASH = "sha256:" + "00" * 16 + ":" + "00" * 32


def _digest(key: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    """``sha256:<salt hex>:<digest hex>`` of ``key`` with a fresh 16-byte salt unless one is given."""
    salt = secrets.token_bytes(16) if salt is None else salt
    return f"sha256:{salt.hex()}:{_digest(key, salt).hex()}"


def verify_key(key: str, stored: str) -> bool:
    """Constant-time check of ``key`` against a stored ``sha256:salt:digest`` string."""
    try:
        scheme, salt_hex, digest_hex = stored.split(":")
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    return scheme == "sha256" and hmac.compare_digest(_digest(key, salt), digest)


def make_key(key_id: str) -> tuple[str, str]:
    """A new API key ``fsk.<key_id>.<secret>`` and its stored hash; give the key to the user, store only the hash."""
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", key_id):
        raise PolicyError(f"key id {key_id!r}: use 1-64 letters, digits or '-'")
    key = f"fsk.{key_id}.{secrets.token_urlsafe(32)}"
    return key, hash_key(key)


class Role(BaseModel):
    model_config = ConfigDict(extra="forbid")
    permissions: list[Literal["predict", "predict_probabilities"]] = Field(description="what the role may do")
    output: Literal["probabilities", "label", "rounded"] = Field("label", description="what /predict answers")
    decimals: int = Field(2, ge=0, le=15, description="digits kept when output = 'rounded'")

    @model_validator(mode="after")
    def _output_needs_permission(self) -> Role:
        if self.output != "label" and "predict_probabilities" not in self.permissions:
            raise ValueError(f"output={self.output!r} needs permission 'predict_probabilities'; add it or use 'label'")
        return self


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$", description="public key id (logged)")
    role: str
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{32}:[0-9a-f]{64}$", description="from make_key(), never the key")
    expires: datetime | None = None
    revoked: bool = False
    quota: int = Field(0, ge=0, description="total inputs answered; 0 = unlimited")
    rate: float = Field(0.0, ge=0, description="requests per second; 0 = unlimited")
    burst: int = Field(10, ge=1, description="token bucket size")


class MonitorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["off", "log", "block"] = "off"
    kind: Literal["prada", "extraction_warning"] = "prada"
    delta: float = Field(0.9, gt=0, lt=1, description="Shapiro-Wilk W threshold (PRADA's delta)")
    min_queries: int | None = Field(None, ge=3, description="inputs before the first test (prada 100, "
                                                             "extraction_warning 200)")
    threshold: float = Field(0.8, gt=0, le=1, description="extraction_warning: proxy agreement that flags")
    check_every: int = Field(200, ge=1, description="extraction_warning: inputs between proxy fits")
    validation_size: int = Field(1000, ge=10, description="extraction_warning: server-held validation inputs")


class AccessPolicy(BaseModel):
    """A validated ACCESS.toml (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    require_key: bool = True
    anonymous_role: str = ""
    max_batch_size: int = Field(256, ge=1, le=100_000)
    roles: dict[str, Role] = Field(default_factory=dict)
    keys: list[KeyEntry] = Field(default_factory=list)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    docs: Literal["auto", "off", "open", "key"] = Field(
        "auto", description="API docs: auto (off when require_key, else open), off, open, or key (/openapi.json "
        "needs a valid key; /docs and /redoc off, since a browser cannot send the key header)")

    @model_validator(mode="after")
    def _references(self) -> AccessPolicy:
        for k in self.keys:
            if k.role not in self.roles:
                raise ValueError(f"keys[id={k.id!r}].role={k.role!r}: unknown role; define [roles.{k.role}]")
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"keys: ids must be unique, got {ids}")
        if not self.require_key and self.anonymous_role not in self.roles:
            raise ValueError(
                f"anonymous_role={self.anonymous_role!r}: require_key = false needs an existing role; "
                f"use one of {sorted(self.roles)}"
            )
        return self

    @classmethod
    def from_toml(cls, path: str | Path) -> AccessPolicy:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise PolicyError(f"{path}: cannot read access policy: {e}") from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "access policy") -> AccessPolicy:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PolicyError(f"{source}: {where}: {first['msg']} (got {first.get('input')!r})") from e


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key id (or ``anonymous@host``), the role's name and the role."""

    client_id: str
    key_id: str
    role_name: str
    role: Role


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second up to ``burst``; one token per request."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AccessController:
    """Applies an :class:`AccessPolicy`: authenticates keys, checks permissions, quotas and rate limits."""

    def __init__(self, policy: AccessPolicy, *, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self._keys = {k.id: k for k in policy.keys}
        self._used: dict[str, int] = {k.id: 0 for k in policy.keys}
        self._buckets = {k.id: TokenBucket(k.rate, k.burst) for k in policy.keys if k.rate > 0}
        self._lock = threading.Lock()

    def authenticate(self, key: str | None, *, host: str = "unknown") -> Caller:
        """The caller for ``key``; raises 401 (no/unknown key) or 403 (expired, revoked).

        With ``require_key = false`` (an open endpoint) nothing is refused: a request without a valid key is served
        as ``anonymous_role`` and identified by its host."""
        try:
            return self._authenticate(key)
        except (Unauthenticated, Forbidden):
            if self.policy.require_key:
                raise
            role = self.policy.anonymous_role
            return Caller(f"anonymous@{host}", "-", role, self.policy.roles[role])

    def _authenticate(self, key: str | None) -> Caller:
        if not key:
            raise Unauthenticated("missing API key: send it in the X-API-Key header", decision="no_key")
        match = _KEY_RE.match(key)
        entry = self._keys.get(match.group(1)) if match else None
        # Always run one comparison so unknown ids and wrong secrets take the same time.
        ok = verify_key(key, entry.hash if entry else _DUMMY_HASH) and entry is not None
        if not ok:
            raise Unauthenticated("invalid API key", decision="wrong_key")
        if entry.revoked:
            raise Forbidden(f"API key {entry.id!r} has been revoked", decision="revoked")
        if entry.expires is not None:
            expires = entry.expires if entry.expires.tzinfo else entry.expires.replace(tzinfo=UTC)
            if self.clock() >= expires.timestamp():
                raise Forbidden(f"API key {entry.id!r} expired at {expires.isoformat()}", decision="expired")
        return Caller(entry.id, entry.id, entry.role, self.policy.roles[entry.role])

    @staticmethod
    def require(caller: Caller, permission: str) -> None:
        if permission not in caller.role.permissions:
            raise Forbidden(
                f"role {caller.role_name!r} lacks permission {permission!r}", decision="missing_permission"
            )

    def rate_limit(self, caller: Caller) -> None:
        bucket = self._buckets.get(caller.key_id)
        if bucket is None:
            return
        with self._lock:
            allowed = bucket.take()
        if not allowed:
            entry = self._keys[caller.key_id]
            raise TooManyRequests(
                f"rate limit of {entry.rate:g} requests/s (burst {entry.burst}) exceeded for key {entry.id!r}",
                decision="rate_limited",
            )

    def charge(self, caller: Caller, queries: int) -> None:
        """Count ``queries`` inputs against the key's quota; raises 429 (nothing charged) if it would exceed it."""
        entry = self._keys.get(caller.key_id)
        if entry is None:
            return
        with self._lock:
            if entry.quota and self._used[entry.id] + queries > entry.quota:
                raise TooManyRequests(
                    f"quota of {entry.quota} queries for key {entry.id!r} exhausted "
                    f"({self._used[entry.id]} used, {queries} requested)",
                    decision="quota_exceeded",
                )
            self._used[entry.id] += queries

    def used(self, key_id: str) -> int:
        return self._used.get(key_id, 0)
