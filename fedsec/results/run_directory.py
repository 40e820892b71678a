"""The run directory (the results contract: :mod:`fedsec.results.contract`).

``config.toml`` (resolved config), ``rounds.csv`` (one row per round, round 0 = initial model), ``clients.csv``
(one row per (round, client)), ``summary.json`` (final metrics, how the run stopped, versions, seed) and
``plots/``. Rows are appended and flushed as rounds finish, so an interrupted run keeps what it measured.

A run directory belongs to one run: while a :class:`RunDirectory` is open it holds ``run.lock``
(:mod:`fedsec.results.lock`: PID, host, start time; released by :meth:`RunDirectory.finish` or
:meth:`~RunDirectory.close`, or by the kernel when the process dies). Opening a directory that already holds
a run (finished or interrupted) needs ``resume=True`` (read its rows back and append after them) or
``overwrite=True`` (delete the run's files first); a directory another process is writing is refused with that
process's PID.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import shutil
import tomllib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from fedsec.errors import FedsecInputError

from .lock import LockInfo, RunLock

logger = logging.getLogger(__name__)

ROUND_COLUMNS = ["round", "accuracy", "loss", "seconds"]
CLIENT_COLUMNS = ["round", "client", "malicious", "num_examples", "update_norm", "accepted", "node", "status"]
RUN_FILES = ("config.toml", "rounds.csv", "clients.csv", "summary.json")
"""The files whose presence means a directory holds a run."""
OWNED_ENTRIES = (*RUN_FILES, "plots", "checkpoints")
"""What ``overwrite=True`` deletes (other files in the directory are left alone)."""
_VERSIONED = ["fedsec", "flwr", "ray", "torch", "opacus", "tenseal", "numpy"]


class RunInfo(Protocol):
    """What a run directory needs to know of its run (a :class:`fedsec.plan.RunPlan` or an experiment config)."""

    @property
    def name(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def rounds(self) -> int: ...

    def to_toml(self) -> str: ...


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _parse_cell(text: str) -> Any:
    """A CSV cell read back as what was written: int, float (``nan``/``inf`` included), ``True``/``False``, else
    the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


class _CsvAppender:
    """A CSV file written as rows arrive: appended and flushed, rewritten whole only when a row brings a new
    column (so a column that first appears in round 1, such as ``train_loss``, is never dropped).

    Columns: ``leading`` first, then the others sorted, so a run resumed from its file writes the same header as an
    uninterrupted one; a header read back by :meth:`load` is kept as it is until a new column arrives."""

    def __init__(self, path: Path, leading: list[str]) -> None:
        self.path = path
        self.leading = leading
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []

    def load(self) -> int:
        """Read the rows already in the file (a missing file is empty); a last line cut short by a crash is
        dropped and the file rewritten without it. Returns how many rows were dropped."""
        if not self.path.is_file():
            return 0
        with self.path.open(newline="") as f:
            text = f.read()
        records = list(csv.reader(text.splitlines(keepends=True)))
        if not records:
            return 0
        header, records = records[0], records[1:]
        dropped = 0
        if records and not text.endswith("\n"):  # the last row was being written when the process died
            records, dropped = records[:-1], 1
        bad = sum(1 for r in records if len(r) != len(header))
        if bad:
            raise FedsecInputError(f"{self.path}: {bad} row(s) do not have the {len(header)} columns of the header; "
                                   "the file was edited or is not fedsec's: restore it, or use overwrite")
        self.columns = header
        self.rows = [{k: _parse_cell(v) for k, v in zip(header, r, strict=True) if v != ""} for r in records]
        if dropped:
            self._rewrite()
        return dropped

    def keep(self, predicate: Any) -> int:
        """Keep only the rows for which ``predicate(row)`` holds (rewriting the file); returns how many went."""
        before = len(self.rows)
        self.rows = [r for r in self.rows if predicate(r)]
        if len(self.rows) != before:
            self._rewrite()
        return before - len(self.rows)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.rows.extend(rows)
        new = {k for row in rows for k in row} - set(self.columns)
        if new:
            rest = sorted((set(self.columns) | new) - set(self.leading))
            self.columns = [c for c in self.leading] + rest
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerows(rows)


def _previous_state(path: Path) -> str | None:
    """``None`` if ``path`` holds no run, else ``"finished (stopped_reason=...)"`` or ``"interrupted"``."""
    if not any((path / name).exists() for name in RUN_FILES):
        return None
    try:
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        return "interrupted (no summary.json)"
    except (OSError, ValueError):
        return "unreadable summary.json"
    reason = summary.get("stopped_reason") if isinstance(summary, dict) else None
    return f"finished (stopped_reason={reason!r})"


class RunDirectory:
    """Writes one run's results as they come in, holding the directory's lock while it is open.

    Parameters:
        path: the run directory (created with its parents if missing).
        experiment: the run (its name, seed, planned rounds and config; a RunPlan or an Experiment).
        config_toml: the resolved config written as ``config.toml`` (default: ``experiment.to_toml()``).
        resume: reopen a directory that holds a run (interrupted or finished): its ``rounds.csv`` and
            ``clients.csv`` rows are read back (:attr:`rounds`, :meth:`client_rows`) and new rows are appended
            after them in the same column order; ``config.toml`` must hold the same config (default False).
        overwrite: delete the run that the directory holds (:data:`OWNED_ENTRIES`) and start afresh (default False).

    Raises:
        RunDirectoryLocked (a :class:`~fedsec.errors.FedsecInputError`): another process holds the lock (its PID).
        FedsecInputError: the directory holds a run and neither ``resume`` nor ``overwrite`` is set; both are set;
            ``resume`` of a directory with no run, or with a different config.

    The lock is released by :meth:`finish` or :meth:`close` (or ``with RunDirectory(...)``), and by the kernel
    when the process dies; a lock file left by a dead process is reported in :attr:`stale_lock`.
    """

    def __init__(self, path: str | Path, experiment: RunInfo, *, config_toml: str | None = None,
                 resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        if resume and overwrite:
            raise FedsecInputError(f"run directory {str(self.path)!r}: resume and overwrite exclude each other; "
                                   "choose one")
        if self.path.exists() and not self.path.is_dir():
            raise FedsecInputError(f"run directory {str(self.path)!r} is a file, not a directory; choose another path")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(self.path)
        self._lock.acquire()
        try:
            self.previous = self._claim(experiment, config_toml, resume=resume, overwrite=overwrite)
        except BaseException:
            self._lock.release(restore_stale=True)
            raise
        self.experiment = experiment
        (self.path / "plots").mkdir(exist_ok=True)
        self.rounds: list[dict[str, Any]] = []
        self._rounds_csv = _CsvAppender(self.path / "rounds.csv", ROUND_COLUMNS)
        self._clients_csv = _CsvAppender(self.path / "clients.csv", CLIENT_COLUMNS)
        if resume:
            cut = self._rounds_csv.load() + self._clients_csv.load()
            if cut:
                logger.warning("%s: dropped %d row(s) cut short when the run was interrupted", self.path, cut)
            self.rounds = list(self._rounds_csv.rows)
            (self.path / "summary.json").unlink(missing_ok=True)  # the run goes on: its summary is rewritten
            wanted, config = config_toml if config_toml is not None else experiment.to_toml(), self.path / "config.toml"
            if config.read_text() != wanted:  # only keys of RESUME_MAY_CHANGE differ (_claim): written as used
                tmp = config.with_suffix(".toml.tmp")
                tmp.write_text(wanted)
                tmp.replace(config)
        else:
            (self.path / "config.toml").write_text(config_toml if config_toml is not None else experiment.to_toml())

    def _claim(self, experiment: RunInfo, config_toml: str | None, *, resume: bool, overwrite: bool) -> str | None:
        state = _previous_state(self.path)
        where = repr(str(self.path))
        if state is None:
            if resume:
                raise FedsecInputError(f"run directory {where}: resume=True but it holds no run (no config.toml, "
                                       "rounds.csv, clients.csv or summary.json); start a new run instead")
            return None
        if overwrite:
            logger.warning("run directory %s holds a run that is %s: overwriting it", self.path, state)
            for name in OWNED_ENTRIES:
                entry = self.path / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
            return state
        if not resume:
            raise FedsecInputError(
                f"run directory {where} already holds a run that is {state}; pass resume=True (--resume) to go on "
                "from where it stopped, or overwrite=True (--overwrite) to delete it and start again, or choose "
                "another directory"
            )
        wanted = config_toml if config_toml is not None else experiment.to_toml()
        try:
            stored = tomllib.loads((self.path / "config.toml").read_text())
        except (OSError, ValueError) as e:
            raise FedsecInputError(f"run directory {where}: cannot resume, its config.toml is missing or invalid "
                                   f"({e}); use overwrite") from e
        changed = sorted(identity_changes(stored, tomllib.loads(wanted)))
        if changed:
            raise FedsecInputError(
                f"run directory {where}: cannot resume with a different config (changed: {', '.join(changed[:8])}); "
                "resume with the config.toml it holds, or use overwrite"
            )
        return state

    @property
    def stale_lock(self) -> LockInfo | None:
        """The lock record left by a process that died while writing this directory (None after a clean end)."""
        return self._lock.stale

    @property
    def locked(self) -> bool:
        """Whether this object still holds the directory's lock."""
        return self._lock.held

    def client_rows(self) -> list[dict[str, Any]]:
        """Every row of ``clients.csv`` so far (read back on resume, then appended)."""
        return list(self._clients_csv.rows)

    def truncate_after(self, last_round: int) -> int:
        """Drop the rows of rounds after ``last_round`` from ``rounds.csv`` and ``clients.csv`` (a resume from the
        checkpoint of ``last_round`` redoes them); returns how many rows went."""
        gone = self._rounds_csv.keep(lambda r: int(r["round"]) <= last_round)
        gone += self._clients_csv.keep(lambda r: int(r["round"]) <= last_round)
        self.rounds = list(self._rounds_csv.rows)
        return gone

    def add_round(self, row: dict[str, Any]) -> None:
        """Append one row of ``rounds.csv``."""
        self.rounds.append(row)
        self._rounds_csv.write([row])

    def add_clients(self, rows: list[dict[str, Any]]) -> None:
        """Append the rows of one round to ``clients.csv``."""
        self._clients_csv.write(rows)

    def close(self) -> None:
        """Release the directory's lock (idempotent); :meth:`finish` calls it."""
        self._lock.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finish(self, *, stopped_reason: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` and the plots, release the lock; return the summary."""
        try:
            return self._write_summary(stopped_reason=stopped_reason, extra=extra)
        finally:
            self.close()

    def _write_summary(self, *, stopped_reason: str, extra: dict[str, Any] | None) -> dict[str, Any]:
        last = self.rounds[-1] if self.rounds else {}
        summary: dict[str, Any] = {
            "name": self.experiment.name,
            "seed": self.experiment.seed,
            "rounds_planned": self.experiment.rounds,
            "rounds_completed": max((int(r["round"]) for r in self.rounds), default=0),
            "stopped_reason": stopped_reason,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        for key, value in last.items():
            if key not in ("round", "seconds") and not key.startswith("recall_"):
                summary[key] = _clean(value)
        summary.update(extra or {})
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
        if self.rounds:
            from fedsec.results.plots import plot_rounds

            plot_rounds(self.rounds, self.path / "plots", title=self.experiment.name)
        return summary


#: Config keys (or whole sections) a resumed run may change: where it runs and where its results are also
#: exported, not what it computes (a sweep resumes a cell on a new Ray head, at another address; ``[tracking]``
#: names MLflow / TensorBoard stores beside the run directory).
RESUME_MAY_CHANGE = frozenset({"backend.address", "tracking"})


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    """The dotted keys whose values differ between two configs, except those at or under
    :data:`RESUME_MAY_CHANGE`, and keys the old config lacks that the new one holds at their default (a run written
    before the key existed ran as its default does): a non-empty result means another run, not the same one
    resumed elsewhere."""
    from fedsec.config import shared_defaults

    defaults = shared_defaults()
    return {key for key in changed_keys(old, new)
            if not any(key == free or key.startswith(f"{free}.") for free in RESUME_MAY_CHANGE)
            and not (lookup(old, key, _MISSING) is _MISSING
                     and lookup(new, key) == lookup(defaults, key, _MISSING))}


_MISSING = object()


def lookup(config: dict[str, Any], dotted: str, missing: Any = None) -> Any:
    """The value at a dotted key of a nested config (``"defense.strategy"``), or ``missing``."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return missing
        value = value[part]
    return value


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    """Dotted keys whose values differ between two configs (iterative)."""
    changed: set[str] = set()
    stack: list[tuple[dict[str, Any], dict[str, Any], str]] = [(old, new, "")]
    while stack:
        a, b, prefix = stack.pop()
        for key in set(a) | set(b):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                stack.append((x, y, f"{prefix}{key}."))
            elif x != y:
                changed.add(f"{prefix}{key}")
    return changed
