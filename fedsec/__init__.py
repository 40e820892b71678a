"""fedsec: a federated-learning security simulator."""

from __future__ import annotations

__all__ = ["__version__"]

# The top-level folders installed as fedsec.<name> (pyproject.toml's [tool.setuptools.package-dir]; keep both lists
# equal: scripts/package_tree.py checks it).
_MAPPED = ("strategies", "clients")


def _map_source_tree() -> None:
    """Imported from a source tree (a checkout, a Flower FAB) rather than from an install, ``fedsec/strategies`` and
    ``fedsec/clients`` do not exist: the top-level ``strategies/`` and ``clients/`` folders next to ``fedsec/`` are
    those packages. A finder maps them as the wheel and the editable install do, so that a process importing this
    tree (``PYTHONPATH=.``, a Ray worker, which puts the driver's working directory first on its ``sys.path``, or
    ``flwr run``) finds them. Installed, ``fedsec/strategies`` exists and nothing is added."""
    import sys
    from importlib.machinery import PathFinder
    from pathlib import Path

    here = Path(__file__).resolve().parent
    roots = {f"{__name__}.{name}": str(here.parent) for name in _MAPPED
             if not (here / name).is_dir() and (here.parent / name / "__init__.py").is_file()}
    if not roots:
        return

    for finder in sys.meta_path:
        if getattr(finder, "fedsec_source_tree", None) is not None:  # fedsec imported again (importlib.reload)
            finder.fedsec_source_tree.update(roots)
            return

    class SourceTreeFinder:
        """``fedsec.<name>`` -> ``<source tree>/<name>``, for the mapped names only."""

        fedsec_source_tree: dict[str, str] = roots

        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            parent = cls.fedsec_source_tree.get(fullname)
            return None if parent is None else PathFinder.find_spec(fullname, [parent])

    sys.meta_path.append(SourceTreeFinder)


_map_source_tree()


def __getattr__(name: str) -> str:
    """``fedsec.__version__``: the installed distribution's version (pyproject.toml's ``project.version``), looked up
    on first use so that ``import fedsec`` stays cheap; ``0+unknown`` in a checkout that was never installed."""
    if name != "__version__":
        raise AttributeError(f"module 'fedsec' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("fedsec")
    except PackageNotFoundError:
        value = "0+unknown"
    globals()["__version__"] = value
    return value
