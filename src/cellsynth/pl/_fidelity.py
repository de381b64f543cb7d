"""``cs.pl.fidelity`` and ``cs.pl.per_type``: an evaluation's numbers beside its floor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ._common import REAL_COLOR, SYNTH_COLOR, axes

if TYPE_CHECKING:
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


def _reports(result: Mapping[str, Any]) -> tuple[dict, dict]:
    try:
        return result["synthetic_vs_real"], result["real_vs_real"]
    except (KeyError, TypeError):
        raise DataError("give the dict cellsynth.evaluate returned (with 'synthetic_vs_real' "
                        "and 'real_vs_real')") from None


def fidelity(
    result: Mapping[str, Any],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ax: Axes | None = None,
) -> Axes:
    """Each headline fidelity metric: synthetic cells beside the real-vs-real floor.

    One pair of horizontal bars per metric: the floor (two halves of the real cells, what a
    perfect generator would score) and the synthetic cells. The arrow in each label says which
    way is better.

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluate` returned (or a run's ``fidelity.json`` read with
        ``json.load``).
    metrics
        Headline metric names (:func:`cellsynth.benchmark.flat_report`'s keys). The default
        ones all lie in [0, 1]; the unbounded ones (``mmd``, ``energy``,
        ``library_distance``, ``correlation_distance``) are on other scales.
    ax
        The axes to draw into; None makes a new figure.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` drawn into.
    """
    from ..benchmark import COLUMNS, flat_report

    synth, floor = _reports(result)
    s, f = flat_report(synth), flat_report(floor)
    unknown = [m for m in metrics if m not in s]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; choose from {', '.join(s)}")
    names = {key: label for key, label, _ in COLUMNS}
    keep = [m for m in metrics if s[m] is not None or f[m] is not None]
    ax = axes(ax, (6.0, 0.45 * len(keep) + 1.2))
    y = np.arange(len(keep))
    h = 0.38

    def values(d: dict) -> np.ndarray:
        return np.array([np.nan if d[m] is None else float(d[m]) for m in keep])

    ax.barh(y - h / 2, values(f), height=h, color=REAL_COLOR, label="real vs real (floor)")
    ax.barh(y + h / 2, values(s), height=h, color=SYNTH_COLOR, label="synthetic vs real")
    ax.set_yticks(y, [names.get(m, m) for m in keep])
    ax.invert_yaxis()
    ax.set_xlabel("value")
    n = result.get("n_cells", {})
    if n:
        ax.set_title(f"fidelity: {n['synthetic']['used']} synthetic vs "
                     f"{n['real']['used']} real cells", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return ax


def per_type(
    result: Mapping[str, Any],
    metric: str = "c2st_auc",
    *,
    ax: Axes | None = None,
) -> Axes:
    """One fidelity metric per cell type: synthetic cells beside the real-vs-real floor.

    Parameters
    ----------
    result
        What :func:`cellsynth.evaluate` returned.
    metric
        A per-type metric: ``c2st_auc`` (default), ``mmd_rbf``, ``energy_distance``,
        ``knn_precision``, ``knn_recall``, ``gene_mean_spearman``, ``library_size_distance``.
    ax
        The axes to draw into; None makes a new figure.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` drawn into. Types skipped on either side (too few
    cells) are left out.
    """
    synth, floor = _reports(result)
    st, ft = synth.get("per_type", {}), floor.get("per_type", {})
    types = sorted(set(st) | set(ft))
    if not types:
        raise DataError("the result has no per-type numbers (every type had too few cells); "
                        "evaluate with more cells (max_cells)")
    known = {k for row in (*st.values(), *ft.values()) for k in row}
    if metric not in known:
        raise DataError(f"unknown per-type metric {metric!r}; choose from {', '.join(sorted(known))}")
    ax = axes(ax, (6.0, 0.4 * len(types) + 1.2))
    y = np.arange(len(types))
    h = 0.38

    def values(table: dict) -> np.ndarray:
        return np.array([float(table[t][metric]) if t in table and table[t].get(metric) is not None
                         else np.nan for t in types])

    ax.barh(y - h / 2, values(ft), height=h, color=REAL_COLOR, label="real vs real (floor)")
    ax.barh(y + h / 2, values(st), height=h, color=SYNTH_COLOR, label="synthetic vs real")
    ax.set_yticks(y, types)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.legend(fontsize=8, loc="best")
    return ax
