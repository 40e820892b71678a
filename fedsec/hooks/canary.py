"""``[audit.canary]``: the one-run privacy audit with client-level canaries (Steinke, Nasr and Jagielski, NeurIPS
2023; :mod:`fedsec.privacy.one_run_audit` has the paper, the canaries and the bound). The strategy inserts and
scores the canaries as it aggregates (``strategies/base.py``); this hook puts the audit in each row of
``rounds.csv`` (``canary_epsilon_lower_bound``, ``canary_correct`` of ``canary_guesses``, ``canaries_taking_part``)
and its summary next to the accountant's epsilon. Under central DP the bound must stay below the accountant's
epsilon; a bound above it is logged as an error (it would be a bug in fedsec's DP), as for LiRA's bound
(``fedsec.hooks.membership``). Local DP-SGD runs are refused: their canaries would be examples inside a client's
training, which this hook does not insert."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from fedsec.errors import ConfigError
from fedsec.registry import Params
from fedsec.results.contract import Metric, SummaryMetric

from .base import RoundHook, RoundState, RunFacts, ServerContext

logger = logging.getLogger(__name__)

#: the strategy's round metrics this hook copies into rounds.csv
ROUND_KEYS = ("canary_epsilon_lower_bound", "canary_correct", "canary_guesses", "canaries_taking_part")


class CanaryAuditParams(Params):
    """``[audit.canary]`` keys."""

    canaries: int = Field(1000, ge=2, le=1_000_000, description="m: client-level canaries, each included in the run "
                          "with probability 1/2 (needs at most one per model parameter).")
    guesses: int = Field(100, ge=1, le=500_000, description="k: the auditor guesses 'included' for the k highest "
                         "scores and 'excluded' for the k lowest (2k <= canaries).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the epsilon lower bound.")
    norm: float = Field(1.0, gt=0, le=1e6, description="Without DP: the L2 norm of a canary's update (under "
                        "central DP a canary is clipped to the round's privacy.clip_norm like any client).")


class CanaryAudit(RoundHook):
    """The epsilon lower bound of one run, from canaries inserted and scored by the strategy."""

    name = "canary"
    section = "audit"
    description = ("one-run privacy audit (Steinke et al. 2023): client-level canaries, epsilon lower bound per round "
                   "next to the accountant's epsilon")
    Params = CanaryAuditParams
    metrics = (
        Metric("canary_epsilon_lower_bound", "one-run audit: the epsilon lower bound the canary guesses imply so far "
               "(at audit.canary.confidence)", better="lower"),
        Metric("canary_correct", "one-run audit: correct guesses so far", final=False, integer=True),
        Metric("canary_guesses", "one-run audit: guesses (2 x audit.canary.guesses)", final=False, integer=True),
        Metric("canaries_taking_part", "one-run audit: included canaries that took part in the round", final=False,
               integer=True),
    )
    summary_metrics = (
        SummaryMetric("canary_epsilon_lower_bound", "canary_audit", "epsilon_lower_bound",
                      "one-run audit's epsilon lower bound"),
    )

    @classmethod
    def check(cls, params: CanaryAuditParams, facts: RunFacts) -> None:
        if 2 * params.guesses > params.canaries:
            raise ConfigError(f"audit.canary.guesses={params.guesses}: the auditor guesses 2 x guesses of the "
                              f"{params.canaries} canaries; use at most {params.canaries // 2}")
        if facts.privacy.mode == "local":
            raise ConfigError("audit.canary with privacy.mode='local': the canaries are clients inserted into the "
                              "aggregate, which local DP-SGD's guarantee (per example, per client) does not cover; "
                              "audit central DP or a run without DP")
        if facts.encrypted:
            raise ConfigError("audit.canary with encryption: the server adds the canaries to the aggregate it "
                              "releases, which under encryption it never sees in the clear")
        plan = facts.privacy_plan
        if plan is not None and plan.scheme != "poisson":
            raise ConfigError("audit.canary with train.sampling='fixed' under central DP: the accountant analyses "
                              "replace-one for fixed cohorts, and canary clients are added, not replaced; use "
                              "train.sampling='poisson'")

    def __init__(self, params: CanaryAuditParams, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        plan = ctx.facts.privacy_plan
        self.accountant_epsilon = None if plan is None else 0.0
        self.last: dict[str, float] = {}

    def state(self) -> dict[str, Any]:
        return {"last": dict(self.last), "accountant_epsilon": self.accountant_epsilon}

    def restore(self, state: dict[str, Any]) -> None:
        self.last = dict(state["last"])
        self.accountant_epsilon = state["accountant_epsilon"]

    def after_aggregate(self, rnd: RoundState) -> None:
        metrics = rnd.train_metrics
        if metrics is None or ROUND_KEYS[0] not in metrics:
            return
        self.last = {key: float(metrics[key]) for key in ROUND_KEYS if key in metrics}
        rnd.row.update(self.last)
        if self.accountant_epsilon is not None and "epsilon" in rnd.row:  # the privacy guard runs first
            self.accountant_epsilon = float(rnd.row["epsilon"])
            if self.last[ROUND_KEYS[0]] > self.accountant_epsilon:
                logger.error("PRIVACY VIOLATION: round %d: the one-run audit's epsilon lower bound %.3f is above the "
                             "accountant's epsilon %.3f; this is a bug in fedsec's DP", rnd.server_round,
                             self.last[ROUND_KEYS[0]], self.accountant_epsilon)

    def on_stop(self, summary: dict[str, Any]) -> None:
        p = self.params
        block: dict[str, Any] = {
            "method": "one-run audit, client-level canaries (Steinke, Nasr and Jagielski, NeurIPS 2023)",
            "canaries": p.canaries, "guesses": 2 * p.guesses, "confidence": p.confidence,
            "correct": self.last.get("canary_correct"),
            "epsilon_lower_bound": self.last.get("canary_epsilon_lower_bound"),
            "accountant_epsilon": self.accountant_epsilon,
        }
        if self.accountant_epsilon is not None and block["epsilon_lower_bound"] is not None:
            block["below_accountant_epsilon"] = block["epsilon_lower_bound"] <= self.accountant_epsilon
        summary["canary_audit"] = block
