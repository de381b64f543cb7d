"""Gene-level fidelity: can a classifier that sees individual genes tell generated cells apart?

The metrics of :mod:`~cellsynth.metrics.fidelity` work in 30 PCs of the HVGs, which average away
the many lowly expressed genes: a generator can get their zeros or dispersion wrong while the PCs
sit at their floor. :func:`gene_c2st` is a classifier two-sample test on the genes themselves;
:func:`gene_fidelity` gives it overall and per type beside its real-vs-real floor, with per-gene
distances by expression bin and per-gene statistics for figures; :func:`gene_importance` names
the genes that tell the cells apart. Values are ``log1p(counts / library size * target_sum)``,
kept sparse (a subsample's genes detected in most of its cells are centred, hence dense).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError, DataError, listed
from ..options import progress_bar
from ..seeds import derive_seed
from .depth import compare_depth
from .fidelity import _gene_stats
from .gene_test import (
    C_L2,
    MIN_CELLS,
    GeneSet,
    _cv_auc,
    _detected,
    _features,
    _inputs,
    _lognorm,
    _select,
)
from .space import paired_labels

logger = logging.getLogger(__name__)

#: ``repeats="auto"`` of :func:`gene_fidelity`: enough halvings that about this many cells a side
#: are compared in all, but at most :data:`MAX_REPEATS`. One halving of Kang's 303 test cells
#: (151 a side) moved the floor by 0.063 (sd over 10 seeds: 0.416-0.587), the generated cells'
#: AUC by 0.028; averaged over 10, the floor's sd is about a third of that
REPEAT_CELLS = 2_000
MAX_REPEATS = 10


def _distances(la: sp.csr_matrix, lb: sp.csr_matrix, cols: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene 1-D Wasserstein distance and KS statistic of two samples of ``n`` cells each: W1
    is the mean absolute difference of sorted values, of which only the non-zero tails differ."""
    n = la.shape[0]
    ca, cb = la[:, cols].tocsc(), lb[:, cols].tocsc()
    w1, ks = np.zeros(len(cols)), np.zeros(len(cols))
    for j in range(len(cols)):
        a = np.sort(ca.data[ca.indptr[j]:ca.indptr[j + 1]]).astype(np.float64)
        b = np.sort(cb.data[cb.indptr[j]:cb.indptr[j + 1]]).astype(np.float64)
        k = max(len(a), len(b))
        qa, qb = np.zeros(k), np.zeros(k)
        qa[k - len(a):], qb[k - len(b):] = a, b
        w1[j] = np.abs(qa - qb).sum() / n
        v = np.concatenate([[0.0], a, b])
        fa = n - len(a) + np.searchsorted(a, v, side="right")
        fb = n - len(b) + np.searchsorted(b, v, side="right")
        ks[j] = np.abs(fa - fb).max() / n
    return w1, ks


def _bins(mean: np.ndarray, dist: dict[str, np.ndarray], n_bins: int) -> list[dict[str, Any]]:
    """Median of each distance in ``n_bins`` quantile bins of the real mean expression."""
    edges = np.quantile(mean, np.linspace(0.0, 1.0, n_bins + 1))
    which = np.clip(np.searchsorted(edges[1:-1], mean, side="right"), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = which == b
        row: dict[str, Any] = {"bin": b, "mean_low": float(edges[b]),
                               "mean_high": float(edges[b + 1]), "n_genes": int(sel.sum())}
        row.update({k: float(np.median(v[sel])) if sel.any() else None for k, v in dist.items()})
        out.append(row)
    return out


def _compare(a: sp.csr_matrix, b: sp.csr_matrix, s: sp.csr_matrix, *, seed: int, genes: GeneSet,
             n_genes: int, min_cells: int, n_folds: int, n_bins: int, target_sum: float,
             distances: bool = True) -> dict[str, Any]:  # fmt: skip
    """Real half ``a`` against synthetic ``s`` and against real half ``b`` (the floor), with the
    same cells of ``a``, the same genes (chosen on ``a``) and the same number of cells; the
    per-gene distances too unless ``distances`` is false (a repeat averages only the AUCs)."""
    la, lb, ls = (_lognorm(x, target_sum) for x in (a, b, s))
    cols = _select(la, genes, n_genes, min_cells)
    fa = _features(la, cols)
    auc = _cv_auc(fa, _features(ls, cols), derive_seed(seed, "synth"), n_folds)
    floor = _cv_auc(fa, _features(lb, cols), derive_seed(seed, "floor"), n_folds)
    if not distances:
        return {"auc": auc, "floor_auc": floor, "n_cells": int(a.shape[0]), "n_genes": len(cols)}
    dcols = np.flatnonzero(_detected(la) >= min_cells)
    w_s, ks_s = _distances(la, ls, dcols)
    w_f, ks_f = _distances(la, lb, dcols)
    mean = np.asarray(la[:, dcols].mean(axis=0), dtype=np.float64).ravel()
    return {"auc": auc, "floor_auc": floor, "n_cells": int(a.shape[0]), "n_genes": len(cols),
            "distance_bins": _bins(mean, {"wasserstein": w_s, "ks": ks_s,
                                          "floor_wasserstein": w_f, "floor_ks": ks_f}, n_bins),
            "n_distance_genes": len(dcols)}


def _halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of the cells, split within each label."""
    first, second = [], []
    for t in sorted(set(labels.tolist())):
        idx = rng.permutation(np.flatnonzero(labels == t))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2 : 2 * (len(idx) // 2)])  # equal halves: an odd cell waits
    return np.concatenate(first), np.concatenate(second)


def _draw(pools: tuple[np.ndarray, ...], size: int, rng: np.random.Generator
          ) -> list[np.ndarray]:
    """``size`` cells of each pool, drawn without replacement, sorted."""
    return [np.sort(rng.choice(p, size=size, replace=False)) for p in pools]


def _gene_block(r: sp.csr_matrix, s: sp.csr_matrix, target_sum: float,
                gene_names: Sequence[str] | None) -> dict[str, list]:
    """Per-gene real and synthetic mean, zero fraction and variance (genes detected anywhere)."""
    sr, ss = _gene_stats(r, target_sum), _gene_stats(s, target_sum)
    keep = np.flatnonzero((sr["zero_fraction"] < 1) | (ss["zero_fraction"] < 1))
    out: dict[str, list] = {"index": keep.tolist()}
    if gene_names is not None:
        out["gene"] = [str(gene_names[i]) for i in keep]
    for key in ("mean", "zero_fraction", "variance"):
        out[f"real_{key}"] = sr[key][keep].tolist()
        out[f"synth_{key}"] = ss[key][keep].tolist()
    return out


def gene_fidelity(
    real_counts: Any, synth_counts: Any, *, real_labels: Any = None, synth_labels: Any = None,
    seed: int, genes: GeneSet = "hvg", n_genes: int = 500, min_cells: int = 5, n_folds: int = 5,
    max_n: int = 5_000, n_bins: int = 5, min_type_cells: int = 20, target_sum: float = 1e4,
    gene_names: Sequence[str] | None = None, repeats: int | Literal["auto"] = "auto",
) -> dict[str, Any]:
    """Gene-level fidelity of synthetic cells, overall and per type, each beside its floor.

    The real cells are split into two disjoint random halves A and B (within each type when
    labels are given). Every number compares half A with the synthetic cells and, as its floor,
    A with B, in the same way: the same cells of A, the genes chosen on A (as in
    :func:`gene_c2st`), and the same number of cells on each side (the smallest of A, B and the
    synthetic cells, at most ``max_n``), so the floor is what a perfect generator would score.
    With few cells one halving is noisy (the floor most: its two sides are both halves), so the
    AUCs are means over ``repeats`` independent halvings, subsamples and folds.

    Parameters
    ----------
    real_counts, synth_counts
        Raw counts, cells x genes, the same genes in the same order.
    real_labels, synth_labels
        Cell type of each cell (both or neither). With them, the overall comparison takes the
        same number of cells of each common type from A, B and the synthetic cells, so differing
        type proportions are not scored, and each type is also compared on its own.
    seed
        Seeds the halves, subsamples, folds and classifiers.
    genes, n_genes, min_cells, n_folds, target_sum
        As in :func:`gene_c2st`; ``min_cells`` also picks the genes whose distances are taken.
    max_n
        Cells per side at most, overall and per type.
    n_bins
        Quantile bins of mean expression (on A) for the distance summaries.
    min_type_cells
        A type is compared when each of A, B and the synthetic cells has this many of its cells
        (at least :data:`MIN_CELLS`); other types are listed under ``skipped`` with the reason.
    gene_names
        Names of the genes, given in the per-gene block.
    repeats
        Halvings the AUCs are averaged over; ``"auto"``: enough that :data:`REPEAT_CELLS` cells
        a side are compared overall, at most :data:`MAX_REPEATS` (one from 2,000 cells a side).
        The first halving is the one a single repeat gives; distances and per-gene statistics
        are the first halving's.

    Returns
    -------
    dict
        ``overall`` and ``per_type`` (type -> the same keys): ``auc``, ``floor_auc`` (means over
        the halvings), ``auc_sd`` and ``floor_auc_sd`` (their spread over the halvings),
        ``repeats``, ``n_cells`` (per side), ``n_genes`` (classifier genes), ``n_distance_genes``
        (genes detected in ``min_cells`` cells of A) and ``distance_bins``: per bin of mean
        expression its ``mean_low``/``mean_high``, ``n_genes`` and the median per-gene
        ``wasserstein`` and ``ks`` (synthetic vs A) beside ``floor_wasserstein`` and
        ``floor_ks`` (B vs A; ``None`` for an empty bin); overall also ``n_per_type``.
        ``skipped``: type -> why it was not compared. ``genes``: for every gene detected in the
        compared cells, ``index`` (and ``gene``), ``real_``/``synth_`` ``mean``,
        ``zero_fraction`` and ``variance`` of log-normalised values (A and B against the
        synthetic cells of the overall comparison), for mean-zero-fraction and mean-variance
        figures. ``depth``: genes detected per cell at equal library size and type, the
        synthetic cells against A beside B (:func:`~cellsynth.metrics.depth.compare_depth`,
        the first halving's cells; None with too few). ``config``: the settings. Only floats, ints, strings, lists, dicts and None.
    """
    r, s = _inputs(real_counts, synth_counts, "gene_fidelity", real_factor=2, genes=genes,
                   n_genes=n_genes, n_folds=n_folds, min_cells=min_cells)
    rl, sl, labelled = paired_labels(real_labels, synth_labels, r.shape[0], s.shape[0])
    if gene_names is not None and len(gene_names) != r.shape[1]:
        raise DataError(f"{len(gene_names)} gene names for {r.shape[1]} genes; give one per gene")
    if repeats != "auto" and (isinstance(repeats, bool) or not isinstance(repeats, int)
                              or repeats < 1):  # fmt: skip
        raise ConfigError(f"repeats must be a positive integer or 'auto', got {repeats!r}")
    opts = {"genes": genes, "n_genes": n_genes, "min_cells": min_cells, "n_folds": n_folds,
            "n_bins": n_bins, "target_sum": target_sum}
    sizes = {"max_n": int(max_n), "min_type_cells": max(int(min_type_cells), MIN_CELLS)}
    first = _halving(r, s, rl, sl, labelled, seed, opts, **sizes)
    n = int(first["overall"]["n_cells"])
    if repeats == "auto":
        repeats = int(min(MAX_REPEATS, max(1, -(-REPEAT_CELLS // max(n, 1)))))
    runs = [first] + [_halving(r, s, rl, sl, labelled, derive_seed(seed, f"gene-repeat-{k}"),
                               {**opts, "distances": False}, **sizes, quiet=True)
                      for k in range(1, repeats)]  # fmt: skip
    overall, per_type = first["overall"], first["per_type"]
    _average(overall, [run["overall"] for run in runs])
    for t, rep in per_type.items():
        _average(rep, [run["per_type"][t] for run in runs if t in run["per_type"]])
    a, b, ss = first["cells"]
    depth = compare_depth(r[a], r[b], s[ss], rl[a], rl[b], sl[ss], sizes["min_type_cells"])
    return {"overall": overall, "per_type": per_type, "skipped": first["skipped"], "depth": depth,
            "genes": _gene_block(r[np.sort(np.r_[a, b])], s[ss], target_sum, gene_names),
            "config": {**opts, **sizes, "repeats": repeats,
                       "classifier": f"L2 logistic regression, C={C_L2}, standardised "
                                     "log-normalised values and detection indicators"}}


def _average(into: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Set ``into``'s AUCs to their means over ``runs`` (``into`` among them), with their spread."""
    for key in ("auc", "floor_auc"):
        values = np.array([run[key] for run in runs], dtype=np.float64)
        into[key], into[f"{key}_sd"] = float(values.mean()), float(values.std())
    into["repeats"] = len(runs)


def _halving(r: sp.csr_matrix, s: sp.csr_matrix, rl: np.ndarray, sl: np.ndarray, labelled: bool,
             seed: int, opts: dict[str, Any], *, max_n: int, min_type_cells: int,
             quiet: bool = False) -> dict[str, Any]:
    """One halving of :func:`gene_fidelity`: ``overall``, ``per_type``, ``skipped`` and the
    overall comparison's ``cells`` (rows of A, B and the synthetic cells)."""
    ia, ib = _halves(rl, np.random.default_rng(derive_seed(seed, "gene-halves")))
    # overall: the same number of cells of each common type from A, B and the synthetic cells
    types = sorted(set(rl.tolist()) | set(sl.tolist()))
    pools = {t: (ia[rl[ia] == t], ib[rl[ib] == t], np.flatnonzero(sl == t)) for t in types}
    avail = {t: min(len(p) for p in pools[t]) for t in types if (rl == t).any() and (sl == t).any()}
    total = sum(avail.values())
    take = {t: (int(v * max_n / total) if total > max_n else v) for t, v in avail.items()}
    if sum(take.values()) < MIN_CELLS:
        raise DataError(f"only {sum(take.values())} cells per side can be compared (real halves "
                        f"and synthetic cells of common types); gene_fidelity needs {MIN_CELLS}")
    srng = np.random.default_rng(derive_seed(seed, "gene-overall-sample"))
    a, b, ss = (np.concatenate(p) for p in zip(*(_draw(pools[t], take[t], srng) for t in take), strict=True))
    overall = _compare(r[a], r[b], s[ss], seed=derive_seed(seed, "gene-overall"), **opts)
    overall["n_per_type"] = take if labelled else None

    per_type: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    if labelled:
        for t in progress_bar(types, desc="gene fidelity per type", unit="type", here=not quiet):
            n_r, n_s = int((rl == t).sum()), int((sl == t).sum())
            n = min(*(len(p) for p in pools[t]), int(max_n))
            if n < min_type_cells:
                skipped[t] = (f"{n_r} real and {n_s} synthetic cells; the test needs "
                              f"{min_type_cells} per side: {2 * min_type_cells} real cells (two "
                              f"halves) and {min_type_cells} synthetic")
                continue
            trng = np.random.default_rng(derive_seed(seed, f"gene-type-sample:{t}"))
            ja, jb, js = _draw(pools[t], n, trng)
            try:
                per_type[t] = _compare(r[ja], r[jb], s[js],
                                       seed=derive_seed(seed, f"gene-type:{t}"), **opts)
            except DataError as err:  # e.g. no gene detected in min_cells of the type's cells
                skipped[t] = str(err)
        if skipped and not quiet:
            logger.info("gene fidelity: %d type(s) not compared: %s", len(skipped),
                        listed([f"{k}: {v}" for k, v in skipped.items()], sep="; "))
    return {"overall": overall, "per_type": per_type, "skipped": skipped, "cells": (a, b, ss)}
