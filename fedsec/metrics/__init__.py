"""Metrics computed from a run's records: the seed documents' metric sheet, filtering quality, collateral damage."""
