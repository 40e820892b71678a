"""fedsec's error classes: one base, and a ``ValueError`` branch for bad input.

Every error fedsec raises on purpose derives from :class:`FedsecError`; errors about input a user gave (a config
key, a command-line value, a file, a request) also derive from ``ValueError`` through :class:`FedsecInputError`,
so callers can catch "bad input" without knowing which layer found it. Messages name the key, the rule, the value
received and, where there is one, the fix.
"""

from __future__ import annotations


class FedsecError(Exception):
    """Base class of every error fedsec raises on purpose."""


class FedsecInputError(FedsecError, ValueError):
    """Bad input: a config key, a command-line value, a file or a request that fedsec refuses."""


class ConfigError(FedsecInputError):
    """An invalid experiment configuration; the message names the key and the reason."""


class FedsecRuntimeError(FedsecError, RuntimeError):
    """A run could not be carried out (cluster unreachable, every client failing, ...)."""


__all__ = ["ConfigError", "FedsecError", "FedsecInputError", "FedsecRuntimeError"]
