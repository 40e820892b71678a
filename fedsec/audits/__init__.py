"""Model-level attacks run as audits on a federation's models and updates: evasion, inversion, membership
inference, model inversion. One audit a module; each takes a model (and data) and returns a small typed record."""
