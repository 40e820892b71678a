"""``[audit.certify]``: CRFL's certified accuracy and radius of the global model against backdoors, per round.

Xie, Chen, Chen and Li, "CRFL: Certifiably Robust Federated Learning against Backdoor Attacks", ICML 2021; the
smoothing, the bounds and the radius are :mod:`fedsec.audits.certified` (which cites the paper and says where it
departs from it), the training-time clipping and noise ``strategies/crfl.py`` (needed: ``defense.strategy =
"crfl"``). Every ``every`` rounds and after the last, the hook smooths the global model on a fixed, stratified subset
of the test set and writes ``smoothed_accuracy``, ``certified_accuracy`` (at ``audit.certify.radius``) and
``certified_radius_median`` to ``rounds.csv``; at the end, the certified accuracy over a range of radii goes to
``summary.json`` (block ``certified``) and ``plots/certified_accuracy.png``.

The threat model the radius assumes (R attackers of weight 1/clients_per_round at round t_adv, scale gamma, poison
ratio q_B/n_B) comes from the run's attack when it has one (its malicious clients sampled in ``attack.start_round``,
its ``boost`` and ``poison_ratio``) and from the keys below otherwise; rounds up to t_adv have no certificate (NaN).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedsec.arrays import record_to_vector
from fedsec.audits.certified import (
    CertificateSpec,
    certified_accuracy,
    certified_radius,
    hoeffding_bounds,
    vote_counts,
)
from fedsec.errors import ConfigError
from fedsec.registry import Params
from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts, ServerContext
from .evaluation import stratified_subset

logger = logging.getLogger(__name__)

#: the released code's L_z = sqrt(2 + 2 rho + rho^2) with rho = 3 (certify_mnist.py)
RELEASED_LIPSCHITZ = math.sqrt(17.0)


class CertifyAuditParams(Params):
    """``[audit.certify]`` keys."""

    samples: int = Field(1000, ge=10, le=100_000, description="M: smoothed copies of the model that vote.")
    sigma: float = Field(0.01, gt=0, le=10, description="sigma_test: std of the test-time noise per parameter.")
    alpha: float = Field(0.001, gt=0, lt=0.5, description="Error of each Hoeffding bound on p_A and p_B.")
    examples: int = Field(100, ge=1, le=100_000, description="Fixed, stratified test subset certified.")
    every: int = Field(1, ge=0, le=1_000_000, description="Certify every k rounds (0: only the final model).")
    radius: float = Field(0.0, ge=0, le=1e6, description="The radius of the per-round certified_accuracy column.")
    attackers: int | None = Field(None, ge=1, le=100_000, description="R; default: the run's malicious clients "
                                  "sampled in the attack round, or 1.")
    attack_round: int | None = Field(None, ge=1, le=1_000_000, description="t_adv; default: attack.start_round.")
    scale: float | None = Field(None, gt=0, le=1e6, description="gamma; default: the attack's boost, or 1.")
    poison_ratio: float | None = Field(None, gt=0, le=1, description="q_B/n_B; default: the attack's poison_ratio, "
                                       "or 0.05 (the released MNIST configuration's 5 of 100).")
    lipschitz: float = Field(RELEASED_LIPSCHITZ, gt=0, le=1e6, description="L_z (default: the released code's "
                             "sqrt(17)).")


class CertifyAudit(RoundHook):
    """CRFL's parameter smoothing: certified accuracy and radius of the global model."""

    name = "certify"
    section = "audit"
    description = "CRFL certification (Xie et al. 2021): certified accuracy and radius against backdoors per round"
    Params = CertifyAuditParams
    metrics = (
        Metric("smoothed_accuracy", "CRFL: accuracy of the smoothed model's majority vote on the certified subset",
               better="higher"),
        Metric("certified_accuracy", "CRFL: share of the subset predicted correctly with a certified radius >= "
               "audit.certify.radius", better="higher"),
        Metric("certified_radius_median", "CRFL: median certified radius over the subset (0 where wrong or not "
               "certified)", better="higher"),
        Metric("crfl_clip_bound", "CRFL: the round's clip bound rho_t on the global model's L2 norm", final=False),
        Metric("crfl_model_norm", "CRFL: the global model's L2 norm after averaging, before clipping", final=False),
    )

    @classmethod
    def check(cls, params: CertifyAuditParams, facts: RunFacts) -> None:
        if facts.smoothing is None:
            raise ConfigError("audit.certify needs defense.strategy='crfl': the certificate holds for a model "
                              "clipped and perturbed every round, which only CRFL trains")
        test_size = facts.dataset.test_size
        if test_size is not None and params.examples > test_size:
            raise ConfigError(f"audit.certify.examples={params.examples}: larger than the test set of "
                              f"{facts.dataset_name} ({test_size}); use at most {test_size}")
        if params.attack_round is not None and params.attack_round >= facts.rounds:
            raise ConfigError(f"audit.certify.attack_round={params.attack_round}: the certificate needs rounds after "
                              f"the attack, and the run has {facts.rounds}; use at most {facts.rounds - 1}")

    def __init__(self, params: CertifyAuditParams, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        facts = ctx.facts
        self.smoothing = facts.smoothing
        self.subset = stratified_subset(ctx.y_test, params.examples, seed=facts.seed).to(ctx.device)
        self.threat = self._threat_model(params, facts, ctx)
        self.summary: dict[str, Any] = {}

    @staticmethod
    def _threat_model(p: CertifyAuditParams, facts: RunFacts, ctx: ServerContext) -> dict[str, float]:
        schedule, attack_params = facts.schedule, getattr(facts.attack, "params", None)
        t_adv = p.attack_round or (schedule.attack_start if schedule.malicious else 1)
        attackers = p.attackers or max(1, len(set(schedule.sampled(t_adv)) & set(schedule.malicious)))
        sizes = [len(part) for part in ctx.data.partitions]
        mean_size = float(np.mean(sizes)) if sizes else 0.0
        return {
            "attack_round": t_adv,
            "attackers": attackers,
            "attacker_weight": 1.0 / max(1, schedule.clients_per_round),
            "scale": p.scale or float(getattr(attack_params, "boost", 1.0) or 1.0),
            "poison_ratio": p.poison_ratio or float(getattr(attack_params, "poison_ratio", 0.05) or 0.05),
            "lipschitz": p.lipschitz,
            "lr": facts.train.lr,
            "local_iterations": facts.train.local_epochs * math.ceil(mean_size / facts.train.batch_size),
        }

    def spec(self, server_round: int) -> CertificateSpec:
        t = self.threat
        bounds = [self.smoothing.bound(r) for r in range(int(t["attack_round"]) + 1, server_round + 1)]
        return CertificateSpec(sigma_train=self.smoothing.sigma, sigma_test=self.params.sigma, lr=t["lr"],
                               local_iterations=t["local_iterations"], attackers=int(t["attackers"]),
                               attacker_weight=t["attacker_weight"], scale=t["scale"],
                               poison_ratio=t["poison_ratio"], lipschitz=t["lipschitz"],
                               attack_round=int(t["attack_round"]), clip_bounds=bounds)

    def state(self) -> dict[str, Any]:
        return {"summary": self.summary}

    def restore(self, state: dict[str, Any]) -> None:
        self.summary = dict(state["summary"])

    def after_aggregate(self, rnd: RoundState) -> None:
        metrics = rnd.train_metrics
        for key in ("crfl_clip_bound", "crfl_model_norm"):
            if metrics is not None and key in metrics:
                rnd.row[key] = float(metrics[key])
        every, final = self.params.every, rnd.server_round == self.ctx.facts.rounds
        if final or (every and rnd.server_round % every == 0):
            rnd.row.update(self._certify(rnd.arrays, rnd.server_round, final=final))

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        if self.summary:
            summary["certified"] = self.summary

    def _certify(self, arrays: Any, server_round: int, *, final: bool) -> dict[str, float]:
        p, ctx = self.params, self.ctx
        x, y = ctx.x_test[self.subset], ctx.y_test[self.subset]
        shapes = [(name, tuple(array.shape)) for name, array in arrays.items()]
        generator = torch.Generator().manual_seed(ctx.facts.seed * 1_000_003 + server_round)
        counts = vote_counts(ctx.model, record_to_vector(arrays), shapes, x, samples=p.samples, sigma=p.sigma,
                             num_classes=ctx.data.num_classes, generator=generator)
        p_a, p_b, top = hoeffding_bounds(counts, p.alpha)
        correct = top == y.cpu().numpy()
        row = {"smoothed_accuracy": float(correct.mean())}
        spec = self.spec(server_round)
        if not spec.clip_bounds:  # the attack round has not passed: nothing to certify yet
            row.update(certified_accuracy=math.nan, certified_radius_median=math.nan)
            return row
        radius = certified_radius(p_a, p_b, spec)
        radius_correct = np.where(correct, radius, 0.0)
        row["certified_accuracy"] = certified_accuracy(radius, correct, p.radius)
        row["certified_radius_median"] = float(np.median(radius_correct))
        if final:
            self._final(server_round, radius, correct, row)
        return row

    def _final(self, server_round: int, radius: np.ndarray, correct: np.ndarray, row: dict[str, float]) -> None:
        finite = radius[correct & np.isfinite(radius) & (radius > 0)]
        top = float(finite.max()) if finite.size else 0.0
        radii = np.linspace(0.0, top, 11) if top > 0 else np.zeros(1)
        curve = [{"radius": float(r), "certified_accuracy": certified_accuracy(radius, correct, float(r))}
                 for r in radii]
        self.summary = {
            "method": "CRFL parameter smoothing (Xie, Chen, Chen and Li, ICML 2021)",
            "round": server_round, "examples": int(correct.size), "samples": self.params.samples,
            "sigma_test": self.params.sigma, "sigma_train": self.smoothing.sigma, "alpha": self.params.alpha,
            "threat_model": dict(self.threat), **row, "curve": curve,
        }
        try:
            self._plot(curve)
        except (ValueError, RuntimeError) as err:  # a plot must never fail a run
            logger.warning("certified accuracy plot not drawn: %s", err)

    def _plot(self, curve: list[dict[str, float]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from fedsec.audits._figures import save_figure

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([c["radius"] for c in curve], [c["certified_accuracy"] for c in curve], marker="o")
        ax.set_xlabel("radius (L2 magnitude of the backdoor pattern)")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"CRFL certificate, round {self.summary['round']}")
        save_figure(fig, self.ctx.plots / "certified_accuracy.png", dpi=120)
