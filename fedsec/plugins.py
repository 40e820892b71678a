"""Plugins: kinds registered from outside fedsec, for the command line and every process it starts.

A plugin is a Python module that registers kinds when imported (``ATTACKS.register(...)``,
``STRATEGIES.register(...)``, ``HOOKS.register(...)``, ``DATASETS.register(...)``, ...: one line each, as inside
fedsec). ``fedsec`` imports, before it reads any config:

- the modules named in the ``FEDSEC_PLUGINS`` environment variable (comma-separated import paths; inherited by the
  processes a sweep or a study starts for its cells);
- the entry points of the group ``fedsec.plugins`` of installed packages (``[project.entry-points."fedsec.plugins"]
  my_kinds = "my_package.fedsec_kinds"``).

Ray workers import the classes they receive by reference, so a plugin module must be importable there too (on one
machine, the driver's ``sys.path`` travels with them; see :func:`fedsec.runtime.runner.init_ray`).
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

from fedsec.errors import ConfigError

logger = logging.getLogger(__name__)

ENV = "FEDSEC_PLUGINS"
GROUP = "fedsec.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every plugin module once; returns the names imported by this call. A module that cannot be imported
    is a :class:`ConfigError` naming it."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    names += [ep.value for ep in entry_points(group=GROUP)]
    done = []
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure of a plugin is the same problem for the user
            raise ConfigError(f"{ENV}: plugin module {name!r} could not be imported: {type(e).__name__}: {e}") from e
        _loaded.add(name)
        done.append(name)
        logger.info("fedsec: plugin %s loaded", name)
    return done
