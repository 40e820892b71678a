"""fedsec's Flower ServerApp: the round loop.

1. Wait until every client node has registered, then a start-up handshake (a ``query`` message to every node)
   maps Flower's random node ids to partition ids and warms the workers (data fetched once per worker). In cohort
   mode (:mod:`.cohorts`) the nodes are the few cohort nodes, and logical clients get virtual node ids.
2. Round 0: evaluate the seeded initial model on the held-out test set.
3. Each round: sample ``train.clients_per_round`` partitions with a generator seeded by (seed, round) (the
   hooks' ``before_send`` takes out the devices that dropped, :mod:`fedsec.federation`); the
   strategy sends the global arrays, checks and aggregates the replies (sorted by partition id); the server
   optimizer (``server.optimizer``, :mod:`fedsec.strategies.server_optimizers`) takes its step on
   (aggregate - global); the server evaluates the new global model (accuracy, loss, per-class recall) and records
   the round.

The loop drives the strategy's ``configure_train`` / ``aggregate_train`` itself rather than calling
``Strategy.start``, so that each round can be timed, recorded and reported as it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsec.arrays import model_to_record
from fedsec.crypto.client_keys import MessagedDecryption
from fedsec.data.federated import FederatedData
from fedsec.errors import FedsecRuntimeError
from fedsec.hooks import PROGRESS, RoundHook, RoundState, ServerContext
from fedsec.models import build_model
from fedsec.plan import ServerPlan
from fedsec.protocol import NODE_KEY, PARTITION_ID_KEY
from fedsec.results import RunDirectory
from fedsec.strategies import RobustStrategy
from fedsec.strategies.base import resolve_device

from .books import RoundBooks, emit
from .checkpoint import save_checkpoint, state_to_arrays
from .cohorts import CohortTransport, virtual_node
from .secaggplus import SecAggPlusTransport
from .stop_aware_grid import StopAwareGrid

logger = logging.getLogger(__name__)

RoundCallback = Callable[[dict[str, Any]], None]


class ServerError(FedsecRuntimeError):
    """The federation could not be set up (nodes missing, handshake failed)."""


@dataclass
class ServerOutcome:
    """How the round loop ended."""

    stopped_reason: str = "not started"
    stop: threading.Event = field(default_factory=threading.Event)  # set on Ctrl-C / SIGTERM: record nothing more
    startup_seconds: float = float("nan")
    partition_nodes: dict[int, str] = field(default_factory=dict)
    clients_per_node: dict[str, int] = field(default_factory=dict)
    skipped_rounds: list[int] = field(default_factory=list)
    malicious_clients: list[int] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # the hooks' summary.json blocks
    error: BaseException | None = None  # what stopped the loop, if it did not complete
    final_arrays: Any = None  # the global model's ArrayRecord at the end
    rounds_completed: int = 0
    messages: str = ""  # "per_client" or "cohort (K nodes)": how clients got their messages


def build_strategy(plan: ServerPlan, data: FederatedData, *, key_authority: Any = None,
                   completed_rounds: int = 0, transport: tuple[Any, dict[int, int]] | None = None) -> RobustStrategy:
    """The run's strategy (:meth:`fedsec.plan.RunPlan.server_strategy`); FLTrust's root update is computed here,
    where the data are. ``transport``: (the run's transport, partition -> node id), through which the decrypting
    clients answer under ``encryption.trust = "clients"`` and ``"threshold"`` (the simulated devices decide who is
    reachable)."""
    server_update_fn = None
    if plan.needs_server_update:  # the rule trusts an update the server computes on root data
        from .fltrust_root import make_root_update

        facts = plan.facts
        server_update_fn = make_root_update(data, model_name=facts.model_name, train=facts.train,
                                            root_size=plan.root_size, seed=facts.seed, calls=completed_rounds)
    strategy = plan.make_strategy(key_authority=key_authority, server_update_fn=server_update_fn)
    if transport is not None and isinstance(decryption := getattr(strategy, "authority", None), MessagedDecryption):
        decryption.connect(*transport, plan.round_timeout, devices=plan.facts.federation)
    return strategy


def handshake(grid: Grid | StopAwareGrid, num_clients: int, *, timeout: float,
              stop: threading.Event | None = None) -> tuple[dict[int, int], dict[int, str]]:
    """Wait for ``num_clients`` nodes, ask each for its partition id; return partition -> node id and -> Ray node.
    ``stop`` set while waiting (Ctrl-C): ``KeyboardInterrupt``, which the ServerApp records as "interrupted"."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if stop.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise ServerError(f"only {len(node_ids)} of {num_clients} client nodes registered within {timeout:.0f} s")
        time.sleep(0.05)
    messages = [
        Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if stop.is_set():
        raise KeyboardInterrupt
    node_of: dict[int, int] = {}
    ray_node_of: dict[int, str] = {}
    for reply in replies:
        if reply.has_error():
            raise ServerError(f"client start-up failed on node {reply.metadata.src_node_id}: {reply.error.reason}")
        partition_id = int(reply.content["metrics"][PARTITION_ID_KEY])
        node_of[partition_id] = reply.metadata.src_node_id
        ray_node_of[partition_id] = str(reply.content["info"][NODE_KEY])
    if sorted(node_of) != list(range(num_clients)):
        raise ServerError(f"handshake answered for {len(node_of)} of {num_clients} partitions")
    return node_of, ray_node_of


def connect(grid: Grid, plan: ServerPlan, data: FederatedData, cohort_nodes: int, *,
            outcome: ServerOutcome) -> tuple[Any, dict[int, int], dict[int, str]]:
    """The handshake; returns the transport to send through (it stops waiting for replies once ``outcome.stop`` is
    set; under ``encryption.scheme = "secagg+"`` every round goes through Flower's SecAgg+ workflow,
    :mod:`.secaggplus`), partition -> node id and partition -> Ray node."""
    if isinstance(getattr(grid, "pull_interval", None), float):  # Flower's InMemoryGrid polls for replies every
        grid.pull_interval = min(grid.pull_interval, 0.01)  # 0.1 s by default: idle wait in every round
    waiting, num_clients, timeout = StopAwareGrid(grid, outcome.stop), plan.facts.num_clients, plan.round_timeout
    if plan.secagg is not None:  # SecAgg+ runs between Flower nodes: one per client (the runner registers them)
        node_of, ray_node_of = handshake(waiting, num_clients, timeout=timeout, stop=outcome.stop)
        fed = plan.facts.federation
        transport = SecAggPlusTransport(waiting, plan.secagg, {n: p for p, n in node_of.items()},
                                        fed.fails if fed is not None else None,
                                        max_weight=max(len(p) for p in data.partitions) if plan.secagg.weighted else 1)
        outcome.messages = "per_client (SecAgg+)"
        return transport, node_of, ray_node_of
    if not cohort_nodes:
        outcome.messages = "per_client"
        return waiting, *handshake(waiting, num_clients, timeout=timeout, stop=outcome.stop)
    cohort_node_of, ray_node_of_cohort = handshake(waiting, cohort_nodes, timeout=timeout, stop=outcome.stop)
    transport = CohortTransport(waiting, [cohort_node_of[c] for c in range(cohort_nodes)])
    node_of = {pid: virtual_node(pid) for pid in range(num_clients)}
    outcome.messages = f"cohort ({cohort_nodes} nodes)"
    return transport, node_of, {pid: ray_node_of_cohort[transport.cohort_of(pid)] for pid in node_of}


def run_rounds(
    grid: Grid,
    plan: ServerPlan,
    data: FederatedData,
    run_dir: RunDirectory,
    *,
    on_round: RoundCallback | None = None,
    outcome: ServerOutcome | None = None,
    key_authority: Any = None,
    resume_state: dict[str, Any] | None = None,
    cohort_nodes: int = 0,
) -> ServerOutcome:
    """The whole federated run on ``grid``; results go to ``run_dir`` as rounds end, with a checkpoint after each
    (``resume_state``: a checkpoint to go on from, :mod:`.checkpoint`). ``cohort_nodes`` > 0: the grid has that
    many nodes, each training a cohort of logical clients per message (:mod:`.cohorts`); 0: one node per client.
    Everything but sending, aggregating and recording is a round hook (:mod:`fedsec.hooks`), run in plan order."""
    outcome, facts, t0 = outcome or ServerOutcome(), plan.facts, time.perf_counter()
    transport, node_of, ray_node_of = connect(grid, plan, data, cohort_nodes, outcome=outcome)
    outcome.partition_nodes, outcome.malicious_clients = ray_node_of, sorted(facts.schedule.malicious)
    start = resume_state["round"] + 1 if resume_state else 1
    strategy = build_strategy(plan, data, key_authority=key_authority, completed_rounds=start - 1,
                              transport=(transport, node_of))
    ctx = ServerContext.build(facts, data, run_dir.path / "plots", resolve_device("auto"))
    hooks, optimizer = [h.build(ctx) for h in plan.hooks], plan.make_optimizer()
    books = RoundBooks(facts, ray_node_of, {node: pid for pid, node in node_of.items()}, hooks, optimizer)
    arrays = _start(resume_state, strategy, hooks, books, outcome, ctx, run_dir, on_round, t0)
    logger.info("fedsec: %s with %s, server optimizer %s, %d rounds", facts.name, strategy.describe(),
                optimizer.describe(), facts.rounds)
    for server_round in range(start, facts.rounds + 1):
        if reason := next((r for h in hooks if (r := h.before_round(server_round))), ""):
            outcome.stopped_reason = reason
            break
        rnd, t_round = RoundState(server_round, arrays, sampled=facts.schedule.sampled(server_round),
                                  partition_of_node=books.partition_of_node), time.perf_counter()
        strategy.node_sampler = _round_sampler(hooks, rnd, node_of)
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        rnd.replies = list(transport.send_and_receive(messages, timeout=plan.round_timeout))
        if outcome.stop.is_set():  # interrupted while the round ran: record nothing of it
            break
        for hook in hooks:
            hook.on_replies(rnd)
        t_replies = time.perf_counter()
        new_arrays, rnd.train_metrics = strategy.aggregate_train(server_round, rnd.replies)
        new_arrays = optimizer.apply(server_round, arrays, new_arrays)  # server.optimizer on (aggregate - global)
        rnd.arrays = arrays = new_arrays if new_arrays is not None else arrays
        rnd.decisions, rnd.skipped_reason = books.decisions(strategy.last_report, rnd.absent)
        t_aggregated = time.perf_counter()
        rnd.row = {"round": server_round, "skipped": int(new_arrays is None)}
        for hook in hooks:
            hook.after_aggregate(rnd)
        books.time(rnd.row, t_round, t_replies, t_aggregated)
        if outcome.stop.is_set():
            break
        books.record(run_dir, rnd, outcome, on_round, skipped=new_arrays is None)
        save_checkpoint(run_dir.path, books.checkpoint(rnd, strategy, outcome))
        if reason := next((r for h in hooks if (r := h.after_round(rnd))), ""):
            outcome.stopped_reason = reason
            break
    return _finish(outcome, hooks, arrays, books)


def _round_sampler(hooks: list[RoundHook], rnd: RoundState, node_of: dict[int, int]) -> Callable[[int], list[int]]:
    """The nodes the round is sent to: the schedule's sample (``rnd.sampled``) less the partitions the hooks take
    out before sending (dropped devices)."""
    for hook in hooks:
        hook.before_send(rnd)
    nodes = [node_of[p] for p in rnd.sampled]
    return lambda _: nodes


def _start(resume_state: dict[str, Any] | None, strategy: RobustStrategy, hooks: list[RoundHook], books: RoundBooks,
           outcome: ServerOutcome, ctx: ServerContext, run_dir: RunDirectory, on_round: RoundCallback | None,
           t0: float) -> Any:
    """The global arrays to start from: the checkpoint's (everything restored), or the seeded initial model,
    evaluated and recorded as round 0."""
    if resume_state:
        arrays = state_to_arrays(resume_state["arrays"])
        books.restore(resume_state, strategy)
        outcome.startup_seconds = time.perf_counter() - t0
        outcome.rounds_completed, outcome.final_arrays = resume_state["round"], arrays
        logger.info("fedsec: %s resumed after round %d", ctx.facts.name, resume_state["round"])
        return arrays
    initial = build_model(ctx.facts.model_name, ctx.data.input_shape, ctx.data.num_classes, seed=ctx.facts.seed)
    arrays = model_to_record(initial)
    row: dict[str, Any] = {"round": 0}
    for hook in hooks:
        hook.on_start(arrays, row)
    outcome.startup_seconds = row["seconds"] = time.perf_counter() - t0
    emit(run_dir, row, on_round)
    return arrays


def _finish(outcome: ServerOutcome, hooks: list[RoundHook], arrays: Any, books: RoundBooks) -> ServerOutcome:
    """How the run ended; the hooks' summary blocks (the end-of-run audits only when it completed)."""
    outcome.clients_per_node, outcome.skipped_rounds = dict(books.node_counts), list(books.skipped_rounds)
    for hook in hooks:
        hook.on_stop(outcome.summary)
    if outcome.stop.is_set():
        outcome.stopped_reason = "interrupted"
        return outcome
    if outcome.stopped_reason in ("not started", "running"):
        outcome.stopped_reason = "completed"
    for hook in hooks:
        if type(hook).at_end is not RoundHook.at_end:  # end-of-run work (the audits): say so, it can take minutes
            PROGRESS.info("end of run: %s", hook.name)
            started = time.perf_counter()
            hook.at_end(arrays, outcome.summary)
            logger.info("fedsec: end-of-run %s took %.1f s", hook.name, time.perf_counter() - started)
    return outcome


def make_server_app(
    plan: ServerPlan,
    data: FederatedData,
    run_dir: RunDirectory,
    *,
    on_round: RoundCallback | None = None,
    outcome: ServerOutcome | None = None,
    key_authority: Any = None,
    resume_state: dict[str, Any] | None = None,
    cohort_nodes: int = 0,
) -> ServerApp:
    """A ServerApp that runs ``plan``; ``outcome`` is filled in as the run goes."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_rounds(grid, plan, data, run_dir, on_round=on_round, outcome=outcome, key_authority=key_authority,
                       resume_state=resume_state, cohort_nodes=cohort_nodes)
        except BaseException as e:  # hand it to the runner, which reports it after Ray has shut down
            if outcome is None:
                raise
            outcome.error = e
            outcome.stopped_reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"error: {e}"

    return app
