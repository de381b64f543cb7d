"""Memorisation: signs that synthetic cells copy real ones, so their fidelity means nothing.

A generator that returns its training cells scores perfectly on every distribution metric of
:mod:`.fidelity`. :func:`memorisation` looks for the copies themselves: exact copies (identical
counts), near copies (about zero distance in the evaluation space) and a two-sample AUC far below
chance (a classifier misled by identical points of both classes). The privacy audit
(:mod:`.privacy`) asks the finer question of what the cells reveal about their training cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from ..seeds import derive_seed
from .fidelity import _subsample
from .space import EvalSpace, as_csr
from .verdict import Z, auc_noise

#: a two-sample AUC below this is no success: the classifier is misled by synthetic cells that
#: are copies of real ones (identical points of both classes), not by good generation
MEMORISATION_AUC = 0.4
#: a synthetic cell nearer a real one than this fraction of the real cells' median
#: nearest-neighbour distance (in the evaluation space) is a near copy
NEAR_COPY = 1e-3
#: copies (exact or near) above this fraction of the synthetic cells flag memorisation
COPY_FRACTION = 0.01
#: cells with fewer detected genes are left out of the exact-copy count (they coincide by chance)
_MIN_GENES_FOR_COPY = 5


def nonzero_rows(x: Any) -> sp.csr_matrix:
    """``x`` as CSR without stored zeros (a copy only where it has some)."""
    x = sp.csr_matrix(x)
    zero = x.data == 0
    if not zero.any():
        return x
    kept = np.concatenate([[0], np.cumsum(~zero)])[x.indptr]
    return sp.csr_matrix((x.data[~zero], x.indices[~zero], kept), shape=x.shape)


def _row_keys(x: sp.csr_matrix) -> list[bytes]:
    """One key per row: its non-zero columns and values (an exact copy has the same key,
    whether or not either file stores some of its zeros)."""
    x = nonzero_rows(x)
    x.sort_indices()
    p, idx, val = x.indptr, x.indices.astype(np.int64), x.data.astype(np.float32)
    return [idx[p[i]:p[i + 1]].tobytes() + b"|" + val[p[i]:p[i + 1]].tobytes()
            for i in range(x.shape[0])]


def memorisation(space: EvalSpace, real_counts: Any, synth_counts: Any, *, c2st: float,
                 seed: int, max_n: int = 5_000, c2st_cells: int | None = None
                 ) -> dict[str, Any]:  # fmt: skip
    """Signs that synthetic cells copy real ones, so that their fidelity scores mean nothing.

    Parameters
    ----------
    space
        The evaluation space.
    real_counts, synth_counts
        Raw counts (cells x ``space.genes``); give every real cell at hand (scored and space
        cells), since a copy of any of them is a copy.
    c2st
        The overall two-sample AUC of the synthetic cells.
    c2st_cells
        The cells a side it was computed on: an AUC below ``MEMORISATION_AUC`` is then a sign
        only when it is also below chance by more than its noise
        (:func:`~cellsynth.metrics.verdict.auc_noise`, ``Z`` of them): on three synthetic
        cells an AUC of 0.17 is chance.
    seed
        Seeds the subsamples.
    max_n
        Cells per side for the nearest-neighbour distances.

    Returns
    -------
    dict
        ``flagged`` (bool) and ``reasons`` (sentences); ``c2st_auc``; ``exact_copies`` and
        ``exact_copy_fraction`` (synthetic cells identical in counts to a real cell, among
        those with at least 5 detected genes); ``near_copy_fraction`` (synthetic cells nearer a
        real one than ``NEAR_COPY`` times the real cells' median nearest-neighbour distance in
        the evaluation space); ``thresholds``.
    """
    r = as_csr(real_counts, len(space.genes), what="real counts")
    s = as_csr(synth_counts, len(space.genes), what="synthetic counts")
    real_keys = set(_row_keys(r))
    detected = np.diff(nonzero_rows(s).indptr) >= _MIN_GENES_FOR_COPY
    exact = sum(k in real_keys for k, d in zip(_row_keys(s), detected, strict=True) if d)
    exact_fraction = exact / max(int(detected.sum()), 1)
    rng = np.random.default_rng(derive_seed(seed, "memorisation"))
    er = space.embed(r[np.sort(_subsample(r.shape[0], max_n, rng))])
    es = space.embed(s[np.sort(_subsample(s.shape[0], max_n, rng))])
    near_fraction = float("nan")
    if len(er) >= 2 and len(es):
        nn = NearestNeighbors(n_neighbors=2).fit(er)
        scale = float(np.median(nn.kneighbors(er)[0][:, 1]))  # real-real, self left out
        d_syn = nn.kneighbors(es, n_neighbors=1)[0][:, 0]
        near_fraction = float(np.mean(d_syn <= NEAR_COPY * max(scale, 1e-12)))
    reasons = []
    noise = auc_noise(c2st_cells) if c2st_cells else 0.0
    if c2st < MEMORISATION_AUC and c2st <= 0.5 - Z * noise:
        reasons.append(f"two-sample AUC {c2st:.3f} is below {MEMORISATION_AUC}: far below 0.5, "
                       "so the synthetic cells sit on real ones, not beside them")
    if exact_fraction > COPY_FRACTION:
        reasons.append(f"{exact} synthetic cells ({exact_fraction:.1%}) are exact copies of real "
                       f"cells (looked for among {r.shape[0]:,} real cells read: a lower bound where "
                       "those are a subsample of the inputs)")
    if near_fraction > COPY_FRACTION:
        reasons.append(f"{near_fraction:.1%} of the synthetic cells are near copies of real cells "
                       "(distance about 0 in the evaluation space)")
    return {"flagged": bool(reasons), "reasons": reasons, "c2st_auc": float(c2st),
            "exact_copies": int(exact), "exact_copy_fraction": float(exact_fraction),
            "near_copy_fraction": near_fraction,
            "thresholds": {"c2st_auc": MEMORISATION_AUC, "near_copy": NEAR_COPY,
                           "copy_fraction": COPY_FRACTION}}
