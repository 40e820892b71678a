"""The central-DP plan of a run, from the experiment (:class:`fedsec.privacy.PrivacyPlan`).

The sampling scheme is ``train.sampling`` resolved (:meth:`fedsec.config.Experiment.client_sampling`): Poisson by
default under central DP; "fixed" is accounted under the replace-one relation and needs ``privacy.accountant =
"rdp"`` (:mod:`fedsec.privacy.accountants` refuses it with "prv", naming both keys). Adaptive clipping
(``privacy.clipping``) keeps the accounted multiplier z and gives the updates the larger z_Delta
(:attr:`fedsec.privacy.PrivacyPlan.update_noise_multiplier`).
"""

from __future__ import annotations

from dataclasses import replace

from fedsec.config import Experiment
from fedsec.privacy import PrivacyPlan, adaptive_update_noise_multiplier, calibrate_noise, epsilon_after


def central_privacy_plan(experiment: Experiment) -> PrivacyPlan | None:
    """Noise and spending of a central-DP run (None without central DP; local DP is planned per client)."""
    privacy = experiment.privacy
    if privacy.mode != "central":
        return None
    n, k = experiment.data.num_clients, experiment.train.clients_per_round
    q = k / n
    scheme = experiment.client_sampling()
    mechanism = {"sample_rate": q, "scheme": scheme, "population": n, "cohort_size": k}
    z = privacy.noise_multiplier
    if z is None:
        z = calibrate_noise(epsilon=privacy.epsilon, delta=privacy.delta, steps=experiment.rounds,
                            accountant=privacy.accountant, **mechanism)
    spent = epsilon_after(noise_multiplier=z, steps=experiment.rounds, delta=privacy.delta,
                          accountant=privacy.accountant, **mechanism)
    adaptive = {}
    if privacy.clipping == "adaptive":
        adaptive = {"clipping": "adaptive", "target_quantile": privacy.target_quantile, "clip_lr": privacy.clip_lr,
                    "clip_count_std": privacy.clip_count_std if privacy.clip_count_std is not None else k / 20}
    plan = PrivacyPlan(z, q, spent, 0, clip_norm=privacy.clip_norm, delta=privacy.delta,
                       epsilon_budget=privacy.epsilon, accountant=privacy.accountant, scheme=scheme, population=n,
                       cohort_size=k, **adaptive)
    if adaptive:  # a PrivacyError naming privacy.clip_count_std when z >= 2 sigma_b
        adaptive_update_noise_multiplier(z, adaptive["clip_count_std"])
    return replace(plan, rounds_within_budget=plan.ledger().rounds_within_budget(experiment.rounds))
