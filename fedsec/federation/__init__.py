"""The simulated devices of a federation (``[clients]``, ``train.deadline``): dropouts, an availability trace,
mid-round failures and compute speeds; the run plan builds them (:mod:`fedsec.plan.federation`) and the
``federation`` round hook applies them (:mod:`fedsec.hooks.federation`)."""

from .buffer import BufferSpec, dispatch, staleness_weight
from .environment import Federation, draw_speeds
from .traces import read_availability, read_speeds

__all__ = [
    "BufferSpec", "Federation", "dispatch", "draw_speeds", "read_availability", "read_speeds", "staleness_weight",
]
