"""Metrics: classification reports, the evaluation space, fidelity, utility, privacy and the
verdict on synthetic cells."""

from __future__ import annotations

from .classification import (
    classification_report,
    coarse_report,
    summary_row,
    to_coarse,
    write_report,
)
from .depth import detection_at_depth
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
from .gene_test import gene_c2st, gene_importance
from .genes import gene_fidelity
from .privacy import PrivacyResult, distance_to_closest, membership_attacks, privacy_audit
from .space import EvalSpace, fit_space
from .typewise import trts_by_type, typewise_fidelity
from .utility import augmentation, rarest_types, tstr
from .verdict import fidelity_verdict, judge
from .verdict_text import per_type_table, verdict_lines

__all__ = [
    "EvalSpace",
    "FidelityConfig",
    "PrivacyResult",
    "augmentation",
    "c2st_auc",
    "classification_report",
    "coarse_report",
    "condition_effects",
    "correlation_distance",
    "detection_at_depth",
    "distance_to_closest",
    "energy_distance",
    "fidelity_report",
    "fidelity_verdict",
    "fit_space",
    "gene_c2st",
    "gene_fidelity",
    "gene_importance",
    "gene_stats_spearman",
    "judge",
    "knn_precision_recall",
    "library_size_distance",
    "marker_overlap",
    "membership_attacks",
    "mmd_rbf",
    "per_type_table",
    "privacy_audit",
    "rarest_types",
    "real_floor",
    "summary_row",
    "to_coarse",
    "trts_by_type",
    "tstr",
    "typewise_fidelity",
    "verdict_lines",
    "write_report",
]
