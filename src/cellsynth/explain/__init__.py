"""Explanations of the classifier: SHAP in PC space, carried back to genes."""

from __future__ import annotations

from .shap import ShapResult, explain_type, plot_shap, shap_contributions, write_shap

__all__ = ["ShapResult", "explain_type", "plot_shap", "shap_contributions", "write_shap"]
