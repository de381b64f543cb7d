"""Rows of a matrix inside an h5ad file, read without loading the matrix.

:class:`H5adFile` opens an h5ad read-only with h5py: ``obs`` and ``var`` in memory, every
matrix (``X``, ``layers/*``, ``raw/X``) as a :class:`RowStore` on disk. It duck-types the parts
of :class:`anndata.AnnData` that :func:`cellsynth.data.io.find_counts`, ``check_shape`` and
``check_label`` read, so the same checks run on a file of any size. (``anndata.read_h5ad(...,
backed="r")`` keeps only ``X`` on disk and reads layers into memory, which a 10 GB atlas
cannot afford.) :class:`~cellsynth.data.csr_writer.CSRWriter` appends CSR rows to a new
file chunk by chunk.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem

from ..errors import DataError
from ..options import progress_bar
from ..outputs import check_disk_space, replaced
from .csr import bad_columns, canonical, check_structure, damage, stack_rows
from .genes import names_said_here
from .io import Expression, check_file, unreadable

logger = logging.getLogger(__name__)

#: a matrix stored by columns (CSC) is read whole and turned into rows up to this many values
#: (about 1 GB as float32 values and int32 indices, twice that while converting); beyond, refused
MAX_CSC_VALUES = 100_000_000

#: the fix of a matrix whose parts do not hold together
_WRITE_AGAIN = "the file was cut short or written by a faulty tool: write it again from its source"

#: rows at most between two selected rows that :meth:`RowStore.take` reads through
_GAP = 16
#: rows at most :meth:`RowStore.take` reads at once
_MAX_SPAN = 4096


class RowStore:
    """A 2-D matrix in an HDF5 file (anndata's CSR group, or a dense dataset), read by rows.

    Rows come back as CSR float32, whatever the stored dtype (``stored_dtype``: what the
    value checks read, a true/false or wrapped int8 matrix being float32 once read). The CSR
    row pointer is held in memory (8 bytes a row); values and column indices are read only for
    the rows asked for.
    """

    def __init__(self, elem: h5py.Group | h5py.Dataset, name: str):
        self.name = name
        self._file = elem.file.filename  # named in the errors of a damaged matrix
        self._dense: h5py.Dataset | None = None
        dataset = elem if isinstance(elem, h5py.Dataset) else elem.get("data")
        self.stored_dtype = np.dtype(getattr(dataset, "dtype", np.float32))
        if isinstance(elem, h5py.Dataset):
            if elem.ndim != 2:
                raise DataError(f"{name} is a {elem.ndim}-d array, not a cells x genes matrix")
            self._dense = elem
            self.format = "dense"
            self.shape = (int(elem.shape[0]), int(elem.shape[1]))
            self.index_dtype = np.dtype(np.int32 if self.nnz < 2**31 else np.int64)
            return
        encoding = str(elem.attrs.get("encoding-type", ""))
        csc = encoding == "csc_matrix" and elem["data"].shape[0] <= MAX_CSC_VALUES
        if encoding != "csr_matrix" and not csc:
            too_big = (f" of {elem['data'].shape[0]:,} values (more than {MAX_CSC_VALUES:,} are "
                       "not read whole)" if encoding == "csc_matrix" else "")
            raise DataError(
                f"{name} is stored as {encoding or 'an unknown encoding'}{too_big}, but cells are "
                "read by rows: rewrite it as CSR (adata.X = adata.X.tocsr(); "
                "adata.write_h5ad(...))"
            )
        self.format = "csr"
        self.shape = (int(elem.attrs["shape"][0]), int(elem.attrs["shape"][1]))
        if csc:  # a file of columns (valid h5ad): read whole and turned into rows, in memory
            logger.info("%s is stored by genes (CSC): read whole (%s values) and turned into "
                        "rows", name, f"{elem['data'].shape[0]:,}")
            m = sp.csc_matrix((elem["data"][:], elem["indices"][:], elem["indptr"][:]),
                              shape=self.shape)
            check_structure(m, f"{self._file}: {name}")  # before scipy's code reads it
            m = m.tocsr()
            self._data, self._indices = m.data, m.indices
            self.indptr = m.indptr.astype(np.int64)
            self.index_dtype = np.result_type(m.indices.dtype, m.indptr.dtype)
            return
        self._data, self._indices = elem["data"], elem["indices"]
        self.indptr = np.asarray(elem["indptr"][:], dtype=np.int64)
        what = damage(self.indptr, self.shape[0], min(self._data.shape[0], self._indices.shape[0]))
        if what:  # a pointer past the values, or one that decreases: numpy's errors, or a crash
            raise DataError(f"{self._file}: {name} is damaged: {what}; {_WRITE_AGAIN}")
        #: the index dtype of this matrix read whole into scipy (that of its row pointer)
        self.index_dtype = np.result_type(self._indices.dtype, elem["indptr"].dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nnz(self) -> int:
        """Stored values (all values for a dense matrix)."""
        return self.shape[0] * self.shape[1] if self._dense is not None else int(self.indptr[-1])

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR float32 (one contiguous read)."""
        start, stop = max(0, int(start)), min(self.shape[0], int(stop))
        stop = max(start, stop)
        if self._dense is not None:
            return _dense_rows(self._dense, start, stop)
        a, b = self.indptr[start], self.indptr[stop]
        data = np.asarray(self._data[a:b]).astype(np.float32, copy=False)
        indices = self._indices[a:b]
        if what := bad_columns(indices, self.shape[1]):  # past the genes: a crash in scipy
            raise DataError(f"{self._file}: {self.name} is damaged (rows {start:,} to "
                            f"{stop - 1:,}): {what}; {_WRITE_AGAIN}")
        return canonical(sp.csr_matrix(  # a cell's gene stored twice: one entry, as in memory
            (data, indices, self.indptr[start : stop + 1] - a),
            shape=(stop - start, self.shape[1]),
        ), copy=False)

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        """Rows ``rows`` (sorted, unique) as CSR float32, read in a few contiguous runs."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        if rows.size > 1 and np.any(np.diff(rows) <= 0):
            raise ValueError("RowStore.take needs sorted, unique row positions")
        parts = []
        for run in _runs(rows):
            block = self.rows(run[0], run[-1] + 1)
            parts.append(block if len(run) == block.shape[0] else block[run - run[0]])
        return parts[0] if len(parts) == 1 else stack_rows(parts)

    def __getitem__(self, key: slice | np.ndarray) -> sp.csr_matrix:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise ValueError("RowStore reads contiguous slices (step 1) or sorted positions")
            return self.rows(start, stop)
        return self.take(np.asarray(key))

    def chunks(
        self,
        chunk_size: int,
        rows: np.ndarray | None = None,
        *,
        desc: str = "rows",
    ) -> Iterator[tuple[slice, sp.csr_matrix]]:
        """Read the matrix ``chunk_size`` stored rows at a time, in order.

        Yields ``(positions, block)``: ``block`` holds the rows ``rows[positions]`` (every row
        when ``rows`` is None, ``positions`` then indexing the matrix itself); chunks holding
        none of ``rows`` are not read.
        """
        n = self.shape[0]
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        starts = np.arange(0, n, chunk_size)
        bounds = np.searchsorted(rows, np.append(starts, n))
        for i in progress_bar(range(len(starts)), desc=desc, unit="chunk"):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if lo == hi:
                continue
            start = int(starts[i])
            block = self.rows(start, min(start + chunk_size, n))
            sel = rows[lo:hi] - start
            if len(sel) < block.shape[0]:
                block = block[sel]
            yield slice(lo, hi), block


class MatrixRows:
    """A matrix in memory (CSR or dense) read by rows as :class:`~cellsynth.data.store.RowStore`
    reads one on disk."""

    def __init__(self, x: sp.csr_matrix | np.ndarray):
        self.x = x
        self.shape = x.shape

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def indptr(self) -> np.ndarray | None:
        """The CSR row pointer (None for a dense matrix)."""
        return getattr(self.x, "indptr", None)

    def rows(self, start: int, stop: int):
        return self.x[start:stop]

    def take(self, rows: np.ndarray):
        return self.x[np.asarray(rows, dtype=np.int64)]

    def __getitem__(self, key: slice | np.ndarray):
        return self.x[key]

    def subset(self, rows: np.ndarray) -> MatrixRows:
        """The rows ``rows`` alone (e.g. one split)."""
        return MatrixRows(self.x[np.asarray(rows, dtype=np.int64)])

    def chunks(self, chunk_size: int, rows: np.ndarray | None = None, *,
               desc: str = "rows") -> Iterator[tuple[slice, sp.csr_matrix]]:  # fmt: skip
        """``(positions, block)`` of ``chunk_size`` rows at a time, as ``RowStore.chunks``."""
        rows = np.arange(self.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), chunk_size):
            sl = slice(start, min(start + chunk_size, len(rows)))
            yield sl, sp.csr_matrix(self.x[rows[sl]], dtype=np.float32)


#: values of a dense matrix on disk read at once (64 MB as float32), kept as CSR
_DENSE_VALUES = 1 << 24


def _dense_rows(dense: h5py.Dataset, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a dense matrix on disk as CSR float32, read in blocks of at most
    :data:`_DENSE_VALUES` values: 10,000 rows of 50,000 genes would be 2 GB at once."""
    step = max(1, _DENSE_VALUES // max(1, dense.shape[1]))
    parts = [sp.csr_matrix(dense[a : min(a + step, stop)], dtype=np.float32)
             for a in range(start, max(stop, start + 1), step)]  # no rows: one empty part
    return parts[0] if len(parts) == 1 else stack_rows(parts)


def _runs(rows: np.ndarray) -> Iterator[np.ndarray]:
    """Split sorted positions into runs read at once: gaps up to ``_GAP``, spans up to ``_MAX_SPAN``."""
    cuts = np.flatnonzero(np.diff(rows) > _GAP) + 1
    for run in np.split(rows, cuts):
        start = 0
        while start < len(run):
            stop = int(np.searchsorted(run, run[start] + _MAX_SPAN))
            yield run[start:stop]
            start = stop


class _Matrices(Mapping):
    """``layers``: names of the group's matrices, each opened as a :class:`RowStore` on access."""

    def __init__(self, group: h5py.Group | None, prefix: str, shape: tuple[int, int]):
        self._group, self._prefix, self._shape = group, prefix, shape

    def __getitem__(self, key: str) -> RowStore:
        if self._group is None or key not in self._group:
            raise KeyError(key)
        return sized(RowStore(self._group[key], f"{self._prefix}['{key}']"), self._shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._group.keys() if self._group is not None else ())

    def __len__(self) -> int:
        return len(self._group) if self._group is not None else 0


class H5adFile:
    """An h5ad opened read-only: ``obs``/``var`` in memory, matrices on disk.

    Use as a context manager (or call :meth:`close`). Raises :class:`DataError` for a missing,
    non-HDF5 or damaged file.
    """

    def __init__(self, path: str | Path):
        self.path = check_file(path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:  # not HDF5, or cut short: as damaged as below
            raise unreadable(self.path, exc) from None
        try:
            if _legacy(self.file):  # anndata < 0.7: obs and var as tables, raw as raw.X
                self.obs, self.var, raw_var = _legacy_frames(self.path)
                raw_x = self.file.get("raw.X") if raw_var is not None else None
            else:
                self.obs: pd.DataFrame = _named(read_elem(self.file["obs"]))
                self.var: pd.DataFrame = _named(read_elem(self.file["var"]))
                raw = self.file.get("raw")
                raw_var = _named(read_elem(raw["var"])) if raw is not None and "X" in raw else None
                raw_x = raw["X"] if raw_var is not None else None
        except Exception as exc:  # h5py/anndata raise many types for damaged files
            self.file.close()
            raise unreadable(self.path, exc) from None
        self.layers = _Matrices(self.file.get("layers"), "layers", (len(self.obs), len(self.var)))
        self.raw = None
        if raw_x is not None:
            n_raw = int(_shape(raw_x)[0])
            raw_store = sized(RowStore(raw_x, "raw.X"), (len(self.obs), len(raw_var)))
            self.raw = SimpleNamespace(X=raw_store, var_names=raw_var.index,
                                       var=raw_var, shape=(n_raw, len(raw_var)))

    @property
    def X(self) -> RowStore:
        if "X" not in self.file:
            raise DataError(f"{self.path} has no X; write the expression matrix into X")
        return sized(RowStore(self.file["X"], "X"), (self.n_obs, self.n_vars))

    @property
    def uns(self) -> dict:
        """The file's ``uns``, read when first asked for."""
        if not hasattr(self, "_uns"):
            self._uns = read_elem(self.file["uns"]) if "uns" in self.file else {}
        return self._uns

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var)

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    def matrix(self, expr: Expression) -> tuple[RowStore, pd.Index]:
        """The counts (or, without counts, ``X``) on disk with their gene names (as ``counts_matrix``)."""
        if expr.counts == "layers/counts":
            return self.layers["counts"], pd.Index(self.var_names)
        if expr.counts == "raw.X":
            return self.raw.X, pd.Index(self.raw.var_names)
        return self.X, pd.Index(self.var_names)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> H5adFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sized(store: RowStore, shape: tuple[int, int]) -> RowStore:
    """``store`` where its shape is ``shape`` (its file's cells by the genes of its ``var``):
    else a damaged file, whose rows would be read against the wrong genes."""
    if tuple(store.shape) != tuple(shape):
        raise DataError(f"{store._file}: {store.name} is {store.shape[0]:,} x {store.shape[1]:,}, "
                        f"but the file has {shape[0]:,} cells x {shape[1]:,} genes in obs and "
                        f"var; {_WRITE_AGAIN}")
    return store


def _named(frame: pd.DataFrame) -> pd.DataFrame:
    """``obs`` or ``var`` with its names as text, as anndata reads them: an index another tool
    stored as numbers (genes 0, 1, ...) would otherwise match no name read by anndata."""
    if not all(isinstance(name, str) for name in frame.index):
        frame.index = frame.index.astype(str)
    return frame


def _shape(elem: h5py.Group | h5py.Dataset) -> tuple[int, int]:
    return tuple(elem.shape) if isinstance(elem, h5py.Dataset) else tuple(elem.attrs["shape"])


def _legacy(file: h5py.File) -> bool:
    """Whether ``file`` is an h5ad of anndata before 0.7: ``obs`` and ``var`` stored as tables
    (compound datasets, categories in ``uns``), which ``read_elem`` returns as record arrays."""
    return any(isinstance(file.get(key), h5py.Dataset) for key in ("obs", "var"))


def _legacy_frames(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """``obs``, ``var`` and ``raw.var`` (None: no raw) of an h5ad of anndata before 0.7, read as
    anndata reads them (categories restored from ``uns``); the matrices stay on disk."""
    import anndata as ad

    with names_said_here():  # checked as every file's are
        adata = ad.read_h5ad(path, backed="r")
    try:
        raw_var = None if adata.raw is None else adata.raw.var.copy()
        return adata.obs.copy(), adata.var.copy(), raw_var
    finally:
        adata.file.close()



@contextmanager
def h5ad_file(path: str | Path) -> Iterator[h5py.File]:
    """An h5ad written into ``PATH.<pid>@<host>.<random>.part`` and renamed to ``path`` when
    the block ends (a killed writer's part file is removed by the next writer of ``path``).

    The caller writes ``X``, ``obs``, ``var`` and ``uns`` (e.g. with :class:`CSRWriter` and
    ``anndata.io.write_elem``); the other elements are written empty. On any error the part file
    is removed and ``path`` is left as it was; a full disk or an unwritable folder is a
    one-line :class:`DataError`.
    """
    from anndata.io import write_elem

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replaced(path) as part, h5py.File(part, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        yield f
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            if key not in f:
                write_elem(f, key, {})


#: outputs whose HDF5 writing failed in this process (:func:`_replaced`): HDF5 keeps such a
#: file's objects open, unable to flush or close them, and crashes when the process exits
_FAILED_WRITES: list[Path] = []


def hdf5_failures() -> int:
    """How many h5ad writes failed in this process so far (a full disk mid-write): when one
    fails in a command, the command line exits at once after its message (``os._exit``),
    before HDF5's clean-up at exit crashes on the file it could not close (a segmentation
    fault after the right message)."""
    return len(_FAILED_WRITES)


def nbytes(adata) -> int:
    """About the bytes ``adata`` takes in an uncompressed h5ad: its matrices' values and
    indices, ``obs`` and ``var``."""
    def size(m) -> int:
        if m is None:
            return 0
        if sp.issparse(m):
            return sum(int(getattr(m, k).nbytes) for k in ("data", "indices", "indptr")
                       if hasattr(m, k))
        return int(getattr(m, "nbytes", 0) or 0)

    total = size(adata.X)
    for group in ("layers", "obsm", "varm", "obsp", "varp"):
        total += sum(size(v) for v in getattr(adata, group, {}).values())
    if getattr(adata, "raw", None) is not None:
        total += size(adata.raw.X)
    for frame in (adata.obs, adata.var):
        total += int(frame.memory_usage(index=True, deep=True).sum())
    return total


def _write_advice(exc: OSError) -> str:
    """What to do when writing failed: the cause's remedy, not free disk space for all."""
    import errno

    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable for you: choose another output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free disk space or choose another output"
    return "choose another output"


@contextmanager
def _replaced(path: Path) -> Iterator[Path]:
    """``PATH.<pid>@<host>.<random>.part`` to write into, this writer's own (two writers of one
    output never share a part file); renamed to ``path`` when the block ends, removed when it fails (a full
    disk or an unwritable folder: a one-line :class:`DataError`)."""
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a file name for the .h5ad output")
    try:
        with replaced(path, ".part") as part:  # a new file: never another's, nor a link
            yield part
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):  # HDF5 cannot close it
            _FAILED_WRITES.append(path)
        raise DataError(f"cannot write {path} ({exc}); {_write_advice(exc)}") from None


def write_h5ad(adata, path: str | Path) -> Path:
    """``adata.write_h5ad`` made atomic: written into ``PATH.<pid>@<host>.<random>.part`` and
    renamed to ``path``.

    A failure or a kill mid-write never leaves a partial file under ``path`` (the part file is
    removed on error); ``path`` an existing directory, a full disk or an unwritable folder is a
    one-line :class:`DataError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replaced(path) as part:  # made first: killed writers' files are gone before the check
        check_disk_space(path, nbytes(adata), "the h5ad")
        adata.write_h5ad(part)
    return path


def as_written(adata):
    """A user's ``adata`` as anndata writes it, for :func:`write_h5ad` to write without
    changing it: anndata's ``write_h5ad`` turns the text columns of ``obs``, ``var`` and
    ``raw.var`` into categoricals in place (and a view into an AnnData of its own), so
    ``cs.run(adata)`` handed the AnnData back changed. The same conversion is made on copies of
    those tables, in an AnnData that shares every matrix (a view's are its rows, as its write
    reads them). cellsynth's own AnnData objects are written as they are."""
    import anndata as ad
    from pandas.api.types import infer_dtype

    if not isinstance(adata, ad.AnnData) or adata.isbacked:
        return adata
    tables = [adata.obs, adata.var] + ([adata.raw.var] if adata.raw is not None else [])
    if not adata.is_view and not any(infer_dtype(t[c]) == "string" for t in tables for c in t):
        return adata  # nothing anndata would change
    obs, var = adata.obs.copy(), adata.var.copy()
    raw = None
    if adata.raw is not None:
        raw = {"X": adata.raw.X, "var": adata.raw.var.copy(), "varm": dict(adata.raw.varm)}
    for table in (obs, var, *([raw["var"]] if raw else [])):
        adata.strings_to_categoricals(table)  # a table given: only that table changes
    return ad.AnnData(X=adata.X, obs=obs, var=var, uns=adata.uns, obsm=dict(adata.obsm),
                      varm=dict(adata.varm), layers=dict(adata.layers), obsp=dict(adata.obsp),
                      varp=dict(adata.varp), raw=raw)  # fmt: skip
