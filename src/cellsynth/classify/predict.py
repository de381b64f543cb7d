"""A run's classifier applied to new cells: :func:`predict_types` (``cs.predict_types``).

The cells go the way the run's own test cells went: counts scaled to the run's
``qc.target_sum`` over each cell's whole library and log1p-transformed (values already
log-normalised are used as they are, once checked to be at the run's scale: not log1p of raw
counts, not normalised to another total, not unlogged), the run's genes picked by name,
projected onto the run's PCA, classified by its XGBoost model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import QCConfig
from ..data.io import counts_matrix, find_counts
from ..data.qc import normalise_log1p
from ..data.values import fractional_rows
from ..errors import DataError, listed
from ..features.pca import PCAModel
from ..paths import expand_user
from .xgb import MODEL_FILE, Classifier

logger = logging.getLogger(__name__)


#: values read as log-normalised are at a run's scale unless the median cell's total (their
#: expm1 summed) is this share above its ``qc.target_sum`` (a gene subset sums under it)
SCALE_SLACK = 0.05
#: nonzero values sampled to tell log1p of raw counts from log-normalised values
SCALE_SAMPLE = 100_000


def _target_sum(run: Path) -> float:
    """The run's ``qc.target_sum`` (its manifest's config), else the default."""
    try:
        config = json.loads((run / "manifest.json").read_text()).get("config") or {}
        return float(config.get("qc", {}).get("target_sum", QCConfig.target_sum))
    except (OSError, ValueError, AttributeError, TypeError):
        return float(QCConfig.target_sum)


def _run_had_counts(run: Path) -> bool:
    """Whether the run normalised raw counts itself (``data/qc.json``'s ``has_counts``); a run
    given log-normalised values alone used them as they were."""
    try:
        return bool(json.loads((run / "data" / "qc.json").read_text()).get("has_counts", True))
    except (OSError, ValueError, AttributeError, TypeError):
        return True


def _check_scale(x: Any, target: float) -> None:
    """Refuse values read as log-normalised that are not at the run's scale, ``log1p`` of counts
    scaled to ``target`` over each cell's library: log1p of raw counts (every value log1p of a
    whole number), or values normalised to another total (the median cell's total above
    ``target``, or every cell's total one other value). The classifier would read either as
    other cells and answer confidently wrong types."""
    fix = (f"give the raw counts (X, layers['counts'] or raw.X), as the run was given, or "
           f"normalise as the run did: sc.pp.normalize_total(adata, target_sum={target:g}); "
           "sc.pp.log1p(adata)")
    unlogged = sp.csr_matrix((np.expm1(x.data), x.indices, x.indptr), shape=x.shape)  # no copy
    totals = np.asarray(unlogged.sum(axis=1), dtype=np.float64).ravel()
    totals = totals[totals > 0]
    if not totals.size:
        return
    median = float(np.median(totals))
    one_total = np.ptp(totals) <= 0.01 * median  # every gene kept: each cell sums to its target
    if one_total and abs(median / target - 1) <= SCALE_SLACK:
        return  # normalised as the run did (a cell of 1,000 counts scaled to 10,000 is whole)
    values = x.data if x.nnz <= SCALE_SAMPLE else x.data[:: x.nnz // SCALE_SAMPLE]
    counts = np.expm1(values.astype(np.float64))
    whole = np.all(np.abs(counts - np.rint(counts)) <= 1e-3 * (1 + counts))
    if whole and np.rint(counts.min()) == 1:  # raw counts have ones; a scaled-up cell has none
        raise DataError("the cells' values are log1p of raw counts, not log-normalised (every "
                        f"sampled value is log1p of a whole number, e.g. {values.max():.4g} = "
                        f"log1p({np.rint(counts.max()):.0f})): {fix}")
    if median > target * (1 + SCALE_SLACK) or (one_total and abs(median / target - 1) > SCALE_SLACK):
        raise DataError(f"the cells' values are log-normalised to about {median:.4g} counts a "
                        f"cell (the median cell's total), the run's to {target:g} (its "
                        f"qc.target_sum): the classifier would read them as other cells; {fix}")


def predict_types(adata: Any, run: str | Path, *, key_added: str = "cellsynth_prediction",
                  classifier: str = "classifier") -> pd.DataFrame:  # fmt: skip
    """Predict the cell type of new cells with a run's classifier, as scanpy tools annotate.

    Parameters
    ----------
    adata
        Cells with raw counts (``X``, ``layers['counts']`` or ``raw.X``) or log-normalised
        values (``log1p`` of counts scaled to the run's ``qc.target_sum``), with gene names in ``var_names``: every gene of the run's features must be
        among them (other genes are left out; their order does not matter).
    run
        A directory written by ``cellsynth run`` (``cs.run``): its ``features`` (the PCA) and
        its classifier are read.
    key_added
        ``adata.obs[key_added]`` receives the predicted type (categorical, the classifier's
        types) and ``adata.obs[key_added + "_probability"]`` its probability.
    classifier
        ``"classifier"`` (trained on real cells, the default) or ``"classifier_synthetic"``
        (experiment (c): trained on generated cells).

    Returns
    -------
    pandas.DataFrame
        One row per cell (``adata.obs_names``): ``prediction``, ``probability``, and one
        column per type with its probability (a type named ``prediction`` or
        ``probability``: the column ``"prediction (type)"`` or ``"probability (type)"``).

    Examples
    --------
    >>> cs.predict_types(new_cells, "runs/atlas")  # doctest: +SKIP
    >>> new_cells.obs["cellsynth_prediction"].value_counts()  # doctest: +SKIP
    """
    if hasattr(run, "obs") and hasattr(run, "var_names"):
        raise DataError("the cells come first and the run directory second: "
                        "cs.predict_types(adata, 'runs/atlas')")
    run = expand_user(run, "run")
    if not run.is_dir():
        what = "is a file" if run.exists() else "does not exist"
        raise DataError(f"the run directory {run} {what}; give the directory cellsynth run "
                        "(or cs.run) wrote (its --out / out=)")
    if (run / "config.json").is_file() and not (run / "manifest.json").is_file():
        raise DataError(f"{run} is a saved generator's directory, not a run: predict_types "
                        "uses a run's classifier; give the run directory (its --out / out=)")
    if classifier not in ("classifier", "classifier_synthetic"):
        raise DataError(f"classifier must be 'classifier' or 'classifier_synthetic', got "
                        f"{classifier!r}")
    for part in ("features/pca.safetensors", f"{classifier}/{MODEL_FILE}"):
        if not (run / part).is_file():
            stage = "classifier" if classifier == "classifier" else "experiments"
            raise DataError(f"{run / part} is missing: give a run directory whose features and "
                            f"{stage} stages have finished (cellsynth run ... --out {run})")
    if not (hasattr(adata, "obs") and hasattr(adata, "var_names")):
        raise DataError(f"give the cells as an AnnData (cs.read('cells.h5ad')), not a "
                        f"{type(adata).__name__}: their gene names pick the run's genes")
    if getattr(adata, "is_view", False) and getattr(adata, "isbacked", False):
        raise DataError("the cells are a subset (a view) of a file opened backed, whose obs "
                        "cannot take the predictions (anndata copies a view written to, and "
                        "cannot copy a backed one): read the subset into memory first (adata = "
                        "adata.to_memory()), or predict on the whole backed AnnData")
    if not isinstance(key_added, str) or not key_added:
        raise DataError(f"key_added must be a non-empty obs column name, got {key_added!r}")
    pca = PCAModel.load(run / "features")
    clf = Classifier.load(run / classifier)
    expr = find_counts(adata)
    x, genes = counts_matrix(adata, expr)
    if expr.counts is not None:  # as the run did: scaled over the whole library, then log1p
        _check_whole(x, expr.counts, adata.obs_names)
        x = normalise_log1p(x, _target_sum(run))
    elif expr.note:  # neither counts nor log-normalised values: they would be read as the latter
        raise DataError(f"predict_types reads raw counts or log-normalised values: {expr.note}")
    else:
        if _run_had_counts(run):  # the run's own scale; a run of normalised values used them so
            _check_scale(x, _target_sum(run))
        logger.info("predict_types: no raw counts found; X is used as log-normalised values")
    x = x[:, pca.columns(genes)]  # the run's genes, by name, in its order
    if (empty := np.flatnonzero(np.diff(sp.csr_matrix(x).indptr) == 0)).size:
        logger.warning("predict_types: %d of %d cells have no expression in the run's %d genes "
                       "(e.g. %s): each is given the type the classifier guesses for an empty "
                       "cell, not one read from its data; leave such cells out (the run's QC "
                       "dropped cells of few genes)", len(empty), x.shape[0], x.shape[1],
                       listed([str(adata.obs_names[i]) for i in empty[:3]], 3, quote=True))
    z = pca.transform(x)
    prob = clf.predict_proba(z)
    best = prob.argmax(axis=1)
    lead = ("prediction", "probability")  # a type of either name keeps its column apart
    columns = [f"{t} (type)" if t in lead else t for t in clf.labels]
    out = pd.DataFrame(prob, index=adata.obs_names, columns=columns)
    out.insert(0, "probability", prob[np.arange(len(best)), best])
    out.insert(0, "prediction", pd.Categorical.from_codes(best, categories=clf.labels))
    adata.obs[key_added] = out["prediction"].array  # categorical: every type a category
    adata.obs[f"{key_added}_probability"] = out["probability"].to_numpy()
    logger.info("predicted %d cells with %s: %s", len(out), run / classifier,
                listed(f"{t} {n}" for t, n in out["prediction"].value_counts().items()))
    return out


def _check_whole(x: sp.csr_matrix, where: str, names: pd.Index) -> None:
    """Every value of counts found from their first values checked to be a whole number: a
    later batch of normalised cells would be normalised again and given a type read from
    values at another scale, without a word."""
    bad, example = fractional_rows(x)
    if len(bad):
        raise DataError(
            f"predict_types: {where} was taken as raw counts (its first values are whole "
            f"numbers), but {len(bad):,} of the {x.shape[0]:,} cells hold non-integer values "
            f"(the first {', '.join(repr(str(names[i])) for i in bad[:3])}; e.g. {example:.6g}): "
            "give raw counts for every cell, or log-normalised values for every cell")
