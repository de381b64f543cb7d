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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from ..data.csr import stack_rows
from ..data.qc import normalise_log1p
from ..errors import ConfigError, DataError, listed
from ..options import progress_bar
from ..seeds import derive_seed
from .depth import compare_depth
from .fidelity import _gene_stats, _subsample
from .space import normalised_dispersion, paired_labels

logger = logging.getLogger(__name__)

#: fewest cells per side a gene-level two-sample test accepts (below it, an error)
MIN_CELLS = 10
#: inverse L2 strength of the logistic regression on standardised features
C_L2 = 0.01
#: features are divided by their standard deviation, but by no less than this, so that a gene
#: detected in (or missing from) only a handful of cells cannot single those cells out
SCALE_FLOOR = 0.1
#: ``repeats="auto"`` of :func:`gene_fidelity`: enough halvings that about this many cells a side
#: are compared in all, but at most :data:`MAX_REPEATS`. One halving of Kang's 303 test cells
#: (151 a side) moved the floor by 0.063 (sd over 10 seeds: 0.416-0.587), the generated cells'
#: AUC by 0.028; averaged over 10, the floor's sd is about a third of that
REPEAT_CELLS = 2_000
MAX_REPEATS = 10

GeneSet = Literal["hvg", "detected"]


def _inputs(real_counts: Any, synth_counts: Any, what: str, *, real_factor: int = 1,
            genes: str = "hvg", n_genes: int = 1, n_folds: int = 2, min_cells: int = 1
            ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Both count matrices as float32 CSR, checked: options, genes, signs, numbers of cells."""
    if genes not in ("hvg", "detected"):
        raise ConfigError(f"genes must be 'hvg' or 'detected', not {genes!r}")
    if n_genes < 1 or n_folds < 2 or min_cells < 1:
        raise ConfigError(f"need n_genes >= 1, n_folds >= 2 and min_cells >= 1; got {n_genes}, "
                          f"{n_folds} and {min_cells}")
    r = sp.csr_matrix(real_counts, dtype=np.float32)
    s = sp.csr_matrix(synth_counts, dtype=np.float32)
    if r.shape[1] != s.shape[1]:
        raise DataError(f"real counts have {r.shape[1]} genes but synthetic counts have "
                        f"{s.shape[1]}; give both the same genes in the same order")
    for x, side in ((r, "real"), (s, "synthetic")):
        if x.data.size and x.data.min() < 0:
            raise DataError(f"{side} counts have negative values; give raw counts")
    if r.shape[0] < real_factor * MIN_CELLS or s.shape[0] < MIN_CELLS:
        raise DataError(f"{what} needs at least {real_factor * MIN_CELLS} real and {MIN_CELLS} "
                        f"synthetic cells, got {r.shape[0]} and {s.shape[0]}; give more cells")
    return r, s


def _lognorm(x: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    out = normalise_log1p(x, target_sum)
    out.eliminate_zeros()
    return out


def _detected(ln: sp.csr_matrix) -> np.ndarray:
    """Cells in which each gene is detected (non-zero)."""
    return np.bincount(ln.indices, minlength=ln.shape[1])


def _select(ln_real: sp.csr_matrix, genes: GeneSet, n_genes: int, min_cells: int) -> np.ndarray:
    """Sorted columns: genes detected in ``min_cells`` real cells, the ``n_genes`` most variable
    of them by :func:`~.space.normalised_dispersion` (``"hvg"``) or all of them (``"detected"``)."""
    ok = _detected(ln_real) >= min_cells
    if not ok.any():
        raise DataError(f"no gene is detected in at least {min_cells} of the {ln_real.shape[0]} "
                        "real cells; lower min_cells or give more cells")
    if genes == "detected":
        return np.flatnonzero(ok)
    disp = np.where(ok, normalised_dispersion(ln_real), -np.inf)
    order = np.argsort(-disp, kind="stable")[: min(int(n_genes), int(ok.sum()))]
    return np.sort(order)


def _features(ln: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    """Each gene's log-normalised value and whether it is detected, side by side (sparse)."""
    x = ln[:, cols].tocsr()
    return sp.hstack([x, x.astype(bool).astype(np.float32)], format="csr")


@dataclass
class _Scaling:
    """Standardisation fitted on training rows: each column divided by its standard deviation
    (at least :data:`SCALE_FLOOR`); columns non-zero in over half the rows also centred (dense,
    about the size of their sparse form). Uncentred, such columns leave the regression
    ill-conditioned, stopping with weight on near-constant columns that single out a few cells.
    """

    scale: np.ndarray  # (n_features,)
    centred: np.ndarray  # sorted columns that are centred
    mean: np.ndarray  # (len(centred),) their training means, scaled

    @classmethod
    def fit(cls, x: sp.csr_matrix) -> _Scaling:
        n = x.shape[0]
        mean = np.asarray(x.sum(axis=0), dtype=np.float64).ravel() / n
        mean_sq = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel() / n
        scale = np.maximum(np.sqrt(np.maximum(mean_sq - mean**2, 0.0)), SCALE_FLOOR)
        centred = np.flatnonzero(np.bincount(x.indices, minlength=x.shape[1]) > n / 2)
        return cls(scale, centred, mean[centred] / scale[centred])

    @property
    def order(self) -> np.ndarray:
        """Input column of each output column (the centred columns come last)."""
        rest = np.setdiff1d(np.arange(len(self.scale)), self.centred)
        return np.r_[rest, self.centred]

    def __call__(self, x: sp.csr_matrix) -> sp.csr_matrix:
        xs = (x @ sp.diags(1.0 / self.scale)).tocsr()
        rest = self.order[: len(self.scale) - len(self.centred)]
        dense = xs[:, self.centred].toarray() - self.mean  # (n_cells, n_centred)
        return sp.hstack([xs[:, rest], sp.csr_matrix(dense)], format="csr")


def _fit(x: sp.csr_matrix, y: np.ndarray, seed: int, *, tol: float = 1e-3, max_iter: int = 200
         ) -> tuple[_Scaling, LogisticRegression]:
    """The classifier fitted on ``x`` after :class:`_Scaling`, and the scaling. A CV AUC needs
    no tight fit (``tol`` 1e-3 and 1e-5 agree); coefficients read as importances do."""
    scaling = _Scaling.fit(x)
    clf = LogisticRegression(C=C_L2, max_iter=max_iter, tol=tol, random_state=seed)
    with warnings.catch_warnings():  # an early stop still gives a usable, deterministic fit
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaling(x), y)
    return scaling, clf


def _cv_auc(fa: sp.csr_matrix, fb: sp.csr_matrix, seed: int, n_folds: int) -> float:
    """Mean stratified-fold ROC AUC of telling the rows of ``fa`` (0) from ``fb`` (1)."""
    x = stack_rows([fa, fb])
    y = np.r_[np.zeros(fa.shape[0]), np.ones(fb.shape[0])]
    folds = StratifiedKFold(min(n_folds, fa.shape[0], fb.shape[0]), shuffle=True,
                            random_state=derive_seed(seed, "folds"))
    aucs = []
    with threadpool_limits(1):
        for train, test in folds.split(np.zeros(len(y)), y):
            scaler, clf = _fit(x[train], y[train], derive_seed(seed, "clf"))
            aucs.append(roc_auc_score(y[test], clf.predict_proba(scaler(x[test]))[:, 1]))
    return float(np.mean(aucs))


def gene_c2st(
    real_counts: Any, synth_counts: Any, *, seed: int, genes: GeneSet = "hvg", n_genes: int = 500,
    min_cells: int = 5, n_folds: int = 5, max_n: int = 5_000, target_sum: float = 1e4,
) -> float:
    """Classifier two-sample test on genes: cross-validated ROC AUC of real against synthetic.

    Each side is subsampled to ``max_n`` cells and the larger to the size of the smaller, so
    chance is 0.5. Cells are log-normalised (each to ``target_sum`` counts, log1p). The genes
    are chosen on the real cells only: those detected in at least ``min_cells`` of them, then
    (``genes="hvg"``) the ``n_genes`` of highest normalised dispersion, or (``"detected"``)
    all of them, kept sparse.

    The classifier is an L2 logistic regression (``C`` = :data:`C_L2`, one thread) on two
    standardised features per gene: its log-normalised value and its detection indicator.
    Why: every gene is its own feature on one scale, so a lowly expressed gene weighs as much
    as a marker; a linear model pools many small per-gene differences, which is how generators
    err in the genes PCs average away, where a few boosting rounds use a handful of genes; the
    indicators show a changed zero fraction or dispersion directly, not only a changed mean;
    it is fast on sparse input, and its coefficients name the genes (:func:`gene_importance`).
    Measured on negative-binomial cells (2,000 a side, 1,000 genes, the low half changed; 30 PCs
    score 0.49-0.55): zero-inflated 0.94 (XGBoost, 30 rounds of depth 2: 0.88; no indicators:
    0.69), overdispersion x10 0.73 (0.68), mean x1.3 0.78 (0.63); one distribution 0.49 (0.49).

    Parameters
    ----------
    real_counts, synth_counts
        Raw counts, cells x genes (sparse or dense), the same genes in the same order.
    seed
        Seeds the subsamples, the folds and the classifier.
    genes, n_genes
        ``"hvg"`` (the ``n_genes`` HVGs) or ``"detected"`` (see above).
    min_cells
        A gene must be detected in this many real cells.
    n_folds, max_n
        Stratified cross-validation folds (fewer for fewer cells); cells per side at most.
    target_sum
        Counts per cell before log1p.

    Returns
    -------
    float
        The mean AUC over folds: about 0.5 when indistinguishable, 1.0 when separable.
    """
    r, s = _inputs(real_counts, synth_counts, "gene_c2st", genes=genes, n_genes=n_genes,
                   n_folds=n_folds, min_cells=min_cells)
    rng = np.random.default_rng(derive_seed(seed, "gene-c2st-sample"))
    m = min(r.shape[0], s.shape[0], int(max_n))
    lr = _lognorm(r[_subsample(r.shape[0], m, rng)], target_sum)
    ls = _lognorm(s[_subsample(s.shape[0], m, rng)], target_sum)
    cols = _select(lr, genes, n_genes, min_cells)
    return _cv_auc(_features(lr, cols), _features(ls, cols), derive_seed(seed, "gene-c2st"),
                   n_folds)


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


def gene_importance(
    real_counts: Any, synth_counts: Any, gene_names: Sequence[str], *, seed: int, top: int = 30,
    min_cells: int = 5, max_n: int = 5_000, target_sum: float = 1e4,
) -> list[dict[str, Any]]:
    """The genes the gene-level classifier uses to tell synthetic cells from real ones.

    The classifier of :func:`gene_c2st` is fitted once on a balanced subsample (``max_n`` cells
    per side at most) over every gene detected in at least ``min_cells`` cells of either side
    (a gene only the generator expresses is a difference too). A gene's importance is the sum
    of the absolute coefficients of its standardised value and detection indicator.

    Parameters
    ----------
    real_counts, synth_counts
        Raw counts, cells x genes, the same genes in the same order.
    gene_names
        One name per gene.
    seed
        Seeds the subsample and the classifier.
    top, min_cells, max_n, target_sum
        Genes returned; the others as in :func:`gene_c2st`.

    Returns
    -------
    list of dict
        The ``top`` genes, most important first: ``gene``, ``index``, ``importance``,
        ``coef_value`` and ``coef_detected`` (positive: pushes towards synthetic),
        ``real_mean_quantile`` (0 = the lowest real mean expression of the genes used, 1 = the
        highest), and ``real_``/``synth_`` ``mean``, ``zero_fraction`` and ``variance`` of
        log-normalised values in the subsample.
    """
    r, s = _inputs(real_counts, synth_counts, "gene_importance", min_cells=min_cells)
    if len(gene_names) != r.shape[1]:
        raise DataError(f"{len(gene_names)} gene names for {r.shape[1]} genes; give one per gene")
    rng = np.random.default_rng(derive_seed(seed, "gene-importance-sample"))
    m = min(r.shape[0], s.shape[0], int(max_n))
    r, s = r[_subsample(r.shape[0], m, rng)], s[_subsample(s.shape[0], m, rng)]
    lr, ls = _lognorm(r, target_sum), _lognorm(s, target_sum)
    cols = np.flatnonzero(np.maximum(_detected(lr), _detected(ls)) >= min_cells)
    if not len(cols):
        raise DataError(f"no gene is detected in at least {min_cells} of the {m} cells of either "
                        "side; lower min_cells or give more cells")
    x = stack_rows([_features(lr, cols), _features(ls, cols)])
    y = np.r_[np.zeros(m), np.ones(m)]
    with threadpool_limits(1):
        scaling, clf = _fit(x, y, derive_seed(seed, "gene-importance"), tol=1e-5, max_iter=2000)
    coef = np.empty(x.shape[1])
    coef[scaling.order] = clf.coef_.ravel()
    cv, cd = coef[: len(cols)], coef[len(cols):]
    importance = np.abs(cv) + np.abs(cd)
    sr, ss = _gene_stats(r, target_sum), _gene_stats(s, target_sum)
    rank = np.argsort(np.argsort(sr["mean"][cols], kind="stable"), kind="stable")
    quantile = rank / max(len(cols) - 1, 1)
    rows = []
    for j in np.argsort(-importance, kind="stable")[: int(top)]:
        g = int(cols[j])
        stats = {f"{side}_{key}": float(st[key][g]) for side, st in (("real", sr), ("synth", ss))
                 for key in ("mean", "zero_fraction", "variance")}
        rows.append({"gene": str(gene_names[g]), "index": g, "importance": float(importance[j]),
                     "coef_value": float(cv[j]), "coef_detected": float(cd[j]),
                     "real_mean_quantile": float(quantile[j]), **stats})
    return rows
