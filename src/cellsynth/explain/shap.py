"""SHAP explanations of the classifier for one cell type, in PC space and carried back to genes.

SHAP values come from XGBoost's exact TreeSHAP (``pred_contribs=True``); they are in margin
(log-odds) units of the explained class and, with the bias, sum to that class's raw margin.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..classify.xgb import Classifier
from ..data.genes import check_gene_names
from ..errors import DataError, did_you_mean, listed
from ..figure_io import check_save, save_figure
from ..options import literal_text, progress_bar, short_label
from ..outputs import check_out_dir, write_csv, write_json
from ..seeds import checked_seed

logger = logging.getLogger(__name__)

#: floats held at once for one batch of contributions (n_batch x n_classes x n_features+1)
_BATCH_FLOATS = 2**25
#: and at most this many cells per batch, so the progress bar moves (the values do not change)
_BATCH_ROWS = 1024


@dataclass
class ShapResult:
    """SHAP importances of one cell type.

    Attributes
    ----------
    cell_type
        The explained class.
    pc_importance
        Columns ``component`` (``"PC1"``...), ``mean_abs_shap``, ``mean_shap``; sorted by
        ``mean_abs_shap``, largest first.
    gene_importance
        Columns ``gene``, ``score`` (signed), ``abs_score`` (``|score|``) and ``magnitude``;
        the ``n_top`` genes with the largest ``abs_score``, largest first. See
        :func:`explain_type` for the definitions.
    n_cells
        Cells the SHAP values were averaged over.
    """

    cell_type: str
    pc_importance: pd.DataFrame
    gene_importance: pd.DataFrame
    n_cells: int


def _class_index(classifier: Classifier, cell_type: str) -> int:
    if not isinstance(classifier, Classifier):
        raise DataError(f"classifier takes a trained Classifier (classify.train_classifier, or "
                        f"Classifier.load of a run's classifier/), not "
                        f"{type(classifier).__name__}")
    if cell_type not in classifier.labels:  # a slip of case or spelling named, as elsewhere
        raise DataError(
            f"cell type {cell_type!r} is not one the classifier knows"
            f"{did_you_mean(cell_type, classifier.labels)}; its {len(classifier.labels)} "
            f"types: {listed(classifier.labels, 20)}"
        )
    return classifier.labels.index(cell_type)


def shap_contributions(
    classifier: Classifier, X: Any, cell_type: str
) -> np.ndarray:
    """TreeSHAP contributions of each feature to ``cell_type``'s margin.

    Parameters
    ----------
    classifier
        The trained classifier; rounds up to its best iteration are used.
    X
        Cells (rows) in the classifier's feature space, dense or scipy.sparse.
    cell_type
        A label of ``classifier``.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_cells, n_features + 1)``, float32; the last column is the bias. Each row sums
        to the class's raw margin (``output_margin=True``).
    """
    k = _class_index(classifier, cell_type)
    X = _features(X)
    n_features = X.shape[1]
    n_rounds = classifier.best_iteration + 1
    one = class_booster(classifier.booster, k, n_rounds)
    if one is not None:  # the class's own trees: its margin alone, (0, 0) is every tree
        booster, n_classes, col, iteration_range = one, 1, 0, (0, 0)
    else:  # a model that cannot be cut: every class's contributions, one kept
        booster, n_classes, col = classifier.booster, len(classifier.labels), k
        iteration_range = (0, n_rounds)
    batch = max(1, min(_BATCH_ROWS, _BATCH_FLOATS // (n_classes * (n_features + 1))))
    out = np.empty((X.shape[0], n_features + 1), dtype=np.float32)
    bar = progress_bar(total=X.shape[0], desc="SHAP", unit="cell")
    for start in range(0, X.shape[0], batch):
        stop = min(start + batch, X.shape[0])
        contribs = booster.predict(
            xgb.DMatrix(X[start:stop]), pred_contribs=True, iteration_range=iteration_range
        )
        contribs = contribs.reshape(stop - start, n_classes, n_features + 1)  # (b, k, f+1)
        out[start:stop] = contribs[:, col, :]
        bar.update(stop - start)
    bar.close()
    return out


def _features(X: Any) -> Any:
    """``X`` as float32 (CSR when sparse), or a :class:`DataError`: values that are not
    numbers (numpy's ValueError), or NaN or infinite ones (XGBoost read NaN as a missing
    feature and explained those cells silently; infinity stopped it with its stack trace)."""
    if X is None or hasattr(X, "obs"):  # None read as one NaN; an AnnData as an object
        raise DataError(f"X takes the cells' features (an array of cells x the classifier's "
                        f"features, such as the PCA of the cells), not {type(X).__name__}")
    try:
        X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"X must hold numbers (cells x the classifier's features): {exc}") from None
    if X.ndim != 2:
        raise DataError(f"X must be cells x features (2-d), got shape {X.shape}; one cell: "
                        "X.reshape(1, -1)")
    values = X.data if sp.issparse(X) else X
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(X.toarray() if sp.issparse(X) else X).all(axis=1))
        raise DataError(f"X holds NaN or infinite values ({len(bad)} of {X.shape[0]} cells, "
                        f"the first at row(s) {listed(bad, 5)}); a cell's features are finite: "
                        "check what they were projected from, or leave those cells out")
    return X


def class_booster(booster: xgb.Booster, k: int, n_rounds: int) -> xgb.Booster | None:
    """The trees of class ``k`` in the first ``n_rounds`` rounds of a multi-class booster, as a
    booster of their own whose output is that class's margin (its base score and trees).

    TreeSHAP of a softmax booster computes every class's contributions; the explanation keeps
    one. Cut to one class's trees, it costs ``1 / n_classes`` as much (126 types: 126 times
    less) and gives the same numbers. None when the booster is not one tree per class a round
    (a random forest's ``num_parallel_tree``, a single-output objective): then use it whole.
    """
    raw = json.loads(booster.save_raw("json"))
    learner = raw["learner"]
    params = learner["learner_model_param"]
    model = learner["gradient_booster"].get("model", {})
    n_class = int(params.get("num_class", "0"))
    if (learner["gradient_booster"].get("name") != "gbtree" or n_class < 2
            or model.get("gbtree_model_param", {}).get("num_parallel_tree") != "1"):  # fmt: skip
        return None
    ptr, info = model["iteration_indptr"], model["tree_info"]
    rounds = range(min(n_rounds, len(ptr) - 1))
    keep = [t for r in rounds for t in range(ptr[r], ptr[r + 1]) if info[t] == k]
    if len(keep) != len(rounds):
        return None
    base = params["base_score"].strip("[]").split(",")
    if len(base) != n_class:
        return None
    model["trees"] = [dict(model["trees"][t], id=i) for i, t in enumerate(keep)]
    model["tree_info"] = [0] * len(keep)
    model["iteration_indptr"] = list(range(len(keep) + 1))
    model["gbtree_model_param"]["num_trees"] = str(len(keep))
    params.update(base_score=f"[{base[k]}]", num_class="0")
    # the margin as it is: an identity link, as softmax's margins before the softmax
    learner["objective"] = {"name": "reg:squarederror",
                            "reg_loss_param": {"scale_pos_weight": "1"}}  # fmt: skip
    one = xgb.Booster()
    one.load_model(bytearray(json.dumps(raw).encode()))
    return one


def explain_type(
    classifier: Classifier,
    X: Any,
    cell_type: str,
    components: np.ndarray,
    gene_names: list[str],
    *,
    n_top: int = 20,
    max_cells: int = 2000,
    seed: int = 0,
) -> ShapResult:
    """Which PCs, and through their loadings which genes, drive the prediction of ``cell_type``.

    Parameters
    ----------
    classifier
        Trained on PCA features.
    X
        The cells to explain in PCA space, typically the test cells of ``cell_type``.
    cell_type
        The class to explain; :class:`DataError` names the known types when it is unknown.
    components
        PCA loadings, shape ``(n_components, n_genes)``; row ``k`` is PC ``k + 1``.
    gene_names
        Names of the ``n_genes`` columns of ``components``.
    n_top
        Genes to keep in ``gene_importance``.
    max_cells
        At most this many cells of ``X`` are explained (a seeded random subsample).
    seed
        Seeds that subsample.

    Returns
    -------
    ShapResult

    Notes
    -----
    The gene scores are a linear approximation. SHAP values are additive over the PCs and each
    PC is a linear combination of genes, so the PC contributions are carried back through the
    loadings ``W = components``:

    - ``score_g = sum_k mean_shap_k * W[k, g]``: signed; positive genes push cells towards
      ``cell_type``. Genes are ranked by ``abs_score = |score_g|``.
    - ``magnitude_g = sum_k mean_abs_shap_k * |W[k, g]|``: an upper bound on the gene's mean
      absolute contribution, immune to cancellation between cells and PCs.

    Both ignore interactions within the trees and the non-linear effect of a gene on PCs it
    shares; they say which genes the PCs that matter are made of, not a gene-level SHAP.
    """
    k = _class_index(classifier, cell_type)
    seed = checked_seed(seed)
    try:
        components = np.asarray(components, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"components must hold numbers (the PCA's loadings): {exc}") from None
    n_features = classifier.booster.num_features()
    if components.ndim != 2 or components.shape[0] != n_features:
        raise DataError(
            f"components must have shape (n_components, n_genes) with n_components = "
            f"{n_features} (the classifier's features), got {components.shape}"
        )
    if isinstance(gene_names, str | bytes) or not hasattr(gene_names, "__len__"):
        raise DataError("gene_names takes one name per gene column of components (a list, "
                        f"var_names), not {type(gene_names).__name__} {str(gene_names)[:40]!r}")
    if components.shape[1] != len(gene_names):
        raise DataError(
            f"components has {components.shape[1]} gene columns but {len(gene_names)} gene names given"
        )
    # one gene twice, or a gene without a name, made a gene table of rows no one could tell apart
    check_gene_names(list(gene_names), "gene_names")
    if not np.isfinite(components).all():
        raise DataError(f"components hold {int((~np.isfinite(components)).sum())} NaN or infinite "
                        "loadings, which made gene scores NaN; give the fitted PCA's "
                        "components (finite)")
    for name, value in (("max_cells", max_cells), ("n_top", n_top)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise DataError(f"{name} must be a whole number of at least 1, got {value!r}")
    X = _features(X)
    n = X.shape[0]
    if n == 0:
        raise DataError(f"no cells of type {cell_type!r} to explain")
    if X.shape[1] != n_features:
        raise DataError(f"X has {X.shape[1]} features but the classifier expects {n_features}")
    if n > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))
        X = X[rows]
    shap = shap_contributions(classifier, X, classifier.labels[k])[:, :-1]
    mean_shap = shap.mean(axis=0, dtype=np.float64)
    mean_abs = np.abs(shap).mean(axis=0, dtype=np.float64)

    pcs = pd.DataFrame(
        {
            "component": [f"PC{i + 1}" for i in range(n_features)],
            "mean_abs_shap": mean_abs,
            "mean_shap": mean_shap,
        }
    )
    pcs = pcs.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)

    score = mean_shap @ components  # (n_genes,)
    magnitude = mean_abs @ np.abs(components)
    genes = pd.DataFrame(
        {
            "gene": list(map(str, gene_names)),
            "score": score,
            "abs_score": np.abs(score),
            "magnitude": magnitude,
        }
    )
    genes = genes.sort_values("abs_score", ascending=False, kind="stable").head(n_top)
    genes = genes.reset_index(drop=True)
    logger.info(
        "SHAP for %s on %d cells: top PC %s, top gene %s",
        cell_type,
        X.shape[0],
        pcs["component"].iloc[0],
        genes["gene"].iloc[0] if len(genes) else "none",
    )
    return ShapResult(cell_type, pcs, genes, int(X.shape[0]))


#: the longest type name a file name keeps (a file name may have 255 bytes on most systems)
_NAME_CHARS = 80


def _safe_name(name: str) -> str:
    """``name`` as a file name's part: ASCII letters, digits, ``._-``; a longer name is cut and
    ends in 8 hex digits of its hash, so two long names that start alike stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "type"
    if len(safe) <= _NAME_CHARS:
        return safe
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{safe[: _NAME_CHARS - 9].rstrip('._')}_{digest}"


def plot_shap(result: ShapResult, path: Path) -> None:
    """Save a figure with two horizontal bar charts: the top 20 PCs and the top genes.

    ``path`` is checked before drawing as ``cs.pl``'s ``save=`` is
    (:func:`~cellsynth.figure_io.check_save`: ``~`` expanded, a format matplotlib writes, a
    file cellsynth did not write never replaced)."""
    path = check_save(path, flag="path=")
    with literal_text():  # a type named '$\\frac$' is its name, not a failing formula
        _plot_shap(result, path)


def _plot_shap(result: ShapResult, path: Path) -> None:
    pcs = result.pc_importance.head(20).iloc[::-1]
    genes = result.gene_importance.iloc[::-1]
    height = max(4.0, 0.25 * max(len(pcs), len(genes)) + 1.5)
    fig = Figure(figsize=(12, height))
    FigureCanvasAgg(fig)
    ax_pc, ax_gene = fig.subplots(1, 2)
    ax_pc.barh(pcs["component"], pcs["mean_abs_shap"], color="tab:blue")
    ax_pc.set_xlabel("mean |SHAP| (margin units)")
    # a long type or gene name shortened (it had pushed the bars off the figure); the bars at
    # positions of their own, so that two genes of one name (or one shortened label) stay two
    ax_pc.set_title(f"PCs driving {short_label(result.cell_type)}")
    colors = np.where(genes["score"] >= 0, "tab:red", "tab:blue")
    y = np.arange(len(genes))
    ax_gene.barh(y, genes["score"], color=colors)
    ax_gene.set_yticks(y, [short_label(g) for g in genes["gene"]])
    ax_gene.axvline(0, color="black", linewidth=0.8)
    ax_gene.set_xlabel("score (SHAP carried through loadings)")
    ax_gene.set_title(f"genes (n = {result.n_cells} cells)")
    fig.tight_layout()
    save_figure(fig, Path(path), "path=", dpi=120)


def write_shap(result: ShapResult, directory: Path, *, split: str = "test") -> None:
    """Write ``shap_pcs.csv``, ``shap_genes.csv``, ``shap_<type>.png`` and ``shap.json``
    (``split``: which cells were explained, recorded there)."""
    directory = check_out_dir(directory, "directory=", "the SHAP results", DataError)
    directory.mkdir(parents=True, exist_ok=True)
    write_csv(directory / "shap_pcs.csv", result.pc_importance, index=False)
    write_csv(directory / "shap_genes.csv", result.gene_importance, index=False)
    plot_name = f"shap_{_safe_name(result.cell_type)}.png"
    with literal_text():  # its own file of its directory: replaced on a rerun
        _plot_shap(result, directory / plot_name)
    summary = {
        "cell_type": result.cell_type,
        "n_cells": result.n_cells,
        "split": split,
        "plot": plot_name,
        "top_pcs": result.pc_importance.head(20).to_dict(orient="records"),
        "top_genes": result.gene_importance.to_dict(orient="records"),
    }
    write_json(directory / "shap.json", summary)
    logger.info("wrote SHAP results for %s to %s", result.cell_type, directory)
