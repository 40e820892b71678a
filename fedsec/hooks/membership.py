"""``[audit.membership]``: membership inference on the final global model or on one client's last local model:
offline LiRA (Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022; shadow models
trained with fedsec's own training loop on held-out data) or Yeom et al.'s loss threshold over every threshold
(:mod:`fedsec.audits.lira`); AUC, TPR at 0.1% / 1% FPR, and the epsilon lower bound the attack implies next to the
epsilon of the guarantee that covers the attacked model (:mod:`fedsec.audits.empirical_privacy`; a bound above it is
logged as an error: it would be a bug in fedsec's DP). The global model is covered by the run's epsilon; one
client's local model by that client's own epsilon under local DP, and by nothing under central DP (which noises only
the aggregate): its bound is then reported without a comparison (``bound_compared_with`` says which)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from fedsec.arrays import load_record, record_to_tensors
from fedsec.errors import ConfigError
from fedsec.protocol import partition_of_reply
from fedsec.registry import Params
from fedsec.results.contract import SummaryMetric
from fedsec.training import train_local

from .base import RoundHook, RoundState, RunFacts, ServerContext

logger = logging.getLogger(__name__)


class MembershipAuditParams(Params):
    """``[audit.membership]`` keys."""

    method: Literal["yeom", "lira"] = Field("yeom", description="yeom (loss threshold) | lira (offline LiRA).")
    shadows: int = Field(8, ge=1, le=256, description="lira: shadow models.")
    examples: int = Field(500, ge=10, le=100_000, description="Members and non-members each.")
    target: Literal["global", "client"] = Field("global", description="The final global model or one client's.")
    client: int = Field(0, ge=0, le=10_000_000, description="target = client: the partition id.")
    shadow_epochs: int = Field(5, ge=1, le=1000, description="lira: epochs each shadow model trains.")


class MembershipAudit(RoundHook):
    """Membership inference against the final global model or one client's last local model."""

    name = "membership"
    section = "audit"
    description = "LiRA or Yeom membership inference: AUC, TPR at low FPR, empirical epsilon lower bound"
    Params = MembershipAuditParams
    summary_metrics = (
        SummaryMetric("membership_auc", "membership", "auc", "membership attack's ROC AUC"),
        SummaryMetric("membership_tpr_at_0.1%_fpr", "membership", "tpr_at_0.1%_fpr", "TPR at 0.1% FPR"),
        SummaryMetric("membership_tpr_at_1%_fpr", "membership", "tpr_at_1%_fpr", "TPR at 1% FPR"),
        SummaryMetric("membership_epsilon_lower_bound", "membership", "empirical_epsilon_lower_bound",
                      "the epsilon lower bound the attack implies"),
    )

    @classmethod
    def check(cls, params: MembershipAuditParams, facts: RunFacts) -> None:
        if params.target != "client":
            return
        c = params.client
        if not 0 <= c < facts.num_clients:
            raise ConfigError(f"audit.membership.client={c}: not a client (0..{facts.num_clients - 1})")
        if not any(c in facts.schedule.sampled(r) for r in range(1, facts.rounds + 1)):
            raise ConfigError(f"audit.membership.client={c}: never trains in the planned rounds; pick another")

    def __init__(self, params: MembershipAuditParams, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        self.client_model: Any = None  # target = client: its last local model (an ArrayRecord)

    def state(self) -> dict[str, Any]:
        return {"client_model": None if self.client_model is None else record_to_tensors(self.client_model)}

    def restore(self, state: dict[str, Any]) -> None:
        from flwr.app import Array, ArrayRecord

        saved = state["client_model"]
        self.client_model = None if saved is None else ArrayRecord(
            {k: Array(np.ascontiguousarray(v.numpy())) for k, v in saved.items()})

    def on_replies(self, rnd: RoundState) -> None:
        if self.params.target != "client":
            return
        for reply in rnd.replies:
            if partition_of_reply(reply) == self.params.client and not reply.has_error():
                records = list(reply.content.array_records.values())
                if records:
                    self.client_model = records[0]

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        summary["membership"] = self._infer(arrays, summary)

    def _infer(self, arrays: Any, summary: dict[str, Any]) -> dict[str, Any]:
        from fedsec.audits.empirical_privacy import best_epsilon_lower_bound, check_against_accountant
        from fedsec.audits.lira import LiRA, loss_threshold_attack

        p, ctx, facts, data = self.params, self.ctx, self.ctx.facts, self.ctx.data
        target_arrays = arrays
        if p.target == "client":
            target_arrays = self.client_model
            if target_arrays is None:
                return {"status": "unavailable", "reason": f"no plaintext model of client {p.client} was received "
                        "(encrypted or never trained)"}
            members_pool = data.partitions[p.client]
        else:
            members_pool = np.concatenate(data.partitions)
        rng = np.random.default_rng([facts.seed, 0x11FA])
        n_test = data.y_test.size
        k = min(p.examples, members_pool.size, n_test // 2)
        test_order = rng.permutation(n_test)
        members = np.sort(rng.choice(members_pool, size=k, replace=False))
        non_members, population = test_order[:k], test_order[k:]
        device = ctx.device
        x = torch.cat([torch.from_numpy(np.array(data.x_train[members])).to(device), ctx.x_test[non_members]])
        y = torch.cat([torch.from_numpy(np.array(data.y_train[members], dtype=np.int64)).to(device),
                       ctx.y_test[non_members]])
        is_member = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
        target = ctx.fresh_model()
        load_record(target, target_arrays)
        target.eval()
        if p.method == "lira":
            train = facts.train

            def train_fn(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> torch.nn.Module:
                model = ctx.fresh_model(seed)
                train_local(model, xs, ys, epochs=p.shadow_epochs, batch_size=train.batch_size, lr=train.lr,
                            momentum=train.momentum, generator=torch.Generator().manual_seed(seed))
                return model.eval()

            result = LiRA(train_fn, num_shadows=p.shadows, seed=facts.seed).infer(
                target, x, y, is_member=is_member, x_population=ctx.x_test[population],
                y_population=ctx.y_test[population])
        else:
            result = loss_threshold_attack(target, x, y, is_member=is_member)
        delta = facts.privacy.delta
        bound = best_epsilon_lower_bound(result.fpr, result.tpr, num_members=result.num_members,
                                         num_nonmembers=result.num_nonmembers, delta=delta)
        block = {"status": "done", "target": p.target, **result.as_dict(),
                 "empirical_epsilon_lower_bound": bound.epsilon, "empirical_epsilon_point": bound.epsilon_point,
                 "bound_delta": delta, "bound_confidence": bound.confidence}
        spent, covered_by = self._covering_epsilon(summary)
        block["bound_compared_with"] = covered_by
        if spent is not None:
            block["accountant_epsilon"] = spent
            alarm = check_against_accountant(bound.epsilon, spent)
            if alarm:
                logger.error("%s", alarm)
                block["alarm"] = alarm
        self._roc(result)
        return block

    def _covering_epsilon(self, summary: dict[str, Any]) -> tuple[float | None, str]:
        """The epsilon of the guarantee that covers the attacked model, and what it is; (None, why not) when no
        guarantee covers it. The final global model: the run's epsilon (central DP, or the largest client's under
        local DP). One client's last local model: that client's own DP-SGD epsilon under local DP; central DP
        clips and noises only the aggregate, never a client's raw update, so there is nothing to compare with."""
        privacy = summary.get("privacy") or {}
        mode = privacy.get("mode", self.ctx.facts.privacy.mode)
        if self.params.target == "global":
            spent = privacy.get("epsilon")
            return (spent, f"the run's epsilon ({mode} DP)") if spent is not None else (None, "none: no DP")
        if mode == "local":
            spent = (privacy.get("client_epsilon") or {}).get(str(self.params.client))
            if spent is not None:
                return spent, f"client {self.params.client}'s own epsilon (local DP)"
            return None, f"none: client {self.params.client} reported no epsilon"
        if mode == "central":
            return None, ("none: central DP covers the aggregate the server releases, not a client's raw update; "
                          "the bound is reported without a comparison")
        return None, "none: no DP"

    def _roc(self, result: Any) -> None:
        from fedsec.audits.inversion_plots import plot_roc

        p = self.params
        try:
            plot_roc(result, self.ctx.plots / "membership_roc.png", title=f"{p.method} on the {p.target} model")
        except (ValueError, RuntimeError) as err:
            logger.warning("ROC not drawn: %s", err)
