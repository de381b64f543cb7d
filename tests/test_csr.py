"""data.csr.stack_rows: what scipy.sparse.vstack(format="csr") gives, by joining the arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data.csr import stack_rows


def test_rows_of_every_block_in_order_as_scipy_stacks_them() -> None:
    rng = np.random.default_rng(0)
    parts = [sp.random(n, 30, density=0.2, format="csr", dtype=np.float32, random_state=i)
             for i, n in enumerate([5, 0, 12, 1])]  # fmt: skip
    parts.append(sp.random(4, 30, density=0.3, format="csc", random_state=9))  # float64, CSC
    parts.append(rng.poisson(1.0, (3, 30)))  # dense integers
    got, want = stack_rows(parts), sp.vstack(parts, format="csr")
    assert got.format == "csr" and got.shape == (25, 30) and got.dtype == want.dtype
    assert np.array_equal(got.toarray(), want.toarray())
    assert got.has_sorted_indices and np.array_equal(got.indptr, want.indptr)


def test_one_block_and_the_errors() -> None:
    x = sp.random(6, 4, density=0.5, format="csr", random_state=1)
    assert np.array_equal(stack_rows([x]).toarray(), x.toarray())
    with pytest.raises(ValueError, match="at least one"):
        stack_rows([])
    with pytest.raises(ValueError, match=r"columns; the blocks have \[4, 5\]"):
        stack_rows([x, sp.csr_matrix((2, 5))])
