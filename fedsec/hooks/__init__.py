"""Round hooks (:mod:`.base`): every concern that cuts across a round, registered in one place.

``HOOKS`` maps a hook's name to its class, in the order the round loop calls them. Built-in hooks (no ``section``)
run when :meth:`~.base.RoundHook.applies` says the run needs them; hooks with a ``section`` run when their table is
configured (``[audit.evasion]``). Adding a hook: one file in this package and one ``HOOKS.register`` line here (or,
from outside fedsec, in a plugin module: :mod:`fedsec.plugins`).
"""

from __future__ import annotations

from fedsec.registry import Registry

from .base import PROGRESS, RoundHook, RoundState, RunFacts, ServerContext
from .canary import CanaryAudit
from .certify import CertifyAudit
from .collusion import CuriousServer
from .detection import Detection
from .evaluation import Evaluation, ServerEvaluator
from .evasion import EvasionAudit
from .fedbuff import BufferedAggregation
from .federation import FederationHook
from .health import HealthCheck
from .inversion import InversionAudit
from .membership import MembershipAudit
from .mia import MembershipCheck
from .model_inversion import ModelInversionAudit
from .omniscient import OmniscientAttack
from .participation import Participation
from .privacy import PrivacyGuard
from .sanitization import Sanitization

#: hook name -> hook class, in calling order (the omniscient attacker rewrites replies after the audits read them)
HOOKS: Registry[type[RoundHook]] = Registry("audit", "hook", ordered=True)
HOOKS.register("federation", FederationHook)  # first: the others see only the clients that took part
HOOKS.register("fedbuff", BufferedAggregation)  # or, under FedBuff, only the buffer it hands the strategy
HOOKS.register("collusion", CuriousServer)  # a curious server withholds replies before anything else reads them
HOOKS.register("privacy", PrivacyGuard)
HOOKS.register("evaluation", Evaluation)
HOOKS.register("participation", Participation)
HOOKS.register("detection", Detection)
HOOKS.register("sanitization", Sanitization)
HOOKS.register("mia", MembershipCheck)
HOOKS.register("evasion", EvasionAudit)
HOOKS.register("inversion", InversionAudit)
HOOKS.register("membership", MembershipAudit)
HOOKS.register("model_inversion", ModelInversionAudit)
HOOKS.register("certify", CertifyAudit)
HOOKS.register("canary", CanaryAudit)  # after the privacy guard: it reads the round's epsilon
HOOKS.register("omniscient_attack", OmniscientAttack)
HOOKS.register("health", HealthCheck)  # last: marks what the other hooks measured on the final model

__all__ = ["HOOKS", "PROGRESS", "RoundHook", "RoundState", "RunFacts", "ServerContext", "ServerEvaluator"]
