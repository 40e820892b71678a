"""Arrays fedsec keeps between runs under ``$XDG_CACHE_HOME/fedsec/`` (default ``~/.cache/fedsec/``): work every
run of a config would otherwise redo at start-up (the digits split, which imports scikit-learn; partitions made by
flwr-datasets, which imports ``datasets``, seaborn and SciPy and takes seconds for a Dirichlet split of
Fashion-MNIST). An entry is one ``.npz`` written atomically and named by everything its content depends on; an
entry that cannot be read is ignored (its caller redoes the work and writes it again), and a cache that cannot be
written is skipped. ``rm -r ~/.cache/fedsec`` is always safe.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["cache_file", "read_arrays", "write_arrays"]


def cache_file(kind: str, name: str) -> Path:
    """Where the entry ``name`` of ``kind`` (a folder: ``digits``, ``partitions``) lives."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fedsec" / kind / name


def read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` of the entry at ``path``, or None if it is missing, unreadable or lacks one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        return None


def write_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write the entry atomically (a concurrent reader sees all of it or nothing); skipped if it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npz")
        np.savez(partial, **arrays)
        os.replace(partial, path)
    except OSError:
        pass
