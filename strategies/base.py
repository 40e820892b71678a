"""Shared machinery of fedsec's server strategies: reply checks, stacking, and per-client decisions.

Every fedsec strategy is a Flower Message-API strategy (a subclass of Flower's ``FedAvg``) whose aggregation rule
is a pure kernel over a stacked ``(n_clients, n_params)`` tensor of *updates* (client arrays minus the global arrays
sent that round). This base class does what all rules share, once:

- sorts replies by the client's partition id (so aggregation order, and floating-point sums, are reproducible);
- rejects, before any rule runs, replies that failed, carry no or several ArrayRecords, arrays whose keys, shapes
  or dtypes (declared or serialized) differ from the global model's, non-finite values, a ``num-examples`` that is
  not a whole number in [1, ``max_examples``], or a ``partition-id`` that is missing, given twice, not an integer
  in range or not unique in the round (:mod:`fedsec.strategies._trust`);
- aggregates under a time bound (``aggregate_timeout``, :mod:`fedsec.strategies._deadline`): a rule still running
  past it is interrupted and the round skipped with a reason naming the rule;
- applies the run's count policy (``weighting``: reported, capped at ``weight_cap`` x the median claim, or
  uniform) to the claims before a weighted rule sees them;
- stacks the updates (client arrays - global arrays) into one CPU matrix, each row written in a single pass over
  the reply's serialized arrays (:func:`fedsec.arrays.stack_updates`), into a buffer the strategy keeps between
  rounds (a fresh 100 x 1.6M float32 matrix costs more to page in than to fill), drops the non-finite rows, moves
  the rest to ``device`` and calls :meth:`RobustStrategy.aggregate_updates`;
- runs the configured pre-aggregators (``defense.pre``: NNM, Bucketing, ARC; :mod:`fedsec.strategies.pre`) on the
  stacked updates before the rule, and maps the rule's weights back to the clients (:meth:`aggregate_with_pre`);
- records one :class:`ClientDecision` per reply in :attr:`RobustStrategy.last_report` (the weight the rule gave,
  0 = rejected), which the fedsec runner writes to ``clients.csv``.

A round with fewer valid updates than the rule needs is skipped (the global model stays) and the reason recorded;
so is a round whose aggregate is not finite (a last guard: no input turns the global model into NaN/Inf).
"""

from __future__ import annotations

import inspect
import math
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from pydantic import BaseModel

from fedsec.arrays import record_signature, record_to_vector, stack_updates, vector_to_record
from fedsec.privacy.one_run_audit import Canaries, CanarySpec
from fedsec.protocol import (
    NODE_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_ID_KEY,
    ClientStatus,
    parse_reply,
    reply_sort_key,
)
from fedsec.registry import NoParams

from ._checks import StrategyConfigError, check_float
from ._deadline import DeadlineExceeded, call_with_deadline
from ._linalg import map_ranges
from ._trust import MAX_EXAMPLES, WEIGHTINGS, Weighting, check_arrays, check_count, check_partition_id, counted_examples

if TYPE_CHECKING:  # imported where used: strategies.pre imports rules that import this module
    from .pre import PreAggregator

__all__ = ["NODE_KEY", "NUM_EXAMPLES_KEY", "PARTITION_ID_KEY", "ClientDecision", "RobustStrategy", "RoundReport",
           "StrategyConfigError", "StrategyContext", "resolve_device"]

NodeSampler = Callable[[int], list[int]]  # server round -> node ids to train this round
_Payload = TypeVar("_Payload")  # what a reply check keeps of a reply that passed (its arrays, its ciphertext)


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy built from a config may need besides its own keys (filled in by the run plan)."""

    expected_malicious: int = 0  # the f a rule assumes when defense.num_malicious is not given
    clients_per_round: int = 1
    seed: int = 0
    server_update_fn: Callable[[ArrayRecord], torch.Tensor] | None = None  # FLTrust's root-data update
    pre: tuple[PreAggregator, ...] = ()  # defense.pre, built and checked by strategies.pre.plan_pre_aggregators


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
    counted_examples: float = math.nan  # the count the rule used after the run's weighting policy (NaN: unused)


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


def no_participant_reason(decisions: list[ClientDecision]) -> str:
    """Why no client took part in a round: the count of each status, with the first reason of each."""
    if not decisions:
        return "no client took part: no replies"
    by_kind: dict[str, list[str]] = {}
    for d in decisions:
        kind, _, why = d.status.partition(": ")
        by_kind.setdefault(kind, []).append(why or kind)
    parts = [f"{len(whys)} {kind} (e.g. {whys[0]})" for kind, whys in sorted(by_kind.items())]
    return "no client took part: " + "; ".join(parts)


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
    weighting : "reported" | "capped" | "uniform" (default: "capped")
        How a rule that weights by ``num-examples`` (``uses_counts``) uses the clients' *claims* (config key
        ``defense.weighting``): as reported; capped at ``weight_cap`` x the round's (lower) median claim; or
        ignored (every client 1). Counts are unverifiable metadata: under "reported", one client claiming 1e9
        examples among clients claiming 50 moves FedAvg, Multi-Krum, GeoMed and NormClipping all the way to its
        own update (``benchmarks/bench_count_lie.py``).
        Capping keeps FedAvg's weighting for honest non-IID partitions, whose sizes
        rarely differ by more than a few times the median, and bounds a liar's share.
    weight_cap : float (default: 4.0)
        The largest claim counted, as a multiple of the round's median claim, in [1, 1e6] (config key
        ``defense.weight_cap``). With n clients claiming alike and one liar, the liar's weight is at most
        cap / (cap + n - 1): 4 / 13 = 0.31 at n = 10, against 1e9 / (1e9 + 450) = 1.0 uncapped. 4 is chosen
        because honest partitions stay below it: fedsec's Dirichlet(0.5) split of a balanced 60,000-example,
        10-class set (its default non-IID setting) gives a largest partition of 2.1x / 2.3x / 2.5x the median
        at 20 / 50 / 100 clients (mean of 10 seeds), so every honest client keeps its FedAvg weight; only at
        alpha = 0.1 (50 clients: 93% of partitions below 4x, the largest 7.5x) does capping trim honest ones.
        The median, not the mean, keeps the cap itself out of the liars' reach while they are fewer than half.
    max_examples : float (default: 1e9)
        The largest ``num-examples`` a reply may claim; larger (or non-integral, below 1, NaN, Inf) claims are
        rejected and recorded as ``invalid``: 1e39 or 1e300 would overflow float32 sums into NaN.
    num_partitions : int | None (default: None)
        When known (the run's ``data.num_clients``), a ``partition-id`` must be below it. Every reply must carry
        one ``partition-id`` (a whole number >= 0): a reply without it, or with several, is refused and recorded
        as ``invalid``, never aggregated (the server could not tell which client sent it).
    aggregate_timeout : float | None (default: 600.0)
        Seconds the rule may spend aggregating one round, in (0, 7 days] (config key
        ``backend.aggregate_timeout``); past it the rule is interrupted (:mod:`fedsec.strategies._deadline`), the
        round is skipped with a reason naming the rule, and the global model stays. None: no bound.
    pre_aggregators : Sequence[PreAggregator] (default: ())
        Steps run in order on the stacked updates before the rule (config key ``defense.pre``;
        :mod:`fedsec.strategies.pre`). The rule then aggregates their output rows (one per client for NNM and
        ARC, one per bucket for Bucketing), and the weight it gives row j is mapped back to the clients through
        the steps' mixing matrix M (rows = M @ updates): client i gets sum_j w_j M[j, i], the coefficient of its
        own update in the aggregate when the rule returns sum_j w_j row_j (for the coordinate-wise rules, whose
        w_j is row j's share of the coordinates, the client's share). So a client inside a rejected bucket, or in
        no selected NNM neighbourhood, gets 0, and an ARC-clipped one its clip factor times its row's weight.
        A round needs enough updates for every step and for the rule after them (:meth:`required_updates`).
    canaries : CanarySpec | None (default: None)
        The one-run privacy audit's client-level canaries (``[audit.canary]``; :mod:`fedsec.privacy.one_run_audit`):
        each round the included canaries that take part are added to the aggregate the rule returns (weight 1 / k,
        size :meth:`canary_scale`), and every canary is scored on the released aggregate. For mean rules only (the
        run plan refuses others): a robust rule would see canaries as rows, which this does not model.
    """

    #: smallest number of valid updates the rule can aggregate
    min_valid_updates: int = 1
    #: the ``[defense]`` keys this rule reads (validated by the run plan) and its line in ``fedsec list``
    Params: ClassVar[type[BaseModel]] = NoParams
    description: ClassVar[str] = ""
    #: the rule needs the server's own update on a root dataset (``server_update_fn``; its Params has root_size)
    needs_server_update: ClassVar[bool] = False
    #: the rule weights each update by its client's history of updates, kept by the server across rounds
    needs_client_histories: ClassVar[bool] = False
    #: the rule weights clients by their claimed ``num-examples`` (so the ``weighting`` policy matters to it)
    uses_counts: ClassVar[bool] = False
    #: what kind of rule it is, for attacks that adapt to it: "mean" (weighted mean), "krum" (Krum-score
    #: selection), "coordinate" (coordinate-wise order statistics), "selection" (keeps or rejects whole updates by
    #: another test), "robust_mean" (a bounded-influence mean: clipping, geometric median)
    family: ClassVar[str] = "mean"

    @classmethod
    def selects_clients(cls) -> bool:
        """The rule keeps or rejects whole updates (Krum, Bulyan, FLAME, ...)."""
        return cls.family in ("krum", "selection")

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
        """The rule built from its ``[defense]`` keys; ``kwargs``: Flower's sampling settings, ``device``, ...
        With pre-aggregators (``context.pre``), the rule's defaults that depend on n (Multi-Krum's m = n - f) are
        taken at the rows it gets from ``context.clients_per_round`` updates, and those rows must be enough for it
        (a :class:`StrategyConfigError` naming ``defense.pre`` otherwise)."""
        k = rows = context.clients_per_round
        for step in context.pre:
            rows = step.num_outputs(rows)
        if context.pre:
            kwargs["pre_aggregators"] = context.pre
        strategy = cls(**kwargs, **cls.config_kwargs(params, replace(context, clients_per_round=rows)))
        needed = strategy.required_updates()
        if context.pre and needed > k:
            raise StrategyConfigError(
                f"defense.pre={[step.name for step in context.pre]}: {strategy.pipeline()} needs at least {needed} "
                f"updates per round, got train.clients_per_round={k}: the rule gets {rows} rows after the "
                f"pre-aggregators and needs {strategy.min_valid_updates}; raise clients_per_round, or lower "
                "bucket_size or num_malicious")
        return strategy

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        fraction_evaluate: float = 0.0,
        device: str = "auto",
        node_sampler: NodeSampler | None = None,
        weighting: Weighting = "capped",
        weight_cap: float = 4.0,
        max_examples: float = MAX_EXAMPLES,
        num_partitions: int | None = None,
        pre_aggregators: Sequence[PreAggregator] = (),
        aggregate_timeout: float | None = 600.0,
        canaries: CanarySpec | None = None,
    ) -> None:
        self.aggregate_timeout = None if aggregate_timeout is None else check_float(
            type(self).__name__, "backend.aggregate_timeout", aggregate_timeout, low=0.0, high=7 * 86400.0,
            low_open=True, high_open=False)
        self.pre_aggregators: tuple[PreAggregator, ...] = tuple(pre_aggregators)
        if self.needs_client_histories and not all(step.keeps_clients for step in self.pre_aggregators):
            raise StrategyConfigError(
                f"defense.pre={[step.name for step in self.pre_aggregators]}: {type(self).__name__} follows each "
                "client's updates across rounds, and a step that merges clients (bucketing) leaves no row per client; "
                "drop it from defense.pre")
        if weighting not in WEIGHTINGS:
            raise StrategyConfigError(f"defense.weighting={weighting!r}: must be one of {list(WEIGHTINGS)}; "
                                      "use 'capped' (the default) unless every client's count is trusted")
        self.weighting: Weighting = weighting
        self.weight_cap = check_float(type(self).__name__, "defense.weight_cap", weight_cap, low=1.0, high=1e6,
                                      high_open=False)
        self.max_examples = check_float(type(self).__name__, "max_examples", max_examples, low=1.0, high=3e38,
                                        high_open=False)
        if num_partitions is not None and (isinstance(num_partitions, bool) or not isinstance(num_partitions, int)
                                           or num_partitions < 1):
            raise StrategyConfigError(f"num_partitions={num_partitions!r}: must be an integer >= 1 or None")
        self.num_partitions = num_partitions
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
        #: values a rule reports for the round it aggregated (e.g. DP-FedAvg's adaptive clip bound); they join the
        #: round's MetricRecord, and the hook that declares them copies them into rounds.csv
        self.round_metrics: dict[str, float] = {}
        self.canary_spec = canaries
        self._canaries: Canaries | None = None  # drawn when the model size is known (the first aggregation)
        if canaries is not None:  # the audit's state, kept in the checkpoint (tensors and a generator)
            self.canary_scores = torch.zeros(canaries.canaries, dtype=torch.float64)
            self.canary_generator = torch.Generator().manual_seed(canaries.seed + 1)

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

    def pipeline(self) -> str:
        """The pre-aggregators and the rule, in the order they run ("NNM(f=2; ...) -> Median(...)")."""
        return " -> ".join([step.describe() for step in self.pre_aggregators] + [self.describe()])

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├──> Rule: %s (aggregates on %s)", self.pipeline(), self.device)
        super().summary()

    # ------------------------------------------------------------------ pre-aggregation (the hook point)
    def required_updates(self) -> int:
        """The fewest valid updates a round needs: :attr:`min_valid_updates` without pre-aggregators; with them,
        enough for every step's assumption and for the rule to get ``min_valid_updates`` rows after them."""
        if not self.pre_aggregators:
            return self.min_valid_updates
        from .pre import required_inputs

        return required_inputs(self.pre_aggregators, self.min_valid_updates)

    def aggregate_with_pre(
        self, updates: torch.Tensor, num_examples: torch.Tensor, *, server_round: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-aggregators (in order), then :meth:`aggregate_updates` on their rows; the weights returned are
        per client (n,), mapped back through the steps' mixing matrix (see ``pre_aggregators`` above).

        updates: (n, d); num_examples: (n,). Without pre-aggregators this is ``aggregate_updates`` itself. Rows a
        step merges (Bucketing) carry the sum of their clients' counts into the rule."""
        if not self.pre_aggregators:
            return self.aggregate_updates(updates, num_examples)
        from .pre import apply_pre_aggregators, client_weights

        rows = apply_pre_aggregators(self.pre_aggregators, updates, num_examples, server_round=server_round)
        aggregate, row_weights = self.aggregate_updates(rows.updates, rows.num_examples)
        return aggregate, client_weights(rows.mixing, row_weights)

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
        self.round_metrics = {}
        signature = record_signature(global_arrays)
        decisions, candidates = self._checked_replies(replies, lambda m: self._check_reply(m, signature))
        candidates = self._reject_duplicate_ids(candidates)

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
        for i, ((decision, _), norm, ok) in enumerate(zip(candidates, norms, finite, strict=True)):
            if ok and not math.isfinite(norm):  # finite values whose sum of squares overflows the rows' dtype
                finite[i] = ok = False
                decision.status = (f"invalid: update norm overflows {global_vector.dtype} (sum of squares above "
                                   f"{torch.finfo(global_vector.dtype).max:.3g}); no model update is that large")
            if ok:
                valid.append(decision)
                valid_norms.append(norm)
            elif decision.status == "pending":
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
        if len(valid) < (needed := self.required_updates()):
            report.skipped_reason = f"{len(valid)} valid updates, {self.pipeline()} needs at least {needed}"
            if not valid:
                report.skipped_reason += "; " + no_participant_reason(decisions)
            log(WARNING, "round %s skipped: %s", server_round, report.skipped_reason)
            for d in valid:
                d.status = "skipped: too few valid updates"
            return None, None

        for d, norm in zip(valid, valid_norms, strict=True):
            d.update_norm = norm
        updates = stacked.to(self.device)
        global_vector = global_vector.to(self.device)
        claims = torch.tensor([float(d.num_examples) for d in valid], dtype=torch.float64)
        counted = counted_examples(claims, weighting=self.weighting, weight_cap=self.weight_cap)
        for d, c in zip(valid, counted.tolist(), strict=True):
            d.counted_examples = c if self.uses_counts else math.nan
        num_examples = counted.to(device=self.device, dtype=torch.float32)
        self.current_clients = valid
        try:
            aggregate, weights = call_with_deadline(
                lambda: self.aggregate_with_pre(updates, num_examples, server_round=server_round),
                self.aggregate_timeout, name=f"fedsec-aggregate-round-{server_round}")
        except DeadlineExceeded as e:
            report.skipped_reason = (f"{self.pipeline()} did not finish aggregating within backend.aggregate_timeout="
                                     f"{e.seconds:g} s; the global model stays")
            if not e.stopped:  # still inside a native call, reading this round's rows: it keeps that buffer
                self._stack_storage = None
            log(WARNING, "round %s skipped: %s", server_round, report.skipped_reason)
            for d in valid:
                d.status = "skipped: aggregation timeout"
            return None, None
        if not (bool(torch.isfinite(aggregate).all()) and bool(torch.isfinite(weights).all())):
            report.skipped_reason = f"{self.describe()} produced a non-finite aggregate; the global model stays"
            log(WARNING, "round %s skipped: %s", server_round, report.skipped_reason)
            for d in valid:
                d.status = "skipped: non-finite aggregate"
            return None, None
        for d, w in zip(valid, weights.tolist(), strict=True):
            d.weight = float(w)
            d.status = "accepted" if w > 0 else "rejected"
        if self.canary_spec is not None:
            aggregate = self._audit_canaries(aggregate)
        new_arrays = vector_to_record(global_vector + aggregate, like=global_arrays)
        metrics = self._weighted_metrics(valid)
        metrics["bytes_up"] = sum(d.metrics["bytes_up"] for d in valid)
        metrics.update(self.round_metrics)
        return new_arrays, metrics

    def client_keys(self, n: int) -> list[tuple[str, int]]:
        """The client of each row of this round's ``n`` updates (("partition", id), else ("node", id)), for rules
        that follow clients across rounds (``needs_client_histories``); only inside :meth:`aggregate_train`."""
        clients = self.current_clients
        if len(clients) != n:
            raise RuntimeError(f"{type(self).__name__}: {n} updates but {len(clients)} known clients; call it "
                               "through aggregate_train")
        return [("partition", d.partition_id) if d.partition_id is not None else ("node", d.node_id) for d in clients]

    # ------------------------------------------------------------------ the one-run privacy audit
    def canary_scale(self) -> float:
        """What one canary adds to its coordinate of the aggregate: c / k (``audit.canary.norm`` over the expected
        cohort); DP-FedAvg uses the round's clip bound as c."""
        assert self.canary_spec is not None
        return self.canary_spec.norm / self.canary_spec.expected_clients

    def _audit_canaries(self, aggregate: torch.Tensor) -> torch.Tensor:
        """Add the round's canaries to the aggregate (a copy), score every canary on the result, and report the
        audit so far in :attr:`round_metrics`."""
        assert self.canary_spec is not None
        if self._canaries is None:
            self._canaries = Canaries(self.canary_spec, aggregate.numel())
        released = aggregate.clone()
        taking_part = self._canaries.insert(released, self.canary_scale(), self.canary_generator)
        self._canaries.score(self.canary_scores, released)
        self.round_metrics.update({"canaries_taking_part": float(taking_part),
                                   **self._canaries.bound(self.canary_scores)})
        return released

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _checked_replies(
        replies: Iterable[Message], check: Callable[[Message], tuple[ClientDecision, _Payload | None]]
    ) -> tuple[list[ClientDecision], list[tuple[ClientDecision, _Payload]]]:
        """Each reply, in :func:`reply_sort_key` order, through ``check``: every reply's decision, and the
        ``(decision, payload)`` pairs of the replies it passed (payload not None)."""
        decisions: list[ClientDecision] = []
        passed: list[tuple[ClientDecision, _Payload]] = []
        for message in sorted(replies, key=reply_sort_key):
            decision, payload = check(message)
            decisions.append(decision)
            if payload is not None:
                passed.append((decision, payload))
        return decisions, passed

    @staticmethod
    def _reject_duplicate_ids(candidates: list[tuple[ClientDecision, Any]]) -> list[tuple[ClientDecision, Any]]:
        """Replies that claim the same partition id as another reply of the round are all rejected (the server
        cannot tell which one is the client); the others are kept."""
        seen = Counter(d.partition_id for d, _ in candidates if d.partition_id is not None)
        kept = []
        for decision, arrays in candidates:
            if decision.partition_id is not None and seen[decision.partition_id] > 1:
                decision.status = (f"invalid: '{PARTITION_ID_KEY}'={decision.partition_id} is claimed by "
                                   f"{seen[decision.partition_id]} replies this round")
            else:
                kept.append((decision, arrays))
        return kept

    def _stack_buffer(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """An (n, d) CPU tensor of ``like``'s dtype (d = ``like.numel()``) to stack this round's updates into.

        The storage is kept between rounds and grown when needed: a fresh 100 x 1.6M float32 matrix is
        page-faulted in on every round (about a third of a FedAvg round at that size on a 2-core CPU;
        ``benchmarks/bench_strategies.py``);
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
        records = list(content.values())  # one pass (RecordDict's typed views rebuild a dict on every access)
        claimed = [r[PARTITION_ID_KEY] for r in records if isinstance(r, MetricRecord) and PARTITION_ID_KEY in r]
        array_records = [r for r in records if isinstance(r, ArrayRecord)]
        if len(claimed) != 1:  # without exactly one id the server cannot tell which client sent the reply
            partition_id = None
            return bad(f"no '{PARTITION_ID_KEY}' in the reply's metrics" if not claimed else
                       f"{len(claimed)} '{PARTITION_ID_KEY}' values in one reply: {claimed[:4]!r}")
        why = check_partition_id(claimed[0], num_partitions=self.num_partitions, key=PARTITION_ID_KEY)
        if why is not None:
            partition_id = None  # never record an id the client could not have
            return bad(why)
        partition_id = int(claimed[0])
        if len(array_records) != 1:
            return bad(f"expected one ArrayRecord, got {len(array_records)}")
        why = check_count(num_examples, max_examples=self.max_examples, key=NUM_EXAMPLES_KEY)
        if why is not None:
            return bad(why)
        arrays = array_records[0]
        got = record_signature(arrays)
        if got != signature:
            return bad("arrays do not match the global model's keys/shapes")
        if self._global_arrays is not None and (why := check_arrays(arrays, self._global_arrays)) is not None:
            return bad(why)
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
        counts = [d.counted_examples if math.isfinite(d.counted_examples) else float(d.num_examples) for d in accepted]
        total = sum(counts)
        out = MetricRecord()
        if not accepted or total <= 0:
            return out
        keys = set.intersection(*(set(d.metrics) for d in accepted)) - {NUM_EXAMPLES_KEY, PARTITION_ID_KEY, "bytes_up"}
        for key in sorted(keys):
            values = [d.metrics[key] for d in accepted]
            if all(math.isfinite(v) for v in values):
                out[key] = math.fsum(v * c for v, c in zip(values, counts, strict=True)) / total
        out[NUM_EXAMPLES_KEY] = sum(d.num_examples for d in accepted)
        return out
