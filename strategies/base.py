"""Shared machinery of fedsec's server strategies: reply checks, stacking, and per-client decisions.

Every fedsec strategy is a Flower Message-API strategy (a subclass of Flower's ``FedAvg``) whose aggregation rule
is a pure kernel over a stacked ``(n_clients, n_params)`` tensor of *updates* (client arrays minus the global arrays
sent that round). This base class does what all rules share, once:

- sorts replies by the client's partition id (so aggregation order, and floating-point sums, are reproducible);
- rejects, before any rule runs, replies that failed, carry no or several ArrayRecords, arrays whose keys or
  shapes differ from the global model's, non-finite values, or a non-positive ``num-examples``;
- stacks the updates (client arrays - global arrays) into one CPU matrix, each row written in a single pass over
  the reply's serialized arrays (:func:`fedsec.arrays.stack_updates`), into a buffer the strategy keeps between
  rounds (a fresh 100 x 1.6M float32 matrix costs more to page in than to fill), drops the non-finite rows, moves
  the rest to ``device`` and calls :meth:`RobustStrategy.aggregate_updates`;
- records one :class:`ClientDecision` per reply in :attr:`RobustStrategy.last_report` (the weight the rule gave,
  0 = rejected), which the fedsec runner writes to ``clients.csv``.

A round with fewer valid updates than the rule needs is skipped (the global model stays) and the reason recorded.
"""

from __future__ import annotations

import inspect
import math
from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, ClassVar, Self

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from pydantic import BaseModel

from fedsec.arrays import record_signature, record_to_vector, stack_updates, vector_to_record
from fedsec.errors import FedsecInputError
from fedsec.protocol import (
    NODE_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_ID_KEY,
    ClientStatus,
    parse_reply,
    reply_sort_key,
)
from fedsec.registry import NoParams

from ._linalg import map_ranges

__all__ = ["NODE_KEY", "NUM_EXAMPLES_KEY", "PARTITION_ID_KEY", "ClientDecision", "RobustStrategy", "RoundReport",
           "StrategyConfigError", "StrategyContext", "resolve_device"]

NodeSampler = Callable[[int], list[int]]  # server round -> node ids to train this round


class StrategyConfigError(FedsecInputError):
    """A strategy parameter is out of range; the message names the parameter and the rule."""


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy built from a config may need besides its own keys (filled in by the run plan)."""

    expected_malicious: int = 0  # the f a rule assumes when defense.num_malicious is not given
    clients_per_round: int = 1
    seed: int = 0
    server_update_fn: Callable[[ArrayRecord], torch.Tensor] | None = None  # FLTrust's root-data update


@dataclass
class ClientDecision:
    """What happened to one client's reply in one round."""

    node_id: int
    partition_id: int | None
    num_examples: int
    update_norm: float  # L2 norm of (client arrays - global arrays); NaN if the reply was unusable
    weight: float  # weight the rule gave the update in the aggregate (0 = rejected)
    status: str  # "accepted" | "rejected" | "invalid: <why>" | "failed: <why>"
    node: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundReport:
    """Per-round record of a strategy's decisions."""

    server_round: int
    decisions: list[ClientDecision]
    skipped_reason: str | None = None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class RobustStrategy(FedAvg):
    """Base class for fedsec strategies; subclasses implement :meth:`aggregate_updates`.

    Parameters
    ----------
    fraction_train : float (default: 1.0)
        Fraction of connected nodes sampled for training when no ``node_sampler`` is set (Flower's sampling).
    min_train_nodes : int (default: 2)
        Minimum nodes sampled for training (Flower's sampling).
    min_available_nodes : int (default: 2)
        Nodes that must be connected before sampling (Flower's sampling).
    fraction_evaluate : float (default: 0.0)
        Fraction of nodes for federated (client-side) evaluation; fedsec evaluates on the server.
    device : str (default: "auto")
        Where the stacked updates are aggregated: "auto" (CUDA when available), "cpu", "cuda", ...
    node_sampler : Callable[[int], list[int]] | None (default: None)
        Chooses the node ids to train in a round; fedsec's ServerApp sets a seeded one so runs are
        reproducible. None falls back to Flower's random sampling.
    """

    #: smallest number of valid updates the rule can aggregate
    min_valid_updates: int = 1
    #: the ``[defense]`` keys this rule reads (validated by the run plan) and its line in ``fedsec list``
    Params: ClassVar[type[BaseModel]] = NoParams
    description: ClassVar[str] = ""
    #: the rule needs the server's own update on a root dataset (``server_update_fn``; its Params has root_size)
    needs_server_update: ClassVar[bool] = False

    @classmethod
    def config_kwargs(cls, params: BaseModel, context: StrategyContext) -> dict[str, Any]:
        """Constructor arguments from the rule's validated ``[defense]`` keys: keys left unset (None) take the
        rule's default; ``num_malicious`` defaults to the attack's expected attackers per round; rules that take a
        ``seed`` get the experiment's."""
        kwargs = params.model_dump(exclude_none=True)
        if "num_malicious" in cls.Params.model_fields and kwargs.get("num_malicious") is None:
            kwargs["num_malicious"] = context.expected_malicious
        if "seed" in inspect.signature(cls.__init__).parameters:
            kwargs["seed"] = context.seed
        return kwargs

    @classmethod
    def from_config(cls, params: BaseModel, context: StrategyContext, **kwargs: Any) -> Self:
        """The rule built from its ``[defense]`` keys; ``kwargs``: Flower's sampling settings, ``device``, ..."""
        return cls(**kwargs, **cls.config_kwargs(params, context))

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        fraction_evaluate: float = 0.0,
        device: str = "auto",
        node_sampler: NodeSampler | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,  # set below: Flower's FedAvg logs a warning for 0.0, our default
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_train_nodes,
            min_available_nodes=min_available_nodes,
        )
        self.fraction_evaluate = fraction_evaluate
        self.min_evaluate_nodes = 0 if fraction_evaluate == 0.0 else min_train_nodes
        self.device = resolve_device(device)
        self.node_sampler = node_sampler
        self.last_report: RoundReport | None = None
        #: the decision of each row of the updates passed to aggregate_updates this round (sorted by partition id)
        self.current_clients: list[ClientDecision] = []
        self._global_arrays: ArrayRecord | None = None
        self._stack_storage: torch.Tensor | None = None  # see _stack_buffer

    # ------------------------------------------------------------------ the rule
    @abstractmethod
    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregate stacked updates.

        Parameters
        ----------
        updates : torch.Tensor
            Shape (n, d): one flattened update (client arrays - global arrays) per valid client, sorted by
            partition id, on :attr:`device`, finite. On the CPU it is a view of a buffer reused next round: read
            it, do not modify it, and copy what must outlive the call.
        num_examples : torch.Tensor
            Shape (n,): each client's reported number of training examples (float).

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor]
            The aggregated update, shape (d,), and the weight each client got, shape (n,) (0 = rejected).
        """

    def describe(self) -> str:
        """One line with the rule's parameters (for logs and `fedsec list`)."""
        return self.__class__.__name__

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├──> Rule: %s (aggregates on %s)", self.describe(), self.device)
        super().summary()

    # ------------------------------------------------------------------ Flower hooks
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global arrays to the sampled nodes (seeded sampler when set) and remember them."""
        self._global_arrays = arrays
        if self.node_sampler is None:
            return super().configure_train(server_round, arrays, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.node_sampler(server_round), MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check, stack and aggregate the replies; record a :class:`ClientDecision` per reply."""
        if self._global_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to compare with")
        global_arrays = self._global_arrays
        signature = record_signature(global_arrays)
        decisions: list[ClientDecision] = []
        candidates: list[tuple[ClientDecision, ArrayRecord]] = []
        for message in sorted(replies, key=reply_sort_key):
            decision, arrays = self._check_reply(message, signature)
            decisions.append(decision)
            if arrays is not None:
                candidates.append((decision, arrays))

        # one (n, d) matrix of updates, each row written in one pass over its reply (records.stack_updates) into a
        # CPU buffer kept between rounds; rows with NaN/Inf are dropped before any rule runs
        global_vector = record_to_vector(global_arrays)
        records = [arrays for _, arrays in candidates]
        stacked = self._stack_buffer(len(records), global_vector)
        norms: list[float] = []
        finite: list[bool] = []
        for _, part_norms, part_finite in map_ranges(  # rows split between threads, as in the chunked kernels
            lambda a, b: stack_updates(records[a:b], global_vector, out=stacked[a:b]),
            len(records), 1, stacked.device, work=stacked.numel(),
        ):
            norms += part_norms
            finite += part_finite
        valid: list[ClientDecision] = []
        valid_norms: list[float] = []
        for (decision, _), norm, ok in zip(candidates, norms, finite, strict=True):
            if ok:
                valid.append(decision)
                valid_norms.append(norm)
            else:
                decision.status = "invalid: non-finite values (NaN/Inf) in the update"
        if not all(finite):  # move the valid rows up, in place
            for row, i in enumerate([i for i, ok in enumerate(finite) if ok]):
                if row != i:
                    stacked[row].copy_(stacked[i])
            stacked = stacked[: len(valid)]

        report = RoundReport(server_round=server_round, decisions=decisions)
        self.last_report = report
        for d in decisions:
            if d.status != "pending":  # failed or invalid
                log(WARNING, "round %s: client %s (node %s) %s", server_round, d.partition_id, d.node_id, d.status)
        if len(valid) < self.min_valid_updates:
            report.skipped_reason = (
                f"{len(valid)} valid updates, {self.describe()} needs at least {self.min_valid_updates}"
            )
            log(WARNING, "round %s skipped: %s", server_round, report.skipped_reason)
            for d in valid:
                d.status = "skipped: too few valid updates"
            return None, None

        for d, norm in zip(valid, valid_norms, strict=True):
            d.update_norm = norm
        updates = stacked.to(self.device)
        global_vector = global_vector.to(self.device)
        num_examples = torch.tensor([float(d.num_examples) for d in valid], device=self.device)
        self.current_clients = valid
        aggregate, weights = self.aggregate_updates(updates, num_examples)
        for d, w in zip(valid, weights.tolist(), strict=True):
            d.weight = float(w)
            d.status = "accepted" if w > 0 else "rejected"
        new_arrays = vector_to_record(global_vector + aggregate, like=global_arrays)
        metrics = self._weighted_metrics(valid)
        metrics["bytes_up"] = sum(d.metrics["bytes_up"] for d in valid)
        return new_arrays, metrics

    # ------------------------------------------------------------------ helpers
    def _stack_buffer(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """An (n, d) CPU tensor of ``like``'s dtype (d = ``like.numel()``) to stack this round's updates into.

        The storage is kept between rounds and grown when needed: a fresh 100 x 1.6M float32 matrix is
        page-faulted in on every round (0.14 s, of what was a 0.4 s FedAvg round at that size on a 2-core CPU);
        a reused one is not. Rules must not keep references to ``updates`` after :meth:`aggregate_updates`
        returns (copy what they keep).
        """
        numel = n * like.numel()
        buffer = self._stack_storage
        if buffer is None or buffer.dtype != like.dtype or buffer.numel() < numel:
            buffer = self._stack_storage = None  # free the old storage before allocating the new one
            buffer = self._stack_storage = torch.empty(numel, dtype=like.dtype)
        return buffer[:numel].view(n, like.numel())

    def _check_reply(
        self, message: Message, signature: list[tuple[str, tuple[int, ...]]]
    ) -> tuple[ClientDecision, ArrayRecord | None]:
        """Structural checks (failure, records, num-examples, keys/shapes); values are checked once stacked."""
        parsed = self._parse_reply(message)
        if isinstance(parsed, ClientDecision):
            return parsed, None
        content, metrics, partition_id, node = parsed
        node_id = message.metadata.src_node_id
        num_examples = metrics.get(NUM_EXAMPLES_KEY)
        bad = lambda why: (self._bad(node_id, partition_id, "invalid: " + why, node, metrics), None)  # noqa: E731
        if len(content.array_records) != 1:
            return bad(f"expected one ArrayRecord, got {len(content.array_records)}")
        if num_examples is None or not math.isfinite(num_examples) or num_examples <= 0:
            return bad(f"'{NUM_EXAMPLES_KEY}' must be a positive number, got {num_examples!r}")
        arrays = next(iter(content.array_records.values()))
        got = record_signature(arrays)
        if got != signature:
            return bad("arrays do not match the global model's keys/shapes")
        metrics = {**metrics, "bytes_up": float(sum(len(a.data) for a in arrays.values()))}
        decision = ClientDecision(
            node_id=node_id,
            partition_id=partition_id,
            num_examples=int(num_examples),
            update_norm=math.nan,
            weight=0.0,
            status="pending",
            node=node,
            metrics=metrics,
        )
        return decision, arrays

    def _parse_reply(self, message: Message) -> ClientDecision | tuple[RecordDict, dict[str, float], int | None, str]:
        """A failed or refusing client's decision, or the reply's content, numeric metrics, partition id and node."""
        reply = parse_reply(message)
        if reply.status is ClientStatus.FAILED:
            return self._bad(reply.node_id, None, "failed: " + reply.reason)
        if reply.status is ClientStatus.REFUSED:
            return self._bad(reply.node_id, reply.partition_id, "refused: " + reply.reason, reply.node, reply.metrics)
        return reply.content, reply.metrics, reply.partition_id, reply.node

    @staticmethod
    def _bad(
        node_id: int,
        partition_id: int | None,
        status: str,
        node: str = "",
        metrics: dict[str, float] | None = None,
    ) -> ClientDecision:
        num = (metrics or {}).get(NUM_EXAMPLES_KEY, 0)
        num_examples = int(num) if isinstance(num, int | float) and math.isfinite(num) else 0
        return ClientDecision(node_id, partition_id, num_examples, math.nan, 0.0, status, node, metrics or {})

    @staticmethod
    def _weighted_metrics(valid: list[ClientDecision]) -> MetricRecord:
        """Example-weighted mean of the accepted clients' numeric training metrics."""
        accepted = [d for d in valid if d.weight > 0]
        total = sum(d.num_examples for d in accepted)
        out = MetricRecord()
        if not accepted or total <= 0:
            return out
        keys = set.intersection(*(set(d.metrics) for d in accepted)) - {NUM_EXAMPLES_KEY, PARTITION_ID_KEY, "bytes_up"}
        for key in sorted(keys):
            out[key] = sum(d.metrics[key] * d.num_examples for d in accepted) / total
        out[NUM_EXAMPLES_KEY] = total
        return out
