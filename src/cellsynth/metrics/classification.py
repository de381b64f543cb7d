"""Classification metrics: per-class and averaged precision/recall/F1, confusion, coarse groups.

Reports are plain dicts of Python numbers (JSON-ready). Scores come from
:mod:`sklearn.metrics` with ``zero_division=0``: a class never predicted has precision 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ..errors import DataError

logger = logging.getLogger(__name__)

_AVERAGES = ("macro", "micro", "weighted")


def _as_labels(y: Any) -> np.ndarray:
    return np.asarray(y).astype(str)


def classification_report(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Precision, recall, F1 per class and averaged, accuracy and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels, one per cell.
    labels
        Classes to report, in this order; default: the sorted union of ``y_true`` and
        ``y_pred``. Averages are taken over these classes; accuracy is over all cells.

    Returns
    -------
    dict
        ``per_class`` (label -> precision, recall, f1, support), ``macro``/``micro``/``weighted``
        (precision, recall, f1), ``accuracy``, ``labels``, ``confusion`` (rows true, columns
        predicted, in ``labels`` order) and ``n`` (cells scored).
    """
    y_true, y_pred = _as_labels(y_true), _as_labels(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise DataError(
            f"y_true and y_pred must be 1-d and of equal length, got {y_true.shape} and {y_pred.shape}"
        )
    if len(y_true) == 0:
        raise DataError("no cells to score: y_true and y_pred are empty")
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    labels = [str(x) for x in labels]
    if not labels:
        raise DataError("labels is empty; give at least one class to report on")

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, label in enumerate(labels)
    }
    report: dict[str, Any] = {"per_class": per_class}
    for avg in _AVERAGES:
        pa, ra, fa, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        report[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    report["accuracy"] = float(accuracy_score(y_true, y_pred))
    report["labels"] = labels
    report["confusion"] = confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist()
    report["n"] = len(y_true)
    return report


def to_coarse(labels: Sequence[str] | np.ndarray, groups: Mapping[str, str]) -> np.ndarray:
    """Map fine labels to coarse groups; labels absent from ``groups`` keep their own name.

    Returns an object array of strings.
    """
    return np.array([groups.get(x, x) for x in _as_labels(labels).tolist()], dtype=object)


def coarse_report(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    groups: Mapping[str, str],
) -> dict[str, Any]:
    """:func:`classification_report` on coarse groups.

    A prediction of another fine type within the right coarse group counts as correct.
    """
    return classification_report(to_coarse(y_true, groups), to_coarse(y_pred, groups))


def summary_row(report: Mapping[str, Any]) -> dict[str, float | int]:
    """One flat row of a report: macro and micro precision/recall/F1, accuracy and ``n``."""
    row: dict[str, float | int] = {}
    for avg in ("macro", "micro"):
        for metric in ("precision", "recall", "f1"):
            row[f"{metric}_{avg}"] = report[avg][metric]
    row["accuracy"] = report["accuracy"]
    row["n"] = report["n"]
    return row


def write_report(report: Mapping[str, Any], directory: Path, name: str) -> None:
    """Write ``<name>.json``, ``<name>_per_class.csv`` and ``<name>_confusion.csv``.

    Parameters
    ----------
    report
        A dict from :func:`classification_report`.
    directory
        Created when missing.
    name
        File-name stem, e.g. ``"test_real"``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(report, indent=1))
    per_class = pd.DataFrame(
        [{"label": label, **values} for label, values in report["per_class"].items()],
        columns=["label", "precision", "recall", "f1", "support"],
    )
    per_class.to_csv(directory / f"{name}_per_class.csv", index=False)
    labels = report["labels"]
    confusion = pd.DataFrame(report["confusion"], index=labels, columns=labels)
    confusion.index.name = "true\\predicted"
    confusion.to_csv(directory / f"{name}_confusion.csv")
    logger.info("wrote %s report (%d classes) to %s", name, len(labels), directory)
