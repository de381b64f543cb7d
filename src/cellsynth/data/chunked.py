"""Preprocessing out of core: the steps of :func:`cellsynth.data.qc.preprocess`, chunk by chunk.

:func:`preprocess_backed` reads the counts of an h5ad file (``X``, ``layers/counts`` or
``raw/X``, wherever :func:`~cellsynth.data.io.find_counts` finds them) ``chunk_size`` cells at
a time and writes the kept cells x kept genes counts into a new h5ad, so memory holds ``obs``,
a few numbers per cell and per gene, and one chunk. The steps, their order and their results
are those of the in-memory ``preprocess`` (they share the code in :mod:`~cellsynth.data.qc`):

1. per-cell pass: values checked, genes detected, mitochondrial fraction (when ``obs`` lacks it);
2. cell filters on ``obs`` and those numbers, the split (``qc.filter_cells``);
3. per-gene pass over training cells: cells detecting each gene;
4. per-type IQR fences and rare types (``obs`` only);
5. pass over kept cells x detected genes: each cell's total (the normalisation's denominator,
   stored as ``obs["cellsynth_norm_total"]``) and the per-gene sum and sum of squares of the
   normalised training values, giving the variance filter;
6. pass writing the kept cells x kept genes counts into the output's ``X``.

The output holds counts in ``X`` (not a normalised ``X`` beside ``layers["counts"]``): open it
with :class:`PreprocessedStore`, which normalises rows as they are read, bit for bit as the
in-memory ``X``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, write_elem

from .. import keys as K
from ..config import DatasetConfig, QCConfig, SplitConfig
from ..errors import DataError
from ._mito import gene_symbols, mito_fraction, mito_genes
from ._qc_columns import check_qc_columns, needs_computing
from .csr import cells_per_gene, genes_per_cell, stack_rows
from .csr_writer import CSRWriter
from .genes import annotated_var, source_annotation, warn_other_features
from .io import check_shape, find_counts
from .labels import check_label
from .qc import (
    GeneMoments,
    QCReport,
    WholeCheck,
    check_donor_key,
    describe_expression,
    filter_cells,
    final_obs,
    keep_variable,
    normalise_log1p,
)
from .settings import data_settings
from .store import H5adFile, RowStore, h5ad_file
from .values import check_values

logger = logging.getLogger(__name__)


def preprocess_backed(
    path: str | Path,
    dataset: DatasetConfig,
    qc: QCConfig,
    split: SplitConfig,
    *,
    groups: dict[str, str] | None = None,
    seed: int = 0,
    out_path: str | Path,
    chunk_size: int | None = None,
    needs_counts: str = "",
) -> tuple[Path, QCReport]:
    """Run every QC step on the file ``path`` in row chunks; write the result to ``out_path``.

    Parameters
    ----------
    path
        The input h5ad; its counts are read ``chunk_size`` rows at a time and never whole.
    dataset, qc, split, groups, seed
        As for :func:`cellsynth.data.qc.preprocess`, which gives the same cells, genes,
        counts, ``obs`` and report.
    out_path
        The h5ad to write (replaced; written beside it first and renamed when complete): counts
        (or, without counts, the input's normalised values) of the kept cells and genes in
        ``X``, ``obs`` as ``preprocess`` gives it plus ``cellsynth_norm_total``, the genes in
        ``var``. Open it with :class:`PreprocessedStore`.
    chunk_size
        Cells per chunk; ``None`` takes ``qc.chunk_size``.
    needs_counts
        As for :func:`~cellsynth.data.qc.preprocess`: the error raised before any pass over
        the file where it holds no raw counts ("": none needed).

    Returns
    -------
    The path written and the :class:`~cellsynth.data.qc.QCReport`.
    """
    dataset, qc, split, seed = data_settings(dataset, qc, split, seed)  # Python's: unchecked
    chunk = int(chunk_size or qc.chunk_size)
    if chunk < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk}; set qc.chunk_size")
    if Path(out_path).expanduser().resolve() == Path(path).expanduser().resolve():
        raise DataError(f"out_path {out_path} is the input file; write the result to another path")
    started = time.perf_counter()
    label_key = dataset.label_key
    with H5adFile(path) as h5:
        check_shape(h5, str(h5.path))
        check_label(h5, label_key)
        check_donor_key(h5.obs.columns, dataset)
        check_qc_columns(h5.obs, dataset)
        expr = find_counts(h5, dataset.is_normalised)
        has_counts = describe_expression(expr, needs_counts)
        x, genes = h5.matrix(expr)
        warn_other_features(h5, expr.counts)
        logger.info("preprocessing %s out of core: %d cells x %d genes, %d values, %d-cell chunks",
                    h5.path, x.shape[0], x.shape[1], x.nnz, chunk)
        need_mito = needs_computing(h5.obs, dataset.mito_key)
        whole = WholeCheck(expr.counts) if has_counts else None
        symbols = gene_symbols(h5, expr.counts)
        n_genes_cell, mito = _cell_stats(x, genes, need_mito, chunk, whole, symbols)
        if whole is not None:
            whole.check(h5.obs_names)
        cells, keep_detected = filter_cells(
            h5.obs, genes, dataset, qc, split, groups=groups, seed=seed,
            n_genes_cell=n_genes_cell, mito=lambda: mito,
            detected=lambda rows: _detected(x, rows, chunk),
        )
        detected = np.flatnonzero(keep_detected)
        variance, totals = _variance(x, cells.rows, cells.train(), detected,
                                     qc.target_sum if has_counts else None, chunk)
        keep = keep_variable(cells, variance, qc)
        obs = final_obs(cells, label_key)
        if has_counts:
            obs[K.NORM_TOTAL] = totals
        uns = {"has_counts": has_counts, "label_key": label_key,
               "x": "counts" if has_counts else "normalised", "target_sum": float(qc.target_sum)}
        names = genes[detected[keep]].astype(str)
        var = annotated_var(names, source_annotation(h5, expr.counts, names))
        out = _write(out_path, x, cells.rows, detected[keep], obs, var, uns, chunk)
    logger.info("preprocessed %d cells x %d genes into %s in %.1f s", len(obs), int(keep.sum()),
                out, time.perf_counter() - started)
    return out, cells.report


def _cell_stats(
    x: RowStore, genes: pd.Index, need_mito: bool, chunk: int,
    whole: WholeCheck | None = None, symbols: pd.Series | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Genes detected per cell and (when needed) the mitochondrial fraction; values checked
    (finite, non-negative and, with ``whole``, whole numbers: every value, in the same pass)."""
    n_genes_cell = np.empty(x.shape[0], dtype=x.index_dtype)  # as preprocess's n_genes
    mito_idx = mito_genes(genes, symbols) if need_mito else None
    mito = np.empty(x.shape[0], dtype=np.float32) if need_mito else None
    for pos, block in x.chunks(chunk, desc="qc: cell statistics"):
        check_values(block.data, "the expression matrix")
        if whole is not None:
            whole.add(block, pos.start)
        n_genes_cell[pos] = genes_per_cell(block)
        if mito is not None:
            mito[pos] = mito_fraction(block, mito_idx)
    return n_genes_cell, mito


def _detected(x: RowStore, rows: np.ndarray, chunk: int) -> np.ndarray:
    """Per gene, how many of the cells ``rows`` hold a value."""
    counts = np.zeros(x.shape[1], dtype=np.int64)
    for _, block in x.chunks(chunk, rows, desc="qc: genes detected"):
        counts += cells_per_gene(block)
    return counts


def _variance(
    x: RowStore, rows: np.ndarray, train: np.ndarray, genes: np.ndarray,
    target_sum: float | None, chunk: int,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Per-gene variance of the normalised training values and each cell's total over ``genes``.

    Without ``target_sum`` (no counts) the values are used as they are and there are no totals.
    """
    moments = GeneMoments(len(genes))
    totals = np.empty(len(rows), dtype=np.float32) if target_sum is not None else None
    every_gene = len(genes) == x.shape[1]
    for pos, block in x.chunks(chunk, rows, desc="qc: gene variance"):
        sub = block if every_gene else block[:, genes]
        if totals is not None:
            totals[pos] = np.asarray(sub.sum(axis=1)).ravel()
            sub = normalise_log1p(sub, target_sum, totals[pos])
        is_train = train[pos]
        moments.add(sub if is_train.all() else sub[is_train])
    return moments.variance(), totals


def _write(
    out_path: str | Path, x: RowStore, rows: np.ndarray, genes: np.ndarray, obs: pd.DataFrame,
    var: pd.DataFrame, uns: dict, chunk: int,
) -> Path:  # fmt: skip
    """Write rows ``rows`` x columns ``genes`` of ``x`` with ``obs``/``var``/``uns`` as an h5ad
    (``var``: one row per written gene)."""
    out = Path(out_path)
    every_gene = len(genes) == x.shape[1]
    with h5ad_file(out) as f:
        writer = CSRWriter(f, "X", len(genes))
        for _, block in x.chunks(chunk, rows, desc="qc: write"):
            writer.append(block if every_gene else block[:, genes])
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        write_elem(f, "uns", {K.UNS: uns})
    return out


class NormalisedRows:
    """Rows of a :class:`PreprocessedStore` as ``preprocess`` gives ``X``: normalised when read.

    Sliceable like a matrix (``rows[a:b]``, ``rows[sorted_positions]``) with a ``shape``, so
    :meth:`cellsynth.features.pca.PCAModel.transform` and ``fit_pca`` read it in chunks.
    """

    def __init__(self, store: PreprocessedStore):
        self.store = store
        self.shape = store.shape

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self.store.normalise(self.store.x.rows(start, stop), np.arange(start, stop))

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        rows = np.asarray(rows, dtype=np.int64)
        return self.store.normalise(self.store.x.take(rows), rows)

    def __getitem__(self, key: slice | np.ndarray) -> sp.csr_matrix:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise ValueError("NormalisedRows reads contiguous slices (step 1) or sorted positions")
            return self.rows(start, stop)
        return self.take(np.asarray(key))

    def __len__(self) -> int:
        return self.shape[0]

    def subset(self, rows: np.ndarray) -> NormalisedRows:
        """The rows ``rows`` (sorted positions) alone, sliceable the same way (e.g. one split)."""
        return _Subset(self, np.asarray(rows, dtype=np.int64))


class _Subset(NormalisedRows):
    def __init__(self, parent: NormalisedRows, rows: np.ndarray):
        if len(rows) > 1 and np.any(np.diff(rows) <= 0):
            raise ValueError("subset rows must be sorted, unique positions")
        self.parent, self.positions = parent, rows
        self.shape = (len(rows), parent.shape[1])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self.parent.take(self.positions[start:stop])

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        return self.parent.take(self.positions[np.asarray(rows, dtype=np.int64)])


class PreprocessedStore:
    """A file written by :func:`preprocess_backed`: ``obs`` and genes in memory, cells on disk.

    Attributes
    ----------
    x
        The counts (or, for data without counts, the normalised values) as a :class:`RowStore`.
    normalised
        The same rows normalised as ``preprocess``'s ``X`` when read (:class:`NormalisedRows`).
    obs, genes, label_key, has_counts, target_sum
        As written.
    """

    def __init__(self, path: str | Path):
        self._h5 = H5adFile(path)
        self.path = self._h5.path
        meta = read_elem(self._h5.file["uns"]).get(K.UNS, {}) if "uns" in self._h5.file else {}
        if "x" not in meta:
            self._h5.close()
            raise DataError(f"{self.path} was not written by preprocess_backed (no "
                            "uns['cellsynth']['x']); preprocess the atlas with it first")
        self.obs = self._h5.obs
        self.genes = list(map(str, self._h5.var_names))
        self.label_key = str(meta["label_key"])
        self.has_counts = bool(meta["has_counts"])
        self.target_sum = float(meta["target_sum"])
        self.x = self._h5.X
        self.shape = self.x.shape
        self.totals = (self.obs[K.NORM_TOTAL].to_numpy(dtype=np.float32)
                       if self.has_counts else None)
        self.normalised = NormalisedRows(self)

    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def n_vars(self) -> int:
        return self.shape[1]

    def labels(self) -> np.ndarray:
        return self.obs[self.label_key].astype(str).to_numpy()

    def split(self) -> np.ndarray:
        return self.obs[K.SPLIT].astype(str).to_numpy()

    def normalise(self, block: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
        """``block`` (the stored rows ``rows``) as ``preprocess``'s normalised ``X`` rows."""
        if not self.has_counts:
            return block
        return normalise_log1p(block, self.target_sum, self.totals[rows])

    def to_memory(self, rows: np.ndarray | None = None, chunk_size: int = 10_000) -> ad.AnnData:
        """The AnnData ``preprocess`` returns (``X`` normalised, ``layers['counts']``) in memory.

        ``rows`` (sorted positions) takes only those cells, e.g. a subsample for evaluation.
        """
        if rows is None:
            rows = np.arange(self.n_obs)
            parts = [block for _, block in self.x.chunks(chunk_size)]
            x = stack_rows(parts) if len(parts) > 1 else parts[0]
        else:
            rows = np.asarray(rows, dtype=np.int64)
            x = self.x.take(rows)
        obs = self.obs.iloc[rows].drop(columns=[K.NORM_TOTAL], errors="ignore")
        out = ad.AnnData(X=self.normalise(x, rows), obs=obs,
                         var=pd.DataFrame(index=pd.Index(self.genes)))
        if self.has_counts:
            out.layers[K.COUNTS] = x
        out.uns[K.UNS] = {"has_counts": self.has_counts, "label_key": self.label_key}
        return out

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> PreprocessedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
