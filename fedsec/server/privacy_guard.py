"""Epsilon per round and the budget guard of a run, for both DP modes (nothing without DP).

Central: the server's ledger (one subsampled-Gaussian step per round under the plan's sampling scheme, from the run
plan's :class:`~fedsec.plan.PrivacyPlan`); the run stops before a round that would overspend. Each round's row gets
the guard's ``epsilon`` and both accountants' (``epsilon_opacus_rdp``, ``epsilon_dp_accounting_rdp``, ...); the
summary states the scheme, the neighbouring relation and the accountants. Local: each client accounts
for itself and refuses to overspend (a ``refused`` reply); the run's epsilon is the largest client epsilon so far,
and the run stops when every sampled client refused.
"""

from __future__ import annotations

from typing import Any

from fedsec.config import PrivacyConfig
from fedsec.plan import PrivacyPlan


class PrivacyGuard:
    """Tracks what a run spends and says when it must stop."""

    def __init__(self, config: PrivacyConfig, plan: PrivacyPlan | None) -> None:
        self.config = config
        self.ledger = None
        if plan is not None:
            self.ledger = plan.ledger(delta=config.delta, budget=config.epsilon, accountant=config.accountant)
        self.client_epsilon: dict[int | None, float] = {}
        self.summary: dict[str, Any] = {}
        if config.mode != "none":
            self.summary = {"mode": config.mode, "epsilon": 0.0, "epsilon_budget": config.epsilon,
                            "delta": config.delta}
        if self.ledger is not None:
            self.summary.update(self.ledger.summary())

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the central ledger's steps, every client's epsilon, the summary."""
        return {"steps": self.ledger.steps if self.ledger is not None else 0,
                "client_epsilon": [(k, v) for k, v in self.client_epsilon.items()], "summary": dict(self.summary)}

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint: a resumed run never spends its budget twice."""
        if self.ledger is not None:
            steps = int(state["steps"])
            self.ledger.steps = steps
            self.ledger.history = [self.ledger.round_step(steps)] if steps else []
        self.client_epsilon = {k: float(v) for k, v in state["client_epsilon"]}
        self.summary = dict(state["summary"])

    def start(self, row: dict[str, Any]) -> None:
        if self.config.mode != "none":
            row["epsilon"] = 0.0

    def allows_next_round(self) -> bool:
        return self.ledger is None or self.ledger.allows(1)

    def end_round(self, row: dict[str, Any], decisions: list[Any]) -> None:
        if self.ledger is not None:
            self.ledger.spend(1)
            account = self.ledger.account
            row["epsilon"] = account.epsilon
            for name, value in account.epsilons.items():  # both accountants, round by round
                row[f"epsilon_{name.replace('.', '_')}"] = value
            self.summary.update(self.ledger.summary())
        elif self.config.mode == "local":
            self.client_epsilon.update({d.partition_id: d.metrics["epsilon"] for d in decisions
                                        if "epsilon" in d.metrics})
            row["epsilon"] = max(self.client_epsilon.values(), default=0.0)
            self.summary["client_epsilon"] = {str(k): v for k, v in sorted(self.client_epsilon.items())}
        if "epsilon" in row:
            self.summary["epsilon"] = row["epsilon"]

    @staticmethod
    def all_refused(decisions: list[Any]) -> bool:
        """Every sampled client refused to train (its budget is spent)."""
        return bool(decisions) and all(d.status.startswith("refused") for d in decisions)
