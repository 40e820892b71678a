"""What an attack can do to a malicious client's round, the context it gets, and what every attack declares.

An attack is built once, by the run plan, from its ``[attack]`` keys (:attr:`Attack.Params`) and travels to the
clients inside their spec; the server uses the same object for the attack's test metrics and, for omniscient
attackers, to craft updates. Adding an attack: copy ``sign_flip.py`` (a kernel on top, the class below with its
``Params`` and ``description``), then one ``ATTACKS.register`` line in :mod:`.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from fedsec.errors import ConfigError
from fedsec.registry import NoParams
from fedsec.results.contract import AttackSuccess, Metric
from fedsec.training.local import Objective

Predict = Callable[[torch.Tensor], torch.Tensor]  # inputs -> predicted labels
Rule = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # updates (n, d) -> (aggregate, weights)


@dataclass(frozen=True)
class DefenseView:
    """What an attacker that knows the deployed defense sees of it: the same strategy class the server runs, built
    from the same ``[defense]`` keys (:meth:`rule` gives its aggregation kernel as a function of the round's n, f).

    ``build()`` returns a strategy object (built by the run plan, which knows the class and keys); ``family`` is
    the rule's declared kind (``RobustStrategy.family``: "krum", "coordinate", "selection", ...)."""

    name: str
    build: Callable[[], Any]
    family: str = "mean"

    @property
    def selects_clients(self) -> bool:
        return self.family in ("krum", "selection")

    def rule(self) -> Rule:
        """The deployed pipeline on stacked updates (n, d), every client weighted alike: the pre-aggregators
        (``defense.pre``), then the rule's kernel, as the server runs them."""
        strategy = self.build()

        def aggregate(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ones = torch.ones(updates.shape[0], dtype=updates.dtype, device=updates.device)
            return strategy.aggregate_with_pre(updates, ones)

        return aggregate


@dataclass(frozen=True)
class AttackContext:
    """One malicious client in one round."""

    server_round: int
    partition_id: int
    attacker_rank: int  # position of this client among the malicious ids (0..f-1)
    num_classes: int
    data_max: float  # largest input value of the dataset (a "white" pixel after normalisation)
    generator: torch.Generator  # seeded by (seed, round, partition id)


class Attack:
    """Base attack: honest behaviour. Data-poisoning attacks override :meth:`poison_data`, model-poisoning
    attacks :meth:`poison_update`, attacks that craft one update from benign ones set ``crafts_from_benign`` and
    override :meth:`craft`.

    Parameters
    ----------
    params : BaseModel | None (default: the kind's defaults)
        The validated ``[attack]`` keys of this kind (:attr:`Params`).
    knowledge : str (default: "colluding")
        For crafting attacks: "colluding" (the round's sampled attackers share their own honest updates) or
        "omniscient" (every honest update of the round; realised on the server before aggregation).
    """

    kind: ClassVar[str] = "none"
    description: ClassVar[str] = "no attack: every client is honest"
    Params: ClassVar[type[BaseModel]] = NoParams
    crafts_from_benign: ClassVar[bool] = False
    #: the rounds.csv columns :meth:`test_metrics` writes, and how the attack's success is read from them
    metrics: ClassVar[tuple[Metric, ...]] = ()
    success: ClassVar[AttackSuccess | None] = None

    def __init__(self, params: BaseModel | None = None, *, knowledge: str = "colluding") -> None:
        self.params = params if params is not None else self.Params()
        self.knowledge = knowledge
        self.defense: DefenseView | None = None  # set by the run plan: the deployed rule, for adaptive attacks

    def bind_defense(self, defense: DefenseView) -> None:
        """Give the attacker its view of the deployed defense (called once by the run plan). Attacks that adapt
        to the rule check here that they support it (a :class:`ConfigError` naming ``defense.strategy``)."""
        self.defense = defense

    # ------------------------------------------------------------------ what the attacker knows
    @property
    def omniscient(self) -> bool:
        """Crafted on the server from every honest update of the round."""
        return self.crafts_from_benign and self.knowledge == "omniscient"

    @property
    def colluding(self) -> bool:
        """Crafted by the attackers from the honest updates they compute themselves."""
        return self.crafts_from_benign and self.knowledge == "colluding"

    def knowledge_note(self) -> str | None:
        """What ``summary.json`` records as the attacker's knowledge (None: the attack needs none)."""
        if not self.crafts_from_benign:
            return None
        if self.omniscient:
            return "omniscient (applied on the server before aggregation)"
        return "colluding (attackers share their own honest updates)"

    # ------------------------------------------------------------------ checks against the data
    @classmethod
    def check_data(cls, params: BaseModel, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse keys that do not fit the dataset: any class-valued key (``source``, ``target``) outside the
        label set. Attacks that need more (image inputs) extend it."""
        for key in ("source", "target"):
            value = getattr(params, key, None)
            if value is not None and value >= num_classes:
                raise ConfigError(f"attack.{key}={value}: outside the label set of the dataset (0..{num_classes - 1})")

    # ------------------------------------------------------------------ the client's round
    def poison_data(self, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The local training data the attacker trains on."""
        return x, y

    def report_examples(self, num_examples: float) -> float:
        """The ``num-examples`` the attacker reports for a round in which it trained on ``num_examples``."""
        return num_examples

    def local_objective(self, benign: torch.Tensor | None) -> Objective | None:
        """An extra term of the attacker's local training objective, given the honest updates it knows (``benign``,
        (m, d), for attacks with ``needs_benign_reference``): (weight of the data loss, penalty of the flat update
        delta), :func:`fedsec.training.local.objective_gradient`; None (default): train on the data loss alone."""
        return None

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """The update (trained - global arrays, flattened) the attacker sends."""
        return update

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        """The malicious update (d,) from benign rows (m, d); ``num_clients``/``num_attackers``: the round's n, f."""
        raise NotImplementedError(f"attack.kind={self.kind!r} does not craft from benign updates")

    # ------------------------------------------------------------------ the server's view
    def prepare_test(self, x: torch.Tensor, y: torch.Tensor, *, data_max: float) -> Any:
        """What :meth:`test_metrics` needs from the test set, computed once by the server (None: nothing)."""
        return None

    def test_metrics(self, state: Any, predict: Predict, x: torch.Tensor, y: torch.Tensor,
                     recall: list[float]) -> dict[str, float]:
        """The attack's own metrics on the global model (``rounds.csv`` columns); none by default."""
        return {}
