"""The worst case per defense: a defense x attack grid, and for every defense the attack that hurt it most.

A robust rule is only as good as the strongest attack tried against it (ByzFL reports a worst case over a
fixed list of attacks; here the list includes the adaptive ones: ``fang``, ``agr_tailored``,
``alie_search``, ``ipm_search``, which search their own parameters against the deployed rule). ``fedsec worst-case
SWEEP.toml`` takes an ordinary sweep file (:mod:`fedsec.studies.sweep`) whose grid has ``defense.strategy`` and at
least one ``attack.*`` axis, runs it with :class:`~fedsec.studies.sweep.SweepRunner`, and writes into the sweep
directory:

- ``worst_case_grid.csv``: one row per (defense, attack) setting: mean and sample std (n - 1) over the finished
  seeds of final ``accuracy`` and of the attack's success metric;
- ``worst_case.csv``: one row per defense: ``no_attack_accuracy`` (the ``attack.kind = "none"`` cells, if any), the
  worst (lowest) mean final accuracy and the attack setting that caused it, the worst (highest) mean attack success
  and its attack, how many attack settings finished and which cells were skipped.

A *defense* is a setting of every axis that is not an ``attack.*`` axis or ``seed`` (``defense.strategy`` and,
e.g., ``defense.num_malicious`` or ``data.alpha``); an *attack* is a setting of the ``attack.*`` axes. Attack
success is ``attack_success_rate`` (backdoors), else ``1 - source_recall`` (label flipping), else ``flip_rate``;
untargeted attacks have none, and their worst case is the accuracy alone. Ties keep the first attack in grid order.

Tuning (``--tune KEY=v1,v2,...``, ByzFL's protocol of tuning each rule against the strongest attack): every
defense that reads ``KEY`` (a ``defense.*`` key its ``Params`` declare) runs the whole attack set once as the file
sets it (its *default*) and once per value; defenses that do not read it run once. ``worst_case_tuned.csv`` then has,
per defense, the value whose worst accuracy over the attack set is highest, its worst accuracy and attack, next to
the default's. Several ``--tune`` keys give their product.

Cells the run plan refuses because of the combination (an error naming ``defense.strategy``: an adaptive attack
against a rule it does not support, a rule whose n-vs-f assumption the round breaks) are skipped and listed, so a
full grid of defenses x attacks can be given; any other config error stops the study before anything runs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedsec.config import ConfigError
from fedsec.config.loading import copy_config, read_toml, set_key

if TYPE_CHECKING:  # the plan and the sweep runner (torch, Flower) load when a study runs, not when the CLI starts
    from .sweep import Sweep

logger = logging.getLogger(__name__)

DEFENSE_AXIS = "defense.strategy"
NO_ATTACK = "none"
GRID_FILE, TABLE_FILE, TUNED_FILE, TUNE_FILE = ("worst_case_grid.csv", "worst_case.csv", "worst_case_tuned.csv",
                                               "tune.json")
TUNED_COLUMNS = ["defense", "tuned", "tuned_worst_accuracy", "tuned_worst_attack", "default_worst_accuracy",
                 "default_worst_attack", "gain", "settings"]
GRID_COLUMNS = ["defense", "attack", "seeds", "accuracy_mean", "accuracy_std", "success_mean", "success_std",
                "success_metric"]
TABLE_COLUMNS = ["defense", "no_attack_accuracy", "worst_accuracy", "worst_accuracy_std", "worst_accuracy_attack",
                 "worst_success", "worst_success_metric", "worst_success_attack", "attacks_done", "attacks_total",
                 "skipped"]


@dataclass
class WorstCaseSweep:
    """A sweep whose refused combinations were left out: ``skipped`` maps a cell id to the plan's reason."""

    sweep: Sweep
    skipped: dict[str, str] = field(default_factory=dict)
    skipped_values: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_tune(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["defense.trim_ratio=0.1,0.3"]`` -> ``{"defense.trim_ratio": [0.1, 0.3]}``; values are TOML values (a
    :class:`ConfigError` naming ``--tune`` for anything else)."""
    from fedsec.config.loading import parse_override

    tune: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--tune {spec!r}: expected KEY=v1,v2,... e.g. defense.trim_ratio=0.1,0.2,0.3")
        if not key.startswith("defense.") or key == DEFENSE_AXIS:
            raise ConfigError(f"--tune {spec!r}: tunes a defense's own key (defense.<key>, e.g. defense.trim_ratio), "
                              f"got {key!r}")
        items = [parse_override(f"{key}={item.strip()}")[1] for item in values.split(",")]
        if len({repr(v) for v in items}) != len(items):
            raise ConfigError(f"--tune {spec!r}: values repeat")
        if key in tune:
            raise ConfigError(f"--tune {key}: given twice; list every value in one --tune")
        tune[key] = items
    return tune


def load_worst_case(path: str | Path, *, tune: dict[str, list[Any]] | None = None) -> WorstCaseSweep:
    """Read a sweep file for a worst-case study; refused combinations are skipped (see the module docstring).

    The file is checked by :func:`~fedsec.studies.sweep.load_sweep`'s rules (keys, base, grid); the grid must have
    ``defense.strategy`` and an ``attack.*`` axis (a :class:`ConfigError` naming the key otherwise). ``tune``:
    :func:`parse_tune`'s keys and values, varied for the defenses that read them.
    """
    from .sweep import load_sweep

    path = Path(path)
    raw = read_toml(path, what="sweep file")
    grid = raw.get("grid") if isinstance(raw.get("grid"), dict) else {}
    if DEFENSE_AXIS not in grid:
        raise ConfigError(f"{path}: grid.{DEFENSE_AXIS}: a worst-case study needs the defenses as a grid axis, "
                          f'e.g. "{DEFENSE_AXIS}" = ["krum", "median"]')
    if not any(str(k).startswith("attack.") for k in grid):
        raise ConfigError(f'{path}: grid: a worst-case study needs an attack axis, e.g. "attack.kind" = '
                          '["alie_search", "fang", "agr_tailored"]')
    if not tune:
        try:  # every cell valid: the plain sweep, with its own checks
            return WorstCaseSweep(load_sweep(path))
        except ConfigError as first:
            if "defense.strategy=" not in str(first):
                raise
    return _load_skipping(path, raw, tune or {})


def _tuned_values(values: dict[str, Any], tune: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cells of one grid point under ``tune``: the point itself (the default), and, when its defense reads tuned
    keys, one cell per combination of their values."""
    import itertools

    from fedsec.strategies import STRATEGIES

    fields = STRATEGIES.get(str(values[DEFENSE_AXIS])).Params.model_fields
    read = {k: v for k, v in tune.items() if k.split(".", 1)[1] in fields}
    if not read:
        return [values]
    return [values] + [{**values, **dict(zip(read, combo, strict=True))} for combo in itertools.product(*read.values())]


def _load_skipping(path: Path, raw: dict[str, Any], tune: dict[str, list[Any]]) -> WorstCaseSweep:
    """The cells of the sweep file one by one, as ``load_sweep`` builds them (and the tuned ones), keeping those
    the plan accepts."""
    import itertools

    from fedsec.plan import drop_unused_kind_keys, plan_from_dict
    from fedsec.strategies import STRATEGIES

    from .sweep import Cell, Sweep, cell_id

    base = (path.parent / str(raw["base"])).resolve()
    base_raw = read_toml(base)
    axes: dict[str, list[Any]] = dict(raw["grid"])
    fixed = dict(_flatten(raw.get("set", {})))
    for key in tune:
        if key in axes or key in fixed:
            raise ConfigError(f"--tune {key}: also set by {path} ({'grid' if key in axes else 'set'}); tune it in "
                              "one place")
        name = key.split(".", 1)[1]
        if not any(name in STRATEGIES.get(str(d)).Params.model_fields for d in axes[DEFENSE_AXIS]):
            raise ConfigError(f"--tune {key}: none of the grid's defenses ({', '.join(map(str, axes[DEFENSE_AXIS]))}) "
                              "reads it (`fedsec list` shows each rule's keys)")
    out = WorstCaseSweep(Sweep(path=path, name=str(raw.get("name") or path.stem), base=base,
                               axes={**axes, **tune}, fixed=fixed))
    keep = set(axes) | set(tune)
    for combo in itertools.product(*axes.values()):
        for values in _tuned_values(dict(zip(axes, combo, strict=True)), tune):
            cid = cell_id(values)
            cell_raw = copy_config(base_raw)
            for key, value in {**fixed, **values}.items():
                set_key(cell_raw, key.split("."), value, source=f"{path} (cell {cid}): {key}")
            cell_raw["name"] = f"{base_raw.get('name', base.stem)}-{cid}"
            drop_unused_kind_keys(cell_raw, keep=keep)
            try:
                plan = plan_from_dict(cell_raw, source=f"{path} (cell {cid})")
            except ConfigError as e:
                if "defense.strategy=" not in str(e):
                    raise
                out.skipped[cid] = str(e).split("): ", 1)[-1]
                out.skipped_values[cid] = values
                logger.info("worst case: cell %s skipped: %s", cid, out.skipped[cid])
                continue
            out.sweep.cells.append(Cell(id=cid, values=values, plan=plan))
    if not out.sweep.cells:
        raise ConfigError(f"{path}: grid: every cell was refused ({next(iter(out.skipped.values()))})")
    return out


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


# ------------------------------------------------------------------------------------------------ the tables


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def success_of(row: dict[str, Any]) -> tuple[float | None, str]:
    """The attack's success in a ``sweep.csv`` row and how it was read: the cell's own ``attack_success``, else
    the declared success measure of the row's ``attack.kind`` (:func:`fedsec.plan.results.attack_success_of`)."""
    if (v := _number(row.get("attack_success"))) is not None:
        return v, str(row.get("attack_success_metric") or "attack_success")
    from fedsec.plan.results import attack_success_of

    kind = row.get("attack.kind")
    return attack_success_of(row, str(kind) if kind not in (None, "") else None)


def _label(row: dict[str, Any], axes: Sequence[str]) -> str:
    """``krum`` or ``krum, num_malicious=2``: the first axis' value, then the others as key=value."""
    parts = [str(row.get(axes[0], ""))] + [f"{a.rsplit('.', 1)[-1]}={row.get(a, '')}" for a in axes[1:]
                                            if row.get(a, "") not in ("", None)]  # a tuned key the rule left unset
    return ", ".join(parts)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def worst_case_tables(
    rows: Sequence[dict[str, Any]], axes: Sequence[str], *, skipped: dict[str, dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(grid rows, per-defense rows) from ``sweep.csv`` rows (strings or numbers; ``status`` "done" counts).

    axes: the grid axes in order (``defense.strategy`` among them); skipped: cell id -> axis values of cells left
    out (counted per defense). Columns: :data:`GRID_COLUMNS` and :data:`TABLE_COLUMNS`.
    """
    if DEFENSE_AXIS not in axes:
        raise ConfigError(f"grid.{DEFENSE_AXIS}: the worst case per defense needs the defenses as an axis")
    attack_axes = [a for a in axes if a.startswith("attack.")]
    if not attack_axes:
        raise ConfigError('grid: the worst case per defense needs an attack axis (e.g. "attack.kind")')
    from .sweep import SEED_AXIS

    defense_axes = [DEFENSE_AXIS] + [a for a in axes if a not in attack_axes and a not in (DEFENSE_AXIS, SEED_AXIS)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((_label(row, defense_axes), _label(row, attack_axes)), []).append(row)
    grid: list[dict[str, Any]] = []
    for (defense, attack), members in groups.items():
        done = [r for r in members if str(r.get("status", "")).strip() == "done"]
        accs = [a for a in (_number(r.get("accuracy")) for r in done) if a is not None]
        successes = [success_of(r) for r in done]
        values = [v for v, _ in successes if v is not None]
        acc_mean, acc_std = _mean_std(accs) if accs else (None, None)
        suc_mean, suc_std = _mean_std(values) if values else (None, None)
        grid.append({"defense": defense, "attack": attack, "seeds": len(accs), "accuracy_mean": acc_mean,
                     "accuracy_std": acc_std, "success_mean": suc_mean, "success_std": suc_std,
                     "success_metric": next((n for v, n in successes if v is not None), ""),
                     "_none": all(str(r.get("attack.kind", "")) == NO_ATTACK for r in members)})
    skipped_sets: dict[str, set[str]] = {}  # defense -> attack settings refused (over all seeds)
    for values in (skipped or {}).values():
        skipped_sets.setdefault(_label(values, defense_axes), set()).add(_label(values, attack_axes))
    skipped_by = {d: len(a) for d, a in skipped_sets.items()}
    table: list[dict[str, Any]] = []
    for defense in dict.fromkeys([g["defense"] for g in grid] + list(skipped_by)):
        mine = [g for g in grid if g["defense"] == defense]
        baseline = [g for g in mine if g["_none"] and g["accuracy_mean"] is not None]
        attacked = [g for g in mine if not g["_none"]]
        with_acc = [g for g in attacked if g["accuracy_mean"] is not None]
        with_suc = [g for g in attacked if g["success_mean"] is not None]
        worst_acc = min(with_acc, key=lambda g: g["accuracy_mean"]) if with_acc else None
        worst_suc = max(with_suc, key=lambda g: g["success_mean"]) if with_suc else None
        table.append({
            "defense": defense,
            "no_attack_accuracy": baseline[0]["accuracy_mean"] if baseline else None,
            "worst_accuracy": worst_acc["accuracy_mean"] if worst_acc else None,
            "worst_accuracy_std": worst_acc["accuracy_std"] if worst_acc else None,
            "worst_accuracy_attack": worst_acc["attack"] if worst_acc else "",
            "worst_success": worst_suc["success_mean"] if worst_suc else None,
            "worst_success_metric": worst_suc["success_metric"] if worst_suc else "",
            "worst_success_attack": worst_suc["attack"] if worst_suc else "",
            "attacks_done": len(with_acc), "attacks_total": len(attacked) + skipped_by.get(defense, 0),
            "skipped": skipped_by.get(defense, 0),
        })
    return [{k: v for k, v in g.items() if k != "_none"} for g in grid], table


def tuned_table(rows: Sequence[dict[str, Any]], axes: Sequence[str], tune_keys: Sequence[str], *,
                skipped: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per defense that reads a tuned key: the setting whose worst accuracy over the attacks is highest, next to the
    default's (the cells that leave the tuned keys unset). Columns: :data:`TUNED_COLUMNS`; ``gain`` is the tuned
    worst accuracy minus the default's."""
    _, table = worst_case_tables(rows, axes, skipped=skipped)
    from .sweep import SEED_AXIS

    defense_axes = [DEFENSE_AXIS] + [a for a in axes if not a.startswith("attack.") and a not in (DEFENSE_AXIS,
                                                                                                  SEED_AXIS)]
    base_axes = [a for a in defense_axes if a not in tune_keys]
    setting_of: dict[str, tuple[str, str]] = {}  # full defense label -> (defense without tuned keys, the setting)
    for row in rows:
        setting = ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in tune_keys if row.get(k, "") not in ("", None))
        setting_of[_label(row, defense_axes)] = (_label(row, base_axes), setting)
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in table:
        base, setting = setting_of.get(entry["defense"], (entry["defense"], ""))
        groups.setdefault(base, []).append({**entry, "_setting": setting})
    out: list[dict[str, Any]] = []
    for base, members in groups.items():
        if len(members) < 2:  # the rule reads none of the tuned keys
            continue
        default = next((m for m in members if not m["_setting"]), None)
        measured = [m for m in members if m["worst_accuracy"] is not None]
        best = max(measured, key=lambda m: m["worst_accuracy"]) if measured else None  # ties: the first (default)
        gain = (best["worst_accuracy"] - default["worst_accuracy"]
                if best and default and default["worst_accuracy"] is not None else None)
        out.append({"defense": base, "tuned": (best["_setting"] or "default") if best else "",
                    "tuned_worst_accuracy": best["worst_accuracy"] if best else None,
                    "tuned_worst_attack": best["worst_accuracy_attack"] if best else "",
                    "default_worst_accuracy": default["worst_accuracy"] if default else None,
                    "default_worst_attack": default["worst_accuracy_attack"] if default else "",
                    "gain": gain, "settings": len(members)})
    return out


def _write(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    tmp.replace(path)
    return path


def write_worst_case(sweep_dir: str | Path, *, axes: Sequence[str] | None = None,
                     skipped: dict[str, dict[str, Any]] | None = None) -> Path:
    """Read ``sweep_dir/sweep.csv`` and write ``worst_case_grid.csv`` and ``worst_case.csv``; returns the latter.

    axes: the grid axes (default: ``[grid]`` of ``sweep_dir/sweep.toml``, as ``fedsec sweep`` copies it).
    """
    root = Path(sweep_dir)
    table_path = root / "sweep.csv"
    if not table_path.is_file():
        raise ConfigError(f"{root}: no sweep.csv; run `fedsec worst-case SWEEP.toml --out {root}` first")
    if axes is None:
        grid = read_toml(root / "sweep.toml", what="sweep file").get("grid", {}) if (root / "sweep.toml").is_file() \
            else {}
        axes = list(grid)
    tune_keys = json.loads((root / TUNE_FILE).read_text()) if (root / TUNE_FILE).is_file() else []
    axes = list(axes) + [k for k in tune_keys if k not in axes]
    with table_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    grid_rows, table = worst_case_tables(rows, list(axes), skipped=skipped)
    _write(root / GRID_FILE, GRID_COLUMNS, grid_rows)
    if tune_keys:
        _write(root / TUNED_FILE, TUNED_COLUMNS, tuned_table(rows, axes, tune_keys, skipped=skipped))
    return _write(root / TABLE_FILE, TABLE_COLUMNS, table)


def run_worst_case(path: str | Path, out_dir: str | Path, *, parallel: int = 1, address: str = "",
                   on_done: Callable[[Any], None] | None = None, tune: dict[str, list[Any]] | None = None,
                   study: WorstCaseSweep | None = None) -> Path:
    """Load (unless ``study`` is given), run (finished cells are kept) and tabulate a worst-case study; returns
    ``worst_case.csv`` (and, with ``tune``, writes ``worst_case_tuned.csv`` beside it)."""
    from .sweep import SweepRunner

    study = study or load_worst_case(path, tune=tune)
    runner = SweepRunner(study.sweep, out_dir, parallel=parallel, address=address)
    runner.prepare()
    tune_file = Path(out_dir) / TUNE_FILE
    if tune:
        tune_file.write_text(json.dumps(list(tune)) + "\n")  # the keys, for tabulating the directory again
    elif tune_file.is_file():
        tune_file.unlink()
    runner.run(on_done=on_done)
    return write_worst_case(out_dir, axes=list(study.sweep.axes), skipped=study.skipped_values)


# ------------------------------------------------------------------------------------------------------- CLI


def register(app: typer.Typer, *, report: Callable[[Path], None] | None = None) -> None:
    """Add ``fedsec worst-case SWEEP.toml`` to the typer ``app``; ``report(dir)`` writes the report afterwards
    (the CLI passes its ``fedsec report``; studies do not import the report layer)."""
    @app.command("worst-case")
    def worst_case(
        sweep_file: Annotated[Path, typer.Argument(help="Sweep TOML with defense.strategy and attack.* axes, or "
                                                        "a finished sweep directory to tabulate again.")],
        out: Annotated[Path | None, typer.Option("--out", help="Sweep directory (default: runs/<name>).")] = None,
        parallel: Annotated[int, typer.Option("--parallel", "-j", help="Cells run at once (local Ray).")] = 1,
        address: Annotated[str, typer.Option("--address", help="Join this Ray cluster.")] = "",
        write: Annotated[bool, typer.Option("--report/--no-report", help="Write the report when done.")] = True,
        tune: Annotated[list[str] | None, typer.Option(
            "--tune", help="KEY=v1,v2,...: per defense that reads the defense key, also run the attacks at each value "
            "and report the value whose worst accuracy is highest (worst_case_tuned.csv); repeatable.")] = None,
    ) -> None:
        """Run a defense x attack grid and report, per defense, its worst final accuracy and attack success."""
        try:
            if sweep_file.is_dir():
                target = sweep_file
                path = write_worst_case(target)
            else:
                tuned = parse_tune(tune or [])
                study = load_worst_case(sweep_file, tune=tuned)
                target = out or Path("runs") / study.sweep.name
                for cid, reason in study.skipped.items():
                    typer.echo(f"skipped {cid}: {reason}")
                typer.echo(f"worst case: {len(study.sweep.cells)} cells over "
                           + ", ".join(f"{k} ({len(v)})" for k, v in study.sweep.axes.items()) + f"; {target}")
                path = run_worst_case(sweep_file, target, parallel=parallel, address=address, tune=tuned,
                                      study=study, on_done=lambda r: typer.echo(f"cell {r.cell.id}: {r.status}"))
        except ConfigError as e:
            typer.echo(f"config error: {e}", err=True)
            raise typer.Exit(code=2) from None
        except RuntimeError as e:
            typer.echo(f"worst case failed: {e}", err=True)
            raise typer.Exit(code=1) from None
        typer.echo(f"worst case per defense: {path}")
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                typer.echo(f"  {row['defense']}: worst accuracy {row['worst_accuracy'] or 'n/a'} "
                           f"({row['worst_accuracy_attack'] or '-'}), worst success {row['worst_success'] or 'n/a'} "
                           f"({row['worst_success_attack'] or '-'})")
        tuned_path = path.parent / TUNED_FILE
        if tuned_path.is_file():
            typer.echo(f"tuned (the setting with the highest worst accuracy, against the default): {tuned_path}")
            with tuned_path.open(newline="") as f:
                for row in csv.DictReader(f):
                    typer.echo(f"  {row['defense']}: {row['tuned'] or '-'}: worst accuracy "
                               f"{row['tuned_worst_accuracy'] or 'n/a'} ({row['tuned_worst_attack'] or '-'}); default "
                               f"{row['default_worst_accuracy'] or 'n/a'} ({row['default_worst_attack'] or '-'})")
        if write and report is not None:
            report(target)
