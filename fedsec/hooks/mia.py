"""The membership check every run ends with: Yeom et al.'s loss-threshold attack (Yeom, Giacomelli, Fredrikson, Jha,
"Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", CSF 2018) on the final global model,
members drawn from the clients' training data, non-members from the test set (:mod:`fedsec.audits.membership`),
and under DP the bound on its advantage that the guarantee gives. ``[audit.membership]`` runs the fuller audit."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedsec.arrays import load_record
from fedsec.audits.membership import advantage_bound, balanced_sample, loss_threshold_point
from fedsec.results.contract import SummaryMetric

from .base import RoundHook


class MembershipCheck(RoundHook):
    """Yeom's attack on the final global model; its TPR, FPR and advantage go into ``summary.json``."""

    name = "mia"
    description = "loss-threshold membership inference on the final global model (advantage vs the DP bound)"
    summary_metrics = (
        SummaryMetric("mia_advantage", "", "mia_advantage", "membership-inference advantage (TPR - FPR) against "
                      "the final model"),
        SummaryMetric("mia_bound", "", "mia_bound", "the bound on that advantage that the privacy guarantee gives"),
    )

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        ctx, facts = self.ctx, self.ctx.facts
        load_record(ctx.model, arrays)
        trained = np.concatenate(ctx.data.partitions)
        members, others = balanced_sample(trained.size, ctx.data.y_test.size, seed=facts.seed)
        idx = trained[members]
        x_in = torch.from_numpy(np.array(ctx.data.x_train[idx])).to(ctx.device)
        y_in = torch.from_numpy(np.array(ctx.data.y_train[idx], dtype=np.int64)).to(ctx.device)
        is_member = torch.cat([torch.ones(len(idx), dtype=torch.bool), torch.zeros(len(others), dtype=torch.bool)])
        point = loss_threshold_point(ctx.model, torch.cat([x_in, ctx.x_test[others]]),
                                     torch.cat([y_in, ctx.y_test[others]]), is_member=is_member)
        result: dict[str, float] = point.as_dict()
        if facts.privacy.mode != "none":
            result["mia_bound"] = advantage_bound(facts.privacy.epsilon, facts.privacy.delta)
        summary.update(result)
