"""Seeded client sampling for a round: Poisson (what the Poisson accountant assumes) and fixed-size.

- :func:`poisson_cohort`: every client joins independently with probability q, so a round's cohort size is
  Binomial(N, q) and may be 0. This is the sampling of the DP-FedAvg analysis (McMahan, Ramage, Talwar and Zhang,
  "Learning Differentially Private Recurrent Language Models", ICLR 2018, https://arxiv.org/abs/1710.06963) and of
  the Poisson-subsampled Gaussian accountants; DP-FedAvg keeps its fixed denominator q N.
- :func:`fixed_cohort`: exactly k of N without replacement (the draw of ``fedsec.schedule.sample_partitions``),
  accounted under the replace-one relation (:mod:`fedsec.privacy.accountants`).

Both are seeded by (seed, round) with numpy's ``default_rng([seed, round])`` and return sorted partition ids, so
runs are reproducible and any process can recompute any round's cohort.
"""

from __future__ import annotations

import math

from fedsec.schedule import poisson_partitions, sample_partitions

from .errors import PrivacyInputError


def poisson_cohort(seed: int, server_round: int, num_clients: int, q: float) -> list[int]:
    """The partitions of ``server_round`` under Poisson sampling with rate ``q``: sorted, possibly empty."""
    if num_clients < 1:
        raise PrivacyInputError(f"data.num_clients={num_clients}: must be at least 1")
    if not (math.isfinite(q) and 0 <= q <= 1):
        raise PrivacyInputError(f"sample rate q={q!r}: Poisson sampling needs 0 <= q <= 1 "
                                "(q = train.clients_per_round / data.num_clients)")
    return poisson_partitions(seed, server_round, num_clients, q)


def fixed_cohort(seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """The partitions of ``server_round`` under fixed-size sampling: k of ``num_clients``, sorted."""
    if not 0 <= k <= num_clients:
        raise PrivacyInputError(f"train.clients_per_round={k}: must be between 0 and data.num_clients={num_clients}")
    return sample_partitions(seed, server_round, num_clients, k)
