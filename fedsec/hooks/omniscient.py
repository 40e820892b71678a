"""The omniscient attacker, realised on the server: before aggregation, the malicious clients' replies are replaced
by the update the attack crafts from every honest update of the round (``attack.knowledge = "omniscient"``)."""

from __future__ import annotations

from fedsec.clients.attacks.omniscient import apply_omniscient

from .base import RoundHook, RoundState, RunFacts


class OmniscientAttack(RoundHook):
    """Rewrites the attackers' replies with the crafted update in the rounds the attack acts in."""

    name = "omniscient_attack"
    description = "attack.knowledge='omniscient': crafts the attackers' updates on the server from every honest one"

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.attack.omniscient

    def on_replies(self, rnd: RoundState) -> None:
        facts = self.ctx.facts
        if facts.schedule.attack_active(rnd.server_round):
            apply_omniscient(facts.attack, rnd.replies, rnd.sent, set(facts.schedule.malicious))
