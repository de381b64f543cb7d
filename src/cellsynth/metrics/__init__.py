"""Metrics: classification reports (per class, averaged, coarse groups)."""

from __future__ import annotations

from .classification import (
    classification_report,
    coarse_report,
    summary_row,
    to_coarse,
    write_report,
)

__all__ = ["classification_report", "coarse_report", "summary_row", "to_coarse", "write_report"]
