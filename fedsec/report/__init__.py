"""``fedsec report``: a Markdown/HTML report with plots for a run or a sweep directory."""

from .build import ReportError, write_report

__all__ = ["ReportError", "write_report"]
