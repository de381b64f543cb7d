"""``cs.pl.fidelity`` and ``cs.pl.per_type``: an evaluation's numbers beside its floor."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, listed
from ._common import (
    REAL_COLOR,
    SYNTH_COLOR,
    axes,
    finish,
    finite,
    mark_missing,
    plot,
    short_label,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

#: the headline metrics drawn by default: all lie in [0, 1], so they share one axis
DEFAULT_METRICS = (
    "c2st_auc",
    "per_type_c2st_auc",
    "knn_precision",
    "knn_recall",
    "gene_mean_spearman",
    "gene_var_spearman",
    "zero_frac_spearman",
    "marker_overlap",
)
#: per-type metrics of :func:`cellsynth.evaluate`'s per-type table (``result["per_type"]``),
#: each with its floor's column (equal-sized real halves; TRTS beside TRTR)
TABLE_METRICS = {"c2st_auc": "c2st_auc_floor", "gene_auc": "gene_auc_floor",
                 "genes_at_depth": "genes_at_depth_floor",
                 "knn_precision": "knn_precision_floor", "knn_recall": "knn_recall_floor",
                 "de_logfc_r": "de_logfc_r_floor", "marker_overlap": "marker_overlap_floor",
                 "trts_f1": "trtr_f1"}


#: one metric, two names: the reports' (``fidelity.json``, :func:`per_type`) and the results
#: table's (:func:`cellsynth.benchmark.flat_report`, :func:`fidelity`); either is taken by both
REPORT_NAMES = {"mmd_rbf": "mmd", "energy_distance": "energy",
                "library_size_distance": "library_distance"}


#: what a result of another shape is refused with
_GIVE = ("give what cellsynth.evaluate returned (an Evaluation, or its dict), or a run's "
         "metrics/fidelity.json read with json.load")


def _reports(result: Mapping[str, Any]) -> tuple[Mapping, Mapping]:
    """The two reports of a result, each a dict (a hand-made or truncated one of another shape
    had stopped with KeyError, TypeError or AttributeError)."""
    try:
        sides = result["synthetic_vs_real"], result["real_vs_real"]
    except (KeyError, TypeError):
        raise DataError("give what cellsynth.evaluate returned (an Evaluation, or its dict with "
                        "'synthetic_vs_real' and 'real_vs_real'; a run's metrics/fidelity.json "
                        "read with json.load)") from None
    for name, side in zip(("synthetic_vs_real", "real_vs_real"), sides, strict=True):
        if not isinstance(side, Mapping):
            raise DataError(f"the result's {name} is a {type(side).__name__}, not a report (a "
                            f"dict of 'overall' and 'per_type' numbers): {_GIVE}")
        per_type = side.get("per_type") or {}
        if not isinstance(per_type, Mapping) or not all(
                isinstance(v, Mapping) for v in per_type.values()):
            raise DataError(f"the result's {name}['per_type'] is not a dict of each type's "
                            f"numbers: {_GIVE}")
    return sides


def _verdict(result: Mapping[str, Any]) -> str | None:
    v = result.get("verdict") if isinstance(result, Mapping) else None
    o = v.get("overall") if isinstance(v, Mapping) else None
    return o.get("verdict") if isinstance(o, Mapping) else None


def _title(result: Mapping[str, Any]) -> str:
    """The cells compared and the verdict, as far as the result says them."""
    n = result.get("n_cells")
    used = [n[k].get("used") if isinstance(n, Mapping) and isinstance(n.get(k), Mapping)
            else None for k in ("synthetic", "real")]
    title = f"{used[0]} synthetic vs {used[1]} real cells" if None not in used else ""
    verdict = _verdict(result)
    if verdict:
        title = f"verdict: {verdict}" + (f" ({title})" if title else "")
    return title


@plot
def fidelity(
    result: Mapping[str, Any],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Each headline fidelity metric: synthetic cells beside the real-vs-real floor.

    One pair of horizontal bars per metric: the floor (two halves of the real cells, what a
    perfect generator would score) and the synthetic cells. The arrow in each label says which
    way is better.

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluate` returned (the :class:`~cellsynth.evaluation.result.Evaluation`,
        or its ``to_dict()``; a run's ``metrics/fidelity.json`` read with ``json.load``).
    metrics
        Headline metric names (:func:`cellsynth.benchmark.flat_report`'s keys). The default
        ones all lie in [0, 1]; the unbounded ones (``mmd``, ``energy``,
        ``library_distance``, ``correlation_distance``) are on other scales (the first three
        also by :func:`per_type`'s names: ``mmd_rbf``, ``energy_distance``,
        ``library_size_distance``). An unbiased MMD
        or energy distance can be slightly below zero: the two samples are then as alike as
        their noise allows (read it as 0).
    {ax}
    {show_save}

    Returns
    -------
    Axes or None
        The :class:`~matplotlib.axes.Axes` drawn into (None with ``show=True``). The title
        names the cells compared and, for an ``Evaluation``, the verdict.
    """
    from ..benchmark import COLUMNS, flat_report

    synth, floor = _reports(result)
    try:
        s, f = flat_report(synth), flat_report(floor)
    except (KeyError, TypeError, AttributeError):  # no "overall", or one of another shape
        raise DataError(f"the result's reports hold no 'overall' dict of headline numbers: "
                        f"{_GIVE}") from None
    if not isinstance(metrics, str | Sequence):
        raise DataError(f"metrics takes metric names (a list, or one name), not "
                        f"{type(metrics).__name__} {metrics!r}; leave it out for the headline ones")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)  # one metric by name
    metrics = [REPORT_NAMES.get(m, m) if isinstance(m, str) else m for m in metrics]
    if not metrics:
        raise DataError(f"metrics is empty: name one or more of {', '.join(s)}")
    unknown = [m for m in metrics if m not in s]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; choose from {', '.join(s)}")
    names = {key: label for key, label, _ in COLUMNS}
    keep = [m for m in metrics if not (math.isnan(finite(s[m])) and math.isnan(finite(f[m])))]
    if not keep:  # an empty figure said nothing of why
        raise DataError(f"no value of {listed(metrics, 8)} in the result on either side (each "
                        "needs enough cells to score): plot other metrics, or evaluate with "
                        "more cells (max_cells)")
    ax = axes(ax, (6.0, 0.45 * len(keep) + 1.2))
    y = np.arange(len(keep))

    def values(d: dict) -> np.ndarray:  # an infinite one or text (an edited file): missing
        return np.array([finite(d[m]) for m in keep])

    paired_bars(ax, y, values(f), values(s))
    ax.set_yticks(y, [names.get(m, m) for m in keep])
    ax.invert_yaxis()
    ax.set_xlabel("value (arrow: which way is better)")
    title = _title(result)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return finish(ax, show, save)


def paired_bars(ax: Axes, y: np.ndarray, floor: np.ndarray, synth: np.ndarray) -> None:
    """The floor's bar (above) and the synthetic cells' (below) at each ``y``, "n/a" where
    one has no value."""
    h = 0.38
    ax.barh(y - h / 2, floor, height=h, color=REAL_COLOR, label="real vs real (floor)")
    ax.barh(y + h / 2, synth, height=h, color=SYNTH_COLOR, label="synthetic vs real")
    mark_missing(ax, y - h / 2, floor, h)
    mark_missing(ax, y + h / 2, synth, h)


def _rows(result: Any) -> list[dict] | None:
    """The per-type table's rows (``result["per_type"]``, or the DataFrame itself), or None."""
    if hasattr(result, "reset_index"):  # Evaluation.per_type, a DataFrame indexed by type
        return result.reset_index().to_dict(orient="records")
    rows = result.get("per_type") if isinstance(result, Mapping) else None
    if not (isinstance(rows, list) and rows):
        return None
    if not all(isinstance(r, Mapping) and "type" in r for r in rows):
        raise DataError(f"the result's per_type table holds rows that are not a type's numbers "
                        f"(a dict with 'type'): {_GIVE}")
    return list(rows)


def _size(n_real: Any, n_synth: Any) -> str:
    r, s = finite(n_real), finite(n_synth)
    return f"{'–' if math.isnan(r) else int(r)} · {'–' if math.isnan(s) else int(s)}"


def _per_type_values(result: Any, metric: str
                     ) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[str]]:
    """``(types, floor, synthetic, sizes, verdicts)`` of ``metric``, from the per-type table
    when it holds the metric, else from the two reports' ``per_type``."""
    rows = _rows(result)
    if rows is not None and not rows and hasattr(result, "reset_index"):
        raise DataError("the per-type table has no rows: there is no type to plot (give the "
                        "evaluation's per_type, not a selection of none of its rows)")
    whole = isinstance(result, Mapping) and "synthetic_vs_real" in result
    if rows is not None and metric in TABLE_METRICS:
        rows = [r for r in rows if not (math.isnan(finite(r.get(metric)))
                                        and math.isnan(finite(r.get(TABLE_METRICS[metric]))))]
        if not rows and not whole:
            raise DataError(f"the per-type table has no value of {metric!r} for any type (each "
                            "had too few cells to score); plot another metric, or evaluate with "
                            "more cells (max_cells)")
        if rows:
            return ([str(r["type"]) for r in rows],
                    np.array([finite(r.get(TABLE_METRICS[metric])) for r in rows]),
                    np.array([finite(r.get(metric)) for r in rows]),
                    [_size(r.get("n_real_scored"), r.get("n_synthetic_scored")) for r in rows],
                    [str(r.get("verdict") or "") for r in rows])
    if rows is not None and not whole:
        raise DataError(f"the per-type table has no {metric!r}; choose from "
                        f"{', '.join(TABLE_METRICS)}")
    synth, floor = _reports(result)
    st, ft = synth.get("per_type") or {}, floor.get("per_type") or {}
    types = sorted(set(st) | set(ft))
    if not types:
        raise DataError("the result has no per-type numbers (every type had too few cells); "
                        "evaluate with more cells (max_cells)")
    known = {k for row in (*st.values(), *ft.values()) for k in row
             if not k.startswith("n_")} | (  # cell counts are no metric
        set(TABLE_METRICS) if rows is not None else set())
    metric = {v: k for k, v in REPORT_NAMES.items()}.get(metric, metric)  # fidelity's name
    if metric not in known:
        raise DataError(f"unknown per-type metric {metric!r}; choose from {', '.join(sorted(known))}")

    def values(table: dict) -> np.ndarray:
        return np.array([finite(table.get(t, {}).get(metric)) for t in types])

    floor_values, synth_values = values(ft), values(st)
    if np.isnan(floor_values).all() and np.isnan(synth_values).all():  # a figure of "n/a" alone
        raise DataError(f"no type has a value of {metric!r} (each had too few cells to score, or "
                        "the test was skipped: see the evaluation's log); plot another metric, "
                        "or evaluate with more cells (max_cells)")
    sizes = [_size(st.get(t, ft.get(t, {})).get("n_real"), st.get(t, {}).get("n_synth"))
             for t in types]
    return types, floor_values, synth_values, sizes, [""] * len(types)


@plot
def per_type(
    result: Mapping[str, Any] | pd.DataFrame,
    metric: str = "c2st_auc",
    *,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """One fidelity metric per cell type: synthetic cells beside the real-vs-real floor.

    Each type's label gives its cells (real · synthetic, scored); with an
    :class:`~cellsynth.evaluation.result.Evaluation` its verdict is written beside its bars.

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluate` returned (an ``Evaluation``, its dict, or its
        ``per_type`` DataFrame), or a run's ``metrics/fidelity.json`` read with ``json.load``.
    metric
        A per-type metric. From the per-type table of an ``Evaluation`` (floors from
        equal-sized real halves): ``c2st_auc`` (default), ``gene_auc``, ``genes_at_depth``,
        ``knn_precision``,
        ``knn_recall``, ``de_logfc_r``, ``marker_overlap``, ``trts_f1`` (beside TRTR). From
        the reports (also a run's ``fidelity.json``): ``c2st_auc``, ``mmd_rbf``,
        ``energy_distance``, ``knn_precision``, ``knn_recall``, ``gene_mean_spearman``,
        ``library_size_distance`` (also by :func:`fidelity`'s names: ``mmd``, ``energy``,
        ``library_distance``).
    {ax}
    {show_save}

    Returns
    -------
    Axes or None
        The :class:`~matplotlib.axes.Axes` drawn into (None with ``show=True``). Types with
        no number on either side (too few cells) are left out.
    """
    if not isinstance(metric, str):
        raise DataError(f"metric takes one per-type metric's name (such as 'c2st_auc'), not "
                        f"{type(metric).__name__} {metric!r}: draw each metric with a call of "
                        "its own")
    types, floor, synth, sizes, verdicts = _per_type_values(result, metric)
    ax = axes(ax, (6.5, 0.4 * len(types) + 1.4))
    y = np.arange(len(types))
    paired_bars(ax, y, floor, synth)
    ax.set_yticks(y, [f"{short_label(t)} ({n})" for t, n in zip(types, sizes, strict=True)],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_ylabel("type (cells: real · synthetic)")
    ax.set_xlabel(metric + (" (floor: TRTR)" if metric == "trts_f1" else ""))
    if any(verdicts):
        from matplotlib.transforms import blended_transform_factory

        tr = blended_transform_factory(ax.transAxes, ax.transData)
        for yi, v in zip(y, verdicts, strict=True):
            ax.text(1.01, yi, v, transform=tr, va="center", fontsize=7, color="#555555")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    return finish(ax, show, save)
