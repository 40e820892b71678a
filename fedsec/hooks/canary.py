"""``[audit.canary]``: the one-run privacy audit (Steinke, Nasr and Jagielski, NeurIPS 2023;
:mod:`fedsec.privacy.one_run_audit` has the paper, the canaries and the bound), at one of two levels.

``level = "client"`` (default): client-level gradient canaries for FedAvg without DP and central DP-FedAvg; the
strategy inserts and scores them as it aggregates (``strategies/base.py``) and this hook copies the audit into each
row of ``rounds.csv``. ``level = "example"``: example canaries audited black-box (the paper's setting;
mislabelled examples are fedsec's choice of canary), for local DP-SGD (its unit of privacy is one example of one
client) and runs without DP: m examples of client ``audit.canary.client`` get a wrong
label, each stays in its training data with probability 1/2 (:mod:`clients.local_data`), and after every round this
hook scores every canary by the new global model's negative loss on it. Either way ``rounds.csv`` gets
``canary_epsilon_lower_bound``, ``canary_correct`` of ``canary_guesses`` and ``canaries_taking_part``, and the
summary's ``canary_audit`` block puts the bound next to the accountant's epsilon: the run's under central DP, the
audited client's under local DP (``canary_client_epsilon`` per round). A bound above that epsilon is logged as an
error (it would be a bug in fedsec's DP), as for LiRA's bound (``fedsec.hooks.membership``)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field

from fedsec.arrays import load_record
from fedsec.errors import ConfigError
from fedsec.privacy.one_run_audit import SEED_OFFSET, audit_bound, draw_example_canaries, example_canary_scores
from fedsec.registry import Params
from fedsec.results.contract import Metric, SummaryMetric

from .base import RoundHook, RoundState, RunFacts, ServerContext

logger = logging.getLogger(__name__)

#: the strategy's round metrics this hook copies into rounds.csv
ROUND_KEYS = ("canary_epsilon_lower_bound", "canary_correct", "canary_guesses", "canaries_taking_part")


class CanaryAuditParams(Params):
    """``[audit.canary]`` keys."""

    level: Literal["client", "example"] = Field("client", description="'client': gradient canaries as virtual "
                                                "clients (FedAvg, central DP); 'example': mislabelled examples in one "
                                                "client's training data (local DP-SGD, or no DP).")
    canaries: int = Field(1000, ge=2, le=1_000_000, description="m: canaries, each included in the run with "
                          "probability 1/2 (client level: at most one per model parameter; example level: at most "
                          "the audited client's examples).")
    client: int = Field(0, ge=0, le=1_000_000, description="Example level: the partition id of the client whose "
                        "data holds the canaries (an honest client).")
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
        Metric("canary_client_epsilon", "one-run audit, example canaries under local DP: the audited client's "
               "accountant epsilon so far", better="lower"),
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
        if params.level == "example":
            if params.client >= facts.num_clients:
                raise ConfigError(f"audit.canary.client={params.client}: no such client, data.num_clients="
                                  f"{facts.num_clients}; use 0..{facts.num_clients - 1}")
            if facts.schedule.is_malicious(params.client):
                raise ConfigError(f"audit.canary.client={params.client} is malicious (attack); the canaries must be "
                                  "in an honest client's training data; pick another client")
            if facts.privacy.mode == "central":
                raise ConfigError("audit.canary.level='example' with privacy.mode='central': DP-FedAvg protects a "
                                  "client, not an example; use level='client'")
            return
        if facts.privacy.mode == "local":
            raise ConfigError("audit.canary with privacy.mode='local': the canaries are clients inserted into the "
                              "aggregate, which local DP-SGD's guarantee (per example, per client) does not cover; "
                              "use audit.canary.level='example'")
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
        facts = ctx.facts
        self.accountant_epsilon = None if facts.privacy_plan is None and facts.privacy.mode != "local" else 0.0
        self.last: dict[str, float] = {}
        self.canaries = None
        if params.level == "example":  # the canaries as the audited client draws them (same seed, same partition)
            index = ctx.data.partitions[params.client]
            if params.canaries > index.size:
                raise ConfigError(f"audit.canary.canaries={params.canaries}: client {params.client} holds "
                                  f"{index.size} examples; use at most {index.size} canaries")
            y = torch.from_numpy(ctx.data.y_train[index].astype("int64"))
            self.canaries = draw_example_canaries(y, canaries=params.canaries, num_classes=ctx.data.num_classes,
                                                  seed=facts.seed + SEED_OFFSET)
            x = torch.from_numpy(ctx.data.x_train[index[self.canaries.index.numpy()]].copy())
            self.canary_x = x.to(ctx.device)

    def state(self) -> dict[str, Any]:
        return {"last": dict(self.last), "accountant_epsilon": self.accountant_epsilon}

    def restore(self, state: dict[str, Any]) -> None:
        self.last = dict(state["last"])
        self.accountant_epsilon = state["accountant_epsilon"]

    def after_aggregate(self, rnd: RoundState) -> None:
        if self.canaries is not None:
            self._audit_examples(rnd)
            return
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

    def _audit_examples(self, rnd: RoundState) -> None:
        """Score every example canary on the round's global model (what the auditor sees) and bound epsilon."""
        p, ctx = self.params, self.ctx
        mine = [d for d in rnd.decisions if d.partition_id == p.client]
        trained = any(d.weight > 0 for d in mine)  # its update (with its included canaries) entered the model
        if self.accountant_epsilon is not None:
            self.accountant_epsilon = max([self.accountant_epsilon,
                                           *(float(d.metrics["epsilon"]) for d in mine if "epsilon" in d.metrics)])
        load_record(ctx.model, rnd.arrays)
        scores = example_canary_scores(ctx.model, self.canary_x, self.canaries.label)
        self.last = audit_bound(scores, self.canaries.included, guesses=p.guesses, delta=ctx.facts.privacy.delta,
                                confidence=p.confidence)
        self.last["canaries_taking_part"] = float(self.canaries.included.sum()) if trained else 0.0
        if self.accountant_epsilon is not None:
            self.last["canary_client_epsilon"] = self.accountant_epsilon
            if self.last[ROUND_KEYS[0]] > self.accountant_epsilon:
                logger.error("PRIVACY VIOLATION: round %d: the one-run audit's epsilon lower bound %.3f is above "
                             "client %d's accountant epsilon %.3f; this is a bug in fedsec's DP", rnd.server_round,
                             self.last[ROUND_KEYS[0]], p.client, self.accountant_epsilon)
        rnd.row.update(self.last)

    def on_stop(self, summary: dict[str, Any]) -> None:
        p = self.params
        level = "client-level canaries" if p.level == "client" else f"example-level canaries at client {p.client}"
        block: dict[str, Any] = {
            "method": f"one-run audit, {level} (Steinke, Nasr and Jagielski, NeurIPS 2023)", "level": p.level,
            "canaries": p.canaries, "guesses": 2 * p.guesses, "confidence": p.confidence,
            "correct": self.last.get("canary_correct"),
            "epsilon_lower_bound": self.last.get("canary_epsilon_lower_bound"),
            "accountant_epsilon": self.accountant_epsilon,
        }
        if self.accountant_epsilon is not None and block["epsilon_lower_bound"] is not None:
            block["below_accountant_epsilon"] = block["epsilon_lower_bound"] <= self.accountant_epsilon
        if self.canaries is not None:  # the run's draw, so the audit can be checked from the run directory
            block.update({"client": p.client, "canary_examples": self.canaries.index.tolist(),
                          "canary_labels": self.canaries.label.tolist(),
                          "canary_included": [int(b) for b in self.canaries.included.tolist()]})
        summary["canary_audit"] = block
