"""Check pyproject's package list against the source tree, and stage the installed layout for lint-imports.

fedsec's top-level ``strategies/`` and ``clients/`` folders are installed as ``fedsec.strategies`` and
``fedsec.clients`` through ``[tool.setuptools.package-dir]``, so the package list in pyproject.toml is explicit
(setuptools' ``find`` cannot map folders outside ``fedsec/``). This script

* fails (exit 1) when a folder holding Python files under ``fedsec/`` or a mapped folder is missing from
  ``[tool.setuptools] packages``, when a listed package has no folder, when ``fedsec/`` holds a symlink, or when
  ``fedsec/__init__.py``'s ``_MAPPED`` (its source-tree finder) and the package-dir mapping differ (and warns
  about a listed package without ``__init__.py``);
* with ``--stage DIR``, runs setuptools' own ``build_py`` into DIR, which gives the tree a wheel installs
  (``DIR/fedsec/strategies``, ``DIR/fedsec/clients``): ``bash scripts/dev.sh test`` runs ``lint-imports`` there,
  because grimp builds its import graph by walking the ``fedsec`` package folder and would not see the mapped
  subpackages in the checkout.

Usage: python scripts/package_tree.py [--stage DIR]    (from any directory; the checkout is this file's parent's
parent; nothing is written into the checkout).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config() -> tuple[list[str], dict[str, str]]:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(setuptools_cfg["packages"]), dict(setuptools_cfg.get("package-dir", {}))


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """The source folder of ``package`` under setuptools' mapping rule (the longest mapped prefix wins)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    return ROOT / package_dir.get("", "") / Path(*parts)


def _walk(top: Path, name: str, problems: list[str]) -> set[str]:
    """Package names of the folders under ``top`` that hold Python files (``top`` itself is ``name``)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        for d in list(dirnames):
            if (here / d).is_symlink():
                problems.append(f"{(here / d).relative_to(ROOT)} is a symlink: remove it (pyproject's "
                                "[tool.setuptools.package-dir] maps the folder)")
                dirnames.remove(d)
            elif d == "__pycache__" or d.startswith("."):
                dirnames.remove(d)
        if any(f.endswith(".py") for f in filenames):
            rel = here.relative_to(top)
            found.add(".".join([name, *rel.parts]))
    return found


def check() -> list[str]:
    packages, package_dir = _config()
    problems: list[str] = []
    roots = {"fedsec": _folder("fedsec", package_dir)}
    roots.update({name: ROOT / folder for name, folder in package_dir.items() if name})
    found: set[str] = set()
    for name, top in roots.items():
        found |= _walk(top, name, problems)
    listed = set(packages)
    for missing in sorted(found - listed):
        problems.append(f"{_folder(missing, package_dir).relative_to(ROOT)}/ holds Python files but "
                        f'"{missing}" is not in pyproject.toml\'s [tool.setuptools] packages: add it')
    for extra in sorted(listed - found):
        problems.append(f'"{extra}" is in [tool.setuptools] packages but {_folder(extra, package_dir)} holds no '
                        "Python files")
    mapped = sorted(name.removeprefix("fedsec.") for name in package_dir if name)
    match = re.search(r"^_MAPPED = \((.*)\)$", (ROOT / "fedsec" / "__init__.py").read_text(), re.M)
    in_init = sorted(re.findall(r'"([^"]+)"', match.group(1))) if match else None
    if in_init != mapped:
        problems.append(f"fedsec/__init__.py's _MAPPED lists {in_init}, pyproject's package-dir maps {mapped}: "
                        "make them equal (the source-tree finder maps what the install maps)")
    for package in sorted(listed & found):
        if not (_folder(package, package_dir) / "__init__.py").is_file():
            print(f"warning: {_folder(package, package_dir).relative_to(ROOT)}/ has no __init__.py (installed as a "
                  "namespace package)", file=sys.stderr)
    return problems


def stage(dest: Path) -> None:
    """Run setuptools' build_py (the wheel's file layout) into ``dest``; egg-info goes to a temporary folder."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedsec-egg-") as egg_base:
        result = subprocess.run(
            [sys.executable, "-c", "from setuptools import setup; setup()", "-q",
             "egg_info", "--egg-base", egg_base, "build_py", "--build-lib", str(dest)],
            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"error: setuptools build_py failed (exit {result.returncode})")
    for package in ("fedsec.strategies", "fedsec.clients"):
        if not (dest / Path(*package.split(".")) / "__init__.py").is_file():
            raise SystemExit(f"error: the staged tree in {dest} lacks {package}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=Path, help="also stage the installed layout (setuptools build_py) here")
    args = parser.parse_args()
    problems = check()
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        raise SystemExit(1)
    if args.stage is not None:
        stage(args.stage.resolve())


if __name__ == "__main__":
    main()
