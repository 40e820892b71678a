"""fedsec's Flower ServerApp: the round loop.

1. Wait until every client node has registered, then a start-up handshake (a ``query`` message to every node)
   maps Flower's random node ids to partition ids and warms the workers (data fetched once per worker). In cohort
   mode (:mod:`.cohorts`) the nodes are the few cohort nodes, and logical clients get virtual node ids.
2. Round 0: evaluate the seeded initial model on the held-out test set.
3. Each round: sample ``train.clients_per_round`` partitions with a generator seeded by (seed, round); the
   strategy sends the global arrays, checks and aggregates the replies (sorted by partition id); the server
   evaluates the new global model (accuracy, loss, per-class recall) and records the round.

The loop drives the strategy's ``configure_train`` / ``aggregate_train`` itself rather than calling
``Strategy.start``, so that each round can be timed, recorded and reported as it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsec.arrays import model_to_record, record_to_tensors
from fedsec.clients.attacks.omniscient import apply_omniscient
from fedsec.data.federated import FederatedData
from fedsec.errors import FedsecRuntimeError
from fedsec.models import build_model
from fedsec.plan import RunPlan
from fedsec.protocol import NODE_KEY, PARTITION_ID_KEY, dp_history_of, partition_of_reply
from fedsec.results import RunDirectory
from fedsec.strategies import RobustStrategy

from .audits import ServerAudits
from .checkpoint import restore_strategy, save_checkpoint, state_to_arrays, strategy_state
from .cohorts import CohortTransport, virtual_node
from .evaluation import ServerEvaluator, detection_scores
from .privacy_guard import PrivacyGuard

logger = logging.getLogger(__name__)

SANITIZE_KEYS = ("sanitize_kept", "sanitize_dropped", "poisoned_points", "poisoned_dropped")

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
    privacy: dict[str, float] = field(default_factory=dict)
    membership_inference: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None  # what stopped the loop, if it did not complete
    final_arrays: Any = None  # the global model's ArrayRecord at the end
    audits: dict[str, Any] = field(default_factory=dict)  # the audits' summary blocks
    sanitization: dict[str, Any] = field(default_factory=dict)  # filter totals against the poisoning truth
    rounds_completed: int = 0
    messages: str = ""  # "per_client" or "cohort (K nodes)": how clients got their messages


def build_strategy(plan: RunPlan, *, key_authority: Any = None, data: FederatedData | None = None,
                   completed_rounds: int = 0) -> RobustStrategy:
    """The run's strategy: DP-FedAvg under central DP, EncryptedFedAvg under CKKS, else the configured rule, with
    Flower's sampling minimums set. Under encryption the strategy gets the key authority's public context and its
    decrypt function, never the secret key."""
    e = plan.experiment
    sampling: dict[str, Any] = {"min_train_nodes": e.train.clients_per_round,
                                "min_available_nodes": e.data.num_clients,
                                # what the server believes of a reply (fedsec.strategies._trust)
                                "weighting": e.defense.weighting, "weight_cap": e.defense.weight_cap,
                                "num_partitions": e.data.num_clients}
    if plan.crypto is not None:
        from fedsec.strategies.encrypted_fedavg import EncryptedFedAvg

        if key_authority is None:
            raise ServerError("encryption.scheme='ckks' needs a key authority")
        dp = {} if plan.privacy is None else {
            "dp_noise_std": plan.privacy.noise_multiplier * e.privacy.clip_norm,
            "expected_clients": e.train.clients_per_round,
            "seed": e.seed,
        }
        return EncryptedFedAvg(authority=key_authority.server_view(), **dp, **sampling)
    if plan.privacy is not None:
        from fedsec.strategies.dp_fedavg import DPFedAvg

        return DPFedAvg(clip_norm=e.privacy.clip_norm, noise_multiplier=plan.privacy.noise_multiplier,
                        expected_clients=e.train.clients_per_round, seed=e.seed, **sampling)
    server_update_fn = None
    if plan.strategy_cls.needs_server_update:  # the rule trusts an update the server computes on root data
        from .fltrust_root import make_root_update

        if data is None:
            raise ServerError(f"defense.strategy={plan.strategy_name!r} needs the data for the server's root dataset")
        server_update_fn = make_root_update(data, model_name=e.model.name, train=e.train,
                                            root_size=plan.strategy_params.root_size, seed=e.seed,
                                            calls=completed_rounds)
    return plan.build_strategy(server_update_fn=server_update_fn, **sampling)


def handshake(grid: Grid, num_clients: int, *, timeout: float) -> tuple[dict[int, int], dict[int, str]]:
    """Wait for ``num_clients`` nodes, ask each for its partition id; return partition -> node id and -> Ray node."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise ServerError(f"only {len(node_ids)} of {num_clients} client nodes registered within {timeout:.0f} s")
        time.sleep(0.05)
    messages = [
        Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
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


def run_rounds(
    grid: Grid,
    plan: RunPlan,
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
    many nodes, each training a cohort of logical clients per message (:mod:`.cohorts`); 0: one node per client."""
    outcome = outcome or ServerOutcome()
    experiment, schedule, attack = plan.experiment, plan.schedule, plan.attack
    t0 = time.perf_counter()
    timeout = experiment.backend.round_timeout
    if isinstance(getattr(grid, "pull_interval", None), float):  # Flower's InMemoryGrid polls for replies every
        grid.pull_interval = min(grid.pull_interval, 0.01)  # 0.1 s by default: ~50 ms of idle wait per round
    transport: Any = grid
    if cohort_nodes:
        cohort_node_of, ray_node_of_cohort = handshake(grid, cohort_nodes, timeout=timeout)
        transport = CohortTransport(grid, [cohort_node_of[c] for c in range(cohort_nodes)])
        node_of = {pid: virtual_node(pid) for pid in range(experiment.data.num_clients)}
        ray_node_of = {pid: ray_node_of_cohort[transport.cohort_of(pid)] for pid in node_of}
        outcome.messages = f"cohort ({cohort_nodes} nodes)"
    else:
        node_of, ray_node_of = handshake(grid, experiment.data.num_clients, timeout=timeout)
        outcome.messages = "per_client"
    partition_of_node = {node: pid for pid, node in node_of.items()}
    outcome.partition_nodes = ray_node_of
    malicious = set(schedule.malicious)
    outcome.malicious_clients = sorted(malicious)
    start = resume_state["round"] + 1 if resume_state else 1
    strategy = build_strategy(plan, key_authority=key_authority, data=data, completed_rounds=start - 1)
    strategy.node_sampler = lambda server_round: [node_of[p] for p in schedule.sampled(server_round)]
    evaluator = ServerEvaluator(experiment.model.name, attack, data, poison=experiment.data.poison)
    audits = ServerAudits(plan, data, model=evaluator.model, x_test=evaluator.x, y_test=evaluator.y,
                          plots=run_dir.path / "plots")
    privacy = PrivacyGuard(experiment.privacy, plan.privacy)
    node_counts: Counter[str] = Counter()
    dp_histories: dict[int, list[tuple[float, float, int]]] = {}
    if resume_state:
        arrays = state_to_arrays(resume_state["arrays"])
        restore_strategy(strategy, resume_state["strategy"])
        privacy.restore(resume_state["privacy"])
        audits.restore(resume_state["audits"])
        node_counts.update(resume_state["node_counts"])
        outcome.skipped_rounds = list(resume_state["skipped_rounds"])
        dp_histories = {int(k): [tuple(h) for h in v] for k, v in resume_state["dp_histories"].items()}
        outcome.startup_seconds = time.perf_counter() - t0
        outcome.rounds_completed, outcome.final_arrays = start - 1, arrays
        logger.info("fedsec: %s resumed after round %d", experiment.name, start - 1)
    else:
        initial = build_model(experiment.model.name, data.input_shape, data.num_classes, seed=experiment.seed)
        arrays = model_to_record(initial)
        row: dict[str, Any] = {"round": 0, **evaluator(arrays)}
        outcome.startup_seconds = row["seconds"] = time.perf_counter() - t0
        privacy.start(row)
        _emit(run_dir, row, on_round)
    logger.info("fedsec: %s with %s, %d rounds", experiment.name, strategy.describe(), experiment.rounds)

    train_config = ConfigRecord()
    for server_round in range(start, experiment.rounds + 1):
        if not privacy.allows_next_round():
            outcome.stopped_reason = "privacy_budget"
            logger.warning("stopping before round %d: it would spend more than epsilon=%s", server_round,
                           experiment.privacy.epsilon)
            break
        t_round = time.perf_counter()
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = list(transport.send_and_receive(messages, timeout=timeout))
        if outcome.stop.is_set():  # interrupted while the round ran: record nothing of it
            break
        for reply in replies:
            history = dp_history_of(reply)
            pid = partition_of_reply(reply)
            if history is not None and pid is not None:
                dp_histories[pid] = history
        audits.on_replies(server_round, arrays, replies)  # what a curious server does with what it received
        if attack.omniscient and schedule.attack_active(server_round):
            apply_omniscient(attack, replies, arrays, malicious)
        t_replies = time.perf_counter()
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        report = strategy.last_report
        if new_arrays is not None:
            arrays = new_arrays
        else:
            outcome.skipped_rounds.append(server_round)
        t_aggregated = time.perf_counter()
        row = {"round": server_round, **evaluator(arrays), **audits.after_round(server_round, arrays)}
        row["seconds"] = time.perf_counter() - t_round
        row["train_seconds"] = t_replies - t_round  # clients' training, messaging through Flower and Ray
        row["aggregate_seconds"] = t_aggregated - t_replies
        row["eval_seconds"] = row["seconds"] - (t_aggregated - t_round)
        decisions = report.decisions if report else []
        for d in decisions:  # a failed reply carries no partition id: the node it came from says whose it was
            if d.partition_id is None and d.node_id in partition_of_node:
                d.partition_id = partition_of_node[d.node_id]
        row["clients_sampled"] = len(decisions)
        row["clients_accepted"] = sum(1 for d in decisions if d.weight > 0)
        row["clients_failed"] = sum(1 for d in decisions if d.status.startswith(("failed", "invalid", "refused")))
        row["skipped"] = int(new_arrays is None)
        for key in ("train_loss", "bytes_up", "encrypt_seconds", "sign_seconds", "he_add_seconds", "decrypt_seconds"):
            if train_metrics is not None and key in train_metrics:
                row[key] = float(train_metrics[key])
        for key in SANITIZE_KEYS:  # totals over the round's clients
            values = [d.metrics[key] for d in decisions if key in d.metrics]
            if values:
                row[key] = float(sum(values))
        privacy.end_round(row, decisions)
        if malicious:
            row["attack_active"] = int(schedule.attack_active(server_round))
            row["malicious_sampled"] = sum(1 for d in decisions if d.partition_id in malicious)
            row.update(detection_scores(decisions, malicious))
        client_rows = [_client_row(server_round, d, malicious, ray_node_of) for d in decisions]
        if outcome.stop.is_set():
            break
        node_counts.update(r["node"] for r in client_rows)
        run_dir.add_clients(client_rows)
        _emit(run_dir, row, on_round)
        outcome.rounds_completed = server_round
        outcome.final_arrays = arrays
        save_checkpoint(run_dir.path, {
            "round": server_round, "arrays": record_to_tensors(arrays), "strategy": strategy_state(strategy),
            "privacy": privacy.state(), "audits": audits.state(), "node_counts": dict(node_counts),
            "skipped_rounds": list(outcome.skipped_rounds), "dp_histories": dp_histories,
        })
        if privacy.all_refused(decisions):
            outcome.stopped_reason = "privacy_budget"
            logger.warning("stopping after round %d: every sampled client has spent its budget", server_round)
            break
        failed = _all_failed(decisions)
        if failed:
            outcome.stopped_reason = f"all_clients_failed (round {server_round}: {failed})"
            logger.error("stopping after round %d: no client could take part: %s", server_round, failed)
            break
    outcome.clients_per_node = dict(node_counts)
    outcome.privacy = privacy.summary
    if outcome.stop.is_set():
        outcome.stopped_reason = "interrupted"
        return outcome
    if outcome.stopped_reason in ("not started", "running"):
        outcome.stopped_reason = "completed"
    outcome.membership_inference = evaluator.membership_inference(arrays, data, seed=experiment.seed,
                                                                  privacy=experiment.privacy)
    audits.at_end(arrays, privacy_summary=privacy.summary)
    outcome.audits = audits.summary
    outcome.sanitization = _sanitization_totals(run_dir)
    return outcome


def _all_failed(decisions: list[Any]) -> str:
    """'' when some client took part; else each failure kind with its count, e.g. "failed: ... x3"."""
    if not decisions or any(d.status in ("accepted", "rejected") or d.status.startswith(("refused", "skipped"))
                            for d in decisions):
        return ""
    kinds = Counter(d.status.split(":")[0] + ": " + d.status.split(":", 1)[-1].strip()[:80] for d in decisions)
    return "; ".join(f"{kind} x{count}" for kind, count in kinds.items())


def _client_row(server_round: int, d: Any, malicious: set[int], ray_node_of: dict[int, str]) -> dict[str, Any]:
    """One row of clients.csv."""
    node = d.node or (ray_node_of.get(d.partition_id, "") if d.partition_id is not None else "")
    return {
        "round": server_round,
        "client": d.partition_id if d.partition_id is not None else -1,
        "malicious": int(d.partition_id in malicious),
        "num_examples": d.num_examples,
        "update_norm": d.update_norm,
        "accepted": d.weight,
        "node": node,
        "status": d.status,
        "train_loss": d.metrics.get("train_loss", float("nan")),
        **{k: v for k, v in d.metrics.items() if k == "epsilon" or k.startswith("epsilon_")},  # both accountants
        **{k: d.metrics[k] for k in SANITIZE_KEYS if k in d.metrics},
    }


def _sanitization_totals(run_dir: RunDirectory) -> dict[str, Any]:
    """The filters' totals over every (round, client) for the seed metric sheet (DQ_filtered, A)."""
    rows = [r for r in run_dir.rounds if "sanitize_kept" in r]
    if not rows:
        return {}
    kept, dropped = sum(r["sanitize_kept"] for r in rows), sum(r["sanitize_dropped"] for r in rows)
    poisoned, poisoned_dropped = sum(r["poisoned_points"] for r in rows), sum(r["poisoned_dropped"] for r in rows)
    return {"datapoints": int(kept + dropped), "poisoned": int(poisoned), "dropped": int(dropped),
            "poisoned_dropped": int(poisoned_dropped), "anomalies_detected": int(dropped),
            "false_drops": int(dropped - poisoned_dropped)}


def _emit(run_dir: RunDirectory, row: dict[str, Any], on_round: RoundCallback | None) -> None:
    run_dir.add_round(row)
    if on_round is not None:
        on_round(row)


def make_server_app(
    plan: RunPlan,
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
