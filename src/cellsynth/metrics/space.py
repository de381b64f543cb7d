"""One evaluation space for every fidelity and utility metric, fitted on real training cells only.

Counts are normalised to ``target_sum`` counts per cell and log1p-transformed (all genes, sparse);
the highly variable genes (HVGs) are ranked by normalised dispersion on the real training cells;
a PCA on the HVGs gives the low-dimensional space (30 PCs by default) that the distribution
metrics (C2ST, MMD, energy distance, k-NN precision/recall) and the utility classifiers use.
Fitting on real training cells only keeps held-out real cells and generated cells out of the
space they are scored in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import FeaturesConfig
from ..data.csr import stack_rows
from ..data.qc import normalise_log1p
from ..data.store import MatrixRows
from ..errors import DataError
from ..features.pca import PCAModel, fit_pca

logger = logging.getLogger(__name__)

#: cells per chunk when normalising and projecting
CHUNK = 10_000
#: bins of mean expression within which dispersions are z-scored (Seurat's flavour uses 20)
N_BINS = 20


def as_csr(x: Any, n_genes: int | None = None, *, what: str = "counts") -> sp.csr_matrix:
    """``x`` (sparse or dense, cells x genes) as float32 CSR, checking the gene count."""
    out = sp.csr_matrix(x, dtype=np.float32)
    if n_genes is not None and out.shape[1] != n_genes:
        raise DataError(
            f"{what} have {out.shape[1]} genes but {n_genes} were expected (the real data's genes, "
            "EvalSpace.genes); give the same genes in the same order"
        )
    return out


def paired_labels(real_labels: Any, synth_labels: Any, n_real: int, n_synth: int
                  ) -> tuple[np.ndarray, np.ndarray, bool]:  # fmt: skip
    """Each side's cell types as strings, checked: both given or neither (then every cell of a
    side has one type), one per cell; and whether they were given."""
    if (real_labels is None) != (synth_labels is None):
        raise DataError("give both real_labels and synth_labels, or neither")
    labelled = real_labels is not None
    rl = np.asarray(real_labels if labelled else np.zeros(n_real)).astype(str)
    sl = np.asarray(synth_labels if labelled else np.zeros(n_synth)).astype(str)
    if len(rl) != n_real or len(sl) != n_synth:
        raise DataError(f"{len(rl)} labels for {n_real} real cells and {len(sl)} for "
                        f"{n_synth} synthetic cells; give one label per cell")
    return rl, sl, labelled


def _sums(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene sum and sum of squares of a sparse matrix, float64, without densifying it."""
    return (np.asarray(x.sum(axis=0), dtype=np.float64).ravel(),
            np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel())


def _mean_var(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (population) variance from :func:`_sums` over ``n`` cells."""
    mean = total / n
    return mean, np.maximum(total_sq / n - mean**2, 0.0)


def _lognorm_hvg(counts: sp.csr_matrix, hvg: np.ndarray, target_sum: float) -> sp.csr_matrix:
    """log1p(counts per ``target_sum``) of the columns ``hvg``, each cell normalised by all of
    its genes (so a gene subset is normalised as the whole is)."""
    return normalise_log1p(counts, target_sum)[:, hvg]


def normalised_dispersion(x: sp.csr_matrix, n_bins: int = N_BINS) -> np.ndarray:
    """Seurat-style normalised dispersion of each gene of log-normalised data ``x``.

    The dispersion ``variance / mean`` is log-transformed, genes are binned by mean into
    ``n_bins`` equal-width bins, and each log-dispersion is z-scored within its bin. A bin with
    one gene gives that gene 1 (as scanpy does); genes never detected get ``-inf``.
    """
    return _dispersion(*_mean_var(*_sums(x), x.shape[0]), n_bins)


def _dispersion(mean: np.ndarray, var: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """:func:`normalised_dispersion` from each gene's mean and (population) variance."""
    expressed = mean > 0
    out = np.full(len(mean), -np.inf)
    if not expressed.any():
        return out
    m = mean[expressed]
    disp = np.log(np.maximum(var[expressed], 1e-12) / m)
    edges = np.linspace(m.min(), m.max(), n_bins + 1)
    bins = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, n_bins - 1)
    norm = np.empty_like(disp)
    for b in np.unique(bins):
        sel = bins == b
        d = disp[sel]
        if sel.sum() == 1:
            norm[sel] = 1.0
            continue
        sd = d.std(ddof=1)
        norm[sel] = (d - d.mean()) / sd if sd > 0 else 0.0
    out[expressed] = norm
    return out


@dataclass
class EvalSpace:
    """Log-normalisation, HVGs and PCA fitted on real training cells."""

    genes: list[str]  # every gene of the real data, in order: inputs must have these columns
    hvg: np.ndarray  # (n_hvg,) sorted column indices of the highly variable genes
    pca: PCAModel  # PCA of log1p(counts per target_sum) on the HVGs
    target_sum: float = 1e4  # counts per cell before log1p

    @property
    def n_pcs(self) -> int:
        return self.pca.n_components

    def lognorm(self, counts: Any) -> sp.csr_matrix:
        """log1p(counts / library size * target_sum) on all genes, sparse float32."""
        x = as_csr(counts, len(self.genes))
        if x.shape[0] <= CHUNK:
            return normalise_log1p(x, self.target_sum)
        parts = [normalise_log1p(x[s : s + CHUNK], self.target_sum)
                 for s in range(0, x.shape[0], CHUNK)]
        return stack_rows(parts)

    def embed(self, counts: Any) -> np.ndarray:
        """Cells in PCA space, ``(n_cells, n_pcs)`` float32, computed chunk by chunk."""
        x = as_csr(counts, len(self.genes))
        out = np.empty((x.shape[0], self.n_pcs), dtype=np.float32)
        for s in range(0, x.shape[0], CHUNK):
            block = _lognorm_hvg(x[s : s + CHUNK], self.hvg, self.target_sum)
            out[s : s + CHUNK] = self.pca.transform(block)
        return out


def fit_space(
    real_train_counts: Any,
    labels: Any,
    genes: list[str],
    *,
    rows: np.ndarray | None = None,
    n_hvg: int = 2000,
    n_pcs: int = 30,
    target_sum: float = 1e4,
    max_cells_per_class: int = 1_000_000,
    seed: int = 0,
) -> EvalSpace:
    """Fit the evaluation space on real training counts, reading them ``CHUNK`` cells at a time.

    One pass sums each gene's log-normalised values and squares for the dispersions; the PCA
    then reads the highly variable genes of its subsample (normalised by every gene's total)
    block by block. Memory is a few chunks plus the HVG subsample, never the whole matrix.

    Parameters
    ----------
    real_train_counts
        Raw counts, cells x genes: a matrix in memory (sparse or dense; kept sparse), or rows
        on disk readable by sorted positions with ``take(positions)`` and with a ``shape``
        (e.g. :class:`~cellsynth.data.store.RowStore`).
    labels
        Cell type of each cell used; the PCA is fitted on at most ``max_cells_per_class`` of
        each.
    genes
        Gene names, one per column.
    rows
        Sorted positions of the training cells in ``real_train_counts`` (default: every row).
    n_hvg
        Highly variable genes kept (clamped to the number of genes), ranked by
        :func:`normalised_dispersion` of the log-normalised training data.
    n_pcs
        Principal components (fewer where the cells or genes allow fewer, said in the log).
    target_sum
        Counts per cell before log1p.
    max_cells_per_class
        Class-balanced cap on the cells the PCA is fitted on; the default keeps every cell of
        any realistic dataset.
    seed
        Seeds the PCA subsample (and the randomized SVD for very wide inputs).
    """
    x = real_train_counts
    if sp.issparse(x) or isinstance(x, np.ndarray) or not hasattr(x, "take"):  # in memory
        x = MatrixRows(as_csr(x))
    rows = np.arange(x.shape[0]) if rows is None else rows
    rows = np.asarray(rows, dtype=np.int64)
    labels = np.asarray(labels).astype(str)
    if len(rows) != len(labels) or x.shape[1] != len(genes):
        raise DataError(
            f"counts are {len(rows)} cells x {x.shape[1]} genes but {len(labels)} labels and "
            f"{len(genes)} gene names were given; they must match"
        )
    if len(rows) < 3:
        raise DataError(f"the evaluation space needs at least 3 training cells, got {len(rows)}")
    n_hvg = min(int(n_hvg), x.shape[1])
    if n_hvg < 1:
        raise DataError(f"n_hvg must be at least 1, got {n_hvg}")
    total = np.zeros(x.shape[1])
    total_sq = np.zeros(x.shape[1])
    for start in range(0, len(rows), CHUNK):
        block = as_csr(x.take(rows[start : start + CHUNK]))
        if block.data.size and block.data.min() < 0:
            raise DataError("counts must be non-negative; give raw counts, not normalised values")
        block_sum, block_sq = _sums(normalise_log1p(block, target_sum))
        total += block_sum
        total_sq += block_sq
    disp = _dispersion(*_mean_var(total, total_sq, len(rows)))
    order = np.argsort(-disp, kind="stable")  # ties keep gene order: deterministic
    hvg = np.sort(order[:n_hvg])
    n_fit = int(np.minimum(np.unique(labels, return_counts=True)[1], max_cells_per_class).sum())
    if n_pcs > (most := max(1, min(n_fit - 1, n_hvg))):  # not features.n_components: said here
        logger.info("evaluation space: %d PCs, not %d: fitted on %d cells, %d genes", most,
                    n_pcs, n_fit, n_hvg)  # fmt: skip
        n_pcs = most
    cfg = FeaturesConfig(n_components=n_pcs, max_cells_per_class=max_cells_per_class, scale=False)
    hvg_genes = [str(genes[i]) for i in hvg]
    pca = fit_pca(_HVGs(x, hvg, target_sum), labels, hvg_genes, cfg, seed=seed, rows=rows)
    logger.info("evaluation space: %d cells, %d of %d genes as HVGs, %d PCs (%.1f%% variance)",
                len(rows), n_hvg, x.shape[1], pca.n_components,
                100 * float(pca.explained_variance_ratio.sum()))
    return EvalSpace([str(g) for g in genes], hvg, pca, float(target_sum))


class _HVGs:
    """:func:`_lognorm_hvg` of the rows of ``x`` as they are read."""

    def __init__(self, x: Any, hvg: np.ndarray, target_sum: float):
        self.x, self.hvg, self.target_sum = x, hvg, target_sum
        self.shape = (x.shape[0], len(hvg))

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        return _lognorm_hvg(as_csr(self.x.take(rows)), self.hvg, self.target_sum)
