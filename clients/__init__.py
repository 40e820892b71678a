"""Honest and malicious Flower clients; importable as ``fedsec.clients``."""
