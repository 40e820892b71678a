"""A new attack and a new strategy, added through the registries only (one registration line each), run end to end.

Nothing outside this file changes: the attack declares its own ``[attack]`` key, the strategy its own
``[defense]`` key, the run plan validates both from the registries, and the clients (Ray actors) receive the built
attack inside their spec.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import Field

from fedsec.clients.attacks import ATTACKS, Attack, AttackContext
from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.registry import Params
from fedsec.strategies import STRATEGIES, RobustStrategy


class BlowUpParams(Params):
    factor: float = Field(50.0, gt=1, description="how much larger the sent update is.")


class BlowUp(Attack):
    """Sends ``factor`` x its honest update (a test attack)."""

    kind = "blow_up"
    description = "test attack: factor x the update"
    Params = BlowUpParams

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return update * self.params.factor


class SmallestNormsParams(Params):
    keep: int = Field(2, ge=1, description="updates kept: those of smallest L2 norm.")


class SmallestNorms(RobustStrategy):
    """Mean of the ``keep`` updates of smallest norm (a test rule)."""

    Params = SmallestNormsParams
    description = "test rule: mean of the smallest-norm updates"

    def __init__(self, *, keep: int = 2, **kwargs) -> None:
        self.keep = keep
        super().__init__(**kwargs)

    def aggregate_updates(self, updates, num_examples):
        chosen = torch.linalg.vector_norm(updates, dim=1).argsort()[: self.keep]
        weights = torch.zeros(updates.shape[0], dtype=updates.dtype, device=updates.device)
        weights[chosen] = 1.0 / len(chosen)
        return weights @ updates, weights


@pytest.fixture
def registered():
    ATTACKS.register("blow_up", BlowUp)  # the one registration line of the attack
    STRATEGIES.register("smallest_norms", SmallestNorms)  # ... and of the strategy
    yield
    ATTACKS.unregister("blow_up")
    STRATEGIES.unregister("smallest_norms")


def raw(**attack) -> dict:
    return {"name": "ext", "rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
            "model": {"name": "logreg"}, "train": {"clients_per_round": 4, "batch_size": 16, "lr": 0.1},
            "attack": {"kind": "blow_up", "client_ids": [2], **attack},
            "defense": {"strategy": "smallest_norms", "keep": 3}}


@pytest.mark.usefixtures("registered")
def test_new_kinds_validate_their_own_keys():
    plan = plan_from_dict(raw(factor=20.0))
    assert isinstance(plan.attack, BlowUp) and plan.attack.params.factor == 20.0
    defense = plan.resolved["defense"]  # the kind's own keys, next to the keys every rule shares
    assert {k: v for k, v in defense.items() if k not in ("weighting", "weight_cap", "sanitize")} == {
        "strategy": "smallest_norms", "keep": 3}
    assert defense["weighting"] == "capped" and defense["sanitize"]["method"] == "none"
    with pytest.raises(ConfigError, match=r"attack.factor=0.5: Input should be greater than 1"):
        plan_from_dict(raw(factor=0.5))
    with pytest.raises(ConfigError, match=r"defense.kep: unknown key for defense.strategy='smallest_norms'"):
        plan_from_dict({**raw(), "defense": {"strategy": "smallest_norms", "kep": 3}})


def test_unregistered_kinds_are_refused():
    with pytest.raises(ConfigError, match="attack.kind='blow_up': unknown attack"):
        plan_from_dict(raw())


@pytest.mark.e2e
@pytest.mark.usefixtures("registered")
def test_new_attack_and_strategy_run_end_to_end(tmp_path: Path):
    from fedsec.runtime.runner import run_experiment

    result = run_experiment(plan_from_dict(raw()), tmp_path / "run")
    assert result.summary["rounds_completed"] == 2 and result.summary["strategy"] == "smallest_norms"
    clients = pd.read_csv(result.run_dir / "clients.csv")
    attacker = clients[clients["client"] == 2]
    honest = clients[clients["client"] != 2]
    # the blown-up update is the largest in every round, so the rule drops it; the three honest ones share it
    assert len(attacker) == 2 and (attacker["accepted"] == 0).all() and (attacker["malicious"] == 1).all()
    assert (honest["accepted"].round(6) == round(1 / 3, 6)).all()
    assert (attacker["update_norm"].to_numpy() > 10 * honest.groupby("round")["update_norm"].max().to_numpy()).all()
    assert pd.read_csv(result.run_dir / "rounds.csv")["accuracy"].iloc[-1] > 0.8
