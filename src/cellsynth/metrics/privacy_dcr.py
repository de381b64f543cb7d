"""Distance to the closest training cell (DCR) and exact copies: the privacy audit's distances.

:func:`distance_to_closest` compares each generated cell's distance to its closest training
cell with the same for held-out real cells (a generator that does not leak puts its cells no
closer to the training cells than unseen real cells are), and counts exact and near copies.
Also the checks every part of the audit shares (:func:`_check`: three sets of embedded cells of
one dimension, at least ``MIN_CELLS`` each) and the nearest-neighbour distance the distance
attack uses. :mod:`cellsynth.metrics.privacy` runs them with the membership attacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from ..data.csr import stack_rows
from ..errors import DataError
from ..options import progress_bar
from ..seeds import as_int_hint, checked_seed, derive_seed, is_whole
from .fidelity import _subsample
from .memorisation import _MIN_GENES_FOR_COPY, _row_keys, nonzero_rows
from .space import as_csr

logger = logging.getLogger(__name__)

#: cells each of train, held-out and synthetic must have (held-out cells are split in two)
MIN_CELLS = 20
#: exact copies of training cells above this share of the generated cells flag memorisation
EXACT_SHARE = 0.01
#: held-out cells identical to training cells above this share make the audit an error (below
#: it they are reported: cells with no expressed HVG all embed at one point)
OVERLAP_SHARE = 0.01
#: points closer than this times the training cells' overall spread (root total variance) are
#: identical (float32 embeddings of one count row can differ in the last bits)
EXACT_TOL = 1e-6
#: the held-out DCR quantile each generated cell's DCR is compared with
DCR_QUANTILE = 0.05


def check_audit_size(n: int, name: str, fix: str = "give more cells") -> None:
    """A :class:`DataError` when a set of the privacy audit (``name``: members, held-out or
    synthetic cells) has fewer than :data:`MIN_CELLS` cells; ``fix`` says what to do."""
    if n < MIN_CELLS:
        raise DataError(f"{name} has {n} cells but the privacy audit needs at least "
                        f"{MIN_CELLS} in each set; {fix}")


def check_settings(seed: Any, max_n: Any, k: Any = 1) -> tuple[int, int, int]:
    """``(seed, max_n, k)`` of an audit function, checked before any work: a seed
    (:func:`~cellsynth.seeds.checked_seed`), ``max_n`` a whole number of at least
    :data:`MIN_CELLS` (a cap below it scored AUCs on two cells a side without a word) and
    ``k`` a whole number of at least 1; a :class:`DataError` naming the one to mend."""
    seed = checked_seed(seed)
    if not is_whole(max_n) or max_n < MIN_CELLS:
        raise DataError(f"max_n must be a whole number of at least {MIN_CELLS}, the cells a side "
                        f"the privacy audit needs (an attack's AUC on fewer is noise), got "
                        f"{max_n!r}{as_int_hint(max_n)}; give max_n={MIN_CELLS} or more")
    if not is_whole(k) or k < 1:
        raise DataError(f"k must be a whole number of at least 1 (the k-th closest generated "
                        f"cell), got {k!r}{as_int_hint(k)}")
    return seed, int(max_n), int(k)


def check_donor_pair(train_donors: Any, heldout_donors: Any) -> None:
    """A :class:`DataError` when one side's donors are given without the other's: the donor
    level needs both, and one alone was skipped as "no donor column given"."""
    if (train_donors is None) != (heldout_donors is None):
        given, missing = (("train_donors", "heldout_donors") if heldout_donors is None
                          else ("heldout_donors", "train_donors"))  # fmt: skip
        raise DataError(f"{given} is given without {missing}: the donor-level attacks compare "
                        f"training donors with held-out ones; give {missing} too (each of "
                        "those cells' donor), or neither for the cell level only")


def _not_a_matrix(x: Any, name: str, what: str, give: str) -> DataError | None:
    """The error for ``x`` that is no matrix of numbers (an AnnData, a path, text), else None."""
    if isinstance(x, str | Path | bytes) or hasattr(x, "obs"):
        return DataError(f"{name} must be a matrix of {what} (numpy or scipy.sparse, one row "
                         f"a cell), not {type(x).__name__} {str(x)[:60]!r}: {give}; "
                         "cellsynth.evaluate(real, synthetic, heldout=...) reads AnnData "
                         "objects and files")
    return None


def count_matrix(x: Any, n_genes: int | None, name: str) -> sp.csr_matrix:
    """Counts given to the audit (cells x genes) as float32 CSR: a matrix, not an AnnData or
    a path, of ``n_genes`` columns and no NaN, infinite or negative value (each a one-line
    :class:`DataError` naming ``name``; an AnnData had stopped in scipy, NaN counts as "NaN
    coordinates; embed finite counts")."""
    from ..data.values import check_values

    if (err := _not_a_matrix(x, name, "raw counts", "give adata.X or adata.layers['counts']")):
        raise err
    try:
        c = as_csr(x, n_genes, what=name)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a matrix of raw counts (numpy or scipy.sparse, one row "
                        f"a cell), got {type(x).__name__} ({exc})") from None
    check_values(c.data, name)
    return c


def _points(x: Any, name: str) -> np.ndarray:
    if (err := _not_a_matrix(x, name, "embedded cells (cells x PCs)",
                             "embed their counts with EvalSpace.embed")):
        raise err
    try:
        a = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a 2-d array (cells x PCs) of embedded cells, got "
                        f"{type(x).__name__} ({exc})") from None
    if a.ndim != 2:
        raise DataError(f"{name} must be a 2-d array (cells x PCs) of embedded cells, got shape "
                        f"{a.shape}; embed counts with EvalSpace.embed first")
    check_audit_size(a.shape[0], name)
    if not np.isfinite(a).all():
        raise DataError(f"{name} has NaN or infinite coordinates; embed finite counts")
    return a


def _check(train: Any, heldout: Any, synthetic: Any) -> tuple[np.ndarray, ...]:
    """The three sets as float64 arrays, each checked, of one dimension."""
    out = tuple(_points(x, n) for x, n in ((train, "train"), (heldout, "heldout"),
                                            (synthetic, "synthetic")))
    dims = [x.shape[1] for x in out]
    if len(set(dims)) > 1:
        raise DataError(f"train, heldout and synthetic cells have {dims} dimensions; embed all "
                        "three with the same EvalSpace")
    return out


def _counts(x: Any, n: int, n_genes: int | None, name: str) -> sp.csr_matrix:
    c = count_matrix(x, n_genes, name)
    if c.shape[0] != n:
        raise DataError(f"{name} have {c.shape[0]} rows for {n} embedded cells; give the counts "
                        "of the same cells in the same order")
    return c


def _copies(refs: sp.csr_matrix, queries: sp.csr_matrix) -> np.ndarray:
    """Whether each query row equals a reference row in counts (rows of fewer than 5
    detected genes coincide by chance and never count)."""
    keys = set(_row_keys(refs))
    detected = np.diff(nonzero_rows(queries).indptr) >= _MIN_GENES_FOR_COPY
    return np.array([bool(d) and k in keys
                     for k, d in zip(_row_keys(queries), detected, strict=True)], dtype=bool)


def heldout_overlap(train_counts: sp.csr_matrix, heldout_counts: sp.csr_matrix) -> int:
    """Held-out cells identical in counts to a training cell; a :class:`DataError` when more
    than ``OVERLAP_SHARE`` of them are (the audit would score members as non-members), a
    WARNING for a few; and a :class:`DataError` when more than ``OVERLAP_SHARE`` of either
    side's cells repeat another cell of that side (:func:`_check_repeats`). Cheap (a hash per
    row): run it before any metric."""
    shared = _overlap_checked(int(_copies(train_counts, heldout_counts).sum()),
                              heldout_counts.shape[0], "counts")
    _check_repeats(heldout_counts, "held-out")
    _check_repeats(train_counts, "training")
    return shared


def _check_repeats(counts: sp.csr_matrix, side: str) -> None:
    """A :class:`DataError` when more than ``OVERLAP_SHARE`` of ``counts``' rows (of at least
    5 detected genes) repeat an earlier row: held-out cells listed twice put a candidate's
    twin in the density attack's reference (a leak flagged that is none), training cells
    listed twice put a member's twin among the cells its space is fitted on."""
    detected = np.diff(nonzero_rows(counts).indptr) >= _MIN_GENES_FOR_COPY
    keys = [k for k, d in zip(_row_keys(counts), detected, strict=True) if d]
    repeats = len(keys) - len(set(keys))
    if repeats > OVERLAP_SHARE * counts.shape[0]:
        raise DataError(
            f"{repeats} of the {counts.shape[0]} {side} cells read repeat another {side} cell, "
            "count for count (cells listed twice: a file concatenated with itself, cells "
            f"copied under other names): the privacy audit would read a cell and its twin as "
            "two cells and report leaks that are none; keep one of each (drop the repeated "
            "cells) and give the cells again")


def _overlap_checked(shared: int, n_checked: int, source: str) -> int:
    if shared > OVERLAP_SHARE * n_checked:
        raise DataError(
            f"{shared} of {n_checked} held-out cells are identical to training cells (by "
            f"{source}): held-out cells must not be training cells, or the audit is "
            "meaningless (members would be scored as non-members); split the cells again so "
            "that no cell is in both sets")
    if shared:
        logger.warning("privacy: %d held-out cell(s) identical to training cells", shared)
    return shared


def _nearest(refs: np.ndarray, queries: np.ndarray, k: int = 1) -> np.ndarray:
    """Distance from each query to its ``k``-th nearest reference point."""
    nn = NearestNeighbors(n_neighbors=k).fit(refs)
    out = np.empty(len(queries))
    for s in progress_bar(range(0, len(queries), 2_000), desc="privacy: neighbours",
                          unit="block", leave=False):
        out[s : s + 2_000] = nn.kneighbors(queries[s : s + 2_000])[0][:, k - 1]
    return out


def distance_to_closest(
    train: Any, heldout: Any, synthetic: Any, *, seed: int, max_n: int = 5_000,
    train_counts: Any = None, synthetic_counts: Any = None, heldout_counts: Any = None,
    copy_refs: Any = None,
) -> dict[str, Any]:
    """Distance to the closest training cell (DCR) of generated and of held-out cells.

    Parameters
    ----------
    train, heldout, synthetic
        Embedded cells, ``(n, d)`` each, of one evaluation space; at least ``MIN_CELLS`` each.
    seed, max_n
        Seeds the subsamples; generated and held-out cells (each) whose DCR is measured
        (every training cell is a possible closest cell).
    train_counts, synthetic_counts, heldout_counts
        Optional raw counts of the same cells (same rows and order): exact copies are then
        identical count rows (of at least 5 detected genes) over all cells, not coinciding
        points. ``train_counts`` with another of them is needed for them to be used.
    copy_refs
        Raw counts of every training cell (default ``train_counts``) among which exact copies
        and held-out cells identical to training cells are looked for, when ``train`` holds
        only some of them (:func:`~cellsynth.metrics.privacy_counts.audit_counts` embeds half).

    Returns
    -------
    dict
        ``median_synthetic``, ``median_heldout`` and their ``median_ratio`` (about 1 without
        leak, under 1 when generated cells hug training cells); ``heldout_quantile`` (the
        ``DCR_QUANTILE`` quantile of held-out DCRs) and ``share_below_quantile``, the share of
        generated cells with a smaller DCR (``DCR_QUANTILE`` = 0.05 expected without leak);
        ``exact_duplicates`` and ``exact_share`` of generated cells (``exact_source``: counts
        or embedding, where exact is a distance under ``EXACT_TOL`` times the training spread);
        ``near_threshold``, the smallest non-zero held-out DCR, and ``near_duplicates`` and
        ``near_share``, generated cells not exact copies with a DCR below it (a share of
        about ``1 / (n_heldout + 1)`` expected without leak, ``near_expected``);
        ``heldout_shared``: held-out cells identical to training cells; cells used.

    Raises
    ------
    DataError
        Too few cells, mismatched dimensions or counts, or held-out cells identical to
        training cells (more than ``OVERLAP_SHARE`` of them).
    """
    seed, max_n, _ = check_settings(seed, max_n)
    given = [n for n, c in (("synthetic_counts", synthetic_counts),
                            ("heldout_counts", heldout_counts), ("copy_refs", copy_refs))
             if c is not None]  # fmt: skip
    if train_counts is None and given:  # were left unused: copies looked for by embedding
        raise DataError(f"{' and '.join(given)} are compared with the training cells' counts, "
                        "which are not given: give train_counts too (the counts of train's "
                        "cells, in its order), or leave them out")
    tr, ho, sy = _check(train, heldout, synthetic)
    rng = np.random.default_rng(derive_seed(seed, "dcr-sample"))
    i_s, i_h = _subsample(len(sy), max_n, rng), _subsample(len(ho), max_n, rng)
    d_s, d_h = _nearest(tr, sy[i_s]), _nearest(tr, ho[i_h])
    tol = EXACT_TOL * float(np.sqrt(tr.var(axis=0).sum()))
    trc = None if train_counts is None else _counts(train_counts, len(tr), None, "train counts")
    if trc is not None and copy_refs is not None:
        trc = stack_rows([trc, count_matrix(copy_refs, trc.shape[1], "copy_refs")])
    if trc is not None and heldout_counts is not None:
        hoc = _counts(heldout_counts, len(ho), trc.shape[1], "heldout counts")
        shared, shared_source = heldout_overlap(trc, hoc), "counts"
    else:
        shared, shared_source = _overlap_checked(int((d_h <= tol).sum()), len(i_h),
                                                 "embedding"), "embedding"
    if trc is not None and synthetic_counts is not None:
        syc = _counts(synthetic_counts, len(sy), trc.shape[1], "synthetic counts")
        mask = _copies(trc, syc)
        exact, exact_share, source = int(mask.sum()), float(mask.mean()), "counts"
        exact_sub = mask[i_s] | (d_s <= tol)
    else:
        exact_sub = d_s <= tol
        exact, exact_share, source = int(exact_sub.sum()), float(exact_sub.mean()), "embedding"
    q = float(np.quantile(d_h, DCR_QUANTILE))
    unseen = d_h[d_h > tol]  # shared cells (at most OVERLAP_SHARE) left out
    near_threshold = float(unseen.min()) if len(unseen) else 0.0
    near = (d_s < near_threshold) & ~exact_sub
    med_s, med_h = float(np.median(d_s)), float(np.median(d_h))
    return {
        "median_synthetic": med_s, "median_heldout": med_h,
        "median_ratio": med_s / med_h if med_h > 0 else None,
        "quantile": DCR_QUANTILE, "heldout_quantile": q,
        "share_below_quantile": float(np.mean(d_s < q)),
        "exact_duplicates": exact, "exact_share": exact_share, "exact_source": source,
        "near_threshold": near_threshold, "near_duplicates": int(near.sum()),
        "near_share": float(near.mean()), "near_expected": 1.0 / (len(i_h) + 1),
        "heldout_shared": shared, "heldout_shared_source": shared_source,
        "n_train": len(tr), "n_synthetic": len(i_s), "n_heldout": len(i_h),
    }
