"""A plugin of four test kinds (``FEDSEC_PLUGINS=extension`` with this folder's parent on the path): each is one
file in this package and one registration line here."""

from fedsec.clients.attacks import ATTACKS
from fedsec.data import DATASETS
from fedsec.hooks import HOOKS
from fedsec.strategies import STRATEGIES

from .momentum_mean import MomentumMean
from .noisy_digits import NOISY_DIGITS
from .weight_norm import WeightNorm
from .zero_out import ZeroOut

ATTACKS.register("zero_out", ZeroOut)
STRATEGIES.register("momentum_mean", MomentumMean)
HOOKS.register("weight_norm", WeightNorm)
DATASETS.register("noisy_digits", NOISY_DIGITS)
