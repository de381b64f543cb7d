"""Appending CSR rows to a new h5ad matrix chunk by chunk (:class:`CSRWriter`): generated
cells streamed to their file, a simulated atlas, an out-of-core run's preprocessed cells."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from ..outputs import check_disk_space


class CSRWriter:
    """Append CSR rows to a new anndata CSR group (``encoding-type`` csr_matrix), chunk by chunk.

    The group reads back with ``anndata.read_h5ad`` (also backed) and :class:`RowStore`.
    """

    def __init__(self, parent: h5py.Group, key: str, n_cols: int, *, compression: str | None = None,
                 n_rows: int | None = None):
        self.n_cols, self.n_rows, self.nnz = int(n_cols), 0, 0
        self.group = parent.create_group(key)
        self.group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                                 "shape": np.array([0, self.n_cols], dtype=np.int64)})
        # HDF5 chunks sized to the rows expected (``n_rows``, when known; a tenth of the values
        # non-zero): a file of ten cells was 2.7 MB of chunks of 262,144 values
        values = (1 << 18) if n_rows is None else int(np.clip(n_rows * self.n_cols // 10,
                                                              1 << 12, 1 << 18))
        opts = {"shape": (0,), "maxshape": (None,), "chunks": (values,), "compression": compression}
        # indices and indptr of one dtype, as scipy makes them: anndata reads them back as
        # stored, and an int32 indices beside an int64 indptr failed scikit-learn (so
        # sc.pp.pca: "Buffer dtype mismatch"); int64 once the values pass int32 (_widen)
        index_dtype = np.int32 if self.n_cols < 2**31 else np.int64
        self._data = self.group.create_dataset("data", dtype=np.float32, **opts)
        self._indices = self.group.create_dataset("indices", dtype=index_dtype, **opts)
        rows = (1 << 16) if n_rows is None else int(np.clip(n_rows + 1, 1 << 10, 1 << 16))
        self._indptr = self.group.create_dataset("indptr", data=np.zeros(1, index_dtype),
                                                 maxshape=(None,), chunks=(rows,))

    def append(self, x: sp.csr_matrix) -> None:
        """Write the rows of ``x`` after those already written, each row's columns in order
        (rows of a file whose genes were reordered in place come unsorted: anndata reads them
        back beside an int64 indptr, and scipy cannot sort such a matrix: ``.X.sum()`` failed)."""
        x = sp.csr_matrix(x)
        if not x.has_sorted_indices:
            x = x.sorted_indices()
        if x.shape[1] != self.n_cols:
            raise ValueError(f"rows have {x.shape[1]} columns, the matrix {self.n_cols}")
        check_disk_space(Path(self.group.file.filename), x.data.nbytes + x.indices.nbytes
                         + 8 * (x.shape[0] + 1), f"the next {x.shape[0]:,} rows")
        if self.nnz + x.nnz > np.iinfo(self._indptr.dtype).max:
            self._widen()
        for dataset, values in ((self._data, x.data), (self._indices, x.indices)):
            dataset.resize((self.nnz + x.nnz,))
            dataset[self.nnz :] = values
        self._indptr.resize((self.n_rows + x.shape[0] + 1,))
        self._indptr[self.n_rows + 1 :] = self.nnz + x.indptr[1:].astype(np.int64)
        self.n_rows += x.shape[0]
        self.nnz += x.nnz
        self.group.attrs["shape"] = np.array([self.n_rows, self.n_cols], dtype=np.int64)

    def _widen(self, block: int = 1 << 24) -> None:
        """Store ``indices`` and ``indptr`` as int64 from now on (the values written so far
        copied block by block): the next rows take the matrix past int32's 2**31 - 1 values."""
        for name in ("indices", "indptr"):
            old = self.group[name]
            new = self.group.create_dataset(f"{name}_int64", shape=old.shape, dtype=np.int64,
                                            maxshape=(None,), chunks=old.chunks,
                                            compression=old.compression)
            for start in range(0, old.shape[0], block):
                new[start : start + block] = old[start : start + block].astype(np.int64)
            del self.group[name]
            self.group.move(f"{name}_int64", name)
        self._indices, self._indptr = self.group["indices"], self.group["indptr"]
