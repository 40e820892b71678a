"""Sweeps: one base config, grid axes, every cell run once, one table (``fedsec sweep SWEEP.toml``).

A sweep file names a base experiment and grid axes (dotted config keys, as ``--set`` takes them)::

    base = "../fmnist_labelflip.toml"        # relative to the sweep file
    name = "labelflip-grid"                  # optional; default: the sweep file's stem
    [grid]
    "defense.strategy" = ["fedavg", "median", "krum"]
    "attack.fraction" = [0.1, 0.3]
    "seed" = [0, 1]
    [set]                                    # optional: overrides applied to every cell
    rounds = 5

Every cell (one point of the grid, seeds included) is validated before any runs, then run as ``fedsec run`` would
run it, writing a run directory under ``SWEEP_DIR/cells/<cell>/``, in the slot's cell worker (:mod:`.cell_worker`:
one process per parallel slot that imports torch, Flower and Ray once and runs its cells one after another). Ray is
started once for the whole sweep (one head node per parallel slot; each cell's driver joins it), or the sweep joins
the cluster at ``--address`` / the base config's ``backend.address``. Kind-specific keys that a cell's attack or
strategy does not use (``defense.num_malicious`` in a FedAvg cell of a grid over strategies) are dropped for that
cell. A cell is done when its run exited 0 and its ``cell.json`` says so; a rerun skips done cells, goes on with an
interrupted cell from its last checkpoint (``fedsec run --resume``, on the new sweep's Ray head) when it has one and
its config is unchanged, and reruns any other (failed, or killed before its first round ended) from scratch, so no
cell is lost or counted twice. ``sweep.csv`` (one row per cell: axes, status, final metrics, and their mean / std
over the seeds of the cell's group) is rewritten after every cell.

Why a Ray head of the sweep's own and cells one after another per slot: Flower's Ray backend shuts Ray down at the
end of each simulation (``ray.shutdown``) and sizes its actor pool from the whole cluster, so two simulations on one
cluster at the same time would wait on each other's actors. Each cell joins the running head again (about a second),
and parallel slots each get their own head with ``cpus / parallel`` CPUs. A cell that ends its worker (an
interrupted or crashed run) is recorded from the worker's exit status, and the slot starts a new worker.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec.config import ConfigError
from fedsec.config.loading import copy_config, read_toml, set_key
from fedsec.plan import RunPlan, drop_unused_kind_keys, plan_from_dict
from fedsec.plan.results import final_metrics, summary_metrics
from fedsec.results.contract import number
from fedsec.runtime.processes import LINUX, die_with_parent, free_port, wait_port

from .cell_worker import CellWorker

logger = logging.getLogger(__name__)

SEED_AXIS = "seed"
#: besides the declared final metrics (:func:`fedsec.plan.results.final_metrics`), the attack's success as its
#: declaration reads it (``summary.json``: ``attack_success`` and ``attack_success_metric``)
SUCCESS = "attack_success"
_SWEEP_KEYS = {"base", "name", "grid", "set"}


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its id (directory name), axis values and the resolved experiment."""

    id: str
    values: dict[str, Any]
    plan: RunPlan

    @property
    def group(self) -> tuple[Any, ...]:
        """The axis values except the seed: cells of one group differ only by seed."""
        return tuple(v for k, v in self.values.items() if k != SEED_AXIS)


@dataclass
class Sweep:
    """A parsed sweep file: the base config, the axes and the cells they expand to."""

    path: Path
    name: str
    base: Path
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The cluster the base config names (``backend.address``), or ''."""
        return self.cells[0].plan.backend.address if self.cells else ""


def _slug(key: str, value: Any) -> str:
    short = key.rsplit(".", 1)[-1]
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.+_-]+", "", f"{short}-{text}".replace(" ", ""))


def cell_id(values: dict[str, Any]) -> str:
    """A readable, file-system-safe, unique id of a grid point, e.g. ``strategy-krum__fraction-0.1__seed-0``."""
    return "__".join(_slug(k, v) for k, v in values.items())


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every cell's config is validated (``ConfigError`` names cell and key)."""
    path = Path(path)
    raw = read_toml(path, what="sweep file")
    unknown = sorted(set(raw) - _SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (a sweep file has base, name, [grid] and [set])")
    if not isinstance(raw.get("base"), str):
        raise ConfigError(f"{path}: base: required key is missing (the experiment config the grid varies)")
    base = (path.parent / raw["base"]).resolve()
    if not base.is_file():
        raise ConfigError(f"{path}: base: config file {str(base)!r} not found (base is relative to the sweep file)")
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: grid: required table is missing or empty (e.g. \"defense.strategy\" = [...])")
    axes: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key}: expected a non-empty list of values (got {values!r})")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"{path}: grid.{key}: values repeat ({values!r}); each cell must be distinct")
        axes[key] = values
    fixed = raw.get("set", {})
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: set: expected a table of key = value overrides")
    fixed = dict(_flatten(fixed))
    overlap = sorted(set(fixed) & set(axes))
    if overlap:
        raise ConfigError(f"{path}: set.{overlap[0]}: also a grid axis; keep it in one place")
    base_raw = read_toml(base)
    name = str(raw.get("name") or path.stem)
    sweep = Sweep(path=path, name=name, base=base, axes=axes, fixed=fixed)
    seen: set[str] = set()
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        cid = cell_id(values)
        if cid in seen:
            raise ConfigError(f"{path}: grid: two cells map to the directory {cid!r}; make the values distinct")
        seen.add(cid)
        cell_raw = copy_config(base_raw)
        for key, value in {**fixed, **values}.items():
            set_key(cell_raw, key.split("."), value, source=f"{path} (cell {cid}): {key}")
        cell_raw["name"] = f"{base_raw.get('name', base.stem)}-{cid}"
        drop_unused_kind_keys(cell_raw, keep=set(axes))
        plan = plan_from_dict(cell_raw, source=f"{path} (cell {cid})")
        sweep.cells.append(Cell(id=cid, values=values, plan=plan))
    return sweep


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------------------------------------- cell bookkeeping


def _fingerprint(plan: RunPlan) -> str:
    """What makes a cell's results: its resolved config except where it runs (backend) and where it is also
    exported ([tracking]: MLflow, TensorBoard)."""
    resolved = json.loads(json.dumps(plan.resolved, default=str))
    resolved.pop("backend", None)
    resolved.pop("tracking", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cell_status(sweep_dir: Path, cell: Cell) -> str:
    """``done`` (finished, same config), ``failed`` (its run failed), or ``pending`` (not run, interrupted, or run
    with another config)."""
    marker = sweep_dir / "cells" / cell.id / "cell.json"
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "pending"
    if record.get("fingerprint") != _fingerprint(cell.plan):
        return "pending"
    return record.get("status", "pending") if record.get("status") in ("done", "failed") else "pending"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves half a marker


# ------------------------------------------------------------------------------------------------- Ray heads


def _cell_dies_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A cell whose sweep died is killed outright: its Ray head goes with the sweep, so a clean stop could hang on
    the lost head for a minute; the cell resumes from its last checkpoint, as after any kill -9."""
    die_with_parent(signal.SIGKILL)


#: the process that runs a sweep's Ray head, in a process group of its own: on SIGTERM (from the sweep once its cells
#: are done or stopped, or from the kernel when the sweep dies), or when the head exits, it SIGKILLs the whole group.
#: Why not Ray's own stop: `ray start --block` alone leaves gcs_server running after SIGTERM, and its SIGTERM handler
#: gives each process up to a second to exit, one after the other (ray/_private/node.py ``_kill_process_impl``): 5.5 s
#: at the end of every sweep here, with SIGTERM first and SIGKILL after a 5 s deadline. Nothing of a sweep's head is
#: kept: its GCS is in memory, and the object store's memory goes with the raylet's process (no file in /dev/shm here);
#: tests/test_local_ray.py checks that no process of the session is left.
_HEAD_SUPERVISOR = """
import os, signal, subprocess, sys
def stop(*_):
    os.killpg(0, signal.SIGKILL)
head = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, stop)
head.wait()
stop()
"""


@contextmanager
def local_ray_head(num_cpus: int, *, log_path: Path, timeout: float = 60.0) -> Iterator[str]:
    """Start a one-node Ray cluster (``ray start --head --block``) for the sweep; yield its address; stop it. The
    head starts as a local Ray that a lone run starts: the same Ray settings
    (:data:`fedsec.runtime.ray_start.LOCAL_RAY_CONFIG`, through ``ray start``'s ``--system-config``), without the
    dashboard's process and the one-second registration poll (Ray's command line run through
    :func:`fedsec.runtime.ray_start.main`)."""
    from fedsec.runtime.ray_start import LOCAL_RAY_CONFIG

    port = free_port()
    command = [sys.executable, "-m", "fedsec.runtime.ray_start", "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--include-dashboard=false",
               "--disable-usage-stats", f"--system-config={json.dumps(LOCAL_RAY_CONFIG)}"]
    log = log_path.open("ab")
    # a supervisor in its own process group runs the head and ends the whole group on SIGTERM (_HEAD_SUPERVISOR)
    process = subprocess.Popen([sys.executable, "-c", _HEAD_SUPERVISOR, *command], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                               preexec_fn=die_with_parent if LINUX else None)
    address = f"127.0.0.1:{port}"
    try:
        why = wait_port(port, process, timeout=timeout)
        if why == "exited":
            raise RuntimeError(f"`ray start --head` exited with {process.returncode}; see {log_path}")
        if why == "timeout":
            raise RuntimeError(f"Ray head did not come up within {timeout:.0f} s; see {log_path}")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# ----------------------------------------------------------------------------------------------------- running


@dataclass
class CellResult:
    cell: Cell
    status: str  # done | failed
    seconds: float
    error: str = ""


class SweepRunner:
    """Runs a sweep's pending cells in ``parallel`` slots against Ray heads (or a given cluster)."""

    def __init__(self, sweep: Sweep, out_dir: str | Path, *, parallel: int = 1, address: str = "",
                 verbose: bool = False) -> None:
        if parallel < 1:
            raise ConfigError(f"--parallel: expected at least 1 (got {parallel})")
        self.sweep = sweep
        self.out = Path(out_dir)
        self.parallel = parallel
        self.address = address or sweep.address or os.environ.get("RAY_ADDRESS", "")
        if self.address and parallel > 1:
            raise ConfigError(
                f"--parallel {parallel} with a Ray cluster ({self.address}): Flower sizes each simulation's actor "
                "pool from the whole cluster, so simultaneous cells would wait on each other's actors; on a cluster "
                "every cell already spreads its clients over all nodes: use --parallel 1"
            )
        self.verbose = verbose
        self._workers: list[CellWorker] = []
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the sweep directory (copy of the sweep file, cells/) and the first sweep.csv."""
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        text = self.sweep.path.read_text()
        text = re.sub(r'(?m)^base\s*=.*$', f"base = {json.dumps(str(self.sweep.base))}", text, count=1)
        (self.out / "sweep.toml").write_text(text)
        write_sweep_table(self.sweep, self.out)

    def pending(self) -> list[Cell]:
        return [c for c in self.sweep.cells if cell_status(self.out, c) != "done"]

    def run(self, on_start: Callable[[Cell], None] | None = None,
            on_done: Callable[[CellResult], None] | None = None) -> list[CellResult]:
        """Run every cell that is not done; return what ran. Ctrl-C stops the running cells (they rerun later)."""
        self.prepare()
        todo: queue.Queue[Cell] = queue.Queue()
        for cell in self.pending():
            todo.put(cell)
        if todo.empty():
            return []
        results: list[CellResult] = []
        slots = min(self.parallel, todo.qsize())
        cpus = max(1, (os.cpu_count() or 1) // slots)
        with ExitStack() as stack:
            self._workers = [self._cell_worker(i) for i in range(1 if self.address else slots)]
            for cell_worker in self._workers:
                cell_worker.start()  # it imports while the Ray heads start
            stack.callback(self._stop_workers)  # also when a head fails to start
            if self.address:
                addresses = [self.address]
            else:
                addresses = [stack.enter_context(local_ray_head(cpus, log_path=self.out / f"ray-head-{i}.log"))
                             for i in range(slots)]
            stack.callback(self._stop_workers)  # before the heads stop: a worker's cell never loses its head
            errors: list[BaseException] = []

            def worker(address: str, cell_worker: CellWorker) -> None:
                while not errors:
                    try:
                        cell = todo.get_nowait()
                    except queue.Empty:
                        return
                    if on_start:
                        on_start(cell)
                    try:
                        result = self._run_cell(cell, address, cell_worker)
                    except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
                        errors.append(e)
                        return
                    with self._lock:
                        results.append(result)
                        write_sweep_table(self.sweep, self.out)
                    if on_done:
                        on_done(result)

            threads = [threading.Thread(target=worker, args=(a, w), daemon=True)
                       for a, w in zip(addresses, self._workers, strict=True)]
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(timeout=0.2)
            except KeyboardInterrupt:
                errors.append(KeyboardInterrupt())
                self._stop_all()
                for t in threads:
                    t.join(timeout=30)
                raise
            if errors:
                raise errors[0]
        return results

    def _stop_all(self) -> None:
        for cell_worker in self._workers:
            cell_worker.terminate()

    def _stop_workers(self) -> None:
        for cell_worker in self._workers:
            cell_worker.stop()

    def _cell_worker(self, slot: int) -> CellWorker:
        """The process that runs slot ``slot``'s cells (:mod:`.cell_worker`), killed if the sweep dies."""
        env = {**os.environ, "COLUMNS": "120"}
        env.pop("RAY_ADDRESS", None)
        return CellWorker([sys.executable, "-m", "fedsec.sweep_worker", str(self.out.resolve())],
                          log=self.out / f"cell-worker-{slot}.log", env=env,
                          preexec_fn=_cell_dies_with_parent if LINUX else None)

    def _run_cell(self, cell: Cell, address: str, cell_worker: CellWorker) -> CellResult:
        """Run one cell in the slot's cell worker; an interrupted cell with a checkpoint goes on from it
        (``--resume``), and starts again if the resume is refused (exit 2: e.g. an unreadable checkpoint)."""
        cell_dir = self.out / "cells" / cell.id
        if _resumable(cell_dir, cell.plan.to_toml()):
            t0 = time.perf_counter()
            code = self._cell_run(cell_worker, cell_dir, address, resume=True)
            if code != 2:
                return self._finish_cell(cell, cell_dir, code, time.perf_counter() - t0)
            logger.warning("cell %s: could not resume from its checkpoint; starting it again", cell.id)
        t0 = time.perf_counter()
        code = self._cell_run(cell_worker, cell_dir, address, resume=False, config_toml=cell.plan.to_toml())
        return self._finish_cell(cell, cell_dir, code, time.perf_counter() - t0)

    def _cell_run(self, cell_worker: CellWorker, cell_dir: Path, address: str, *, resume: bool,
                  config_toml: str = "") -> int:
        if cell_dir.exists() and not resume:
            shutil.rmtree(cell_dir)  # a failed attempt, or one killed before its first checkpoint: start clean
        cell_dir.mkdir(parents=True, exist_ok=True)
        config = cell_dir / "experiment.toml"
        if not resume:
            config.write_text(config_toml)
        argv = ["run", *(["--resume", str(cell_dir)] if resume else [str(config), "--out", str(cell_dir)]),
                "--set", f"backend.address={json.dumps(address)}"]
        if self.verbose:
            argv.append("--verbose")
        log = cell_dir / "log.txt"
        if resume:
            with log.open("ab") as f:
                f.write(b"--- resumed from checkpoints/latest.pt ---\n")
        return cell_worker.run(argv, log=log, append=resume)

    def _finish_cell(self, cell: Cell, cell_dir: Path, code: int, seconds: float) -> CellResult:
        if code < 0 or _stopped_reason(cell_dir) == "interrupted":  # stopped by the sweep's Ctrl-C: stays pending
            raise KeyboardInterrupt
        status = "done" if code == 0 else "failed"
        error = "" if code == 0 else _last_error(cell_dir / "log.txt")
        _write_json(cell_dir / "cell.json", {"status": status, "values": cell.values, "exit_code": code,
                                             "seconds": seconds, "error": error,
                                             "fingerprint": _fingerprint(cell.plan)})
        return CellResult(cell=cell, status=status, seconds=seconds, error=error)


def _resumable(cell_dir: Path, config_toml: str) -> bool:
    """Whether an interrupted cell can go on from its checkpoint: it has one, did not finish, and ran this cell's
    config (a changed grid point starts again)."""
    if (cell_dir / "cell.json").exists() or not (cell_dir / "checkpoints" / "latest.pt").is_file():
        return False
    try:
        return (cell_dir / "experiment.toml").read_text() == config_toml
    except OSError:
        return False


def _stopped_reason(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "summary.json").read_text()).get("stopped_reason", ""))
    except (OSError, ValueError):
        return ""


def _last_error(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "error" in line.lower() or "failed" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "exited without output"


# ------------------------------------------------------------------------------------------------------ table


def metrics() -> list[str]:
    """The final metrics sweep.csv copies from each cell's summary.json (those some cell has), with their mean and
    std over seeds: every declared final metric, then the attack's success."""
    return [*final_metrics(), SUCCESS]


def audit_columns(summary: dict[str, Any]) -> dict[str, Any]:
    """The hooks' summary blocks of a cell as flat columns (their declared ``summary_metrics``: the mean PSNR /
    SSIM / label accuracy over the inversion records that ran, the membership audit's AUC, TPRs and empirical
    epsilon lower bound, ...), and for each block ``<block>_status``: "done", or why none ran (e.g.
    "unavailable: no plaintext update available ...")."""
    out: dict[str, Any] = {}
    for block in dict.fromkeys(m.block for m in summary_metrics() if m.block):
        value = summary.get(block)
        if isinstance(value, list) and value:
            done = any(isinstance(r, dict) and r.get("status") == "done" for r in value)
            first = value[0] if isinstance(value[0], dict) else {}
            out[f"{block}_status"] = "done" if done else f"{first.get('status')}: {first.get('reason', '')}"
        elif isinstance(value, dict) and "status" in value:
            out[f"{block}_status"] = value.get("status", "")
        for metric in summary_metrics():
            if metric.block == block and (v := metric.of(summary)) is not None:
                out[metric.name] = v
    return out


def audit_column_names() -> list[str]:
    """The columns :func:`audit_columns` can write, in order."""
    names: list[str] = []
    for block in dict.fromkeys(m.block for m in summary_metrics() if m.block):
        names += [f"{block}_status", *[m.name for m in summary_metrics() if m.block == block]]
    return names


def cell_headline(sweep_dir: Path, cell: Cell) -> str:
    """What the console says of a finished cell: its final accuracy, the attack's success (and which metric that
    is), and how it stopped when it did not complete; "" when its summary.json cannot be read."""
    try:
        summary = json.loads((sweep_dir / "cells" / cell.id / "summary.json").read_text())
    except (OSError, ValueError):
        return ""
    parts = [f"accuracy {v:.4f}"] if (v := number(summary.get("accuracy"))) is not None else []
    if (v := number(summary.get(SUCCESS))) is not None:
        parts.append(f"attack success {v:.4f} ({summary.get('attack_success_metric', SUCCESS)})")
    if summary.get("stopped_reason", "completed") != "completed":
        parts.append(f"stopped: {summary['stopped_reason']}")
    return ", ".join(parts)


def sweep_rows(sweep: Sweep, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per cell: axes, status, run_dir, final metrics, and mean / std of each metric over the seeds of the
    cell's group (cells that are done)."""
    rows: list[dict[str, Any]] = []
    for cell in sweep.cells:
        status = cell_status(sweep_dir, cell)
        row: dict[str, Any] = {"cell": cell.id, **cell.values, "status": status, "run_dir": f"cells/{cell.id}"}
        summary_path = sweep_dir / "cells" / cell.id / "summary.json"
        if status == "done" and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            for key in [*metrics(), "rounds_completed", "wall_seconds"]:
                if number(summary.get(key)) is not None:
                    row[key] = summary[key]
            row["stopped_reason"] = summary.get("stopped_reason", "")
            if summary.get("attack_success_metric"):
                row["attack_success_metric"] = summary["attack_success_metric"]
            row.update(audit_columns(summary))
        rows.append(row)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell, row in zip(sweep.cells, rows, strict=True):
        groups.setdefault(tuple(json.dumps(v) for v in cell.group), []).append(row)
    for members in groups.values():
        done = [r for r in members if r["status"] == "done"]
        for metric in metrics():
            values = [float(r[metric]) for r in done if metric in r]
            if not values:
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            for r in members:
                r[f"{metric}_mean"], r[f"{metric}_std"] = mean, std
        for r in members:
            r["num_seeds"] = len(done)
    return rows


def write_sweep_table(sweep: Sweep, sweep_dir: Path) -> Path:
    """Write ``sweep.csv`` (atomically) and return its path."""
    rows = sweep_rows(sweep, sweep_dir)
    present = [m for m in metrics() if any(m in r for r in rows)]
    audits = [c for c in audit_column_names() if any(c in r for r in rows)]
    success = ["attack_success_metric"] if any("attack_success_metric" in r for r in rows) else []
    columns = ["cell", *sweep.axes, "status", "run_dir", *present, *success, "rounds_completed", "wall_seconds",
               "stopped_reason", *audits, *[f"{m}_{s}" for m in present for s in ("mean", "std")], "num_seeds"]
    path = sweep_dir / "sweep.csv"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path
