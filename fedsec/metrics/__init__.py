"""Metrics computed from a run's records: the source surveys' metric sheet, filtering quality, collateral damage."""
