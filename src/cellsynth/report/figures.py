"""The report's figures: plain data in, a base64 PNG ``data:`` URI out.

Every function builds a :class:`matplotlib.figure.Figure` on the Agg canvas (no pyplot, no
global state, no display) and returns it encoded by :func:`to_data_uri`. They take numbers and
tables, never files or live models; :mod:`cellsynth.report.html` reads the run directory.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

DPI = 100
#: points drawn in a scatter at most (a seeded subsample beyond)
MAX_POINTS = 30_000
REAL_COLOR, SYNTH_COLOR = "#4c72b0", "#dd8452"


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


def _colors(n: int) -> list:
    """``n`` distinct colours: tab10/tab20 while they last, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["gist_rainbow"](i / max(n - 1, 1)) for i in range(n)]


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
    ax.set_yticks(y, types, fontsize=8)
    ax.set_xlabel("cells")
    sizes = [v for v in (*before.values(), *after.values()) if v > 0]
    if sizes and max(sizes) / min(sizes) > 100:
        ax.set_xscale("log")
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


def f1_bars(series: Mapping[str, pd.Series]) -> str:
    """Per-class F1 side by side: ``series`` maps a legend name to an F1 Series indexed by class."""
    names = list(series)
    types = sorted(set().union(*(s.index for s in series.values())), reverse=True)
    y = np.arange(len(types))
    width = 0.8 / max(len(names), 1)
    colors = [REAL_COLOR, SYNTH_COLOR, "#55a868"]
    fig = _figure(8, _label_height(len(types), 0.3 * max(1, len(names) / 1.5)))
    ax = fig.subplots()
    for i, name in enumerate(names):
        vals = series[name].reindex(types).to_numpy(dtype=float)
        ax.barh(y + (len(names) - 1) * width / 2 - i * width, np.nan_to_num(vals), width,
                label=name, color=colors[i % len(colors)])
    ax.set_yticks(y, types, fontsize=8)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("F1 on the real test cells")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(names), frameon=False)
    return to_data_uri(fig)


def confusion_heatmaps(matrices: Mapping[str, pd.DataFrame]) -> str:
    """Row-normalised confusion matrices (rows true, columns predicted), one panel each."""
    names = list(matrices)
    n = max(len(m) for m in matrices.values())
    side = min(max(4.0, 0.32 * n + 2.0), 16.0)
    fig = _figure(side * len(names) + 1.0, side, layout="constrained")  # room for long labels
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    image = None
    for ax, name in zip(axes, names, strict=True):
        m = matrices[name]
        counts = m.to_numpy(dtype=float)
        rows = counts.sum(axis=1, keepdims=True)
        norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="equal")
        ticks = np.arange(len(m))
        fs = 8 if len(m) <= 30 else 6
        ax.set_xticks(np.arange(m.shape[1]), [str(c) for c in m.columns], rotation=90, fontsize=fs)
        ax.set_yticks(ticks, [str(i) for i in m.index], fontsize=fs)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=10)
        if len(m) <= 15:
            for (i, j), v in np.ndenumerate(norm):
                if v >= 0.005:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 else "black")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.6, label="fraction of the true type's cells")
    return to_data_uri(fig)


def umap_scatter(df: pd.DataFrame, seed: int = 0) -> str:
    """Real and generated cells in one embedding: coloured by type, and by origin.

    ``df`` has columns ``origin`` (``real``/``synthetic``), ``label``, ``x``, ``y``.
    """
    if len(df) > MAX_POINTS:
        df = df.sample(MAX_POINTS, random_state=seed)
    df = df.sample(frac=1.0, random_state=seed)  # draw order shuffled: no origin hides the other
    size = float(np.clip(4000 / max(len(df), 1), 0.5, 12))
    types = sorted(df["label"].astype(str).unique())
    colors = dict(zip(types, _colors(len(types)), strict=True))
    fig = _figure(14, 6.5)
    ax_t, ax_o = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.03, right=0.99, wspace=0.08)
    lab = df["label"].astype(str)
    ax_t.scatter(df["x"], df["y"], s=size, c=[colors[t] for t in lab], linewidths=0,
                 rasterized=True)
    origin = df["origin"].astype(str)
    ax_o.scatter(df["x"], df["y"], s=size, linewidths=0, rasterized=True,
                 c=np.where(origin == "synthetic", SYNTH_COLOR, REAL_COLOR))
    for ax, title in ((ax_t, "by cell type"), (ax_o, "by origin")):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_title(title)
    handles = [Line2D([], [], ls="", marker="o", color=colors[t], label=t) for t in types]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7,
               ncol=-(-len(types) // 30), frameon=False, title="cell type")  # right of both
    counts = origin.value_counts()
    handles = [Line2D([], [], ls="", marker="o", color=c, label=f"{o} ({counts.get(o, 0)})")
               for o, c in (("real", REAL_COLOR), ("synthetic", SYNTH_COLOR))]
    ax_o.legend(handles=handles, loc="best", fontsize=8)
    return to_data_uri(fig)


def loss_curves(curves: Mapping[str, Mapping[str, Sequence[float]]],
                best: Mapping[str, int | None]) -> str:
    """One panel per model: ``curves[panel]`` maps a curve name to values per epoch/round;
    ``best[panel]`` marks the chosen epoch with a dashed line."""
    panels = [p for p in curves if curves[p]]
    fig = _figure(6.5 * len(panels), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels, strict=True):
        for name, values in curves[panel].items():
            v = np.asarray(values, dtype=float)
            ax.plot(np.arange(len(v)), v, label=name, marker="." if len(v) <= 30 else None)
        b = best.get(panel)
        if b is not None:
            ax.axvline(b, color="black", linestyle="--", linewidth=0.8, label=f"best ({b})")
        ax.set_xlabel("epoch" if "generator" in panel else "boosting round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.set_title(panel)
        ax.legend(fontsize=8)
    return to_data_uri(fig)


def qc_removed(steps: pd.DataFrame) -> str:
    """Cells and genes removed by each QC step (two bar panels)."""
    fig = _figure(11, _label_height(len(steps), 0.3, 1.2))
    ax_c, ax_g = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(steps))[::-1]
    ax_c.barh(y, steps["cells_removed"], color=REAL_COLOR)
    ax_g.barh(y, steps["genes_removed"], color=SYNTH_COLOR)
    ax_c.set_yticks(y, steps["step"].astype(str), fontsize=8)
    ax_c.set_xlabel("cells removed")
    ax_g.set_xlabel("genes removed")
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
