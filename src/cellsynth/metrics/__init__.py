"""Metrics: classification reports, the evaluation space, fidelity and utility of synthetic cells."""

from __future__ import annotations

from .classification import (
    classification_report,
    coarse_report,
    summary_row,
    to_coarse,
    write_report,
)
from .effects import condition_effects
from .fidelity import (
    FidelityConfig,
    c2st_auc,
    correlation_distance,
    energy_distance,
    fidelity_report,
    gene_stats_spearman,
    knn_precision_recall,
    library_size_distance,
    marker_overlap,
    mmd_rbf,
    real_floor,
)
from .space import EvalSpace, fit_space
from .utility import augmentation, rarest_types, tstr

__all__ = [
    "EvalSpace",
    "FidelityConfig",
    "augmentation",
    "c2st_auc",
    "classification_report",
    "coarse_report",
    "condition_effects",
    "correlation_distance",
    "energy_distance",
    "fidelity_report",
    "fit_space",
    "gene_stats_spearman",
    "knn_precision_recall",
    "library_size_distance",
    "marker_overlap",
    "mmd_rbf",
    "rarest_types",
    "real_floor",
    "summary_row",
    "to_coarse",
    "tstr",
    "write_report",
]
