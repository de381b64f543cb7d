"""One interface over the cells of a data set, whether they are in memory or on disk.

A :class:`Cells` holds ``obs`` and the gene names in memory and reads the matrices through
row readers: ``counts`` (raw counts) and ``normalised`` (log-normalised, as preprocessing gives
``X``), each with ``rows(start, stop)``, ``take(sorted_rows)``, ``chunks(size, rows)`` and a
``shape``. It gives per-split rows, a subset in memory as an AnnData (:meth:`Cells.to_memory`),
per-cell result arrays (:meth:`Cells.per_cell_array`: in memory, or ``.npy`` memmaps on disk)
and training mini-batches (:meth:`Cells.loader`: :class:`~cellsynth.data.rows.Rows` in memory,
:class:`~cellsynth.data.loader.BlockLoader` on disk). Pipeline stages and models read cells
only through it, so none of them asks where the cells are.

Build one with :func:`from_preprocessed` (the pipeline's ``data/preprocessed.h5ad``, or the
in-memory result of :func:`~cellsynth.data.qc.preprocess`) or :func:`for_training` (an h5ad
file or AnnData of raw counts, as ``cellsynth fit`` and the Python API take).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys as K
from .data.csr import canonical
from .data.genes import annotated_var, source_annotation, warn_other_features
from .data.io import (
    BACKED_BYTES,
    check_file,
    check_gene_names,
    check_shape,
    find_counts,
    training_source,
)
from .data.labels import MISSING_TEXT, check_label, missing_labels, warn_unannotated
from .data.split import split_column, stratified_split
from .data.store import MatrixRows
from .data.values import check_libraries, check_values, check_whole, stored_values
from .errors import DataError, listed
from .paths import expand_user

logger = logging.getLogger(__name__)

Backed = Literal["auto", True, False]


class Cells:
    """The cells of one data set: ``obs`` and genes in memory, matrices read by rows.

    Parameters
    ----------
    obs
        One row per cell; holds ``label_key`` and, for split data, ``obs['cellsynth_split']``.
    genes
        Gene names, in the matrices' column order.
    label_key
        The ``obs`` column with the cell type.
    counts
        Raw counts by rows (a :class:`~cellsynth.data.store.RowStore`,
        :class:`~cellsynth.data.rows.MatrixRows` or anything reading alike); None without counts.
    normalised
        Log-normalised values by rows; None when no stage needs them.
    on_disk
        Whether the rows are read from a file (then results per cell go to files too).
    memory
        For cells in memory, the AnnData :meth:`to_memory` subsets (``X`` normalised,
        ``layers['counts']``); built from the readers when None.
    close
        Called by :meth:`close` (an open file).
    annotation
        The text columns of the data's ``var`` (gene symbols...), one row per gene
        (:func:`~cellsynth.data.genes.gene_annotation`), kept by a model fitted on the cells for
        the cells it generates; None: none.
    """

    def __init__(self, obs: pd.DataFrame, genes: list[str], label_key: str, *, counts: Any,
                 normalised: Any = None, on_disk: bool = False, memory: ad.AnnData | None = None,
                 close: Callable[[], None] | None = None,
                 annotation: pd.DataFrame | None = None) -> None:  # fmt: skip
        self.obs, self.genes, self.label_key = obs, list(genes), label_key
        self.annotation = annotation
        self.counts, self.normalised, self.on_disk = counts, normalised, on_disk
        self._memory, self._close = memory, close

    def __repr__(self) -> str:
        where = "on disk" if self.on_disk else "in memory"
        return f"Cells({self.n_obs} cells x {self.n_vars} genes, {where}, label '{self.label_key}')"

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.genes)

    @property
    def has_counts(self) -> bool:
        return self.counts is not None

    def labels(self) -> np.ndarray:
        """The cell types as strings."""
        return self.obs[self.label_key].astype(str).to_numpy()

    def split(self) -> np.ndarray:
        """``train`` / ``val`` / ``test`` (or another mark, e.g. ``none``) per cell."""
        return self.obs[K.SPLIT].astype(str).to_numpy()

    def split_rows(self) -> dict[str, np.ndarray]:
        """Sorted positions of each split's cells."""
        split = self.split()
        return {s: np.flatnonzero(split == s) for s in K.SPLITS}

    def to_memory(self, rows: np.ndarray) -> ad.AnnData:
        """The cells ``rows`` (sorted positions) as an AnnData: ``X`` normalised when this data
        has normalised values (else the counts), ``layers['counts']``, ``obs``, ``var`` with the
        genes' annotation."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._memory is not None:
            return self._memory[rows]
        counts = self.counts.take(rows) if self.counts is not None else None
        x = self.normalised.take(rows) if self.normalised is not None else counts
        # var with the genes' annotation: a model fitted on these cells (nb, reference) keeps the
        # symbols beside IDs for its generated cells, as a CVAE fitted on the Cells does
        out = ad.AnnData(X=x, obs=self.obs.iloc[rows].drop(columns=[K.NORM_TOTAL], errors="ignore"),
                         var=annotated_var(self.genes, self.annotation))  # fmt: skip
        if counts is not None:
            out.layers[K.COUNTS] = counts
        out.uns[K.UNS] = {"has_counts": self.has_counts, "label_key": self.label_key}
        return out

    def per_cell_array(self, path: Path, shape: tuple[int, int],
                       fill: Callable[[np.ndarray], Any], *, reuse: bool = False) -> np.ndarray:  # fmt: skip
        """A float32 array of ``shape`` filled by ``fill(out)``: in memory, or for cells on disk
        the ``.npy`` file ``path`` opened as a memmap (reopened without ``fill`` when ``reuse``
        and it has the right shape), so results per cell never have to fit in memory."""
        if not self.on_disk or not shape[0]:
            out = np.zeros(shape, dtype=np.float32)
            if shape[0]:
                fill(out)
            return out
        if reuse and path.is_file():
            try:
                mm = np.load(path, mmap_mode="r")
                if mm.shape == shape and mm.dtype == np.float32:
                    return mm
            except ValueError:
                pass
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        fill(mm)
        mm.flush()
        del mm
        return np.load(path, mmap_mode="r")

    def loader(self, rows: np.ndarray, codes: np.ndarray, *, batch_size: int, device: Any,
               seed: int, shuffle: bool = True, block_size: int = 32, fetch_factor: int = 32,
               covariates: np.ndarray | None = None) -> Any:  # fmt: skip
        """Mini-batches of the cells ``rows`` (sorted) with type ``codes``, for training
        (``shuffle``) or evaluation passes in order: in memory a
        :class:`~cellsynth.data.rows.Rows` (gathered on the GPU when it fits), on disk a
        :class:`~cellsynth.data.loader.BlockLoader` (``block_size`` consecutive cells read
        together, ``fetch_factor`` batches' worth shuffled in a buffer). ``covariates``: integer
        covariate codes of the cells ``rows``, ``(n, k)``, served with each batch."""
        if self.counts is None:
            raise DataError("these cells hold normalised values, not counts; give the "
                            "unnormalised file")
        rows = np.asarray(rows, dtype=np.int64)
        if not self.on_disk:
            from .data.rows import Rows

            return Rows(sp.csr_matrix(self.counts.take(rows), dtype=np.float32), codes, device,
                        batch_size=batch_size, covariates=covariates)  # fmt: skip
        from .data.loader import BlockLoader

        return BlockLoader(self.counts, codes, rows=rows, batch_size=batch_size,
                           block_size=block_size, fetch_factor=fetch_factor, shuffle=shuffle,
                           prefetch=shuffle, seed=seed, device=device,
                           covariates=covariates)  # fmt: skip

    def close(self) -> None:
        """Close the file the cells are read from (nothing for cells in memory)."""
        if self._close is not None:
            self._close()

    def __enter__(self) -> Cells:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def from_preprocessed(data: ad.AnnData | str | Path, *, label_key: str | None = None,
                      on_disk: bool | None = None) -> Cells:
    """Cells of a preprocessed data set: an AnnData as :func:`~cellsynth.data.qc.preprocess`
    returns it, or its file, or a file written by
    :func:`~cellsynth.data.chunked.preprocess_backed` (read from disk).

    ``label_key`` defaults to the one the preprocessing recorded. ``on_disk`` for a path: None
    decides by the file (``preprocess_backed``'s are read from disk, ``preprocess``'s are read
    into memory)."""
    if isinstance(data, ad.AnnData):
        return _memory_cells(data, label_key)
    from .data.chunked import PreprocessedStore

    path = check_file(data)
    try:
        store = PreprocessedStore(path)
    except DataError:
        if on_disk:
            raise
        return _memory_cells(ad.read_h5ad(path), label_key)
    return Cells(store.obs, store.genes, label_key or store.label_key,
                 counts=store.x if store.has_counts else None, normalised=store.normalised,
                 on_disk=True, close=store.close)  # fmt: skip


def _memory_cells(pre: ad.AnnData, label_key: str | None) -> Cells:
    meta = pre.uns.get(K.UNS, {})
    label_key = label_key or str(meta.get("label_key", "cell_type"))
    counts = (MatrixRows(sp.csr_matrix(pre.layers[K.COUNTS], dtype=np.float32))
              if K.COUNTS in pre.layers else None)
    return Cells(pre.obs, list(map(str, pre.var_names)), label_key, counts=counts,
                 normalised=MatrixRows(pre.X), memory=pre)  # fmt: skip


def is_large(path: str | Path | None, backed: Backed) -> bool:
    """Whether to read ``path`` from disk: ``backed`` true, or ``"auto"`` and the file larger
    than ``data.io.BACKED_BYTES``."""
    if backed is True:
        return True
    if backed == "auto" and path:
        p = expand_user(path)
        return p.is_file() and p.stat().st_size > BACKED_BYTES
    return False


def for_training(data: ad.AnnData | str | Path, label_key: str, *, seed: int,
                 backed: Backed = "auto", drop_undetected: bool = False,
                 val_fraction: float = 0.1, chunk_size: int = 10_000) -> Cells:  # fmt: skip
    """Cells of raw counts to train a generator on (``cellsynth fit``, ``CVAE(adata)``).

    Counts come from ``layers['counts']`` when present, else ``X`` (or ``raw.X`` in a file);
    every stored value is checked (finite, non-negative, whole) chunk by chunk. Cells without
    a label are left out, with a count in the log. Training and validation cells come from
    ``obs['cellsynth_split']`` when present, else a seeded ``val_fraction`` cut.
    ``drop_undetected`` leaves out genes with no count in the training cells.

    Parameters
    ----------
    data
        An AnnData in memory, or an h5ad path: read from disk when ``backed`` is true or
        ``"auto"`` and the file is larger than 2 GB, else read into memory.
    """
    given_obs = None
    if isinstance(data, ad.AnnData) and data.isbacked:
        if data.is_view:  # its file would be read whole, the subset lost
            raise DataError("this AnnData is a subset (a view) of a file opened backed, and "
                            "backed cells are read from their file by rows: the whole file "
                            "would be trained on; write the subset to a file of its own "
                            "(adata.write_h5ad(path)) or read it into memory "
                            "(adata.to_memory()), then fit")
        given_obs = data.obs  # in memory, edits included (renamed labels): used, not the file's
        data, backed = data.filename, True  # an AnnData opened backed: read its file by rows
    if isinstance(data, ad.AnnData):
        source, close, on_disk = data, None, False
    elif is_large(data, backed):
        from .data.store import H5adFile

        source = H5adFile(data)
        close, on_disk = source.close, True
    else:
        from .data.io import read

        source = read(data, backed=False)
        close, on_disk = None, False
    try:
        counts, genes, annotation = _counts_of(source, on_disk)
        obs = (source.obs if given_obs is None else _same_cells(given_obs, source.obs)).copy()
        obs[K.SPLIT] = _training_split(obs, label_key, seed=seed, val_fraction=val_fraction)
        fitted = np.flatnonzero(obs[K.SPLIT].isin(["train", "val"]).to_numpy())
        detected, empty = _check_and_detect(counts, fitted,
                                            np.flatnonzero(obs[K.SPLIT] == "train"), chunk_size)
        if len(empty):  # no library size: nothing to learn, and an empty cell to generate
            warn_empty_cells(obs[label_key].to_numpy()[fitted], np.isin(fitted, empty))
            obs.iloc[empty, obs.columns.get_loc(K.SPLIT)] = "none"
            if not (obs[K.SPLIT] == "train").any():
                rest = ", and the rest went to validation" if len(empty) < len(fitted) else ""
                raise DataError(f"no cell to learn from: {len(empty)} of the {len(fitted)} "
                                f"labelled cells have no count at all{rest}; give cells with "
                                "counts")
        _warn_small_types(obs, label_key)
    except BaseException:
        if close is not None:
            close()
        raise
    keep = np.flatnonzero(detected > 0) if drop_undetected else np.arange(len(genes))
    if len(keep) < len(genes):
        logger.info("leaving out %d of %d genes with no count in the %d training cells "
                    "(dataset.drop_undetected_genes)", len(genes) - len(keep), len(genes),
                    int((obs[K.SPLIT] == "train").sum()))  # fmt: skip
        counts = ColumnRows(counts, keep)
        genes = [genes[i] for i in keep]
        annotation = None if annotation is None else annotation.iloc[keep]
    return Cells(obs, genes, label_key, counts=counts, on_disk=on_disk, close=close,
                 annotation=annotation)  # fmt: skip


def _counts_of(source: Any, on_disk: bool) -> tuple[Any, list[str], pd.DataFrame | None]:
    """The raw counts of an AnnData or an open h5ad, by rows, with their gene names and
    annotation (the text columns of ``var``, or of ``raw.var`` for counts in ``raw.X``)."""
    if on_disk:
        check_shape(source, str(source.path))  # read() gives a file in memory the same checks
        expr = find_counts(source)
        if expr.counts is None:
            raise expr.no_counts(f"{source.path} holds normalised values only; generators need "
                                 "raw counts: give the unnormalised file")
        x, genes = source.matrix(expr)
        check_gene_names(genes, str(source.path), raw=expr.counts == "raw.X")
        logger.info("training on the raw counts in %s (read from disk)", expr.counts)
    else:
        check_shape(source)  # an AnnData: the checks read() gives a file (no cells, names twice)
        x, genes = training_source(source, say=True)
        check_gene_names(genes, raw=not pd.Index(genes).equals(source.var_names))
        x = MatrixRows(canonical(sp.csr_matrix(x, dtype=np.float32)))
    raw = source.raw is not None and not pd.Index(genes).equals(source.var_names)
    warn_other_features(source, "raw.X" if raw else "X")
    # counts in raw.X over raw's genes: raw.var annotates them
    return x, list(map(str, genes)), source_annotation(source, "raw.X" if raw else "X", genes)


def _training_split(obs: pd.DataFrame, label_key: str, *, seed: int,
                    val_fraction: float) -> np.ndarray:  # fmt: skip
    """``train`` / ``val`` per cell (``none`` for cells without a label or in the test split)."""
    check_label(SimpleNamespace(obs=obs), label_key)
    split = split_column(obs)
    if split is None:
        # stratified by type: every type keeps its training cells, a type of a few cells all
        split = stratified_split(obs[label_key].astype(str).to_numpy(),
                                 (1 - val_fraction, val_fraction, 0.0), seed=seed)
    missing = missing_labels(obs[label_key])
    if missing.any():
        logger.warning("%d cells have no label in obs['%s'] (missing, or written as text: %s) "
                       "and are left out", int(missing.sum()), label_key,
                       ", ".join(map(repr, MISSING_TEXT)))  # fmt: skip
    split = np.where(missing | ~np.isin(split, ["train", "val"]), "none", split)
    warn_unannotated(obs[label_key].to_numpy()[split != "none"], label_key)
    if not (split == "train").any():
        why = ("every cell lacks a label" if missing.all() else
               f"every cell lacks a label or is in another split than train in obs['{K.SPLIT}']")
        raise DataError(f"no training cells: {why}; give cells with a label in "
                        f"obs['{label_key}']")
    return split.astype(str)


def warn_empty_cells(labels: np.ndarray, empty: np.ndarray) -> None:
    """Warn that the cells ``empty`` (a mask over ``labels``, their types) are left out for
    holding no count, naming the types every cell of which is: those are not learned at all."""
    labels = np.asarray(labels).astype(str)
    lost = sorted(set(labels[empty]) - set(labels[~empty]))
    gone = (f"; {len(lost)} cell type(s) have no cell with a count, so the model will not "
            f"know them: {listed(lost, 8, quote=True)} (give their counts, or leave them out "
            "to silence this)" if lost else "")  # fmt: skip
    logger.warning("leaving out %d cells without a single count%s", int(empty.sum()), gone)


#: a type with fewer training cells than this is generated from so few real ones that its
#: cells can come close to copies of them (``qc.min_cells_per_type`` is a run's threshold)
FEW_CELLS = 10


def _warn_small_types(obs: pd.DataFrame, label_key: str) -> None:
    """Warn about types with fewer than :data:`FEW_CELLS` cells to train on: a run's QC leaves
    them out, a fit on the user's cells keeps them."""
    used = obs[K.SPLIT].isin(["train", "val"]).to_numpy()
    n = obs.loc[used, label_key].astype(str).value_counts()
    small = n[n < FEW_CELLS]
    if len(small):
        logger.warning("%d cell type(s) have fewer than %d cells to learn from (%s): their "
                       "generated cells are drawn from these few and can come close to copies "
                       "of them; leave such types out or merge them (cellsynth run's QC drops "
                       "types under qc.min_cells_per_type)", len(small), FEW_CELLS,
                       listed([f"{t}: {k}" for t, k in small.sort_values().items()], 8))


def _same_cells(given: pd.DataFrame, filed: pd.DataFrame) -> pd.DataFrame:
    """``given``, the obs of a backed AnnData, when it describes the cells of its file in their
    order (its columns may have been edited), else a :class:`DataError`."""
    if not given.index.equals(filed.index):
        raise DataError("the cells of this backed AnnData are not its file's (renamed or "
                        "reordered in memory): backed cells are read from the file by rows; "
                        "write the AnnData to a file of its own (adata.write_h5ad(path)) or "
                        "read it into memory (adata.to_memory()), then fit")
    return given


def _check_and_detect(counts: Any, rows: np.ndarray, train_rows: np.ndarray,
                      chunk_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Check every stored value of ``rows`` (finite, non-negative, whole), chunk by chunk;
    count the training cells detecting each gene, and find the cells without a count."""
    detected = np.zeros(counts.shape[1], dtype=np.int64)
    empty: list[np.ndarray] = []
    libraries: list[np.ndarray] = []
    is_train = np.isin(rows, train_rows)
    stored = getattr(counts, "stored_dtype", None)  # a matrix on disk: its values as stored
    for pos, block in counts.chunks(chunk_size, rows):
        block = sp.csr_matrix(block)
        check_values(block.data if stored is None else stored_values(block.data, stored),
                     "the counts")
        check_whole(block, rows[pos])
        train = block[is_train[pos]]
        detected += np.bincount(train.indices[train.data != 0], minlength=counts.shape[1])
        lib = np.asarray(block.sum(axis=1)).ravel()
        empty.append(rows[pos][lib == 0])
        libraries.append(lib)
    if libraries:
        check_libraries(np.concatenate(libraries))
    return detected, np.concatenate(empty) if empty else np.zeros(0, dtype=np.int64)


class ColumnRows:
    """A row reader keeping only the columns ``keep`` of another (genes left out on the fly)."""

    def __init__(self, base: Any, keep: np.ndarray):
        self.base, self.keep = base, np.asarray(keep, dtype=np.int64)
        self.shape = (base.shape[0], len(self.keep))

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(self.base.rows(start, stop))[:, self.keep]

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.base.take(rows))[:, self.keep]

    def __getitem__(self, key: slice | np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.base[key])[:, self.keep]

    def chunks(self, chunk_size: int, rows: np.ndarray | None = None, **kwargs: Any):
        for pos, block in self.base.chunks(chunk_size, rows, **kwargs):
            yield pos, sp.csr_matrix(block)[:, self.keep]
