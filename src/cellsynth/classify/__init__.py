"""Cell-type classification: an XGBoost booster on PCA features."""

from __future__ import annotations

from .xgb import (
    Classifier,
    balanced_weights,
    cap_per_class,
    resolve_cap,
    resolve_device,
    train_classifier,
)

__all__ = ["Classifier", "balanced_weights", "cap_per_class", "resolve_cap",
           "resolve_device", "train_classifier"]
