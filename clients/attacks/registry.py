"""``attack.kind`` -> attack class; each class declares its ``Params`` (its ``[attack]`` keys) and description.

Adding an attack: one new file in this package and one ``ATTACKS.register`` line here.
"""

from __future__ import annotations

from fedsec.registry import Registry

from .agr_tailored import AGRTailored
from .alie import ALIE
from .backdoor import Backdoor
from .base import Attack
from .collude_with_server import ColludeWithServer
from .constrain_and_scale import ConstrainAndScale
from .constrained_backdoor import ConstrainedBackdoor
from .count_lie import CountLie
from .fang import Fang
from .gaussian import Gaussian
from .ipm import IPM
from .label_flip import LabelFlip
from .mimic import Mimic
from .minmax import MinMax
from .minsum import MinSum
from .neurotoxin import Neurotoxin
from .scale_search import ALIESearch, IPMSearch
from .scaling import Scaling
from .sign_flip import SignFlip

ATTACKS: Registry[type[Attack]] = Registry("attack.kind", "attack")
ATTACKS.register("none", Attack)
ATTACKS.register("label_flip", LabelFlip)
ATTACKS.register("backdoor", Backdoor)
ATTACKS.register("sign_flip", SignFlip)
ATTACKS.register("scaling", Scaling)
ATTACKS.register("gaussian", Gaussian)
ATTACKS.register("alie", ALIE)
ATTACKS.register("ipm", IPM)
ATTACKS.register("minmax", MinMax)
ATTACKS.register("minsum", MinSum)
ATTACKS.register("fang", Fang)
ATTACKS.register("agr_tailored", AGRTailored)
ATTACKS.register("alie_search", ALIESearch)
ATTACKS.register("ipm_search", IPMSearch)
ATTACKS.register("constrained_backdoor", ConstrainedBackdoor)
ATTACKS.register("neurotoxin", Neurotoxin)
ATTACKS.register("constrain_and_scale", ConstrainAndScale)
ATTACKS.register("count_lie", CountLie)
ATTACKS.register("mimic", Mimic)
ATTACKS.register("collude_with_server", ColludeWithServer)
