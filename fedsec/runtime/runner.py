"""Run one experiment: data, Ray, Flower's simulation engine, and the run directory.

The driver loads and partitions the data once, starts (or joins) Ray itself and puts the client data into Ray's
object store; the ClientApp carries only the client spec (from the run plan) and that object's handle. Flower's
``run_simulation`` then runs fedsec's ServerApp (in a thread of this process) against ``data.num_clients``
Flower nodes (or, in cohort mode, :func:`fedsec.server.cohorts.cohort_node_count` nodes that each train a cohort of
logical clients per message) whose ClientApps Ray actors execute with ``backend.num_cpus`` / ``backend.num_gpus``
each.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fedsec.config import BackendConfig
from fedsec.errors import FedsecRuntimeError
from fedsec.plan import RunPlan

from . import ray_start
from .signals import StopOnSignal

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RunError(FedsecRuntimeError):
    """The run could not be carried out (cluster unreachable, clients failing at start-up, ...)."""


@dataclass
class RunResult:
    """Where a run's results are and its summary."""

    run_dir: Path
    summary: dict[str, Any]


def quiet_frameworks(verbose: bool) -> None:
    """Silence Flower's and Ray's log noise unless ``verbose``, and Flower's usage pings unless the user's
    ``FLWR_TELEMETRY_ENABLED`` asks for them."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage pings from a simulator (and no network)
    # Flower reads the variable once, when flwr.supercore.telemetry is first imported, which fedsec's own imports
    # (the plan's strategies) have usually done by now: without this, every run_simulation sent its start and end
    # events to Flower's telemetry server (tests/test_quiet_frameworks.py)
    if (telemetry := sys.modules.get("flwr.supercore.telemetry")) is not None:
        telemetry.FLWR_TELEMETRY_ENABLED = os.environ["FLWR_TELEMETRY_ENABLED"]
    if verbose:
        return
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def summary_extra(plan: RunPlan, outcome: Any, **measured: Any) -> dict[str, Any]:
    """What a run adds to ``summary.json`` besides the final round's metrics (``outcome``: a ServerOutcome)."""
    return {
        "strategy": plan.strategy_name,
        "attack": plan.attack.kind,
        "knowledge": plan.attack.knowledge_note(),
        "malicious_clients": outcome.malicious_clients,
        "startup_seconds": outcome.startup_seconds,
        **measured,
        "skipped_rounds": outcome.skipped_rounds,
        "clients_per_node": outcome.clients_per_node,
        "client_messages": outcome.messages,
        **outcome.summary,
    }


def add_seed_metrics(plan: RunPlan, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The source surveys' metric sheet (R, DQ_filtered, A, A/C, P <= epsilon, Q) in ``summary.json``."""
    import json

    from fedsec.hooks.health import is_meaningful
    from fedsec.metrics.seed_sheet import seed_metrics

    success = plan.attack.success.of(summary) if plan.attack.success is not None else None
    if success is not None:  # the attack's success as its declaration reads it (sweeps and reports use it)
        summary["attack_success"], summary["attack_success_metric"] = success, plan.attack.success.label
        # False when the final model is at chance or answers one class (fedsec.hooks.health)
        summary["attack_success_meaningful"] = is_meaningful(summary)
    summary["seed_metrics"] = seed_metrics(summary, plan.resolved)
    summary = _finite(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def console_metrics(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (name, value) rows of a run's console table, read from the declarations
    (:mod:`fedsec.plan.results`): how the run ended, every declared final metric the summary holds (accuracy,
    epsilon, the attack's own metrics, robust accuracy R, ...), the attack's success with the metric it was read
    from, every declared summary number present (membership AUC and TPR, inversion PSNR, MI-Face SSIM, the
    membership check), the final model's health, and the timings."""
    from fedsec.plan.results import final_metrics, summary_metrics
    from fedsec.results.contract import number

    rows: list[tuple[str, Any]] = [(k, summary[k]) for k in ("rounds_completed", "stopped_reason")
                                   if summary.get(k) is not None]
    rows += [(name, summary[name]) for name in final_metrics() if number(summary.get(name)) is not None]
    if number(summary.get("attack_success")) is not None:
        metric = str(summary.get("attack_success_metric", "?"))
        note = ", not meaningful" if summary.get("attack_success_meaningful") is False else ""
        shown = [i for i, (name, _) in enumerate(rows) if name == metric]
        if shown:  # the success is a metric already in the table: say so on its row
            rows[shown[0]] = (f"{metric} (attack success{note})", rows[shown[0]][1])
        else:  # read from another metric (1 - source_recall) or not a final metric
            rows.append((f"attack_success ({metric}){note}", summary["attack_success"]))
    rows += [(m.name, value) for m in summary_metrics() if (value := m.of(summary)) is not None]
    health = summary.get("health")
    if isinstance(health, dict) and health.get("status"):
        rows.append(("health", health["status"]))
    rows += [(k, summary[k]) for k in ("startup_seconds", "wall_seconds") if number(summary.get(k)) is not None]
    return rows


def health_line(summary: dict[str, Any]) -> str:
    """One line for the console when the final model is at chance or answers one class; "" when it is healthy."""
    health = summary.get("health")
    if not isinstance(health, dict) or health.get("status") in (None, "ok"):
        return ""
    marked = ", ".join(health.get("not_meaningful") or []) or "none measured"
    return (f"model health {health['status']}: {health.get('reason', '')}; attack metrics on it are not "
            f"meaningful ({marked})")


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, tuples lists, other objects their string."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def _also(first: Any, then: Any) -> Any:
    """A round callback that calls ``first(row)``, then ``then(row)`` when given."""
    def on_round(row: dict[str, Any]) -> None:
        first(row)
        if then is not None:
            then(row)

    return on_round


def save_model(plan: RunPlan, data: Any, outcome: Any, run_dir: Path) -> None:
    """Write the final global model (``final_model.pt``, what ``fedsec serve`` deploys), if a round produced one."""
    if outcome.final_arrays is None:
        return
    from fedsec.arrays import load_record
    from fedsec.models import build_model
    from fedsec.results.model_file import save_final_model

    facts = plan.facts
    model = build_model(facts.model_name, data.input_shape, data.num_classes)
    load_record(model, outcome.final_arrays)
    save_final_model(run_dir, model, model_name=facts.model_name, dataset=facts.dataset_name,
                     input_shape=data.input_shape,
                     num_classes=data.num_classes, server_round=outcome.rounds_completed,
                     normalisation=plan.dataset.normalisation)


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """This process's environment with ``values`` set (None: left as it is) while the block runs."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def init_ray(backend: BackendConfig, *, verbose: bool = False) -> None:
    """Start a local Ray, or join the cluster at ``backend.address`` (or ``RAY_ADDRESS``)."""
    import ray

    address = backend.address or os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():
        if _RAY["address"] is None:  # started outside fedsec (a notebook, a test): used as it is
            return
        if _RAY["kept"] and _RAY["address"] == address:  # kept by the runs before this one (:func:`keep_ray`)
            return
        shutdown_ray()  # kept for other runs, or joined to another cluster: this run starts as a lone run would
    # workers import fedsec from wherever this driver does (an installed or a source checkout): a local Ray's
    # processes inherit this process's environment when they start, a joined cluster's need a runtime_env (which
    # costs each new worker about 0.3-0.5 s on this 2-core machine, so a local Ray does without one)
    python_path = os.pathsep.join(p for p in sys.path if p)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if address:
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": python_path}}
    else:
        kwargs["_system_config"] = dict(ray_start.LOCAL_RAY_CONFIG)
    if address and address != "auto":
        check_reachable(address)
    from .orphans import end_orphans, record_session

    if not address:
        end_orphans()  # Ray processes a SIGKILLed run left behind (only those of dead fedsec drivers)
    on_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        # "local": always a fresh local Ray; a bare ray.init() would join whatever `ray start` last recorded in
        # /tmp/ray/ray_current_cluster, even a head that is long gone
        # a local Ray without the dashboard's process and the second-long registration poll (fedsec.runtime.ray_start)
        local_start = contextlib.nullcontext() if address else ray_start.prompt_local_start()
        with _environment(PYTHONPATH=None if address else python_path), local_start:
            context = ray.init(address=address or "local", **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise RunError(f"backend.address={address!r}: could not start or join Ray: {e}") from e
    if callable(on_sigterm):  # Ray's core worker installs a C++ SIGTERM handler that aborts the driver (exit -6):
        signal.signal(signal.SIGTERM, on_sigterm)  # put back the caller's (the CLI's: a clean stop, exit 143)
    _RAY["address"] = address
    _RAY["session"] = None
    if not address:
        session = getattr(context, "address_info", {}).get("session_dir")
        if session:
            record_session(session)
            _RAY["session"] = session


#: what a client actor imports for its first message, imported as it starts (:func:`_start_actors`)
CLIENT_MODULES = ("fedsec.clients.app", "fedsec.plan")  # the plan: an attack carries the defense it simulates

#: this process's Ray connection: the address fedsec started or joined it with (None: not fedsec's), the session
#: directory of a local Ray fedsec started, and whether runs keep it for the next run (:func:`keep_ray`)
_RAY: dict[str, Any] = {"address": None, "session": None, "kept": False}


def shutdown_ray() -> None:
    """Stop this process's Ray (and forget its session record, see :mod:`.orphans`)."""
    import ray

    from .orphans import forget_session, stop_autoscaler_monitor

    if ray.is_initialized():
        if "fedsec.runtime.warm_actors" in sys.modules:
            from .warm_actors import release_kept_actors

            release_kept_actors()
        if _RAY["session"]:  # a local Ray of this process's own: its shutdown without the monitor's 1 s hang
            stop_autoscaler_monitor(_RAY["session"])
        ray.shutdown()
    _RAY["address"] = _RAY["session"] = None
    forget_session()


def _end_run_ray() -> None:
    """After a run: stop Ray, unless the run is one of many that share it (:func:`one_ray_for_many_runs`)."""
    if not _RAY["kept"]:
        shutdown_ray()


def _start_actors(backend: BackendConfig) -> None:
    """The run's client actors (:class:`~fedsec.runtime.client_actor.ClientActor`, which spares each Flower's engine
    imports), started now so that they import the client while the driver prepares the run, or kept from the run
    before (:func:`keep_ray`); Flower's engine takes them (:mod:`.warm_actors`), and :func:`shutdown_ray` ends them."""
    from .warm_actors import start_actors

    start_actors(_client_resources(backend), preload=CLIENT_MODULES)


def _client_resources(backend: BackendConfig) -> dict[str, float]:
    return {"num_cpus": backend.num_cpus, "num_gpus": backend.num_gpus}


@contextlib.contextmanager
def keep_ray() -> Iterator[None]:
    """Within: :func:`run_experiment` keeps this process's Ray connection and its client actors for the next run
    that is also within a ``keep_ray`` block (:mod:`.warm_actors`) instead of starting and stopping both per run.
    Ray stays up after the block; a run outside one stops it and starts its own, and :func:`shutdown_ray` ends it.
    """
    before = _RAY["kept"]
    _RAY["kept"] = True
    try:
        yield
    finally:
        _RAY["kept"] = before


@contextlib.contextmanager
def one_ray_for_many_runs() -> Iterator[None]:
    """:func:`keep_ray`, and Ray stopped when the block ends: for a process that runs many runs one after another
    against one cluster (a sweep's cell worker, a privacy study)."""
    try:
        with keep_ray():
            yield
    finally:
        shutdown_ray()


def client_slots(nodes: list[dict[str, Any]], num_cpus: float, num_gpus: float) -> dict[str, int]:
    """How many client actors of ``num_cpus`` / ``num_gpus`` each fit on each alive node (``ray.nodes()`` entries),
    counted per node as Flower's actor pool does."""
    slots: dict[str, int] = {}
    for node in nodes:
        resources = node.get("Resources") or {}
        if not node.get("Alive", True) or not resources:
            continue
        fit = int(resources.get("CPU", 0) // num_cpus)
        if num_gpus > 0:
            fit = min(fit, int(resources.get("GPU", 0) // num_gpus))
        slots[str(node.get("NodeID", "?"))] = fit
    return slots


def check_resources(backend: BackendConfig) -> dict[str, int]:
    """Fail with a clear message when no node can host one client with the requested resources (Flower would
    otherwise start an empty actor pool and wait forever); return the client slots per node."""
    import ray

    nodes = ray.nodes()
    slots = client_slots(nodes, backend.num_cpus, backend.num_gpus)
    if sum(slots.values()) == 0:
        total = ray.cluster_resources()
        raise RunError(
            f"backend.num_cpus={backend.num_cpus:g}, backend.num_gpus={backend.num_gpus:g}: no Ray node can host a "
            f"client (the cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs over "
            f"{len(slots)} node(s); one node must have both); lower the per-client resources or add nodes"
        )
    return slots


def check_reachable(address: str, *, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds when nothing listens at a Ray address (Ray itself retries for minutes)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RunError(f"backend.address={address!r}: expected host:port (e.g. 10.0.0.5:6379), 'auto' or ''")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise RunError(
            f"backend.address={address!r}: no Ray cluster reachable there within {timeout:.0f} s ({e}); start one "
            "with `ray start --head` or fix the address"
        ) from e


def _timed(fn: Callable[..., T], /, *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and the seconds it took."""
    started = time.perf_counter()
    return fn(*args), time.perf_counter() - started


def _in_background(fn: Callable[..., T], /, *args: Any, name: str) -> Future[T]:
    """``fn(*args)`` in a daemon thread called ``name`` (one that never holds up the interpreter's exit when the run
    fails first); its result or exception through the future."""
    future: Future[T] = Future()

    def work() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to whoever asks for the result
                future.set_exception(e)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def run_experiment(
    plan: RunPlan,
    out_dir: str | Path | None = None,
    *,
    on_round: Any = None,
    verbose: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    stop: Any = None,
) -> RunResult:
    """Run ``plan`` end to end and write its run directory; ``on_round(row)`` is called as rounds end.

    ``resume``: go on from the directory's last checkpoint (rows after it are dropped and redone; the privacy spent
    is restored, never reset); ``overwrite``: delete the run the directory holds first. ``stop``: a
    ``threading.Event`` that, once set (Ctrl-C, SIGTERM), makes the server record nothing more."""
    quiet_frameworks(verbose)
    from fedsec.data import DatasetError, PartitionError
    from fedsec.data.federated import build_federated_data

    backend = plan.backend
    t0 = time.perf_counter()
    if plan.experiment.tracking is not None:  # a tracker's missing package fails before anything starts
        from fedsec.results.exports import require_packages

        require_packages(plan.experiment.tracking)
    # the data loads and partitions in a thread while this thread imports Ray and Flower's engine (0.9 s on one
    # core) and Ray starts (mostly waiting on Ray's processes)
    data_loading = _in_background(_timed, build_federated_data, plan.data_config, plan.seed, name="fedsec-data")
    import ray
    from flwr.simulation import run_simulation

    from fedsec.clients.app import make_client_app
    from fedsec.clients.spec import ClientSpec
    from fedsec.hooks.privacy import dp_histories_of
    from fedsec.results import RunDirectory
    from fedsec.server.app import ServerOutcome, make_server_app
    from fedsec.server.cohorts import cohort_node_count

    from .engine_queues import prompt_engine_queues
    from .warm_actors import kept_actors

    init_ray(backend, verbose=verbose)  # a bad cluster address fails here, before the run directory is made
    try:
        slots = check_resources(backend)
        _start_actors(backend)
        run_dir = RunDirectory(out_dir or default_run_dir(plan.name), plan, config_toml=plan.to_toml(),
                               resume=resume, overwrite=overwrite)
    except BaseException:
        _end_run_ray()
        raise
    resume_state = exporter = None
    try:
        if plan.experiment.tracking is not None:  # MLflow / TensorBoard: a store that cannot open fails here
            from fedsec.results.exports import RunExporter

            exporter = RunExporter.from_config(plan.experiment.tracking, run_dir.path, resume=resume)
        if resume:
            from fedsec.server.checkpoint import load_checkpoint

            resume_state = load_checkpoint(run_dir.path)
            dropped = run_dir.truncate_after(resume_state["round"] if resume_state else -1)
            logger.info("resuming %s after round %s (%d row(s) of later rounds dropped)", run_dir.path,
                        resume_state["round"] if resume_state else "none", dropped)
        data, data_seconds = data_loading.result()
    except (DatasetError, PartitionError) as e:
        run_dir.close()
        _end_run_ray()
        raise RunError(str(e)) from e
    except BaseException:
        run_dir.close()
        _end_run_ray()
        raise
    outcome = ServerOutcome()
    if stop is not None:
        outcome.stop = stop
    key_authority = board = None
    try:
        data_ref = ray.put(data.without_test())
        board_name = None
        if plan.attack.colluding:
            from fedsec.clients.attacks.collusion import start_board

            board_name = f"fedsec-collusion-{uuid.uuid4().hex[:12]}"
            board = start_board(board_name)
        key_authority = crypto_ref = None
        if plan.crypto is not None:  # the secret key: in the clients' key directory or the authority's actor
            key_authority = plan.start_keys()
            crypto_ref = key_authority.client_ref()
        spec = ClientSpec.from_plan(plan, data_ref=data_ref, board_name=board_name, crypto_ref=crypto_ref,
                                    dp_histories=dp_histories_of(resume_state) if resume_state else None)
        client_app = make_client_app(spec)
        num_clients = plan.facts.num_clients
        cohort_nodes = 0 if plan.secagg is not None else cohort_node_count(  # SecAgg+ runs between nodes
            backend.messages, backend.cohort_nodes, num_clients=num_clients, client_slots=sum(slots.values()))
        if exporter is not None:
            exporter.start(plan.resolved)
            on_round = _also(exporter.round, on_round)
        server_app = make_server_app(
            plan.server_plan(), data, run_dir, on_round=on_round, outcome=outcome, key_authority=key_authority,
            resume_state=resume_state, cohort_nodes=cohort_nodes,
        )
        backend_config = {
            "client_resources": _client_resources(backend),
            "init_args": {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR},
        }
        # Ctrl-C ends the run through the server, not in Flower; the engine's threads see its end within 50 ms
        with StopOnSignal(outcome.stop), kept_actors(), prompt_engine_queues():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cohort_nodes or num_clients,
                backend_name="ray",
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    except KeyboardInterrupt as e:  # before the simulation started, or a second Ctrl-C inside it
        outcome.stop.set()  # the server thread records nothing more
        outcome.error = e
        outcome.stopped_reason = "interrupted"
    finally:
        if key_authority is not None:
            key_authority.stop()
        if board is not None:  # a Ray kept for the next run (keep_ray) would keep it too
            ray.kill(board)
        _end_run_ray()
    if outcome.stop.is_set():
        outcome.stopped_reason = "interrupted"
    save_model(plan, data, outcome, run_dir.path)
    summary = run_dir.finish(
        stopped_reason=outcome.stopped_reason,
        extra=summary_extra(plan, outcome, data_seconds=data_seconds, wall_seconds=time.perf_counter() - t0,
                            client_slots_per_node=slots),
    )
    summary = add_seed_metrics(plan, summary, run_dir.path)
    if exporter is not None:
        exporter.finish(summary, run_dir.path, console_metrics(summary))
    if outcome.error is not None and not isinstance(outcome.error, KeyboardInterrupt):
        raise RunError(f"run stopped: {outcome.error}") from outcome.error
    return RunResult(run_dir=run_dir.path, summary=summary)
