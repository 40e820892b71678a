"""``[audit.evasion]``: robust accuracy R of the global model under FGSM / PGD / C&W, every ``every`` rounds and at
the end (:mod:`fedsec.audits.evasion`, which cites the attacks' papers); ``rounds.csv`` gets
``robust_accuracy_<attack>``, ``summary.json`` the counts behind each value (the metric sheet's R), ``plots/`` a grid
of clean vs adversarial inputs. Per-round audits leave out C&W (the final one runs every configured attack)."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field

from fedsec.arrays import load_record
from fedsec.audits import evasion as ev
from fedsec.errors import ConfigError
from fedsec.registry import Params
from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts, ServerContext

logger = logging.getLogger(__name__)


class EvasionAuditParams(Params):
    """``[audit.evasion]`` keys."""

    attacks: list[Literal["fgsm", "pgd", "cw"]] = Field(["fgsm", "pgd"], min_length=1, max_length=3,
                                                         description="fgsm | pgd | cw.")
    epsilon: float = Field(0.1, gt=0, le=1, description="L-inf budget on inputs scaled to [0, 1] (FGSM, PGD).")
    steps: int = Field(10, ge=1, le=1000, description="PGD steps.")
    examples: int = Field(1000, ge=1, le=100_000, description="Fixed, seeded test subset.")
    every: int = Field(0, ge=0, le=1_000_000, description="Also every k rounds (0: only the final model).")
    cw_max_iter: int = Field(10, ge=1, le=1000, description="C&W: iterations per binary-search step.")
    cw_binary_search_steps: int = Field(5, ge=1, le=50, description="C&W: binary-search steps.")
    cw_confidence: float = Field(0.0, ge=0, le=1e3, description="C&W: confidence margin.")
    cw_learning_rate: float = Field(0.01, gt=0, le=10, description="C&W: learning rate.")
    cw_initial_const: float = Field(1.0, gt=0, le=1e4, description="C&W: initial trade-off constant.")


class EvasionAudit(RoundHook):
    """Robust accuracy of the global model under evasion attacks."""

    name = "evasion"
    section = "audit"
    description = "robust accuracy R of the global model under FGSM / PGD / C&W"
    Params = EvasionAuditParams
    metrics = (
        Metric("robust_accuracy_fgsm", "accuracy on FGSM adversarial test examples (R)", better="higher"),
        Metric("robust_accuracy_pgd", "accuracy on PGD adversarial test examples (R)", better="higher"),
        Metric("robust_accuracy_cw", "accuracy on C&W adversarial test examples (R)", better="higher"),
        Metric("cw_success_rate", "C&W: share of attacked examples misclassified", better="lower"),
        Metric("cw_median_l2", "C&W: median L2 size of the successful perturbations", better="higher"),
    )

    @classmethod
    def check(cls, params: EvasionAuditParams, facts: RunFacts) -> None:
        facts.require_images("audit.evasion", "evasion budgets are on image pixels in [0, 1]")
        test_size = facts.dataset.test_size
        if test_size is not None and params.examples > test_size:
            raise ConfigError(f"audit.evasion.examples={params.examples}: larger than the test set of "
                              f"{facts.dataset_name} ({test_size}); use at most {test_size}")

    def __init__(self, params: EvasionAuditParams, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        self.space = ctx.facts.input_space
        self.summary: dict[str, Any] = {}

    def state(self) -> dict[str, Any]:
        return {"summary": self.summary}

    def restore(self, state: dict[str, Any]) -> None:
        self.summary = dict(state["summary"])

    def after_aggregate(self, rnd: RoundState) -> None:
        """Every k rounds, and after the last one."""
        every, final = self.params.every, rnd.server_round == self.ctx.facts.rounds
        if final or (every and rnd.server_round % every == 0):
            rnd.row.update(self._evaluate(rnd.arrays, final=final))

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        if "evasion" not in self.summary:  # the run stopped early
            self._evaluate(arrays, final=True)
        summary.update(self.summary)

    def _evaluate(self, arrays: Any, *, final: bool) -> dict[str, float]:
        p, ctx = self.params, self.ctx
        load_record(ctx.model, arrays)
        attacks = p.attacks if final else [a for a in p.attacks if a != "cw"] or ["fgsm"]
        audit = ev.EvasionAudit(
            ctx.model, space=self.space, attacks=tuple(attacks), epsilon=p.epsilon, steps=p.steps,
            examples=p.examples, seed=ctx.facts.seed, cw_confidence=p.cw_confidence, cw_max_iter=p.cw_max_iter,
            cw_binary_search_steps=p.cw_binary_search_steps, cw_learning_rate=p.cw_learning_rate,
            cw_initial_const=p.cw_initial_const)
        result = audit.evaluate(ctx.x_test, ctx.y_test)
        if final:
            self.summary["evasion"] = {
                name: {"correct": rec.correct, "total": rec.total, "robust_accuracy": rec.robust_accuracy,
                       "counts": f"{rec.correct} / {rec.total}", "epsilon": rec.epsilon,
                       **({"success_rate": rec.success_rate, "median_l2": rec.median_l2}
                          if rec.success_rate is not None else {})}
                for name, rec in result.records.items()}
            self.summary["evasion_clean_subset"] = {"correct": result.clean_correct, "total": result.total,
                                                    "accuracy": result.clean_correct / result.total}
            self._grid()
        return result.as_row()

    def _grid(self) -> None:
        from fedsec.audits.evasion_plots import plot_adversarial_grid

        ctx, p = self.ctx, self.params
        x, y = ctx.x_test[:8], ctx.y_test[:8]
        adv = ev.pgd(ctx.model, x, y, epsilon=p.epsilon, steps=p.steps, space=self.space,
                     generator=torch.Generator(device=x.device).manual_seed(ctx.facts.seed))
        with torch.no_grad():
            ctx.model.eval()
            clean_pred = ctx.model(x).argmax(1).tolist()
            adv_pred = ctx.model(adv).argmax(1).tolist()
        try:
            plot_adversarial_grid(x.cpu(), adv.cpu(), clean_pred, adv_pred, ctx.plots / "evasion_examples.png",
                                  space=self.space)
        except (ValueError, RuntimeError) as err:  # a plot must never fail a run
            logger.warning("evasion grid not drawn: %s", err)

