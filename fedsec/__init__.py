"""fedsec: a federated-learning security simulator."""
__version__ = "0.1.0"
