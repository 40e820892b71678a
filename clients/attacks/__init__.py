"""Attacks run by malicious clients: data poisoning (before local training), model poisoning (after), and updates
crafted from benign ones (by colluding clients, or on the server for omniscient attackers). One attack a file; the
registry (:mod:`.registry`) maps ``attack.kind`` to them."""

from .base import Attack, AttackContext
from .registry import ATTACKS

__all__ = ["ATTACKS", "Attack", "AttackContext"]
