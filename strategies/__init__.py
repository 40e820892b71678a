"""Server strategies (robust aggregation), importable as ``fedsec.strategies``.

Each strategy is a Flower Message-API strategy usable in any Flower ServerApp; ``STRATEGIES`` maps the config's
``defense.strategy`` names to them.
"""

from __future__ import annotations

from .base import ClientDecision, RobustStrategy, RoundReport, StrategyConfigError
from .fedavg import FedAvg, fedavg_aggregate

#: defense.strategy name -> (class, one-line description)
STRATEGIES: dict[str, tuple[type[RobustStrategy], str]] = {
    "fedavg": (FedAvg, "Federated Averaging, no defense (McMahan et al. 2017)"),
}

__all__ = [
    "STRATEGIES",
    "ClientDecision",
    "FedAvg",
    "RobustStrategy",
    "RoundReport",
    "StrategyConfigError",
    "fedavg_aggregate",
]
