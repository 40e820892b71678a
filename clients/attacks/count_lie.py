"""Count lie: report an inflated ``num-examples`` (alone, or with a scaled update) to own a weighted aggregate.

Example counts are unverifiable metadata in FedAvg (McMahan et al., AISTATS 2017, https://arxiv.org/abs/1602.05629):
the server weights client i by the n_i it *claims*. A client claiming ``claimed`` examples among k - 1 clients
claiming n each gets weight claimed / (claimed + (k - 1) n) under reported counts: 1e6 / (1e6 + 450) = 0.9996 at
k = 10, n = 50, so the aggregate becomes its own update (the cheapest lie; ``benchmarks/bench_count_lie.py``).
The same lie under CKKS shrinks the global step (the server divides the encrypted sum by the claimed total). Against it:
``defense.weighting = "capped"`` (the default) or ``"uniform"`` (:mod:`fedsec.strategies._trust`).
Combined with ``scale`` > 1 it is the boosting attack of Bhagoji et al., "Analyzing Federated Learning through
an Adversarial Lens", ICML 2019, with the boost carried by the weight as well as by the update.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack, AttackContext
from .scaling import scale_update


def claimed_examples(true_examples: float, *, claimed: float) -> float:
    """The count the liar reports: ``claimed``, whatever it trained on (``true_examples`` is ignored)."""
    del true_examples
    return float(claimed)


class CountLieParams(Params):
    """``[attack]`` keys of ``kind = "count_lie"``."""

    claimed: float = Field(1e6, ge=1, le=1e300, description="num-examples the attacker reports (default 1e6).")
    scale: float = Field(1.0, ge=-1e6, le=1e6, description="factor applied to the update (1 = honest update).")


class CountLie(Attack):
    """Metadata poisoning: report ``claimed`` examples (and send ``scale`` x the honest update).

    Parameters (``[attack]`` keys)
    ------------------------------
    claimed : float (default: 1e6)
        The ``num-examples`` reported in every attacking round, in [1, 1e300]; values above the server's bound
        (1e9 by default) are rejected and recorded there, so the effective lie is one just below it.
    scale : float (default: 1.0)
        Factor applied to the honest update; 1 lies about the count only, -1 flips the update's sign, > 1 boosts.

    Differences
    -----------
    The lie lives in the reply's metrics: the client glue asks :meth:`report_examples` for the count to report
    (:mod:`fedsec.clients.malicious`). Under CKKS the client weights its encrypted update by the count it
    reports, so a claim far above the true count also multiplies the encrypted update (and may exceed the
    CKKS headroom, which the client then refuses to encrypt).
    """

    kind = "count_lie"
    description = "metadata poisoning: report `claimed` num-examples (and send `scale` x the update)"
    Params = CountLieParams

    def report_examples(self, num_examples: float) -> float:
        """The ``num-examples`` this attacker reports instead of the true ``num_examples``."""
        return claimed_examples(num_examples, claimed=self.params.claimed)

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return update if self.params.scale == 1.0 else scale_update(update, self.params.scale)
