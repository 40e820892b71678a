"""A run's results: the run directory (results contract) and the plots a person looks at first."""

from .run_directory import CLIENT_COLUMNS, ROUND_COLUMNS, RunDirectory, versions

__all__ = ["CLIENT_COLUMNS", "ROUND_COLUMNS", "RunDirectory", "versions"]
