"""Classification metrics: per-class and averaged precision/recall/F1, confusion, coarse groups.

Reports are plain dicts of Python numbers (JSON-ready). Scores come from
:mod:`sklearn.metrics` with ``zero_division=0``: a class never predicted has precision 0.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ..data.groups import check_group_names
from ..data.labels import label_names
from ..errors import DataError, listed
from ..outputs import check_out_dir, write_csv, write_json

logger = logging.getLogger(__name__)

_AVERAGES = ("macro", "micro", "weighted")
#: a class with fewer true cells than this makes the scores uncertain enough to say so
SMALL_CLASS = 20
BOOTSTRAP_DRAWS = 1000


def _one_class_quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` without scikit-learn's "A single label was found" warning: it is raised even
    when ``labels=`` names that one class, whose table is then 1 x 1, as it should be (TRTS of
    a type that only one class scored, say)."""

    @functools.wraps(fn)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="A single label was found",
                                    category=UserWarning)
            return fn(*args, **kwargs)

    return quiet


@_one_class_quiet
def classification_report(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    labels: list[str] | None = None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Precision, recall, F1 per class and averaged, accuracy and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels, one per cell: names, or numbers named as covariate levels
        are (``1.0`` and ``1`` are the class ``"1"``); a missing label is refused.
    labels
        Classes to report, in this order (a class named twice is reported once; at least one
        must be a true label); default: the sorted union of ``y_true`` and ``y_pred``. The
        macro average is taken over those of them with true cells (a class
        only predicted, e.g. a type with no test cell that a classifier trained on generated
        cells still predicts, is a row of ``per_class`` with support 0, its predictions errors
        of the true classes' recall, not a class scored 0 in the mean); the micro and weighted
        ones over all of them; accuracy over all cells.
    seed
        Seed of the bootstrap of the macro F1's interval (:func:`f1_interval`).

    Returns
    -------
    dict
        ``per_class`` (label -> precision, recall, f1, support), ``macro``/``micro``/``weighted``
        (precision, recall, f1), ``accuracy``, ``labels``, ``confusion`` (rows true, columns
        predicted, in ``labels`` order), ``n`` (cells scored), ``min_class_n`` (true cells of
        the smallest class that has any) and ``f1_macro_interval`` (95% bootstrap interval).
    """
    if np.shape(y_true) != np.shape(y_pred) or np.ndim(y_true) != 1:
        raise DataError(f"y_true and y_pred must be 1-d and of equal length, got "
                        f"{np.shape(y_true)} and {np.shape(y_pred)}")
    y_true, y_pred = label_names(y_true, "y_true"), label_names(y_pred, "y_pred")
    if len(y_true) == 0:
        raise DataError("no cells to score: y_true and y_pred are empty")
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    if isinstance(labels, str):  # "abc" would be three classes, 'a', 'b' and 'c'
        raise DataError(f"labels takes a list of classes, not one string ({labels!r}): give "
                        f"[{labels!r}] for that class alone")
    given = label_names(list(labels), "labels").tolist()
    labels = list(dict.fromkeys(given))  # a class named twice is one row, one column
    if not labels:
        raise DataError("labels is empty; give at least one class to report on")
    twice = sorted(x for x, n in Counter(given).items() if n > 1)
    if twice:
        logger.warning("labels names %d class(es) more than once (%s): each is reported once",
                       len(twice), listed(twice, 5, quote=True))
    if not set(labels) & set(y_true.tolist()):
        shown, held = listed(labels, 5, quote=True), listed(sorted(set(y_true.tolist())), 5,
                                                            quote=True)
        raise DataError(f"none of the {len(labels)} classes in labels ({shown}) is a true label "
                        f"of a cell (those are {held}): give the classes y_true holds")

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
    scored = [label for label, n in zip(labels, s, strict=True) if n > 0] or labels
    for avg in _AVERAGES:
        pa, ra, fa, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=scored if avg == "macro" else labels, average=avg,
            zero_division=0)  # fmt: skip
        report[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    report["accuracy"] = float(accuracy_score(y_true, y_pred))
    report["labels"] = labels
    confusion = confusion_matrix(y_true, y_pred, labels=labels).astype(int)
    report["confusion"] = confusion.tolist()
    report["n"] = len(y_true)
    present = s[s > 0]
    report["min_class_n"] = int(present.min()) if present.size else 0
    report["f1_macro_interval"] = f1_interval(confusion, seed=seed)
    return report


def f1_interval(confusion: np.ndarray, *, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS,
                seed: int = 0) -> list[float]:
    """Bootstrap interval of the macro F1 over the cells scored: the cells of the confusion
    matrix (rows true, columns predicted) drawn again with replacement ``draws`` times, the
    central ``level`` of the macro F1s (each over the classes with true cells in the draw, as
    :func:`classification_report` averages over the classes with true cells). On a few dozen test cells it is wide: the
    F1 of one run is a rough number, and the interval says how rough."""
    c = np.asarray(confusion, dtype=np.int64)
    n = int(c.sum())
    if n == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    macro = []
    step = max(1, 2_000_000 // c.size)  # draws at a time: 126 types are 16k cells a draw
    for start in range(0, draws, step):
        sample = rng.multinomial(n, c.ravel() / n, size=min(step, draws - start))
        sample = sample.reshape(-1, *c.shape)
        tp = np.einsum("bii->bi", sample).astype(np.float64)
        both = sample.sum(1) + sample.sum(2)  # predicted + true, per class
        f1 = np.where(both > 0, 2 * tp / np.maximum(both, 1), 0.0)
        counted = sample.sum(2) > 0  # the classes with true cells in the draw, as in the report
        macro.append((f1 * counted).sum(1) / np.maximum(counted.sum(1), 1))
    macro = np.concatenate(macro)
    lo, hi = np.quantile(macro, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def to_coarse(labels: Sequence[str] | np.ndarray, groups: Mapping[str, str]) -> np.ndarray:
    """Map fine labels to coarse groups; labels absent from ``groups`` keep their own name.

    Returns an object array of strings.
    """
    _check_mapping(groups)
    return np.array([groups.get(x, x) for x in label_names(labels, "the labels").tolist()], dtype=object)


def _check_mapping(groups: Any) -> None:
    """A fine -> coarse mapping: a dict of names to non-blank names (a list or None was an
    AttributeError; a type mapped to None was reported as a cell with a missing label)."""
    if not isinstance(groups, Mapping):
        raise DataError(f"groups takes a mapping of fine cell type to coarse group (a dict such "
                        f"as {{'CD4 T cells': 'T cells'}}), not {type(groups).__name__}")
    blank = [k for k, v in groups.items() if not isinstance(v, str) or not v.strip()]
    if blank:
        raise DataError(f"groups maps {listed(map(str, blank), 5, quote=True)} to no group "
                        f"({groups[blank[0]]!r}): give each type the name of its coarse group, or "
                        "leave it out to keep its own name")
    check_group_names(groups, "groups")


def coarse_report(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    groups: Mapping[str, str],
) -> dict[str, Any]:
    """:func:`classification_report` on coarse groups.

    A prediction of another fine type within the right coarse group counts as correct. A
    mapping that names none of the labels' types is refused (the coarse report would repeat
    the fine one as if it had merged types).
    """
    _check_mapping(groups)
    types = set(label_names(y_true, "y_true").tolist()) | set(label_names(y_pred, "y_pred").tolist())
    if groups and not types & set(map(str, groups)):
        swapped = " (its groups are the labels' types: fine type first)" if types & set(
            groups.values()) else ""
        raise DataError(f"groups names none of the labels' types{swapped}: its fine types are "
                        f"{listed(sorted(map(str, groups)), 5, quote=True)}, the labels' "
                        f"{listed(sorted(types), 5, quote=True)}; map each fine type to its "
                        "coarse group")
    return classification_report(to_coarse(y_true, groups), to_coarse(y_pred, groups))


def summary_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row of a report: macro and micro precision/recall/F1, accuracy and ``n``."""
    row: dict[str, Any] = {}
    for avg in ("macro", "micro"):
        for metric in ("precision", "recall", "f1"):
            row[f"{metric}_{avg}"] = report[avg][metric]
    row["accuracy"] = report["accuracy"]
    row["n"] = report["n"]
    for key in ("f1_macro_interval", "min_class_n"):
        if (value := report.get(key)) is not None:  # reports written before these existed have neither
            row[key] = value
    return row


def small_sample_note(rows: Mapping[str, Mapping[str, Any]]) -> str | None:
    """A sentence for experiments scored on few cells, else None.

    ``rows`` maps an experiment's name (``"(a)"``) to its :func:`summary_row`. When one was
    scored on a class of fewer than :data:`SMALL_CLASS` true cells, the sentence names the
    cells and each such experiment's 95% bootstrap interval of the macro F1, so that an F1 of
    1.000 on a handful of cells is read as what it is.
    """
    small = {k: r for k, r in rows.items()
             if r.get("min_class_n") is not None and r["min_class_n"] < SMALL_CLASS}
    if not small:
        return None
    parts = []
    for k, r in small.items():
        lo, hi = r.get("f1_macro_interval") or (float("nan"), float("nan"))
        head = f"{k} {r['n']} cells, the smallest class {r['min_class_n']}: macro F1 {r['f1_macro']:.3f}"
        if lo == hi == 1.0:  # a bootstrap of no errors has none: the rule of three bounds them
            parts.append(f"{head}, no cell misread, yet an error rate up to "
                         f"{min(1.0, 3 / max(r['n'], 1)):.1%} is not excluded (95%, rule of three)")
        else:
            parts.append(f"{head}, 95% bootstrap interval {lo:.3f}-{hi:.3f}")
    return (f"Few cells scored (a class under {SMALL_CLASS} cells): " + "; ".join(parts)
            + ". Differences inside these intervals are noise; more test cells "
            "(a larger data set or `split.test`) narrow them.")


def write_report(report: Mapping[str, Any], directory: Path, name: str) -> None:
    """Write ``<name>.json``, ``<name>_per_class.csv`` and ``<name>_confusion.csv``.

    Parameters
    ----------
    report
        A dict from :func:`classification_report`.
    directory
        Created when missing (``~`` expanded; an existing file there is refused).
    name
        File-name stem, e.g. ``"test_real"``.
    """
    directory = check_out_dir(directory, "the report's directory", "the report", DataError)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / f"{name}.json", report)
    per_class = pd.DataFrame(
        [{"label": label, **values} for label, values in report["per_class"].items()],
        columns=["label", "precision", "recall", "f1", "support"],
    )
    write_csv(directory / f"{name}_per_class.csv", per_class, index=False)
    labels = report["labels"]
    confusion = pd.DataFrame(report["confusion"], index=labels, columns=labels)
    confusion.index.name = "true\\predicted"
    write_csv(directory / f"{name}_confusion.csv", confusion)
    logger.info("wrote %s report (%d classes) to %s", name, len(labels), directory)
