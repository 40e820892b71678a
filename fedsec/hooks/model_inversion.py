"""``[audit.model_inversion]``: class representatives from the final model's outputs alone (MI-Face, Fredrikson,
Jha, Ristenpart, "Model Inversion Attacks that Exploit Confidence Information and Basic Countermeasures", CCS 2015;
:mod:`fedsec.audits.model_inversion`)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from fedsec.arrays import load_record
from fedsec.registry import Params
from fedsec.results.contract import SummaryMetric

from .base import RoundHook, RunFacts

logger = logging.getLogger(__name__)


class ModelInversionAuditParams(Params):
    """``[audit.model_inversion]`` keys."""

    enabled: bool = Field(False, description="Run MIFace on the final model.")
    max_iter: int = Field(300, ge=1, le=100_000, description="MIFace iterations.")


class ModelInversionAudit(RoundHook):
    """MI-Face class representatives of the final global model."""

    name = "model_inversion"
    section = "audit"
    description = "MI-Face class representatives from the final model's outputs (SSIM to the class means)"
    Params = ModelInversionAuditParams
    summary_metrics = (SummaryMetric("model_inversion_top1_ssim", "model_inversion", "top1_ssim",
                                     "MI-Face: SSIM of the best class representative"),)

    @classmethod
    def enabled(cls, params: ModelInversionAuditParams) -> bool:
        return params.enabled

    @classmethod
    def check(cls, params: ModelInversionAuditParams, facts: RunFacts) -> None:
        if params.enabled:
            facts.require_images("audit.model_inversion", "class representatives are images")

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        from fedsec.audits.inversion_plots import plot_class_representatives
        from fedsec.audits.model_inversion import ModelInversion

        ctx = self.ctx
        load_record(ctx.model, arrays)
        result = ModelInversion(ctx.model, input_shape=ctx.data.input_shape, num_classes=ctx.data.num_classes,
                                input_space=ctx.facts.input_space,
                                max_iter=self.params.max_iter).infer(ctx.x_test, ctx.y_test)
        summary["model_inversion"] = {**result.summary(), "top1_ssim": result.top1("ssim"), "seconds": result.seconds}
        try:
            plot_class_representatives(result.representatives, ctx.plots / "model_inversion.png",
                                       classes=result.classes.tolist())
        except (ValueError, RuntimeError) as err:
            logger.warning("class representatives not drawn: %s", err)
