"""The layering the package promises, checked on its source: only the config, the plan and the CLI know the whole
experiment config; the round loop stays a loop (everything else is a round hook)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*(REPO / "fedsec").rglob("*.py"), *(REPO / "strategies").rglob("*.py"), *(REPO / "clients").rglob("*.py")]
MAY_KNOW_EXPERIMENT = ("fedsec/config/", "fedsec/plan/", "fedsec/cli.py")


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
    return names


def test_only_config_plan_and_cli_import_the_experiment():
    offenders = [str(p.relative_to(REPO)) for p in SOURCES
                 if "Experiment" in imported_names(p) and not str(p.relative_to(REPO)).startswith(MAY_KNOW_EXPERIMENT)]
    assert offenders == []


def test_the_round_loop_is_under_60_lines():
    tree = ast.parse((REPO / "fedsec" / "server" / "app.py").read_text())
    (loop,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run_rounds"]
    assert loop.end_lineno - loop.lineno + 1 < 60


def test_no_source_cites_an_issue_number():
    import re

    pattern = re.compile(r"#.*\bissue [0-9]+|\bissue #?[0-9]{1,3}\b|shared/README", re.IGNORECASE)
    hits = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []
