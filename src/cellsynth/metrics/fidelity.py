"""Fidelity: how close synthetic cells are to real ones, overall and per cell type.

Distribution metrics work in the 30-PC :class:`~cellsynth.metrics.space.EvalSpace` embedding:

- :func:`c2st_auc`: classifier two-sample test, cross-validated ROC AUC (0.5 = indistinguishable).
- :func:`mmd_rbf`: unbiased MMD² with an RBF kernel (about 0 for one distribution).
- :func:`energy_distance`: the energy statistic ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (about 0).
- :func:`knn_precision_recall`: Kynkäänniemi et al. (2019) k-NN manifold precision and recall.

Gene-level metrics work on counts or log-normalised values: :func:`gene_stats_spearman`,
:func:`library_size_distance`, :func:`correlation_distance`, :func:`marker_overlap`.

:func:`fidelity_report` runs them all, overall and per type; :func:`real_floor` runs the same
report between two halves of the real cells, the control every number must be read against.
Large inputs are subsampled with a seeded generator up to documented caps, and every report
records how many cells each metric used. Nothing densifies more than a subsample of cells.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from scipy.stats import ConstantInputWarning, spearmanr, wasserstein_distance
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from ..data.qc import normalise_log1p
from ..errors import DataError, listed
from ..options import progress_bar
from ..seeds import derive_seed
from .space import EvalSpace, as_csr

logger = logging.getLogger(__name__)


@dataclass
class FidelityConfig:
    """Caps and settings of :func:`fidelity_report` (every cap is recorded in the report)."""

    min_cells: int = 10  # per-type metrics need this many real and synthetic cells, else skipped
    max_cells: int = 20_000  # overall: cells per side after composition matching
    max_cells_per_type: int = 2_000  # per type: cells per side
    c2st_max_n: int = 5_000  # C2ST: cells per side
    n_folds: int = 5  # C2ST cross-validation folds
    kernel_max_n: int = 2_000  # MMD and energy distance: cells per side (pairwise matrices)
    knn_max_n: int = 5_000  # k-NN precision/recall: cells per side
    k: int = 5  # k-NN precision/recall neighbours
    corr_top: int = 100  # correlation distance: genes of highest real mean
    n_markers: int = 50  # marker overlap: top markers per type


def _subsample(n: int, max_n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``min(n, max_n)`` of ``n`` items, drawn without replacement."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_n, replace=False))


def _points(x: Any, name: str, min_n: int = 2) -> np.ndarray:
    out = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] < min_n:
        raise DataError(f"{name} must be a 2-d array of at least {min_n} cells, got {out.shape}")
    return out


def _pair(a: Any, b: Any, max_n: int, seed: int, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both samples as float64 arrays, each subsampled to ``max_n`` rows, dimensions checked."""
    a, b = _points(a, "a", min_n), _points(b, "b", min_n)
    if a.shape[1] != b.shape[1]:
        raise DataError(f"samples have {a.shape[1]} and {b.shape[1]} dimensions; embed both alike")
    rng = np.random.default_rng(seed)
    return a[_subsample(len(a), max_n, rng)], b[_subsample(len(b), max_n, rng)]


def c2st_auc(a: Any, b: Any, *, seed: int, n_folds: int = 5, max_n: int = 5_000,
             rounds: int = 100, learning_rate: float = 0.1) -> float:
    """Classifier two-sample test: cross-validated ROC AUC of telling ``a`` from ``b``.

    The larger sample is subsampled to the size of the smaller (and both to ``max_n``), so chance
    is 0.5. The classifier is a small :class:`~sklearn.ensemble.HistGradientBoostingClassifier`
    (``rounds`` rounds at ``learning_rate``, 15 leaves, one thread): unlike a linear model it
    also sees differences in spread, shape and modes, not only in means. The AUC is the mean
    over stratified folds; 0.5 means indistinguishable, 1.0 perfectly separable (values a
    little under 0.5 are chance). Fewer rounds at a higher rate cost proportionally less (the
    CVAE's selection check, repeated dozens of times in a fit, uses 30 at 0.25:
    :mod:`cellsynth.models._select`).
    """
    a, b = _pair(a, b, max_n, derive_seed(seed, "c2st-sample"))
    m = min(len(a), len(b))
    rng = np.random.default_rng(derive_seed(seed, "c2st-balance"))
    a, b = a[_subsample(len(a), m, rng)], b[_subsample(len(b), m, rng)]
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(m), np.ones(m)]
    folds = StratifiedKFold(min(n_folds, m), shuffle=True, random_state=derive_seed(seed, "folds"))
    min_leaf = int(np.clip(m // 10, 1, 20))  # small samples still get splits
    aucs = []
    with threadpool_limits(1):
        for train, test in progress_bar(folds.split(x, y), total=folds.get_n_splits(), desc="C2ST",
                                unit="fold", leave=False):
            clf = HistGradientBoostingClassifier(
                max_iter=rounds, learning_rate=learning_rate, max_leaf_nodes=15,
                min_samples_leaf=min_leaf,
                early_stopping=False, random_state=derive_seed(seed, "c2st-clf"),
            )
            clf.fit(x[train], y[train])
            aucs.append(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))
    return float(np.mean(aucs))


def mmd_rbf(a: Any, b: Any, *, seed: int, max_n: int = 2_000) -> float:
    """Unbiased MMD² with an RBF kernel whose bandwidth is the median pooled distance.

    ``k(x, y) = exp(-|x - y|² / (2 σ²))`` with σ the median Euclidean distance between pairs of
    the pooled sample (at most 1,000 pooled points are used for the median). Each sample is
    subsampled to ``max_n``. The unbiased estimate is about 0 for one distribution and may be
    slightly negative.
    """
    a, b = _pair(a, b, max_n, derive_seed(seed, "mmd"))
    pooled = np.concatenate([a, b])
    rng = np.random.default_rng(derive_seed(seed, "mmd-median"))
    ref = pooled[_subsample(len(pooled), 1_000, rng)]
    d = cdist(ref, ref)
    sigma2 = float(np.median(d[np.triu_indices(len(ref), 1)])) ** 2
    if sigma2 <= 0:
        sigma2 = 1.0  # all points coincide: any bandwidth gives the same (zero) answer
    gamma = 1.0 / (2.0 * sigma2)

    def mean_k(x: np.ndarray, y: np.ndarray, same: bool) -> float:
        k = np.exp(-gamma * cdist(x, y, "sqeuclidean"))
        if same:
            n = len(x)
            return float((k.sum() - np.trace(k)) / (n * (n - 1)))
        return float(k.mean())

    return mean_k(a, a, True) + mean_k(b, b, True) - 2.0 * mean_k(a, b, False)


def energy_distance(a: Any, b: Any, *, seed: int, max_n: int = 2_000) -> float:
    """Energy statistic ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (Székely), Euclidean, unbiased.

    Within-sample means exclude the zero diagonal (U-statistics), so the value is about 0 for one
    distribution (possibly slightly negative) and grows with any difference in distribution.
    Each sample is subsampled to ``max_n``.
    """
    a, b = _pair(a, b, max_n, derive_seed(seed, "energy"))

    def within(x: np.ndarray) -> float:
        n = len(x)
        return float(cdist(x, x).sum() / (n * (n - 1)))

    return 2.0 * float(cdist(a, b).mean()) - within(a) - within(b)


def _covered(queries: np.ndarray, refs: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each query lies within the k-NN ball of at least one reference point."""
    out = np.empty(len(queries), dtype=bool)
    for s in range(0, len(queries), 1_000):
        d = cdist(queries[s : s + 1_000], refs)
        out[s : s + 1_000] = (d <= radii[None, :]).any(axis=1)
    return out


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, k]  # column 0 is the point itself (distance 0)


def knn_precision_recall(
    real: Any, synth: Any, k: int = 5, *, seed: int = 0, max_n: int = 5_000
) -> tuple[float, float]:
    """Improved precision and recall of Kynkäänniemi et al. (2019), with k-NN radii.

    Each real point's ball has the radius of its ``k``-th nearest real neighbour; precision is
    the share of synthetic points inside some real ball (are the synthetic cells realistic?).
    Recall swaps the roles: the share of real points inside some synthetic ball (is all of the
    real diversity generated?). Both are about 1 for one distribution; precision falls when
    cells lie off the real manifold, recall when modes are missed. Each side is subsampled to
    ``max_n``; both need more than ``k`` cells.
    """
    real, synth = _pair(real, synth, max_n, derive_seed(seed, "knn"), min_n=k + 1)
    precision = _covered(synth, real, _knn_radii(real, k)).mean()
    recall = _covered(real, synth, _knn_radii(synth, k)).mean()
    return float(precision), float(recall)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")  # undefined for constant input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(x[ok], y[ok]).statistic)


def _gene_stats(counts: sp.csr_matrix, target_sum: float) -> dict[str, np.ndarray]:
    """Mean and variance of log1p-normalised values and the zero fraction, per gene."""
    n = counts.shape[0]
    xn = normalise_log1p(counts, target_sum)
    mean = np.asarray(xn.sum(axis=0), dtype=np.float64).ravel() / n
    mean_sq = np.asarray(xn.multiply(xn).sum(axis=0), dtype=np.float64).ravel() / n
    detected = np.bincount(counts.indices[counts.data > 0], minlength=counts.shape[1])
    return {"mean": mean, "variance": np.maximum(mean_sq - mean**2, 0.0),
            "zero_fraction": 1.0 - detected / n}


def gene_stats_spearman(
    real_counts: Any, synth_counts: Any, *, genes: Sequence[int] | np.ndarray | None = None,
    target_sum: float = 1e4,
) -> dict[str, float]:
    """Spearman correlation, across genes, of real and synthetic per-gene statistics.

    Statistics: the ``mean`` and ``variance`` of log1p(counts per ``target_sum``) and the
    ``zero_fraction`` of counts. ``genes`` restricts to those column indices (e.g. the HVGs);
    default all. A statistic constant across genes gives NaN. Sparse throughout.
    """
    r = as_csr(real_counts)
    s = as_csr(synth_counts, r.shape[1])
    if r.shape[0] == 0 or s.shape[0] == 0:
        raise DataError("gene statistics need at least one real and one synthetic cell")
    sr, ss = _gene_stats(r, target_sum), _gene_stats(s, target_sum)
    sel = np.arange(r.shape[1]) if genes is None else np.asarray(genes)
    out = {key: _spearman(sr[key][sel], ss[key][sel]) for key in sr}
    out["n_genes"] = len(sel)
    return out


def library_size_distance(real_counts: Any, synth_counts: Any) -> float:
    """1-D Wasserstein distance between log10 library-size distributions (0 when identical).

    Library sizes below 1 count are taken as 1 (log10 = 0) so empty cells stay finite.
    """
    lib = [np.log10(np.maximum(np.asarray(as_csr(x).sum(axis=1)).ravel(), 1.0))
           for x in (real_counts, synth_counts)]
    if min(len(v) for v in lib) == 0:
        raise DataError("library sizes need at least one real and one synthetic cell")
    return float(wasserstein_distance(lib[0], lib[1]))


def _corr(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of columns; a constant column correlates 0 with every other."""
    xc = x - x.mean(axis=0)
    norm = np.linalg.norm(xc, axis=0)
    xc = np.divide(xc, norm, out=np.zeros_like(xc), where=norm > 0)
    return xc.T @ xc


def correlation_distance(
    real_lognorm: Any, synth_lognorm: Any, top: int = 100, *, seed: int = 0, max_n: int = 5_000
) -> float:
    """Root-mean-square difference of gene-gene Pearson correlations over gene pairs.

    Genes: the ``top`` of highest mean real expression. The value is the Frobenius norm of the
    difference of the two correlation matrices divided by ``sqrt(2 * n_pairs)``, i.e. the RMS
    over the ``top * (top - 1) / 2`` distinct pairs (0 when identical; at most 2). Each side is
    subsampled to ``max_n`` cells and only those cells x ``top`` genes are densified.
    """
    r = as_csr(real_lognorm)
    s = as_csr(synth_lognorm, r.shape[1])
    if r.shape[0] < 2 or s.shape[0] < 2:
        raise DataError("correlations need at least two real and two synthetic cells")
    top = min(int(top), r.shape[1])
    if top < 2:
        raise DataError("correlation distance needs at least 2 genes")
    mean = np.asarray(r.sum(axis=0)).ravel()
    genes = np.sort(np.argsort(-mean, kind="stable")[:top])
    rng = np.random.default_rng(derive_seed(seed, "corr"))
    cr = _corr(r[_subsample(r.shape[0], max_n, rng)][:, genes].toarray().astype(np.float64))
    cs = _corr(s[_subsample(s.shape[0], max_n, rng)][:, genes].toarray().astype(np.float64))
    diff = cr - cs
    np.fill_diagonal(diff, 0.0)
    return float(np.linalg.norm(diff) / np.sqrt(top * (top - 1)))


def _type_means(x: sp.csr_matrix, labels: np.ndarray, types: list[str]) -> np.ndarray:
    """``(len(types), n_genes)`` mean of each type minus the mean of all other cells."""
    codes = np.searchsorted(types, labels)
    onehot = sp.csr_matrix((np.ones(len(labels)), (codes, np.arange(len(labels)))),
                           shape=(len(types), len(labels)))
    sums = np.asarray((onehot @ x).todense(), dtype=np.float64)  # (types, genes)
    counts = np.asarray(onehot.sum(axis=1)).ravel()
    total = sums.sum(axis=0)
    rest_n = np.maximum(len(labels) - counts, 1)
    return sums / counts[:, None] - (total[None, :] - sums) / rest_n[:, None]


def marker_overlap(
    real_lognorm: Any, real_labels: Any, synth_lognorm: Any, synth_labels: Any, n: int = 50
) -> dict[str, Any]:
    """Overlap of each type's top-``n`` marker genes in real and in synthetic data.

    A type's markers are the genes with the largest difference between its mean log-expression
    and the mean of all other cells of the same dataset. The overlap is ``|A ∩ B| / n``
    (1.0 = the same markers). Types present in only one dataset are listed under ``skipped``;
    both datasets need at least two types.

    Returns
    -------
    dict
        ``per_type`` (type -> overlap), ``mean`` (over those types), ``n_markers``, ``skipped``.
    """
    r = as_csr(real_lognorm)
    s = as_csr(synth_lognorm, r.shape[1])
    rl, sl = np.asarray(real_labels).astype(str), np.asarray(synth_labels).astype(str)
    if len(rl) != r.shape[0] or len(sl) != s.shape[0]:
        raise DataError("marker_overlap: one label per cell is needed on each side")
    rt, st = sorted(set(rl.tolist())), sorted(set(sl.tolist()))
    if len(rt) < 2 or len(st) < 2:
        raise DataError("marker overlap needs at least two cell types on each side")
    n = min(int(n), r.shape[1])
    common = sorted(set(rt) & set(st))
    dr, ds = _type_means(r, rl, rt), _type_means(s, sl, st)
    per_type = {}
    for t in common:
        a = set(np.argsort(-dr[rt.index(t)], kind="stable")[:n].tolist())
        b = set(np.argsort(-ds[st.index(t)], kind="stable")[:n].tolist())
        per_type[t] = len(a & b) / n
    skipped = {t: "only in real" for t in rt if t not in st}
    skipped.update({t: "only in synthetic" for t in st if t not in rt})
    mean = float(np.mean(list(per_type.values()))) if per_type else float("nan")
    return {"per_type": per_type, "mean": mean, "n_markers": n, "skipped": skipped}


def _matched(
    rl: np.ndarray, sl: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Equal numbers of real and synthetic cells of each common type, about ``cap`` at most.

    Over the cap, each type's number is scaled down proportionally (at least 1 cell per type).
    """
    types = sorted(set(rl.tolist()) & set(sl.tolist()))
    m = {t: min(int((rl == t).sum()), int((sl == t).sum())) for t in types}
    total = sum(m.values())
    if total > cap:
        m = {t: max(1, int(v * cap / total)) for t, v in m.items()}
    ir, is_ = [], []
    for t in types:
        ir.append(rng.choice(np.flatnonzero(rl == t), size=m[t], replace=False))
        is_.append(rng.choice(np.flatnonzero(sl == t), size=m[t], replace=False))
    return np.sort(np.concatenate(ir)), np.sort(np.concatenate(is_)), m


def _distribution_metrics(er: np.ndarray, es: np.ndarray, cfg: FidelityConfig, seed: int) -> dict:
    out = {
        "c2st_auc": c2st_auc(er, es, seed=derive_seed(seed, "c2st"), n_folds=cfg.n_folds,
                             max_n=cfg.c2st_max_n),
        "mmd_rbf": mmd_rbf(er, es, seed=derive_seed(seed, "mmd"), max_n=cfg.kernel_max_n),
        "energy_distance": energy_distance(er, es, seed=derive_seed(seed, "energy"),
                                           max_n=cfg.kernel_max_n),
    }
    if min(len(er), len(es)) > cfg.k:
        p, r = knn_precision_recall(er, es, cfg.k, seed=derive_seed(seed, "knn"),
                                    max_n=cfg.knn_max_n)
        out.update(knn_precision=p, knn_recall=r)
    return out


def fidelity_report(
    space: EvalSpace, real_counts: Any, real_labels: Any, synth_counts: Any, synth_labels: Any,
    *, seed: int, cfg: FidelityConfig | None = None,
) -> dict[str, Any]:
    """Every fidelity metric, overall and per cell type, of synthetic against real counts.

    Parameters
    ----------
    space
        The evaluation space, fitted on real training cells (:func:`~.space.fit_space`).
    real_counts, synth_counts
        Raw counts (cells x ``space.genes``), sparse or dense; only subsamples are densified.
    real_labels, synth_labels
        Cell type of each cell.
    seed
        Seeds every subsample and classifier (child seeds by name).
    cfg
        Caps and settings; default :class:`FidelityConfig`.

    Returns
    -------
    dict
        ``overall``: metrics on a composition-matched subsample (the same number of real and
        synthetic cells of each common type, so differing type proportions, e.g. a generator
        sampling n cells per type, are not scored as infidelity), with ``n_per_type`` used;
        ``per_type``: type -> C2ST AUC, MMD², energy, k-NN precision/recall, gene-mean Spearman,
        library-size distance and cells used; ``per_type_mean``: their means over types;
        ``skipped``: type -> why (fewer than ``cfg.min_cells`` cells on a side);
        ``n_real``, ``n_synth``: cells given; ``config``: the caps.
    """
    cfg = cfg or FidelityConfig()
    r = as_csr(real_counts, len(space.genes), what="real counts")
    s = as_csr(synth_counts, len(space.genes), what="synthetic counts")
    rl, sl = np.asarray(real_labels).astype(str), np.asarray(synth_labels).astype(str)
    if len(rl) != r.shape[0] or len(sl) != s.shape[0]:
        raise DataError(f"labels do not match cells: {len(rl)} labels for {r.shape[0]} real "
                        f"cells, {len(sl)} for {s.shape[0]} synthetic cells")
    common = sorted(set(rl.tolist()) & set(sl.tolist()))
    if not common:
        raise DataError(f"real and synthetic cells share no cell type (real: "
                        f"{listed(sorted(set(rl.tolist())), quote=True)}; synthetic: "
                        f"{listed(sorted(set(sl.tolist())), quote=True)}); check the label column "
                        "of both")

    rng = np.random.default_rng(derive_seed(seed, "overall-sample"))
    ir, is_, n_per_type = _matched(rl, sl, cfg.max_cells, rng)
    if len(ir) < 2:
        raise DataError(f"only {len(ir)} real and synthetic cell pair(s) of the types both hold "
                        f"({listed(common, 5, quote=True)}; a type gives as many pairs as the "
                        f"fewer of its real and synthetic cells, here {len(rl)} real and "
                        f"{len(sl)} synthetic cells in all): the metrics need at least 2; give "
                        "more cells of those types (tens a type for scores worth reading)")
    r_sub, s_sub = r[ir], s[is_]
    overall = _distribution_metrics(space.embed(r_sub), space.embed(s_sub), cfg, seed)
    overall["gene_stats"] = gene_stats_spearman(r_sub, s_sub, target_sum=space.target_sum)
    overall["gene_stats_hvg"] = gene_stats_spearman(r_sub, s_sub, genes=space.hvg,
                                                    target_sum=space.target_sum)
    overall["library_size_distance"] = library_size_distance(r_sub, s_sub)
    ln_r, ln_s = space.lognorm(r_sub), space.lognorm(s_sub)
    overall["correlation_distance"] = correlation_distance(
        ln_r, ln_s, cfg.corr_top, seed=derive_seed(seed, "corr"))
    if len(common) >= 2:
        overall["marker_overlap"] = marker_overlap(ln_r, rl[ir], ln_s, sl[is_], cfg.n_markers)
    overall["n_per_side"] = len(ir)
    overall["n_per_type"] = n_per_type

    per_type: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    types = sorted(set(rl.tolist()) | set(sl.tolist()))
    for t in progress_bar(types, desc="fidelity per type", unit="type"):
        jr, js = np.flatnonzero(rl == t), np.flatnonzero(sl == t)
        if min(len(jr), len(js)) < cfg.min_cells:
            skipped[t] = (f"{len(jr)} real and {len(js)} synthetic cells: fewer than "
                          f"{cfg.min_cells} on a side")
            continue
        trng = np.random.default_rng(derive_seed(seed, f"type-sample:{t}"))
        jr = jr[_subsample(len(jr), cfg.max_cells_per_type, trng)]
        js = js[_subsample(len(js), cfg.max_cells_per_type, trng)]
        tseed = derive_seed(seed, f"type:{t}")
        row = _distribution_metrics(space.embed(r[jr]), space.embed(s[js]), cfg, tseed)
        stats = gene_stats_spearman(r[jr], s[js], target_sum=space.target_sum)
        row["gene_mean_spearman"] = stats["mean"]
        row["library_size_distance"] = library_size_distance(r[jr], s[js])
        row.update(n_real=len(jr), n_synth=len(js))
        per_type[t] = row
    if skipped:
        logger.info("fidelity: %d type(s) skipped with fewer than %d cells on a side: %s",
                    len(skipped), cfg.min_cells, listed(skipped, 10))
    keys = sorted({k for row in per_type.values() for k in row} - {"n_real", "n_synth"})
    with warnings.catch_warnings():  # a metric NaN for every type stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        per_type_mean = {k: float(np.nanmean([row[k] for row in per_type.values() if k in row]))
                         for k in keys}
    return {"overall": overall, "per_type": per_type, "per_type_mean": per_type_mean,
            "skipped": skipped, "n_real": int(r.shape[0]), "n_synth": int(s.shape[0]),
            "config": asdict(cfg)}


def real_floor(
    space: EvalSpace, real_counts: Any, real_labels: Any, *, seed: int,
    cfg: FidelityConfig | None = None,
) -> dict[str, Any]:
    """:func:`fidelity_report` between two disjoint random halves of the real cells.

    The halves are stratified by type (each type's cells are shuffled and split in two), so the
    report is what a perfect generator would score given this many cells: the floor (or ceiling)
    each synthetic number is read beside. Give held-out real cells, not the cells the space or
    the generator was fitted on. Note that the halves have half the cells of the input: size-
    sensitive metrics (k-NN precision/recall) compare best when the synthetic report uses
    similar numbers of cells.

    Returns
    -------
    dict
        The report, plus ``halves``: the number of cells in each half.
    """
    x = as_csr(real_counts, len(space.genes), what="real counts")
    labels = np.asarray(real_labels).astype(str)
    if len(labels) != x.shape[0]:
        raise DataError(f"{len(labels)} labels for {x.shape[0]} real cells; give one per cell")
    types, sizes = np.unique(labels, return_counts=True)
    if not (sizes >= 2).any():
        raise DataError(
            f"the real-vs-real floor compares two halves of each type's real cells, but no type "
            f"has 2 real cells ({len(labels)} cells of {len(sizes)} types); give more real cells "
            "(evaluate: a larger --max-cells; a run: a larger report.max_cells, more cells, or a "
            "larger test split)")
    rng = np.random.default_rng(derive_seed(seed, "halves"))
    first, second = [], []
    for t in types:
        idx = rng.permutation(np.flatnonzero(labels == t))
        half = len(idx) // 2 + (len(idx) % 2) * int(rng.integers(2))  # odd cell: a coin decides
        first.append(idx[:half])
        second.append(idx[half:])
    a, b = np.sort(np.concatenate(first)), np.sort(np.concatenate(second))
    report = fidelity_report(space, x[a], labels[a], x[b], labels[b],
                             seed=derive_seed(seed, "floor"), cfg=cfg)
    report["halves"] = [len(a), len(b)]
    return report
