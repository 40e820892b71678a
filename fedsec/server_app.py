"""fedsec's Flower ServerApp: the round loop.

1. Wait until every client node has registered, then a start-up handshake (a ``query`` message to every node)
   maps Flower's random node ids to partition ids and warms the workers (data fetched once per worker).
2. Round 0: evaluate the seeded initial model on the held-out test set.
3. Each round: sample ``train.clients_per_round`` partitions with a generator seeded by (seed, round); the
   strategy sends the global arrays, checks and aggregates the replies (sorted by partition id); the server
   evaluates the new global model (accuracy, loss, per-class recall) and records the round.

The loop drives the strategy's ``configure_train`` / ``aggregate_train`` itself rather than calling
``Strategy.start``, so that each round can be timed, recorded and reported as it ends.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsec.config import COLLUDING_ATTACKS, Experiment
from fedsec.federated_data import FederatedData
from fedsec.models import build_model
from fedsec.omniscient import apply_omniscient
from fedsec.records import load_record, model_to_record
from fedsec.results import RunDirectory
from fedsec.strategies import STRATEGIES, RobustStrategy
from fedsec.strategies.base import NODE_KEY, PARTITION_ID_KEY, resolve_device
from fedsec.threat import attack_active, malicious_clients
from fedsec.training import evaluate

logger = logging.getLogger(__name__)

RoundCallback = Callable[[dict[str, Any]], None]


class ServerError(RuntimeError):
    """The federation could not be set up (nodes missing, handshake failed)."""


@dataclass
class ServerOutcome:
    """How the round loop ended."""

    stopped_reason: str = "not started"
    startup_seconds: float = float("nan")
    partition_nodes: dict[int, str] = field(default_factory=dict)
    clients_per_node: dict[str, int] = field(default_factory=dict)
    skipped_rounds: list[int] = field(default_factory=list)
    malicious_clients: list[int] = field(default_factory=list)
    privacy: dict[str, float] = field(default_factory=dict)
    membership_inference: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None  # what stopped the loop, if it did not complete


def sample_partitions(seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """The partitions that train in ``server_round``: k of num_clients, seeded by (seed, round), sorted."""
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(num_clients, size=k, replace=False))


def build_strategy(experiment: Experiment, *, key_authority: Any = None) -> RobustStrategy:
    """The configured strategy (DP-FedAvg under central DP, EncryptedFedAvg under CKKS), with Flower's sampling
    minimums set. Under encryption the strategy gets the key authority's public context and its decrypt function,
    never the secret key."""
    sampling = {"min_train_nodes": experiment.train.clients_per_round,
                "min_available_nodes": experiment.data.num_clients}
    if experiment.encryption.scheme == "ckks":
        from fedsec.strategies.encrypted_fedavg import EncryptedFedAvg

        if key_authority is None:
            raise ServerError("encryption.scheme='ckks' needs a key authority")
        plan = experiment.privacy_plan()
        dp = {} if plan is None else {
            "dp_noise_std": plan.noise_multiplier * experiment.privacy.clip_norm,
            "expected_clients": experiment.train.clients_per_round,
            "seed": experiment.seed,
        }
        return EncryptedFedAvg(public_context=key_authority.server_context(), decryptor=key_authority.decrypt_sum,
                               **dp, **sampling)
    plan = experiment.privacy_plan()
    if plan is not None:
        from fedsec.strategies.dp_fedavg import DPFedAvg

        return DPFedAvg(clip_norm=experiment.privacy.clip_norm, noise_multiplier=plan.noise_multiplier,
                        expected_clients=experiment.train.clients_per_round, seed=experiment.seed, **sampling)
    cls, _ = STRATEGIES[experiment.defense.strategy]
    return cls(**sampling, **experiment.strategy_kwargs())


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


class ServerEvaluator:
    """Evaluates global arrays on the held-out test set, on the server's device, with the attack's metrics.

    - every run: ``accuracy``, ``loss``, ``recall_<class>``;
    - targeted label flipping: ``source_recall`` (recall of the source class) and ``flip_rate`` (share of
      source-class test inputs classified as the target);
    - backdoor: ``attack_success_rate``: share of triggered test inputs whose true label is not the target that
      the model classifies as the target (the full trigger; for DBA the union of the local triggers).
    """

    def __init__(self, experiment: Experiment, data: FederatedData) -> None:
        self.device = resolve_device("auto")
        self.num_classes = data.num_classes
        self.attack = experiment.attack
        self.model = build_model(experiment.model.name, data.input_shape, data.num_classes).to(self.device)
        self.x = torch.from_numpy(np.array(data.x_test, copy=True)).to(self.device)
        self.y = torch.from_numpy(np.array(data.y_test, dtype=np.int64, copy=True)).to(self.device)
        self.x_triggered: torch.Tensor | None = None
        if self.attack.kind == "backdoor":
            from fedsec.clients.attacks.backdoor import stamp, trigger_mask

            keep = self.y != self.attack.backdoor_target
            mask = trigger_mask(data.input_shape, trigger=self.attack.trigger)
            self.x_triggered = stamp(self.x[keep], mask, float(data.x_train.max()))

    def membership_inference(self, arrays: Any, data: FederatedData, experiment: Experiment) -> dict[str, float]:
        """Yeom et al.'s loss-threshold attack on the clients' training data vs the test set (fedsec.mia)."""
        from fedsec.mia import advantage_bound, balanced_sample, loss_threshold_attack

        load_record(self.model, arrays)
        trained = np.concatenate(data.partitions)
        members, others = balanced_sample(trained.size, data.y_test.size, seed=experiment.seed)
        idx = trained[members]
        x_in = torch.from_numpy(np.array(data.x_train[idx])).to(self.device)
        y_in = torch.from_numpy(np.array(data.y_train[idx], dtype=np.int64)).to(self.device)
        result = loss_threshold_attack(self.model, (x_in, y_in), (self.x[others], self.y[others]))
        if experiment.privacy.mode != "none":
            result["mia_bound"] = advantage_bound(experiment.privacy.epsilon, experiment.privacy.delta)
        return result

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.model(x[i : i + 2048]).argmax(dim=1) for i in range(0, x.shape[0], 2048)])

    def __call__(self, arrays: Any) -> dict[str, float]:
        load_record(self.model, arrays)
        result = evaluate(self.model, self.x, self.y, num_classes=self.num_classes)
        row: dict[str, float] = {"accuracy": result.accuracy, "loss": result.loss}
        if self.attack.kind == "label_flip" and self.attack.source is not None:
            source = self.y == self.attack.source
            row["source_recall"] = result.per_class_recall[self.attack.source]
            row["flip_rate"] = float((self._predict(self.x[source]) == self.attack.target).double().mean())
        if self.x_triggered is not None:
            hits = self._predict(self.x_triggered) == self.attack.backdoor_target
            row["attack_success_rate"] = float(hits.double().mean())
        row.update({f"recall_{c}": r for c, r in enumerate(result.per_class_recall)})
        return row


def detection_scores(decisions: list[Any], malicious: set[int]) -> dict[str, float]:
    """Precision and recall of the strategy's rejections against the truth (NaN where undefined).

    A client counts as flagged when the strategy rejected it or gave it less than half the weight FedAvg would
    (its share of the round's examples); failed or invalid replies are not counted as detections.
    """
    valid = [d for d in decisions if d.status in ("accepted", "rejected")]
    total = sum(d.num_examples for d in valid)
    if not valid or total <= 0:
        return {"detection_precision": float("nan"), "detection_recall": float("nan")}
    flagged = {d.partition_id for d in valid if d.weight < 0.5 * d.num_examples / total}
    bad = {d.partition_id for d in valid if d.partition_id in malicious}
    hits = len(flagged & bad)
    return {
        "detection_precision": hits / len(flagged) if flagged else float("nan"),
        "detection_recall": hits / len(bad) if bad else float("nan"),
    }


def run_rounds(
    grid: Grid,
    experiment: Experiment,
    data: FederatedData,
    run_dir: RunDirectory,
    *,
    on_round: RoundCallback | None = None,
    outcome: ServerOutcome | None = None,
    key_authority: Any = None,
) -> ServerOutcome:
    """The whole federated run on ``grid``; results go to ``run_dir`` as rounds end."""
    outcome = outcome or ServerOutcome()
    t0 = time.perf_counter()
    node_of, ray_node_of = handshake(grid, experiment.data.num_clients, timeout=experiment.backend.round_timeout)
    outcome.partition_nodes = ray_node_of
    malicious = set(malicious_clients(experiment))
    omniscient = experiment.attack.kind in COLLUDING_ATTACKS and experiment.attack.knowledge == "omniscient"
    outcome.malicious_clients = sorted(malicious)
    strategy = build_strategy(experiment, key_authority=key_authority)
    strategy.node_sampler = lambda server_round: [
        node_of[p]
        for p in sample_partitions(
            experiment.seed, server_round, experiment.data.num_clients, experiment.train.clients_per_round
        )
    ]
    evaluator = ServerEvaluator(experiment, data)
    initial = build_model(experiment.model.name, data.input_shape, data.num_classes, seed=experiment.seed)
    arrays = model_to_record(initial)
    row: dict[str, Any] = {"round": 0, **evaluator(arrays)}
    outcome.startup_seconds = row["seconds"] = time.perf_counter() - t0

    ledger = _ledger(experiment)
    client_epsilon: dict[int | None, float] = {}
    if experiment.privacy.mode == "local":
        row["epsilon"] = 0.0
    if ledger is not None:
        row["epsilon"] = 0.0
        outcome.privacy = {"noise_multiplier": ledger.noise_multiplier, "sample_rate": ledger.sample_rate,
                           "epsilon_budget": ledger.budget, "delta": ledger.delta, "epsilon": 0.0}
    _emit(run_dir, row, on_round)
    logger.info("fedsec: %s with %s, %d rounds", experiment.name, strategy.describe(), experiment.rounds)

    node_counts: Counter[str] = Counter()
    train_config = ConfigRecord()
    for server_round in range(1, experiment.rounds + 1):
        if ledger is not None and not ledger.allows(1):
            outcome.stopped_reason = "privacy_budget"
            logger.warning("stopping before round %d: it would spend more than epsilon=%s", server_round,
                           ledger.budget)
            break
        t_round = time.perf_counter()
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = list(grid.send_and_receive(messages, timeout=experiment.backend.round_timeout))
        if omniscient and attack_active(experiment, server_round):
            apply_omniscient(experiment.attack, replies, arrays, malicious)
        t_replies = time.perf_counter()
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        report = strategy.last_report
        if new_arrays is not None:
            arrays = new_arrays
        else:
            outcome.skipped_rounds.append(server_round)
        t_aggregated = time.perf_counter()
        row = {"round": server_round, **evaluator(arrays)}
        row["seconds"] = time.perf_counter() - t_round
        row["train_seconds"] = t_replies - t_round  # clients' training, messaging through Flower and Ray
        row["aggregate_seconds"] = t_aggregated - t_replies
        row["eval_seconds"] = row["seconds"] - (t_aggregated - t_round)
        decisions = report.decisions if report else []
        row["clients_sampled"] = len(decisions)
        row["clients_accepted"] = sum(1 for d in decisions if d.weight > 0)
        row["clients_failed"] = sum(1 for d in decisions if d.status.startswith(("failed", "invalid")))
        row["skipped"] = int(new_arrays is None)
        for key in ("train_loss", "bytes_up", "encrypt_seconds", "he_add_seconds", "decrypt_seconds"):
            if train_metrics is not None and key in train_metrics:
                row[key] = float(train_metrics[key])
        if ledger is not None:
            row["epsilon"] = outcome.privacy["epsilon"] = ledger.spend(1)
        if experiment.privacy.mode == "local":
            client_epsilon.update({d.partition_id: d.metrics["epsilon"] for d in decisions if "epsilon" in d.metrics})
            row["epsilon"] = max(client_epsilon.values(), default=0.0)
            outcome.privacy = {"mode": "local", "epsilon": row["epsilon"], "epsilon_budget": experiment.privacy.epsilon,
                               "delta": experiment.privacy.delta,
                               "client_epsilon": {str(k): v for k, v in sorted(client_epsilon.items())}}
        if malicious:
            row["attack_active"] = int(attack_active(experiment, server_round))
            row["malicious_sampled"] = sum(1 for d in decisions if d.partition_id in malicious)
            row.update(detection_scores(decisions, malicious))
        client_rows = []
        for d in decisions:
            node = d.node or (ray_node_of.get(d.partition_id, "") if d.partition_id is not None else "")
            node_counts[node] += 1
            client_rows.append(
                {
                    "round": server_round,
                    "client": d.partition_id if d.partition_id is not None else -1,
                    "malicious": int(d.partition_id in malicious),
                    "num_examples": d.num_examples,
                    "update_norm": d.update_norm,
                    "accepted": d.weight,
                    "node": node,
                    "status": d.status,
                    "train_loss": d.metrics.get("train_loss", float("nan")),
                    **({"epsilon": d.metrics["epsilon"]} if "epsilon" in d.metrics else {}),
                }
            )
        run_dir.add_clients(client_rows)
        _emit(run_dir, row, on_round)
        if decisions and all("privacy budget exhausted" in d.status for d in decisions):
            outcome.stopped_reason = "privacy_budget"
            logger.warning("stopping after round %d: every sampled client has spent its budget", server_round)
            break
    outcome.clients_per_node = dict(node_counts)
    if outcome.stopped_reason != "privacy_budget":
        outcome.stopped_reason = "completed"
    outcome.membership_inference = evaluator.membership_inference(arrays, data, experiment)
    return outcome


def _ledger(experiment: Experiment):
    plan = experiment.privacy_plan()
    if plan is None:
        return None
    from fedsec.privacy import PrivacyLedger

    privacy = experiment.privacy
    return PrivacyLedger(plan.noise_multiplier, plan.sample_rate, privacy.delta, privacy.epsilon, privacy.accountant)


def _emit(run_dir: RunDirectory, row: dict[str, Any], on_round: RoundCallback | None) -> None:
    run_dir.add_round(row)
    if on_round is not None:
        on_round(row)


def make_server_app(
    experiment: Experiment,
    data: FederatedData,
    run_dir: RunDirectory,
    *,
    on_round: RoundCallback | None = None,
    outcome: ServerOutcome | None = None,
    key_authority: Any = None,
) -> ServerApp:
    """A ServerApp that runs ``experiment``; ``outcome`` is filled in as the run goes."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_rounds(grid, experiment, data, run_dir, on_round=on_round, outcome=outcome,
                       key_authority=key_authority)
        except BaseException as e:  # hand it to the runner, which reports it after Ray has shut down
            if outcome is None:
                raise
            outcome.error = e
            outcome.stopped_reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"error: {e}"

    return app
