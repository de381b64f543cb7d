"""``cs.pl.umap``: real and generated cells in one UMAP, equal numbers of each per type."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..paths import expand_user
from ..seeds import checked_seed, checked_whole
from ._common import (
    REAL_COLOR,
    SYNTH_COLOR,
    axes_list,
    finish,
    labelled,
    need_cells,
    no_shared_type,
    plot,
    short_label,
    type_colors,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd
    from matplotlib.axes import Axes

#: points drawn at most (both origins together); types are capped alike beyond it
MAX_POINTS = 30_000
#: principal components the UMAP of AnnData objects starts from
N_PCS = 30
#: counts per cell after normalisation (as ``qc.target_sum``)
TARGET_SUM = 1e4
#: the most cell types a panel's legend lists (two columns); beyond, types are named on the data
LEGEND_TYPES = 50
#: the UMAP table's columns (``features/umap.csv``)
TABLE_COLUMNS = ("origin", "label", "x", "y")


def equal_counts(real: Mapping[str, int], synthetic: Mapping[str, int],
                 n_per_type: int | None = None, max_points: int = MAX_POINTS
                 ) -> dict[str, tuple[int, int]]:  # fmt: skip
    """Cells to draw per type, ``(real, synthetic)``: as many of each as the smaller side has.

    A type both sides hold gets ``min(real, synthetic)`` cells a side (at most ``n_per_type``);
    a type only one side holds keeps its cells, up to ``n_per_type`` or the largest shared
    type's number, so that a type missing from one side shows. Beyond ``max_points`` in all,
    every type is capped at one number (small types kept whole).

    Parameters
    ----------
    real, synthetic
        Cells per type on each side.
    n_per_type
        Cells per type and side at most; None: no cap but ``max_points``.
    max_points
        Cells drawn at most, both sides together.

    Returns
    -------
    dict
        Type -> ``(real cells, synthetic cells)`` to draw.
    """
    if n_per_type is not None and n_per_type < 1:
        raise DataError(f"n_per_type must be at least 1, got {n_per_type}")
    shared = {t: min(int(real[t]), int(synthetic[t])) for t in real
              if real[t] > 0 and synthetic.get(t, 0) > 0}
    if not shared:
        raise no_shared_type([t for t in real if real[t] > 0],
                             [t for t in synthetic if synthetic[t] > 0], "the label column")
    if n_per_type is not None:
        shared = {t: min(k, n_per_type) for t, k in shared.items()}
    cap = n_per_type if n_per_type is not None else max(shared.values())
    plan = {t: (k, k) for t, k in shared.items()}
    for t in sorted((set(real) | set(synthetic)) - set(shared)):
        r, s = min(int(real.get(t, 0)), cap), min(int(synthetic.get(t, 0)), cap)
        if r or s:
            plan[t] = (r, s)

    def total(c: int) -> int:
        return sum(min(r, c) + min(s, c) for r, s in plan.values())

    top = max(max(p) for p in plan.values())
    if total(top) > max_points:
        lo, hi = 1, top  # the largest per-type cap that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(mid) <= max_points else (lo, mid - 1)
        plan = {t: (min(r, lo), min(s, lo)) for t, (r, s) in plan.items()}
    return plan


def _pick(labels: np.ndarray, plan: Mapping[str, tuple[int, int]], side: int,
          rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Sorted row indices: ``plan[type][side]`` random cells of each type."""
    out = [rng.choice(np.flatnonzero(labels == t), size=p[side], replace=False)
           for t, p in plan.items() if p[side]]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def _expression(adata: ad.AnnData, rows: np.ndarray, what: str) -> tuple[Any, list[str], bool]:
    """The values of ``rows`` (raw counts where found, else ``X`` as it is), their gene names,
    and whether they are counts (to be normalised once the genes are matched)."""
    import scipy.sparse as sp

    from ..data.io import find_counts

    if getattr(adata, "isbacked", False):
        raise DataError(f"{what} is backed; give a subsample in memory (adata[idx].to_memory())")
    try:
        expr = find_counts(adata)
    except DataError as exc:  # "X holds NaN" alone does not say of which side
        raise DataError(f"{what}: {exc}") from None
    if expr.note:  # neither counts nor log-normalised values: they would be read as the latter
        raise DataError(f"{what}: {expr.note}")
    from ..data.genes import check_gene_names

    where = expr.counts
    if where == "raw.X":
        x, genes = adata.raw.X, list(adata.raw.var_names)
        check_gene_names(genes, what, raw=True)
    else:
        x, genes = (adata.layers["counts"] if where == "layers/counts" else adata.X,
                    list(adata.var_names))
        check_gene_names(genes, what)  # a name twice or blank stopped pandas' reindexing
    return sp.csr_matrix(x[rows], dtype=np.float32), genes, where is not None


def _embed(real: ad.AnnData, synthetic: ad.AnnData, label_key: str, n_per_type: int | None,
           seed: int) -> pd.DataFrame:  # fmt: skip
    """The UMAP table of equal numbers of real and generated cells per type: a PCA of the
    real cells' log-normalised values (the generated cells projected), then one UMAP. Both
    sides are normalised over the genes they share: a gene one side lacks would change its
    cells' library sizes and part cells that are alike."""
    import pandas as pd
    from sklearn.decomposition import PCA

    from ..data.qc import normalise_log1p

    (kr, rl), (ks, sl) = (labelled(real, label_key, "the real data"),
                          labelled(synthetic, label_key, "the synthetic data"))
    if not set(rl) & set(sl):
        raise no_shared_type(sorted(set(rl)), sorted(set(sl)), f"obs['{label_key}']")
    plan = equal_counts(pd.Series(rl).value_counts().to_dict(),
                        pd.Series(sl).value_counts().to_dict(), n_per_type)
    rng = np.random.default_rng(seed)
    ir, is_ = _pick(rl, plan, 0, rng), _pick(sl, plan, 1, rng)
    xr, gr, counts_r = _expression(real, kr[ir], "the real data")
    xs, gs, counts_s = _expression(synthetic, ks[is_], "the synthetic data")
    if counts_r != counts_s:  # counts normalised here beside values normalised elsewhere
        kind = {True: "raw counts", False: "normalised values only (no counts found)"}
        raise DataError(f"the real data hold {kind[counts_r]} and the synthetic data "
                        f"{kind[counts_s]}: give both sides as counts (or both log-normalised "
                        "alike), or they sit apart in the plot for that alone")
    genes = [g for g in gr if g in set(gs)]
    if len(genes) < 3 and len(genes) == len(gr) == len(gs):  # alike, but too few
        raise DataError(f"the cells hold {len(genes)} gene(s) (var_names); a UMAP needs at least "
                        "3 genes: give the cells' whole gene set (or more of it)")
    if len(genes) < 3:
        from ..data.genes import counts_naming_hint
        from ..data.io import find_counts

        hint = (counts_naming_hint(real, find_counts(real).counts, gr, gs, "real", "synthetic")
                or counts_naming_hint(synthetic, find_counts(synthetic).counts, gs, gr,
                                      "synthetic", "real"))
        raise DataError(f"the real and synthetic cells share {len(genes)} gene name(s){hint}; "
                        "a UMAP needs the same genes (var_names) on both sides")
    xr = xr[:, pd.Index(gr).get_indexer(genes)]
    xs = xs[:, pd.Index(gs).get_indexer(genes)]
    xr = normalise_log1p(xr, TARGET_SUM) if counts_r else xr
    xs = normalise_log1p(xs, TARGET_SUM) if counts_s else xs
    if xr.shape[0] < 4:
        raise DataError(f"{xr.shape[0]} real cells to embed; a UMAP needs at least 4")
    k = min(N_PCS, xr.shape[0] - 1, len(genes) - 1)
    pca = PCA(n_components=k, svd_solver="arpack", random_state=seed % 2**31).fit(xr)
    z = np.vstack([pca.transform(xr), pca.transform(xs)])
    import umap as umap_learn  # slow to import: only here

    emb = umap_learn.UMAP(n_neighbors=min(15, len(z) - 1), random_state=seed % 2**31,
                          n_jobs=1).fit_transform(z)
    return pd.DataFrame({
        "cell": [*real.obs_names[kr[ir]], *synthetic.obs_names[ks[is_]]],
        "origin": ["real"] * len(ir) + ["synthetic"] * len(is_),
        "label": [*rl[ir], *sl[is_]], "x": emb[:, 0], "y": emb[:, 1],
    })  # fmt: skip


def _table(source: Any, label_key: str | None) -> pd.DataFrame:
    """The UMAP table from a DataFrame or a path to ``features/umap.csv``."""
    import pandas as pd

    if isinstance(source, str | Path):
        path = expand_user(source, "the UMAP table")
        if path.is_dir():  # "does not exist" of a run directory that does
            table = path / "features" / "umap.csv"
            hint = (f"give its UMAP table, {table}" if table.is_file() else "give a run's "
                    "features/umap.csv (written with report.umap on), or the real and "
                    "synthetic AnnData")
            raise DataError(f"the UMAP table {path} is a directory; {hint}")
        if not path.is_file():
            raise DataError(f"the UMAP table {path} does not exist (or is not a file); give a "
                            "run's features/umap.csv, or the real and synthetic AnnData")
        with open(path, "rb") as fh:
            hdf5 = fh.read(8) == b"\x89HDF\r\n\x1a\n"
        if hdf5:  # an h5ad given where its cells were meant: pandas' UnicodeDecodeError
            raise DataError(f"{path} is an h5ad (HDF5) file, not a UMAP table: read it first "
                            "(cs.read) and give the real and synthetic AnnData with label_key")
        try:
            # the types as written: "01" and "1.10" are not the numbers 1 and 1.1
            df = pd.read_csv(path, converters=dict.fromkeys({"label", label_key or "label"}, str))
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"the UMAP table {path} is not a CSV table ({exc}); give a run's "
                            "features/umap.csv") from None
    else:
        df = source.copy()
    if label_key and label_key in df and "label" not in df:
        df = df.rename(columns={label_key: "label"})
    missing = [c for c in TABLE_COLUMNS if c not in df]
    if missing:
        raise DataError(f"the UMAP table lacks column(s) {missing}; it needs {list(TABLE_COLUMNS)} "
                        "(a run's features/umap.csv)")
    if df.empty:
        raise DataError("the UMAP table has no rows; give a run's features/umap.csv, or the real "
                        "and synthetic AnnData")
    for axis in ("x", "y"):  # text drew as categories, NaN as nothing: both silently
        values = pd.to_numeric(df[axis], errors="coerce")
        text = values.isna() & df[axis].notna()
        if text.any():
            raise DataError(f"the UMAP table's column {axis!r} holds {df[axis][text].iloc[0]!r}, "
                            "not a number; x and y are each cell's coordinates")
        df[axis] = values
    from ..data.labels import missing_labels

    drop = missing_labels(df["label"]) | ~np.isfinite(df[["x", "y"]].to_numpy(float)).all(axis=1)
    if drop.all():
        raise DataError(f"none of the UMAP table's {len(df)} rows has a label and finite x and "
                        "y; give a run's features/umap.csv, or the real and synthetic AnnData")
    if drop.any():  # as the AnnData path leaves cells without a label out
        logger.warning("the UMAP table: %d of %d rows have no label or no finite x, y and are "
                       "left out", int(drop.sum()), len(df))
        df = df[~drop].copy()
    df["origin"], df["label"] = df["origin"].astype(str), df["label"].astype(str)
    bad = sorted(set(df["origin"]) - {"real", "synthetic"})
    if bad:
        raise DataError(f"origin holds {bad}; it must be 'real' or 'synthetic'")
    return df


def _equalise(df: pd.DataFrame, n_per_type: int | None, seed: int) -> pd.DataFrame:
    """The table's rows drawn: :func:`equal_counts` of each origin per type."""
    import pandas as pd

    real, synth = df[df["origin"] == "real"], df[df["origin"] == "synthetic"]
    plan = equal_counts(real["label"].value_counts().to_dict(),
                        synth["label"].value_counts().to_dict(), n_per_type)
    rng = np.random.default_rng(seed)
    ir = _pick(real["label"].to_numpy(), plan, 0, rng)
    is_ = _pick(synth["label"].to_numpy(), plan, 1, rng)
    return pd.concat([real.iloc[ir], synth.iloc[is_]], ignore_index=True)


def _draw(df: pd.DataFrame, color: str, ax: Axes, colors: Mapping[str, Any]) -> None:
    """One panel: the cells coloured by origin or by type, the legend beside it (right), or
    over :data:`LEGEND_TYPES` types each type's name on its cells."""
    import pandas as pd
    from matplotlib.lines import Line2D

    size = float(np.clip(4000 / max(len(df), 1), 0.5, 12))
    origin = df["origin"].to_numpy()
    if color == "origin":
        c = np.where(origin == "synthetic", SYNTH_COLOR, REAL_COLOR)
        n = pd.Series(origin).value_counts()
        handles = [Line2D([], [], ls="", marker="o", color=col, label=f"{o} ({n.get(o, 0)})")
                   for o, col in (("real", REAL_COLOR), ("synthetic", SYNTH_COLOR))]
        title, ncol = "origin (cells)", 1
    else:
        c = [colors[t] for t in df["label"]]
        n = df.groupby(["label", "origin"]).size()
        handles = [Line2D([], [], ls="", marker="o", color=colors[t],
                          label=f"{short_label(t)} ({n.get((t, 'real'), 0)} · "
                                f"{n.get((t, 'synthetic'), 0)})")
                   for t in colors]
        title, ncol = "cell type (real · generated)", -(-len(colors) // 25)
    ax.scatter(df["x"], df["y"], s=size, c=c, linewidths=0, rasterized=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if color != "origin" and len(colors) > LEGEND_TYPES:
        # a legend of that many columns squeezed the panels into slivers, and beyond about
        # 120 types covered the next panel and its legend: each type named on its cells
        centres = df.groupby("label")[["x", "y"]].median()
        for t, (x, y) in centres.iterrows():
            ax.text(x, y, short_label(t, 24), fontsize=5, ha="center", va="center",
                    color="black", alpha=0.8)
        ax.set_title(f"by cell type ({len(colors)} types, each named at its cells' median)",
                     fontsize=10)
        return
    ax.set_title("by origin" if color == "origin" else "by cell type", fontsize=10)
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7,
              title=title, title_fontsize=8, ncol=ncol, frameon=False, markerscale=1.2)


@plot
def umap(
    real: ad.AnnData | pd.DataFrame | str | Path,
    synthetic: ad.AnnData | None = None,
    *,
    label_key: str | None = None,
    color: str | Sequence[str] = "origin",
    n_per_type: int | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    seed: int = 0,
) -> Axes | list[Axes] | None:
    """Real and generated cells in one UMAP, with equal numbers of each per cell type.

    Many generated cells of a type would swamp a handful of real ones, so each type shows as
    many generated as real cells (the smaller side's number); a type only one side holds
    shows that side's cells alone. Origin colours (real blue,
    generated orange) are never cell-type colours; each panel's legend stands beside it (over
    50 types, each type's name is written at its cells' median instead).

    Parameters
    ----------
    real
        The real cells (AnnData in memory: raw counts in ``X``, ``layers['counts']`` or
        ``raw.X``, else log-normalised ``X``), or a UMAP table already computed: a DataFrame
        or the path of a run's ``features/umap.csv`` (columns ``origin``, ``real`` or
        ``synthetic``; ``label``; ``x``, ``y``), with ``synthetic`` None.
    synthetic
        The generated cells (AnnData, like ``real``); None with a table.
    label_key
        The ``obs`` column holding the cell type (needed with AnnData); with a table, the
        column to read as ``label`` when it has no ``label`` column.
    color
        ``"origin"`` (real or generated; default), ``"label"`` (the cell type; the
        ``label_key`` name works too), or a list of them: one panel each, from one embedding.
    n_per_type
        Cells per type and origin at most; None: the smaller side's number (in all at most
        30,000 points, the largest types capped alike).
    ax
        The axes to draw into (a list of them for a list ``color``); None makes a new figure.
    {show_save}
    seed
        Seeds the subsample, the PCA and the UMAP.

    Returns
    -------
    Axes, list of Axes, or None
        The :class:`~matplotlib.axes.Axes` drawn into (a list for a list ``color``; None
        with ``show=True``).

    Notes
    -----
    From AnnData the genes both hold are used: each cell scaled to 10,000 counts and
    log1p-transformed, a PCA (30 components) fitted on the real cells drawn and the generated
    cells projected into it, then one UMAP (``umap-learn``) of both.
    """
    seed = checked_seed(seed)
    if n_per_type is not None:
        n_per_type = checked_whole(n_per_type, "n_per_type")
    if label_key is not None and not isinstance(label_key, str):
        raise DataError(f"label_key takes the name of one obs column (a string such as "
                        f"'cell_type'), not {type(label_key).__name__} {label_key!r}")
    if not isinstance(color, str) and not isinstance(color, Sequence):
        raise DataError(f"color takes 'origin', 'label' (the cell type) or a list of them, not "
                        f"{type(color).__name__} {color!r}")
    colors_wanted = [color] if isinstance(color, str) else list(color)
    names = {"origin", "label", *([label_key] if label_key else [])}
    bad = [c for c in colors_wanted if c not in names]
    if bad or not colors_wanted:
        raise DataError(f"color {bad or color!r} unknown; give 'origin', 'label' (the cell "
                        "type) or a list of them")
    kinds = ["origin" if c == "origin" else "label" for c in colors_wanted]
    axs = axes_list(ax, len(kinds), "color") if ax is not None else None  # before the UMAP
    import pandas as pd

    if isinstance(real, pd.DataFrame | str | Path):
        if synthetic is not None:
            raise DataError("give a UMAP table alone (synthetic=None), or two AnnData objects")
        df = _equalise(_table(real, label_key), n_per_type, seed)
    else:
        if synthetic is None or label_key is None:
            raise DataError("give the real and synthetic AnnData objects and label_key (the obs "
                            "column of the cell type)")
        need_cells(real, "real")
        need_cells(synthetic, "synthetic")
        df = _embed(real, synthetic, label_key, n_per_type, seed)
    df = df.sample(frac=1.0, random_state=seed % 2**32)  # draw order: no origin hides the other
    types = sorted(df["label"].unique())
    palette = dict(zip(types, type_colors(len(types)), strict=True))
    many = not isinstance(color, str)
    if axs is None:
        import matplotlib.pyplot as plt

        _, grid = plt.subplots(1, len(kinds), figsize=(7.0 * len(kinds), 5.5),
                               layout="constrained", squeeze=False)
        axs = list(grid[0])
    for a, kind in zip(axs, kinds, strict=True):
        _draw(df, kind, a, palette)
    return finish(axs if many else axs[0], show, save)
