"""Attacks run by malicious clients: data poisoning (before local training) and model poisoning (after)."""
