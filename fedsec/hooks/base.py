"""Round hooks: every concern that cuts across a round, as one class with named entry points.

The round loop (:func:`fedsec.server.app.run_rounds`) sends the round's messages, aggregates the replies and
records the round; everything else (evaluation, the privacy guard, detection scores, the omniscient attack, the
server's audits, sanitization totals) is a :class:`RoundHook` that the run plan builds
(:func:`fedsec.plan.build_plan` checks each hook's keys) and the loop calls, in the plan's order:

====================  ==========================================================================================
``on_start(a, row)``  round 0: the initial model (``a``) and its row
``before_round(r)``   a reason to stop before round ``r`` ("privacy_budget"), or ""
``before_send(rnd)``  the round's sampled clients (``rnd.sampled``), before the model is sent: a hook may take
                      some out, giving each a status in ``rnd.absent`` (a dropped device)
``on_replies(rnd)``   the round's replies, before aggregation (what a curious server holds; an omniscient attacker
                      rewrites the malicious replies here)
``after_aggregate``   the new global model and the strategy's decisions: add columns to ``rnd.row``
``after_round(rnd)``  after the round is recorded: a reason to stop, or ""
``on_stop(summary)``  the run stopped (completed or not): summary blocks that hold for any stop
``at_end(arrays, s)`` the run completed: final audits, summary blocks
``state`` / ``restore``  what a checkpoint keeps, so a resumed run goes on as if never stopped
====================  ==========================================================================================

In the spirit of PyTorch Lightning's ``Callback`` (one class per concern, named entry points, ``state_dict``) and
Flower's mods. A hook declares its config keys (``Params``, in ``[<section>.<name>]`` when ``section`` is set,
e.g. ``[audit.evasion]``), the ``rounds.csv`` columns it writes (``metrics``) and the numbers of its
``summary.json`` blocks that sweeps flatten (``summary_metrics``). Adding a hook: one file in this package and one
``HOOKS.register`` line in :mod:`fedsec.hooks`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from fedsec.audits.input_space import InputSpace
from fedsec.clients.attacks import Attack
from fedsec.config import PoisonConfig, PrivacyConfig, TrainConfig
from fedsec.data import DatasetSpec
from fedsec.data.federated import FederatedData
from fedsec.errors import ConfigError
from fedsec.federation import BufferSpec, Federation
from fedsec.models import build_model, channels_last_on_cpu
from fedsec.privacy import PrivacyPlan
from fedsec.registry import NoParams
from fedsec.results.contract import Metric, SummaryMetric
from fedsec.schedule import Schedule

__all__ = ["PROGRESS", "RoundHook", "RoundState", "RunFacts", "ServerContext"]

#: where the round loop says what it is doing between rounds (the end-of-run audits); the CLI shows it as status
PROGRESS = logging.getLogger("fedsec.progress")


@dataclass(frozen=True)
class RunFacts:
    """What the run plan tells the hooks about the run: typed pieces, never the whole config."""

    name: str
    seed: int
    rounds: int
    num_clients: int
    dataset_name: str
    dataset: DatasetSpec
    model_name: str
    schedule: Schedule
    attack: Attack
    train: TrainConfig
    privacy: PrivacyConfig
    privacy_plan: PrivacyPlan | None = None  # central DP
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    encrypted: bool = False
    federation: Federation | None = None  # [clients] / train.deadline: the simulated devices (None: ideal)
    buffer: BufferSpec | None = None  # server.aggregation = "fedbuff": asynchronous arrivals, K per server step
    eval_every: int = 1  # [eval] every: rounds between evaluations of the global model
    eval_examples: int = 0  # [eval] examples: the between-rounds subset of the test set (0: all of it)
    smoothing: Any = None  # defense.strategy = "crfl": its CrflSchedule (clip bound per round, sigma); else None
    authority_min_clients: int = 0  # encryption.scheme = "ckks": the fewest members of a sum the authority releases
    trust: str = ""  # encryption.scheme = "ckks": encryption.trust (who holds the secret key), else ""
    # attack.kind = "collude_with_server": (global arrays, round, partition) -> that client's true update, the
    # experimenter's ground truth for what the curious server recovers (never the server's knowledge)
    victim_update: Any = None

    @property
    def images(self) -> bool:
        return len(self.dataset.input_shape) == 3

    @property
    def input_space(self) -> InputSpace:
        """The map between pixels in [0, 1] and the model's inputs: the dataset's ``normalisation``, or the identity
        when it has none."""
        norm = self.dataset.normalisation
        return InputSpace(*norm) if norm else InputSpace()

    def require_images(self, key: str, why: str) -> None:
        """Refuse ``key`` on vector data (a :class:`ConfigError` naming it)."""
        if not self.images:
            raise ConfigError(f"{key}: {why}; {self.dataset_name!r} gives vectors")


@dataclass
class ServerContext:
    """What the hooks share on the server: the run's facts, its data, the test set on the server's device, one
    scratch model of the run's architecture (load arrays into it before use) and the plots folder."""

    facts: RunFacts
    data: FederatedData
    device: torch.device
    x_test: torch.Tensor
    y_test: torch.Tensor
    model: torch.nn.Module
    plots: Path

    @classmethod
    def build(cls, facts: RunFacts, data: FederatedData, plots: Path, device: torch.device) -> ServerContext:
        import numpy as np

        model = channels_last_on_cpu(build_model(facts.model_name, data.input_shape, data.num_classes).to(device))
        x = torch.from_numpy(np.array(data.x_test, copy=True)).to(device)
        y = torch.from_numpy(np.array(data.y_test, dtype=np.int64, copy=True)).to(device)
        return cls(facts, data, device, x, y, model, plots)

    def fresh_model(self, seed: int | None = None) -> torch.nn.Module:
        """A new model of the run's architecture on the server's device (seeded when ``seed`` is given)."""
        return build_model(self.facts.model_name, self.data.input_shape, self.data.num_classes, seed=seed).to(
            self.device)


@dataclass
class RoundState:
    """One round as the hooks see it; ``row`` is the round's ``rounds.csv`` row, filled in by the hooks."""

    server_round: int
    sent: Any  # the global ArrayRecord sent to the clients
    replies: list[Any] = field(default_factory=list)  # Flower Messages, sorted as received
    arrays: Any = None  # the global ArrayRecord after aggregation (the sent one when the round was skipped)
    decisions: list[Any] = field(default_factory=list)  # the strategy's ClientDecisions
    train_metrics: Any = None  # the strategy's MetricRecord
    row: dict[str, Any] = field(default_factory=dict)
    sampled: list[int] = field(default_factory=list)  # the partitions the round is sent to
    absent: dict[int, str] = field(default_factory=dict)  # sampled partitions that took no part -> their status
    partition_of_node: dict[int, int] = field(default_factory=dict)  # reply's source node id -> partition id
    skipped_reason: str = ""  # why the strategy skipped the round ("" when it aggregated)


class RoundHook:
    """Base hook: does nothing at every entry point. Subclasses override what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    section: ClassVar[str] = ""  # the config table holding its keys: "audit" -> [audit.<name>]; "" = built in
    metrics: ClassVar[tuple[Metric, ...]] = ()
    summary_metrics: ClassVar[tuple[SummaryMetric, ...]] = ()
    client_metrics: ClassVar[tuple[str, ...]] = ()  # reply metrics copied into clients.csv ("x_": a prefix)

    def __init__(self, params: BaseModel, ctx: ServerContext) -> None:
        self.params = params
        self.ctx = ctx

    # ------------------------------------------------------------------ the plan's questions
    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        """Built-in hooks: whether this run needs the hook (section hooks run when their table is configured)."""
        return True

    @classmethod
    def check(cls, params: BaseModel, facts: RunFacts) -> None:
        """Refuse keys that do not fit the run (a :class:`ConfigError` naming the key); called once by the plan."""

    @classmethod
    def enabled(cls, params: BaseModel) -> bool:
        """Whether configured keys switch the hook on (``[audit.model_inversion] enabled = false`` does not)."""
        return True

    # ------------------------------------------------------------------ the round's entry points
    def on_start(self, arrays: Any, row: dict[str, Any]) -> None:
        """Round 0: add to the initial model's row."""

    def before_round(self, server_round: int) -> str:
        """A reason to stop before ``server_round`` (becomes ``stopped_reason``), or ""."""
        return ""

    def before_send(self, rnd: RoundState) -> None:
        """The round's sampled partitions (``rnd.sampled``), before the model is sent to them."""

    def on_replies(self, rnd: RoundState) -> None:
        """The round's replies, before the strategy aggregates them."""

    def after_aggregate(self, rnd: RoundState) -> None:
        """The new global model (``rnd.arrays``) and the decisions: add this hook's columns to ``rnd.row``."""

    def after_round(self, rnd: RoundState) -> str:
        """After the round is recorded and checkpointed: a reason to stop the run, or ""."""
        return ""

    def on_stop(self, summary: dict[str, Any]) -> None:
        """The run stopped, completed or not: add the summary blocks that hold for any stop."""

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        """The run completed: final work on the last global model; add summary blocks."""

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (plain containers and tensors)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`state`."""
