"""Per-type fidelity read against an equal-sized real floor, repeated for its noise.

:func:`~cellsynth.metrics.fidelity.real_floor` compares two halves of the real cells, so its
numbers come from half as many cells as the synthetic report's: fine for a two-sample AUC,
whose chance level does not depend on the number of cells, but k-NN coverage and the genes a
type's markers rank first do. :func:`typewise_fidelity` compares like with like: the real cells
of each type are split into halves A and B and as many synthetic cells of the type are drawn;
each metric compares A with the synthetic cells and, as the floor, A with B, and the split is
repeated (``n_repeats``) so that each difference comes with its spread. Metrics, per type:

- ``de_logfc_r``: Pearson r, across genes, of the type's log fold change: its mean
  log-normalised expression minus the real types' average (the mean over types of A and B,
  one reference for A, B and the synthetic cells, so that a wrong type changes no other
  type's fold changes, as a reference of "all other cells" of each set would);
- ``marker_overlap``: the share of the type's top ``n_markers`` genes by that fold change that
  A and the synthetic cells have in common;
- ``knn_precision`` / ``knn_recall``: :func:`~cellsynth.metrics.fidelity.knn_precision_recall`
  in the evaluation space.

:func:`trts_by_type` scores a real-trained classifier on real (TRTR) and on generated (TRTS)
cells, type by type: generated cells it classifies better than real ones are too typical.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..errors import DataError
from ..options import progress_bar
from ..seeds import derive_seed
from .classification import classification_report
from .fidelity import knn_precision_recall
from .space import EvalSpace, as_csr

logger = logging.getLogger(__name__)

#: the metrics of :func:`typewise_fidelity` (higher is better for each)
METRICS = ("de_logfc_r", "marker_overlap", "knn_precision", "knn_recall")
#: fewest cells of a type in each of A, B and the synthetic draw (as ``FidelityConfig.min_cells``)
MIN_CELLS = 10


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = float(np.sqrt((xc * xc).sum() * (yc * yc).sum()))
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def _profiles(x: Any, labels: np.ndarray, types: list[str]) -> np.ndarray:
    """``(len(types), n_genes)`` mean log-normalised expression of each type's cells."""
    codes = np.searchsorted(types, labels)
    onehot = sp.csr_matrix((np.ones(len(labels)), (codes, np.arange(len(labels)))),
                           shape=(len(types), len(labels)))
    sums = np.asarray((onehot @ x).todense(), dtype=np.float64)
    return sums / np.maximum(np.asarray(onehot.sum(axis=1)), 1)


def _top(lfc: np.ndarray, n: int) -> set[int]:
    return set(np.argsort(-lfc, kind="stable")[:n].tolist())


def _draw(rl: np.ndarray, sl: np.ndarray, types: list[str], rng: np.random.Generator
          ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per type: halves A and B of its real cells and as many of its synthetic cells, all of
    ``min(n_real // 2, n_synth)`` cells."""
    out = {}
    for t in types:
        real = rng.permutation(np.flatnonzero(rl == t))
        synth = np.flatnonzero(sl == t)
        n = min(len(real) // 2, len(synth))
        out[t] = (real[:n], real[n : 2 * n], rng.choice(synth, size=n, replace=False))
    return out


def _one_split(lr: Any, ls: Any, er: np.ndarray, es: np.ndarray, rl: np.ndarray,
               sl: np.ndarray, sets: dict, *, n_markers: int, k: int, seed: int
               ) -> dict[str, dict[str, tuple[float, float]]]:
    """``{type or "overall": {metric: (synthetic, floor)}}`` of one split."""
    types = sorted(sets)
    a, b, s = (np.sort(np.concatenate([sets[t][i] for t in types])) for i in range(3))
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if len(types) >= 2:
        pa, pb, ps = _profiles(lr[a], rl[a], types), _profiles(lr[b], rl[b], types), \
            _profiles(ls[s], sl[s], types)
        ref = (pa + pb).mean(axis=0) / 2  # the real types' average: one reference for all three
        la, lb, lsy = pa - ref, pb - ref, ps - ref
        genes = np.flatnonzero((pa + pb + ps).sum(axis=0) > 0)
        n = min(n_markers, len(genes))
        for i, t in enumerate(types):
            ra, rb, rs = la[i, genes], lb[i, genes], lsy[i, genes]
            top_a = _top(ra, n)
            out[t] = {"de_logfc_r": (_pearson(ra, rs), _pearson(ra, rb)),
                      "marker_overlap": (len(top_a & _top(rs, n)) / max(n, 1),
                                         len(top_a & _top(rb, n)) / max(n, 1))}
    for t in types:
        ia, ib, is_ = sets[t]
        if len(ia) > k:
            row = out.setdefault(t, {})
            tseed = derive_seed(seed, f"knn:{t}")
            syn = knn_precision_recall(er[ia], es[is_], k, seed=tseed)
            floor = knn_precision_recall(er[ia], er[ib], k, seed=tseed)
            row["knn_precision"], row["knn_recall"] = (syn[0], floor[0]), (syn[1], floor[1])
    if len(a) > k:
        syn = knn_precision_recall(er[a], es[s], k, seed=derive_seed(seed, "knn"))
        floor = knn_precision_recall(er[a], er[b], k, seed=derive_seed(seed, "knn"))
        out["overall"] = {"knn_precision": (syn[0], floor[0]), "knn_recall": (syn[1], floor[1])}
    return out


def _summary(draws: list[tuple[float, float]], n: int) -> dict[str, Any]:
    v = np.array(draws, dtype=np.float64)  # (repeats, 2): synthetic, floor
    diff = v[:, 1] - v[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN draws stay NaN
        sd = float(np.nanstd(diff, ddof=1)) if np.isfinite(diff).sum() > 1 else float("nan")
        return {"value": float(np.nanmean(v[:, 0])), "floor": float(np.nanmean(v[:, 1])),
                "sd": sd, "n": int(n), "repeats": len(draws)}


def typewise_fidelity(
    space: EvalSpace, real_counts: Any, real_labels: Any, synth_counts: Any, synth_labels: Any,
    *, seed: int, n_repeats: int = 5, n_markers: int = 50, k: int = 5, max_n: int = 2_000,
) -> dict[str, Any]:
    """Per-type metrics of synthetic cells beside an equal-sized real floor, with its spread.

    Each of ``n_repeats`` splits draws, for every type both sides share, halves A and B of its
    real cells and as many of its synthetic cells (``min(n_real // 2, n_synth)`` each, at most
    ``max_n``); a metric compares A with the synthetic cells (its value) and A with B (its
    floor). Reported are the means over splits and the standard deviation over splits of the
    paired difference floor minus value: the noise one split's difference carries.

    Parameters
    ----------
    space
        The evaluation space (fitted on other real cells).
    real_counts, synth_counts
        Raw counts, cells x ``space.genes``.
    real_labels, synth_labels
        Cell type of each cell.
    seed
        Seeds the splits and subsamples.
    n_repeats
        Splits (at least 2, for a spread).
    n_markers, k
        Top genes of :func:`~cellsynth.metrics.fidelity.marker_overlap`; neighbours of the k-NN
        precision and recall.
    max_n
        Cells per side and type at most.

    Returns
    -------
    dict
        ``per_type``: type -> metric -> ``value``, ``floor``, ``sd``, ``n`` (cells per side),
        ``repeats``; ``overall``: the k-NN metrics on all types together (composition matched)
        and the means over types of ``de_logfc_r`` and ``marker_overlap``; ``skipped``: type ->
        why (fewer than :data:`MIN_CELLS` cells in A, B or the synthetic draw); ``config``.
    """
    if n_repeats < 2:
        raise DataError(f"n_repeats must be at least 2 (a spread needs two splits), got {n_repeats}")
    r = as_csr(real_counts, len(space.genes), what="real counts")
    s = as_csr(synth_counts, len(space.genes), what="synthetic counts")
    rl, sl = np.asarray(real_labels).astype(str), np.asarray(synth_labels).astype(str)
    if len(rl) != r.shape[0] or len(sl) != s.shape[0]:
        raise DataError(f"{len(rl)} labels for {r.shape[0]} real cells and {len(sl)} for "
                        f"{s.shape[0]} synthetic cells; give one label per cell")
    skipped: dict[str, str] = {}
    types = []
    for t in sorted(set(rl.tolist()) & set(sl.tolist())):
        n = min(int((rl == t).sum()) // 2, int((sl == t).sum()))
        if n < MIN_CELLS:
            skipped[t] = (f"{int((rl == t).sum())} real and {int((sl == t).sum())} synthetic "
                          f"cells: halves of fewer than {MIN_CELLS}")
        else:
            types.append(t)
    lr, ls, er, es = space.lognorm(r), space.lognorm(s), space.embed(r), space.embed(s)
    draws: dict[str, dict[str, list]] = {}
    sizes: dict[str, int] = {}
    for i in progress_bar(range(n_repeats), desc="per-type floor splits", unit="split",
                          leave=False):
        rng = np.random.default_rng(derive_seed(seed, f"typewise-split:{i}"))
        sets = _draw(rl, sl, types, rng)
        sets = {t: tuple(x[: max_n] for x in v) for t, v in sets.items()}
        sizes = {t: len(v[0]) for t, v in sets.items()} | {"overall": sum(len(v[0]) for v in
                                                                         sets.values())}
        if not sets:
            break
        with threadpool_limits(1):  # small neighbour searches: threads cost more than they give
            split = _one_split(lr, ls, er, es, rl, sl, sets, n_markers=n_markers, k=k,
                               seed=derive_seed(seed, f"typewise:{i}"))
        for key, row in split.items():
            for m, pair in row.items():
                draws.setdefault(key, {}).setdefault(m, []).append(pair)
    per_type = {t: {m: _summary(v, sizes[t]) for m, v in draws[t].items()}
                for t in types if t in draws}
    overall = {m: _summary(v, sizes["overall"]) for m, v in draws.get("overall", {}).items()}
    for m in ("de_logfc_r", "marker_overlap"):  # the mean over types, split by split
        rows = [draws[t][m] for t in types if t in draws and m in draws[t]]
        if rows:
            mean = np.nanmean(np.array(rows, dtype=np.float64), axis=0)  # (repeats, 2)
            overall[m] = _summary([tuple(p) for p in mean], sizes["overall"])
    return {"per_type": per_type, "overall": overall, "skipped": skipped,
            "config": {"n_repeats": n_repeats, "n_markers": n_markers, "k": k, "max_n": max_n,
                       "min_cells": MIN_CELLS}}


def trts_by_type(train: Any, train_labels: Any, real: Any, real_labels: Any, synth: Any,
                 synth_labels: Any, *, seed: int) -> dict[str, Any]:
    """Per type, the F1 of a real-trained classifier on real (TRTR) and generated (TRTS) cells.

    The classifier is a multinomial logistic regression on standardised evaluation-space
    coordinates (``C = 1``, one thread), trained on ``train`` (real cells neither side of the
    comparison holds). A type whose generated cells score well above its real cells is too
    typical (its cells sit at the type's centre, without the real spread): calibration, not
    success; well below, the cells do not look like their type.

    Parameters
    ----------
    train, real, synth
        Embedded cells, ``(n, d)`` each: the classifier's training cells, the real cells scored
        (TRTR) and the generated cells scored (TRTS).
    train_labels, real_labels, synth_labels
        One cell type per cell.
    seed
        Seeds the classifier.

    Returns
    -------
    dict
        ``per_type``: type -> ``trtr_f1``, ``trts_f1`` (None when that side has no cell of the
        type); ``trtr_macro_f1``, ``trts_macro_f1``; ``n_train``.
    """
    ty, ry, sy = (np.asarray(y).astype(str) for y in (train_labels, real_labels, synth_labels))
    if len(set(ty.tolist())) < 2:
        raise DataError("TRTS needs real training cells of at least two types")
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(C=1.0, max_iter=500, random_state=seed % 2**32)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train), ty)
    known = sorted(set(ty.tolist()))
    out: dict[str, Any] = {"per_type": {}, "n_train": len(ty)}
    for side, x, y in (("trtr", real, ry), ("trts", synth, sy)):
        keep = np.isin(y, known)  # a type the classifier never saw cannot be predicted
        labels = sorted(set(y[keep].tolist()))
        if not keep.any():
            out[f"{side}_macro_f1"] = None
            continue
        report = classification_report(y[keep], clf.predict(scaler.transform(x[keep])),
                                       labels=labels)
        out[f"{side}_macro_f1"] = report["macro"]["f1"]
        for t in labels:
            out["per_type"].setdefault(t, {"trtr_f1": None, "trts_f1": None})
            out["per_type"][t][f"{side}_f1"] = report["per_class"][t]["f1"]
    return out
