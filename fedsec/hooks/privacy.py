"""The privacy guard: epsilon per round and the budget, for both DP modes (built only when ``privacy.mode`` is set).

Central: the server's ledger (one subsampled-Gaussian step per round under the plan's sampling scheme, from the run
plan's :class:`~fedsec.privacy.PrivacyPlan`); the run stops before a round that would overspend. Each round's row gets
the guard's ``epsilon`` and both accountants' (``epsilon_opacus_rdp``, ``epsilon_dp_accounting_rdp``, ...); the
summary states the scheme, the neighbouring relation and the accountants. Local: each client accounts for itself and
refuses to overspend (a ``refused`` reply); the run's epsilon is the largest client epsilon so far, the run stops
when every sampled client refused, and each client's DP-SGD accountant history (as it last reported it) is kept in
the checkpoint so that a resumed run's clients go on from it.
"""

from __future__ import annotations

import logging
from typing import Any

from fedsec.protocol import dp_history_of, partition_of_reply
from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts

logger = logging.getLogger(__name__)


class PrivacyGuard(RoundHook):
    """Tracks what a run spends and says when it must stop."""

    name = "privacy"
    description = "epsilon per round; stops before a round that would spend more than privacy.epsilon"
    client_metrics = ("epsilon", "epsilon_")  # each client's spend, both accountants
    metrics = (
        Metric("epsilon", "privacy spent so far (at delta); never above the budget", better="lower"),
        Metric("clip_norm", "central DP, adaptive clipping: the L2 bound the round's updates were clipped to",
               final=False),
        Metric("unclipped_share", "central DP, adaptive clipping: the noised share of the round's updates within "
               "the bound (count + N(0, clip_count_std^2)) / clients_per_round", final=False),
    )
    #: the DP strategy's round metrics under adaptive clipping (strategies/dp_fedavg.py)
    strategy_metrics = ("clip_norm", "unclipped_share")

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.privacy.mode != "none"

    def __init__(self, params: Any, ctx: Any) -> None:
        super().__init__(params, ctx)
        config, plan = ctx.facts.privacy, ctx.facts.privacy_plan
        self.mode = config.mode
        self.ledger = plan.ledger() if plan is not None else None
        self.client_epsilon: dict[int | None, float] = {}
        self.dp_histories: dict[int, list[tuple[float, float, int]]] = {}
        self.summary: dict[str, Any] = {"mode": config.mode, "epsilon": 0.0, "epsilon_budget": config.epsilon,
                                        "delta": config.delta}
        if self.ledger is not None:
            self.summary.update(self.ledger.summary())
        if plan is not None and plan.clipping == "adaptive":  # the accounted z; the updates get z_Delta
            self.summary.update({"clipping": "adaptive", "update_noise_multiplier": plan.update_noise_multiplier,
                                 "initial_clip_norm": plan.clip_norm, "target_quantile": plan.target_quantile,
                                 "clip_lr": plan.clip_lr, "clip_count_std": plan.clip_count_std})

    def state(self) -> dict[str, Any]:
        return {"steps": self.ledger.steps if self.ledger is not None else 0,
                "client_epsilon": [(k, v) for k, v in self.client_epsilon.items()], "summary": dict(self.summary),
                "dp_histories": self.dp_histories}

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint: a resumed run never spends its budget twice."""
        if self.ledger is not None:
            steps = int(state["steps"])
            self.ledger.steps = steps
            self.ledger.history = [self.ledger.round_step(steps)] if steps else []
        self.client_epsilon = {k: float(v) for k, v in state["client_epsilon"]}
        self.summary = dict(state["summary"])
        self.dp_histories = {int(k): [tuple(h) for h in v] for k, v in state["dp_histories"].items()}

    def on_start(self, arrays: Any, row: dict[str, Any]) -> None:
        row["epsilon"] = 0.0

    def before_round(self, server_round: int) -> str:
        if self.ledger is None or self.ledger.allows(1):
            return ""
        logger.warning("stopping before round %d: it would spend more than epsilon=%s", server_round,
                       self.summary["epsilon_budget"])
        return "privacy_budget"

    def on_replies(self, rnd: RoundState) -> None:
        for reply in rnd.replies:
            history, pid = dp_history_of(reply), partition_of_reply(reply)
            if history is not None and pid is not None:
                self.dp_histories[pid] = history

    def after_aggregate(self, rnd: RoundState) -> None:
        row = rnd.row
        for key in self.strategy_metrics:
            if rnd.train_metrics is not None and key in rnd.train_metrics:
                row[key] = float(rnd.train_metrics[key])
        if self.ledger is not None:
            self.ledger.spend(1)
            account = self.ledger.account
            row["epsilon"] = account.epsilon
            for name, value in account.epsilons.items():  # both accountants, round by round
                row[f"epsilon_{name.replace('.', '_')}"] = value
            self.summary.update(self.ledger.summary())
        elif self.mode == "local":
            self.client_epsilon.update({d.partition_id: d.metrics["epsilon"] for d in rnd.decisions
                                        if "epsilon" in d.metrics})
            row["epsilon"] = max(self.client_epsilon.values(), default=0.0)
            self.summary["client_epsilon"] = {str(k): v for k, v in sorted(self.client_epsilon.items())}
        if "epsilon" in row:
            self.summary["epsilon"] = row["epsilon"]

    def after_round(self, rnd: RoundState) -> str:
        """Every sampled client refused to train (its budget is spent): stop."""
        if not rnd.decisions or not all(d.status.startswith("refused") for d in rnd.decisions):
            return ""
        logger.warning("stopping after round %d: every sampled client has spent its budget", rnd.server_round)
        return "privacy_budget"

    def on_stop(self, summary: dict[str, Any]) -> None:
        summary["privacy"] = self.summary


def dp_histories_of(checkpoint: dict[str, Any]) -> dict[int, list[tuple[float, float, int]]] | None:
    """The clients' DP-SGD accountant histories a checkpoint holds (None: the run has no privacy guard)."""
    state = checkpoint.get("hooks", {}).get(PrivacyGuard.name)
    return None if state is None else {int(k): [tuple(h) for h in v] for k, v in state["dp_histories"].items()}
