"""The report's figures: plain data in, a base64 PNG ``data:`` URI out.

Every function builds a :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, no
global state, no display) and returns it encoded by :func:`to_data_uri`. They take numbers and
tables, never files or live models; :mod:`cellsynth.report.html` reads the run directory. A
figure that has a :mod:`cellsynth.pl` twin (the UMAP, the fidelity bars, the per-type bars,
the privacy audit, the generator's training curve) is drawn by that function into the
figure's axes: the report and the Python API show the same plots.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import pl
from ..options import log_scale
from ..pl import REAL_COLOR, SYNTH_COLOR, short_label

DPI = 100
#: the third experiment's colour in bars beside real and synthetic
THIRD_COLOR = "#55a868"


def _figure(width: float, height: float, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_data_uri(data: bytes) -> str:
    """PNG bytes (e.g. a file a stage already wrote) as a data URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _label_height(n: int, per: float = 0.28, base: float = 1.5) -> float:
    return max(3.0, per * n + base)


def cells_per_type(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    """Horizontal bars of cells per type before and after QC (types by size, largest on top)."""
    types = sorted(set(before) | set(after), key=lambda t: (before.get(t, 0), t))
    y = np.arange(len(types))
    fig = _figure(8, _label_height(len(types)))
    ax = fig.subplots()
    ax.barh(y + 0.2, [before.get(t, 0) for t in types], 0.4, label="before QC", color="#aaaaaa")
    ax.barh(y - 0.2, [after.get(t, 0) for t in types], 0.4, label="after QC", color=REAL_COLOR)
    ax.set_yticks(y, [short_label(t) for t in types], fontsize=8)
    ax.set_xlabel("cells")
    sizes = [v for v in (*before.values(), *after.values()) if v > 0]
    if sizes and max(sizes) / min(sizes) > 100:
        log_scale(ax, "x")  # plain labels: matplotlib's mathtext ones read as spelled here
    ax.legend(loc="lower right")
    ax.set_title("Cells per type")
    return to_data_uri(fig)


def pca_variance(ratio: Sequence[float]) -> str:
    """Explained variance per component (bars) and its cumulative sum (line)."""
    r = np.asarray(ratio, dtype=float)
    k = np.arange(1, len(r) + 1)
    fig = _figure(8, 3.5)
    ax = fig.subplots()
    ax.bar(k, r, color="#aaaaaa", label="per component")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax2 = ax.twinx()
    ax2.plot(k, np.cumsum(r), color=REAL_COLOR, marker=".", label="cumulative")
    ax2.set_ylabel("cumulative", color=REAL_COLOR)
    ax2.set_ylim(0, max(1e-9, float(np.cumsum(r)[-1]) * 1.05) if len(r) else 1)
    ax.set_title(f"PCA: {len(r)} components explain {r.sum():.1%} of the variance")
    return to_data_uri(fig)


def f1_bars(series: Mapping[str, pd.Series], sizes: Mapping[str, int] | None = None) -> str:
    """Per-class F1 side by side: ``series`` maps a legend name to an F1 Series indexed by
    class; ``sizes`` (class -> cells) is written beside each class's name."""
    names = list(series)
    types = sorted(set().union(*(s.index for s in series.values())), reverse=True)
    y = np.arange(len(types))
    width = 0.8 / max(len(names), 1)
    colors = [REAL_COLOR, SYNTH_COLOR, THIRD_COLOR]
    fig = _figure(8, _label_height(len(types), 0.3 * max(1, len(names) / 1.5)))
    ax = fig.subplots()
    for i, name in enumerate(names):
        vals = series[name].reindex(types).to_numpy(dtype=float)
        ax.barh(y + (len(names) - 1) * width / 2 - i * width, np.nan_to_num(vals), width,
                label=name, color=colors[i % len(colors)])
    sizes = sizes or {}
    ax.set_yticks(y, [f"{short_label(t)} ({sizes[t]:,})" if t in sizes else short_label(t)
                      for t in types], fontsize=8)
    if sizes:
        ax.set_ylabel("type (real test cells)")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("F1")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(names), frameon=False)
    return to_data_uri(fig)


def confusion_heatmaps(matrices: Mapping[str, pd.DataFrame]) -> str:
    """Row-normalised confusion matrices (rows true, columns predicted), one panel each: side
    by side while they fit 24 inches, else one above the other."""
    names = list(matrices)
    n = max(len(m) for m in matrices.values())
    side = min(max(4.0, 0.32 * n + 2.0), 16.0)
    cols = len(names) if side * len(names) <= 24 else 1
    rows = -(-len(names) // cols)
    fig = _figure(side * cols + 1.0, side * rows, layout="constrained")  # room for long labels
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    image = None
    for ax, name in zip(axes, names, strict=True):
        m = matrices[name]
        counts = m.to_numpy(dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="equal")
        fs = 8 if len(m) <= 30 else 6
        ax.set_xticks(np.arange(m.shape[1]), [short_label(c) for c in m.columns], rotation=90,
                      fontsize=fs)
        ax.set_yticks(np.arange(len(m)), [f"{short_label(i)} ({int(t):,})" for i, t in
                                          zip(m.index, totals.ravel(), strict=True)], fontsize=fs)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (cells)")
        ax.set_title(name, fontsize=10)
        if len(m) <= 15:
            for (i, j), v in np.ndenumerate(norm):
                if v >= 0.005:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 else "black")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.6, label="fraction of the true type's cells")
    return to_data_uri(fig)


def umap_panels(df: pd.DataFrame, seed: int = 0) -> str:
    """:func:`cellsynth.pl.umap` of a UMAP table: by cell type and by origin, equal numbers
    of real and generated cells per type, each legend beside its panel."""
    fig = _figure(15, 6.5, layout="constrained")
    pl.umap(df, color=["label", "origin"], ax=list(fig.subplots(1, 2)), seed=seed)
    return to_data_uri(fig)


def fidelity_bars(result: Mapping[str, Any]) -> str:
    """:func:`cellsynth.pl.fidelity`: the headline metrics beside the floor."""
    fig = _figure(8, 4.8, layout="constrained")
    pl.fidelity(result, ax=fig.subplots())
    return to_data_uri(fig)


def per_type_bars(result: Mapping[str, Any], metric: str = "c2st_auc") -> str:
    """:func:`cellsynth.pl.per_type`: one metric per type beside its floor."""
    n = len((result.get("synthetic_vs_real") or {}).get("per_type") or {})
    fig = _figure(8, _label_height(n, 0.45, 1.6), layout="constrained")
    pl.per_type(result, metric, ax=fig.subplots())
    return to_data_uri(fig)


def gene_relations(fidelity: Mapping[str, Any]) -> str:
    """:func:`cellsynth.pl.genes`: per gene, mean against zeros and against variance."""
    fig = _figure(10, 4, layout="constrained")
    pl.genes(fidelity, ax=fig.subplots(1, 2))
    return to_data_uri(fig)


def privacy_bars(audit: Mapping[str, Any]) -> str:
    """:func:`cellsynth.pl.privacy`: the attacks beside their thresholds, the distances."""
    fig = _figure(8, 4.2, layout="constrained")
    pl.privacy(audit, ax=fig.subplots())
    return to_data_uri(fig)


def training_curves(generator: Mapping[str, Any] | None,
                    curves: Mapping[str, Mapping[str, Sequence[float]]],
                    best: Mapping[str, int | None]) -> str:  # fmt: skip
    """One panel per model: the generator's history by :func:`cellsynth.pl.history` (the
    curve that chose the kept epoch marked), then each classifier's ``curves[panel]`` (a
    curve name -> values per boosting round), ``best[panel]`` its chosen round."""
    panels = [p for p in curves if curves[p]]
    n = len(panels) + (generator is not None)
    fig = _figure(6.5 * n, 3.8, layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, n)))
    if generator is not None:
        ax = axes.pop(0)
        pl.history(generator, ax=ax)
        ax.set_title("generator")
    for ax, panel in zip(axes, panels, strict=True):
        for name, values in curves[panel].items():
            v = np.asarray(values, dtype=float)
            ax.plot(np.arange(len(v)), v, label=name, marker="." if len(v) <= 30 else None)
        b = best.get(panel)
        if b is not None:
            ax.axvline(b, color="black", linestyle="--", linewidth=0.8, label=f"best ({b})")
        ax.set_xlabel("boosting round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.set_title(panel)
        ax.legend(fontsize=8)
    return to_data_uri(fig)


def qc_removed(steps: pd.DataFrame) -> str | None:
    """Cells and genes removed by each QC step: one bar panel for each that any step removed
    (None when no step removed anything)."""
    shown = [(c, col) for c, col in (("cells_removed", REAL_COLOR), ("genes_removed", SYNTH_COLOR))
             if c in steps and (steps[c] > 0).any()]
    if not shown:
        return None
    fig = _figure(5.5 * len(shown) + 2.0, _label_height(len(steps), 0.3, 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(shown), sharey=True))
    y = np.arange(len(steps))[::-1]
    for ax, (c, color) in zip(axes, shown, strict=True):
        ax.barh(y, steps[c], color=color)
        ax.set_xlabel(c.replace("_", " "))
    axes[0].set_yticks(y, steps["step"].astype(str), fontsize=8)
    return to_data_uri(fig)


def stage_bars(stages: Mapping[str, Mapping]) -> str:
    """Wall time per stage (bars), annotated with peak resident memory."""
    names = list(stages)[::-1]
    secs = [float(stages[n].get("seconds") or 0) for n in names]
    fig = _figure(8, _label_height(len(names), 0.35, 1.0))
    ax = fig.subplots()
    ax.barh(names, secs, color=REAL_COLOR)
    for i, n in enumerate(names):
        mem = stages[n].get("peak_rss_mb")
        if mem is not None:
            ax.text(secs[i], i, f" {mem:.0f} MB", va="center", fontsize=8)
    ax.set_xlabel("seconds (label: peak RSS at the stage's end)")
    ax.set_xlim(0, max([*secs, 1e-9]) * 1.25)
    return to_data_uri(fig)
