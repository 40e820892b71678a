"""Min-sum: :class:`~fedsec.clients.attacks.minmax.MinMax` with the sum-of-distances objective.

Shejwalkar and Houmansadr, NDSS 2021 (see :mod:`.minmax`, which holds the kernel). This module adds no logic.
"""

from __future__ import annotations

from .minmax import MinMax


class MinSum(MinMax):
    """Min-sum: the largest deviation whose summed squared distance to the benign updates stays within theirs."""

    kind = "minsum"
    description = "min-sum (Shejwalkar & Houmansadr 2021): sum of distances to benign <= max benign sum"
