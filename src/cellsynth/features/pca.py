"""PCA fitted on a class-balanced training subsample, applied chunk by chunk.

The sparse matrix is never densified: centring (and optional scaling) is implicit. Small gene
panels use the exact covariance eigendecomposition; wide panels fitted on few cells the exact
eigendecomposition of the cells' Gram matrix ``Xc Xc^T`` (components ``Xc^T U / s``); the rest a
randomized SVD whose products with the centred matrix are computed as ``X @ Q - 1 (mu @ Q)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..config import FeaturesConfig
from ..data.io import check_gene_names
from ..data.qc import GeneMoments
from ..data.split import balanced_subsample
from ..data.store import MatrixRows
from ..errors import DataError, ModelFileError
from ..options import progress_bar
from ..outputs import save_tensors

logger = logging.getLogger(__name__)

#: gene panels up to this size use the exact covariance eigendecomposition
EXACT_MAX_GENES = 6000
#: wider panels fitted on at most this many cells use the exact cell-by-cell Gram matrix...
EXACT_MAX_CELLS = 8000
#: ...when the components are at least this share of the cells (for fewer, the randomized SVD's
#: passes cost less than the Gram matrix: 50 PCs of 6,435 cells x 12,948 genes, 38 s exact)
GRAM_MIN_SHARE = 0.1
_GRAM_MAX_VALUES = 150_000_000  # ...when the dense centred subsample (float64) is at most 1.2 GB


@dataclass
class PCAModel:
    """Loadings and the centring/scaling they apply to."""

    components: np.ndarray  # (n_components, n_genes) float32, rows are PCs
    mean: np.ndarray  # (n_genes,)
    scale: np.ndarray | None  # (n_genes,) standard deviations when scaling, else None
    explained_variance: np.ndarray  # (n_components,)
    explained_variance_ratio: np.ndarray  # (n_components,)
    genes: list[str]

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def transform(self, x, *, chunk_size: int = 10_000, out: np.ndarray | None = None) -> np.ndarray:
        """Project cells (genes as fitted) to PCA space, ``chunk_size`` rows at a time.

        ``x`` is anything sliced by rows into sparse or dense blocks whose columns are
        :attr:`genes` in order: a matrix, or cells on disk (``PreprocessedStore.normalised``
        normalises them as they are read); or an AnnData of values normalised as the features
        stage's (log1p of counts per 10,000), whose ``var_names`` are matched to :attr:`genes`
        by name (reordered, other genes left out; a missing gene is refused). ``out`` receives
        the ``(n_cells, n_components)`` float32 result, e.g. an ``np.lib.format.open_memmap``
        ``.npy`` file when it should not be held in memory; a new array by default.
        """
        x = self._aligned(x)
        w = self.components.T.astype(np.float32)  # (G, k)
        mu = self.mean
        if self.scale is not None:
            w = w / self.scale[:, None].astype(np.float32)
        offset = (mu @ w).astype(np.float32)  # (k,)
        shape = (x.shape[0], self.n_components)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, the projection {shape}")
        starts = range(0, x.shape[0], chunk_size)
        for start in progress_bar(starts, desc="PCA transform", unit="chunk"):
            block = x[start : start + chunk_size]
            prod = block @ w  # (chunk, k)
            out[start : start + chunk_size] = np.asarray(prod) - offset
        return out

    def columns(self, names: Any) -> np.ndarray:
        """Where each of :attr:`genes` stands among the gene ``names`` of some cells (their
        columns to project, in the fitted order); duplicate names or a missing gene refused."""
        names = pd.Index(map(str, names))
        check_gene_names(names, "the data to project")
        idx = names.get_indexer(self.genes)
        if (idx < 0).any():
            gone = [g for g, i in zip(self.genes, idx, strict=True) if i < 0]
            raise DataError(f"{len(gone)} of the {len(self.genes)} genes the PCA was fitted on "
                            f"are not in the data's var_names (e.g. {', '.join(gone[:5])}): "
                            "give cells with the genes of the run's features (pca.genes)")
        return idx

    def _aligned(self, x: Any) -> Any:
        """``x``'s columns as :attr:`genes`: an AnnData realigned by its gene names, a matrix
        checked (its columns cannot be told apart by name)."""
        n = len(self.genes)
        if hasattr(x, "var_names") and hasattr(x, "X"):  # an AnnData: by name
            values = x.X[:, self.columns(x.var_names)]
            sample = values[: min(500, values.shape[0])]
            sample = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
            if sample.size and np.all(sample == np.round(sample)) and sample.max() > 30:
                logger.warning("the AnnData's X looks like raw counts (whole numbers up to %.0f); "
                               "the PCA was fitted on log1p of counts per 10,000: normalise "
                               "them first (sc.pp.normalize_total(target_sum=1e4), "
                               "sc.pp.log1p)", float(sample.max()))
            return values
        if getattr(x, "ndim", 2) != 2 or not hasattr(x, "shape"):
            raise DataError(f"give cells x genes as a 2-d matrix or an AnnData, not a "
                            f"{type(x).__name__} of shape {getattr(x, 'shape', None)} (one cell: "
                            "x.reshape(1, -1))")
        if x.shape[1] != n:
            raise DataError(f"the PCA was fitted on {n} genes, the data has {x.shape[1]}: give "
                            "the columns of its genes in order (pca.genes), or an AnnData, "
                            "whose genes are matched by name")
        return x

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Carry PCA points back to (normalised) gene space: ``z @ W + mu``."""
        x = z @ self.components
        if self.scale is not None:
            x = x * self.scale
        return (x + self.mean).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "components": np.ascontiguousarray(self.components, dtype=np.float32),
            "mean": self.mean.astype(np.float32),
            "explained_variance": self.explained_variance.astype(np.float32),
            "explained_variance_ratio": self.explained_variance_ratio.astype(np.float32),
        }
        if self.scale is not None:
            tensors["scale"] = self.scale.astype(np.float32)
        save_tensors(save_file, tensors, directory / "pca.safetensors")
        (directory / "genes.json").write_text(json.dumps(self.genes))

    @classmethod
    def load(cls, directory: str | Path, fix: str = "re-run the features stage") -> PCAModel:
        """Read :meth:`save`'s files, checked: a missing, damaged or edited one (loadings of
        another shape, a genes.json that is no list of names) is one :class:`ModelFileError`
        that names it and says ``fix``."""
        directory = Path(directory)
        for name in ("pca.safetensors", "genes.json"):
            if not (directory / name).is_file():
                raise ModelFileError(f"{directory / name} is missing; {fix}")
        try:
            t = load_file(str(directory / "pca.safetensors"))
            genes = json.loads((directory / "genes.json").read_text())
            if not isinstance(genes, list) or not all(isinstance(g, str) for g in genes):
                raise ValueError("genes.json must hold a list of gene names")
            w, n = t["components"], len(genes)
            if (w.ndim != 2 or w.shape[1] != n or t["mean"].shape != (n,)
                    or any(t[k].shape != (w.shape[0],)
                           for k in ("explained_variance", "explained_variance_ratio"))
                    or t.get("scale", np.ones(n)).shape != (n,)):  # fmt: skip
                raise ValueError(f"the arrays of pca.safetensors do not fit the {n} genes of "
                                 "genes.json")
        except (SafetensorError, KeyError, ValueError) as exc:  # JSON's and Unicode's too
            why = f"it lacks {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelFileError(f"{directory} holds no readable PCA ({why}); {fix}") from None
        return cls(t["components"], t["mean"], t.get("scale"), t["explained_variance"],
                   t["explained_variance_ratio"], genes)


#: rows of the subsample densified / multiplied at once
_BLOCK_ROWS = 4096

#: power iterations of the randomized SVD (each one pass over the rows, plus one at the end)
_N_ITER = 4

#: a fresh iterator over the subsample's rows as float64 blocks, in the same order every call
Blocks = Callable[[], Iterator[sp.csr_matrix | np.ndarray]]


def _as_float64(block) -> sp.csr_matrix | np.ndarray:
    if sp.issparse(block):
        return sp.csr_matrix(block, dtype=np.float64)
    return np.asarray(block, dtype=np.float64)


def _scaled(blocks: Blocks, scale: np.ndarray) -> Blocks:
    inv = 1.0 / scale

    def it():
        for b in blocks():
            yield sp.csr_matrix(b.multiply(inv[None, :])) if sp.issparse(b) else b * inv
    return it


def _exact(blocks: Blocks, n: int, g: int, mean: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    gram = np.zeros((g, g))
    for block in blocks():  # dense BLAS on one block of rows at a time
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        gram += block.T @ block
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    evals, evecs = _top_eigenpairs(cov, k)
    return evecs.T, evals


def _top_eigenpairs(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of the symmetric ``a`` (descending, clipped at 0) and their
    eigenvectors as columns; only those are computed when ``k`` is under half the size."""
    m = a.shape[0]
    if k < m // 2:
        evals, evecs = scipy.linalg.eigh(a, subset_by_index=[m - k, m - 1], driver="evr")
    else:
        evals, evecs = scipy.linalg.eigh(a, driver="evd")
    order = np.argsort(evals)[::-1][:k]
    return np.maximum(evals[order], 0), evecs[:, order]


def _exact_cells(blocks: Blocks, n: int, g: int, mean: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` components from the eigendecomposition of the ``(n, n)`` Gram matrix of the
    centred cells: ``Xc Xc^T = U S^2 U^T`` and the components are ``Xc^T U / S``."""
    xc = np.empty((n, g))
    row = 0
    for block in blocks():
        m = block.shape[0]
        xc[row : row + m] = block.toarray() if sp.issparse(block) else block
        row += m
    xc -= mean
    evals, u = _top_eigenpairs(xc @ xc.T, k)
    s = np.sqrt(evals)
    comps = (xc.T @ u).T / np.where(s > 0, s, 1.0)[:, None]  # (k, g); zero where s = 0
    return comps, evals / max(n - 1, 1)


def _randomized(blocks: Blocks, n: int, g: int, mean: np.ndarray, k: int,
                rng: np.random.Generator, n_iter: int = 4,
                oversample: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Randomized SVD (range finder with ``n_iter`` power iterations) of ``Xc = X - 1 mu^T``.

    One pass over the rows per iteration, and no (cells x ell) matrix: an orthonormal basis of
    ``range(Xc W)`` is ``Q = Xc W T`` with ``T`` whitening ``(Xc W)^T (Xc W) = W^T (Xc^T Xc W)``,
    so ``Xc^T Q = (Xc^T Xc W) T`` needs only the (genes x ell) product summed over row blocks.
    The subspaces are those of the textbook QR iteration on ``Xc W``.
    """
    ell = min(k + oversample, min(n, g))

    def cov_times(w: np.ndarray) -> np.ndarray:  # Xc^T Xc W, (g, ell)
        out, col, shift = np.zeros((g, w.shape[1])), np.zeros(w.shape[1]), mean @ w
        for block in blocks():
            y = np.asarray(block @ w) - shift  # (rows, ell): rows of Xc W
            out += np.asarray(block.T @ y)
            col += y.sum(axis=0)
        return out - np.outer(mean, col)

    def range_basis_t(w: np.ndarray) -> np.ndarray:  # Xc^T Q, Q orthonormal with range(Xc W)
        cw = cov_times(w)
        gram = w.T @ cw
        lam, u = np.linalg.eigh((gram + gram.T) / 2)
        keep = lam > max(lam[-1], 0.0) * 1e-12  # drop directions Xc does not reach
        return cw @ (u[:, keep] / np.sqrt(lam[keep]))

    w = rng.standard_normal((g, ell))
    for _ in range(n_iter):
        w, _ = np.linalg.qr(range_basis_t(w))
    _, s, vt = np.linalg.svd(range_basis_t(w).T, full_matrices=False)  # svd of Q^T Xc
    if vt.shape[0] < k:  # the data have lower rank: the missing components are zero
        logger.warning("the PCA subsample has rank %d < %d components: the rest are zero",
                       vt.shape[0], k)
        vt = np.vstack([vt, np.zeros((k - vt.shape[0], g))])
        s = np.concatenate([s, np.zeros(k - s.shape[0])])
    return vt[:k], (s[:k] ** 2) / max(n - 1, 1)


def fit_pca(
    x, labels: np.ndarray, genes: list[str], cfg: FeaturesConfig, *, seed: int,
    rows: np.ndarray | None = None, cache_bytes: int = 1 << 30,
) -> PCAModel:  # fmt: skip
    """Fit PCA on at most ``cfg.max_cells_per_class`` cells of each class of ``labels``.

    The number of components is clamped to what the subsample allows, with a warning.

    Parameters
    ----------
    x
        The cells: a matrix in memory (sparse or dense), or rows readable by sorted positions
        with ``take(positions)`` and a ``shape``, e.g. ``Cells.normalised`` of cells on disk,
        normalised as they are read. Either way the subsample is read a block at a time.
    labels
        Labels of the cells ``rows`` (default: every row of ``x``), e.g. the training cells.
    genes
        Gene names, one per column.
    cfg
        ``n_components``, ``max_cells_per_class`` and ``scale``.
    seed
        Seeds the subsample and the randomized SVD.
    rows
        Sorted positions in ``x`` of the cells ``labels`` describes.
    cache_bytes
        The subsample is kept in memory after the first pass when it is smaller than this;
        otherwise every pass (2 for the exact method, 6 for the randomized one) reads it again.
    """
    if isinstance(x, np.ndarray) or sp.issparse(x):
        x = MatrixRows(x)
    rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) != len(labels) or np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be sorted, unique positions, one per label")
    chosen = rows[balanced_subsample(labels, cfg.max_cells_per_class, seed=seed)]
    return _fit(_ReadBlocks(x, chosen, cache_bytes), len(chosen), x.shape[1], genes, cfg, seed)


class _ReadBlocks:
    """Rows ``chosen`` of ``x`` as float64 blocks; held in memory after a full pass if small."""

    def __init__(self, x, chosen: np.ndarray, cache_bytes: int):
        self.x, self.chosen, self.cache_bytes = x, chosen, cache_bytes
        self.cache: list | None = None

    def __call__(self) -> Iterator[sp.csr_matrix | np.ndarray]:
        if self.cache is not None:
            yield from self.cache
            return
        kept: list | None = []
        held = 0
        for start in range(0, len(self.chosen), _BLOCK_ROWS):
            block = _as_float64(self.x.take(self.chosen[start : start + _BLOCK_ROWS]))
            held += _nbytes(block)
            if kept is not None and held <= self.cache_bytes:
                kept.append(block)
            else:
                kept = None
            yield block
        self.cache = kept


def _nbytes(block) -> int:
    if sp.issparse(block):
        return block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
    return block.nbytes


def _counted(blocks: Blocks, bar) -> Blocks:
    """``blocks``, advancing ``bar`` by the rows of each block as it is read."""

    def it():
        for block in blocks():
            yield block
            bar.update(block.shape[0])
    return it


def _fit(blocks: Blocks, n: int, g: int, genes: list[str], cfg: FeaturesConfig,
         seed: int) -> PCAModel:
    k = cfg.n_components
    limit = min(n - 1, g)
    if k > limit:
        logger.warning("features.n_components=%d is more than the data allow (%d cells, %d genes): "
                       "using %d", k, n, g, limit)
        k = limit
    if g <= EXACT_MAX_GENES:
        method = "exact covariance"
    elif n <= EXACT_MAX_CELLS and n * g <= _GRAM_MAX_VALUES and k >= GRAM_MIN_SHARE * n:
        method = "exact Gram"
    else:
        method = "randomized SVD"
    # moments, then the covariance or Gram matrix, or the power iterations + 1
    n_passes = 2 + _N_ITER if method == "randomized SVD" else 2
    bar = progress_bar(total=n * n_passes, desc="PCA fit", unit="row", unit_scale=True)  # fmt: skip
    blocks = _counted(blocks, bar)
    moments = GeneMoments(g)
    for block in blocks():
        moments.add(block)
    mean, var = moments.sum / n, moments.variance()
    scale = None
    if cfg.scale:
        scale = np.sqrt(var)
        scale[scale == 0] = 1.0
        blocks = _scaled(blocks, scale)
        mean = mean / scale
        var = var / scale**2
    total_var = var.sum() * n / max(n - 1, 1)
    if method == "exact covariance":
        comps, ev = _exact(blocks, n, g, mean, k)
    elif method == "exact Gram":
        comps, ev = _exact_cells(blocks, n, g, mean, k)
    else:
        comps, ev = _randomized(blocks, n, g, mean, k, np.random.default_rng(seed), _N_ITER)
    bar.close()
    # a deterministic sign: the largest loading of each component is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    ratio = ev / total_var if total_var > 0 else np.zeros_like(ev)
    logger.info("PCA (%s) on %d cells x %d genes: %d components explain %.1f%% of variance",
                method, n, g, k, 100 * ratio.sum())
    mean = mean * scale if scale is not None else mean
    return PCAModel(comps.astype(np.float32), mean.astype(np.float32),
                    None if scale is None else scale.astype(np.float32),
                    ev.astype(np.float32), ratio.astype(np.float32), list(genes))
