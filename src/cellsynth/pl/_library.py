"""``cs.pl.library_sizes``: counts per cell, real beside synthetic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, listed
from ..options import log_scale
from ..seeds import checked_whole
from ._common import (
    REAL_COLOR,
    SYNTH_COLOR,
    axes,
    finish,
    labelled,
    need_cells,
    no_shared_type,
    plot,
    short_label,
)

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

#: histogram bins at most (more than a figure of any sensible width has pixels)
MAX_BINS = 1000

#: cell types drawn as box pairs at most (those with the most real cells): each takes 0.6 inch,
#: and 1,200 types made a figure 720 inches wide
MAX_BOX_TYPES = 60


def _counts(adata: ad.AnnData, what: str) -> tuple[Any, list[str], Any]:
    """``adata``'s raw counts (``X``, ``layers['counts']`` or ``raw.X``), their gene names and
    where they were found."""
    from ..data.io import counts_matrix, find_counts

    need_cells(adata, what)
    if adata.n_obs == 0:
        raise DataError(f"{what} has no cells; give cells to plot their library sizes")
    if getattr(adata, "isbacked", False):
        raise DataError(f"{what} is backed; give a subsample in memory (adata[idx].to_memory())")
    try:
        expr = find_counts(adata)
    except DataError as exc:  # "X holds NaN" alone does not say of which side
        raise DataError(f"{what}: {exc}") from None
    if expr.counts is None:  # what the values look like names no side: said here
        note = expr.for_counts()
        raise (DataError(f"{what}: {note}{expr.elsewhere}") if note else expr.no_counts(
            f"{what} holds normalised values and no raw counts (layers['counts'] or raw.X); "
            "library sizes are counts per cell"))
    x, genes = counts_matrix(adata, expr)
    from ..data.genes import check_gene_names

    # a name twice or blank: its genes were summed or left out by name without a word
    check_gene_names(genes, what, raw=expr.counts == "raw.X")
    return x, list(map(str, genes)), expr.counts


def _totals(real: ad.AnnData, synthetic: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Counts per cell of each side over the genes both hold, as :func:`cellsynth.evaluate`
    reads library sizes: a gene one side lacks (a generator of the HVGs beside the whole
    atlas) would make that side's libraries smaller for that alone."""
    (xr, gr, vr), (xs, gs, vs) = (_counts(real, "the real data"),
                                  _counts(synthetic, "the synthetic data"))
    shared = set(gr) & set(gs)
    for side, genes in (("real", gr), ("synthetic", gs)):
        if not genes:  # "share no gene name" of a side that holds no gene at all
            raise DataError(f"the {side} data hold no gene (var_names is empty): library sizes "
                            "are counts per cell over its genes; give the cells with their genes")
    if not shared:
        from ..data.genes import counts_naming_hint

        hint = (counts_naming_hint(real, vr, gr, gs, "real", "synthetic")
                or counts_naming_hint(synthetic, vs, gs, gr, "synthetic", "real"))
        raise DataError(f"the real and synthetic cells share no gene name{hint}; library sizes "
                        "are compared over the genes both hold: give both sides the same gene "
                        "names (var_names)")
    if len(shared) < max(len(gr), len(gs)):
        logger.warning("library sizes over the %d genes both sides hold (real %d, synthetic %d)",
                       len(shared), len(gr), len(gs))

    def total(x: Any, genes: list[str]) -> np.ndarray:
        if len(shared) < len(genes):
            x = x[:, np.flatnonzero([g in shared for g in genes])]
        return np.asarray(x.sum(axis=1), dtype=np.float64).ravel()

    return total(xr, gr), total(xs, gs)


@plot
def library_sizes(
    real: ad.AnnData,
    synthetic: ad.AnnData,
    *,
    label_key: str | None = None,
    bins: int = 40,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes | None:
    """Counts per cell (library size) of real and synthetic cells, on a log scale.

    Without ``label_key``: the two distributions as overlaid histograms. With it: per cell
    type (those both hold; a warning names the others), the real and synthetic box plots side
    by side (at most :data:`MAX_BOX_TYPES`, those with the most real cells; a warning says how
    many are left out). Both add 1 to each cell's counts, so that a cell without a count shows on the log
    axis. Counts are summed over the genes both sides hold (a warning says so when one side
    has genes the other lacks), as :func:`cellsynth.evaluate` reads library sizes.

    Parameters
    ----------
    real, synthetic
        AnnData objects in memory with raw counts in ``X``, ``layers['counts']`` or ``raw.X``.
    label_key
        The ``obs`` column holding the cell type; None pools every cell.
    bins
        Histogram bins (without ``label_key``), 1 to 1,000.
    {ax}
    {show_save}

    Returns
    -------
    Axes or None
        The :class:`~matplotlib.axes.Axes` drawn into (None with ``show=True``).
    """
    if checked_whole(bins, "bins") > MAX_BINS:  # 10^6 drew for two minutes, 10^9 hung
        raise DataError(f"bins must be at most {MAX_BINS:,} (a histogram {MAX_BINS:,} bins wide "
                        f"is wider than the figure has pixels), got {bins:,}")
    r, s = _totals(real, synthetic)
    if label_key is None:
        ax = axes(ax, (6.0, 3.8))
        lr, ls = np.log10(r + 1), np.log10(s + 1)
        edges = np.histogram_bin_edges(np.concatenate([lr, ls]), bins=bins)
        for values, color, name in ((lr, REAL_COLOR, "real"), (ls, SYNTH_COLOR, "synthetic")):
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.5,
                    color=color, label=f"{name} ({len(values)} cells)")
        ax.set_xlabel("log10(counts per cell + 1)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        return finish(ax, show, save)
    (kr, rl), (ks, sl) = (labelled(real, label_key, "the real data"),
                          labelled(synthetic, label_key, "the synthetic data"))
    r, s = r[kr] + 1, s[ks] + 1  # + 1 as the histogram: a cell of no count had no place on a log axis
    types = sorted(set(rl) & set(sl))  # by name; above MAX_BOX_TYPES the largest
    if not types:
        raise no_shared_type(sorted(set(rl)), sorted(set(sl)), f"obs['{label_key}']")
    for side, own in (("real", set(rl) - set(sl)), ("synthetic", set(sl) - set(rl))):
        if own:  # a type the generator missed had no box and no word
            logger.warning("library sizes: %d type(s) only the %s cells hold have no box: %s",
                           len(own), side, listed(sorted(own), 10, quote=True))
    if len(types) > MAX_BOX_TYPES:  # 1,200 types drew a PNG 106,697 pixels wide
        counts = {t: int(k) for t, k in zip(*np.unique(rl, return_counts=True), strict=True)}
        kept = sorted(sorted(types, key=lambda t: (-counts[t], t))[:MAX_BOX_TYPES])
        logger.warning("library sizes: %d types both sides hold, drawn: the %d with the most "
                       "real cells (%d left out); to draw others, give a subset, e.g. "
                       "real[real.obs['%s'].isin([...])]", len(types), MAX_BOX_TYPES,
                       len(types) - MAX_BOX_TYPES, label_key)  # fmt: skip
        types = kept
    ax = axes(ax, (max(6.0, 0.6 * len(types) + 2.0), 4.0))
    pos = np.arange(len(types), dtype=float)
    for values, labels, color, shift in ((r, rl, REAL_COLOR, -0.2), (s, sl, SYNTH_COLOR, 0.2)):
        data = [values[labels == t] for t in types]
        box = ax.boxplot(data, positions=pos + shift, widths=0.35, patch_artist=True,
                         showfliers=False)
        for patch in box["boxes"]:
            patch.set_facecolor(color)
    log_scale(ax, "y")  # plain labels: matplotlib's mathtext ones read as spelled here
    ax.set_xticks(pos, [short_label(t) for t in types], rotation=45, ha="right")
    ax.set_ylabel("counts per cell + 1")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=REAL_COLOR, label="real"),
                       Patch(color=SYNTH_COLOR, label="synthetic")], fontsize=8)
    return finish(ax, show, save)
