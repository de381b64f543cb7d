"""The explain stage (SHAP of the real classifier, carried to genes) and the evaluation stage
(a UMAP of real and generated cells, and the fidelity metrics beside the real-vs-real floor)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import keys as K
from ..cells import Cells
from ..classify.xgb import Classifier
from ..config import covariates_of
from ..data.csr import stack_rows
from ..data.qc import normalise_log1p
from ..data.split import balanced_subsample, stratified_subsample
from ..data.store import H5adFile
from ..errors import DataError
from ..explain.shap import explain_type, write_shap
from ..features.pca import PCAModel
from ..metrics.privacy import donor_values
from ..metrics.verdict import TYPE_EVAL_CELLS
from ..outputs import write_csv, write_json
from .context import RunContext
from .data import Split

logger = logging.getLogger(__name__)


#: test cells under which the explained type's SHAP means are said to be those of a few cells
FEW_CELLS = 10


def stage_explain(ctx: RunContext, clf: Classifier, pca: PCAModel,
                  splits: dict[str, Split]) -> None:  # fmt: skip
    """SHAP values of one type's test cells (the most common type by default; its training
    cells, said, when it has no test cell)."""
    if not ctx.runs("explain"):
        return
    with ctx.stage("explain") as entry:
        train, test = splits["train"], splits["test"]
        cell_type = ctx.cfg.explain.cell_type or pd.Series(train.y).value_counts().index[0]
        x_t, split = test.x[test.y == cell_type], "test"
        if x_t.shape[0] == 0:
            x_t, split = train.x[train.y == cell_type], "training"
            logger.warning("explain: %r has no test cells; its training cells are explained "
                           "instead (the classifier has seen them: read the genes as what it "
                           "learned, not as how it generalises)", cell_type)
        elif x_t.shape[0] < FEW_CELLS:  # a mean over a cell or two, read as the type's
            logger.warning("explain: %r has %d test cell(s); the SHAP values are their mean, "
                           "not the type's: read the genes with care, or explain a larger type "
                           "(explain.cell_type)", cell_type, x_t.shape[0])
        e = ctx.cfg.explain
        shap = explain_type(clf, x_t, cell_type, pca.components, pca.genes, n_top=e.n_top_genes,
                            max_cells=e.max_cells, seed=ctx.seed("explain"))  # fmt: skip
        write_shap(shap, ctx.path("explain"), split=split)
        entry.update(cell_type=cell_type, split=split)


def stage_evaluation(ctx: RunContext, cells: Cells, pca: PCAModel) -> None:
    """The report's UMAP of real test and generated cells, and the fidelity metrics (with the
    real-vs-real floor) when the generator made counts: at most ``report.max_cells`` test and
    generated cells each (stratified), the evaluation space fitted on a class-balanced
    subsample of the training cells (``features.max_cells_per_class`` a type)."""
    if not ctx.runs("evaluation"):
        return
    with ctx.stage("evaluation"):
        _evaluate(ctx, cells, pca)


#: what the stage may write (each only under its settings): removed before it runs, so that a
#: rerun with other settings leaves no earlier run's file for the report to show
OUTPUTS = (("features", "umap.csv"), ("metrics", "fidelity.json"), ("metrics", "covariates.json"),
           ("metrics", "per_type.csv"), ("results.md",))  # results.md: rewritten at the run's end


def _evaluate(ctx: RunContext, cells: Cells, pca: PCAModel) -> None:
    cfg, cap = ctx.cfg, ctx.cfg.report.max_cells
    for parts in OUTPUTS:
        ctx.path(*parts).unlink(missing_ok=True)
    rows, y = cells.split_rows(), cells.labels()
    test_rows = rows["test"]
    # every type keeps the cells its own verdict needs, where it has them (an atlas's 126 types
    # at 3,000 cells by share: most with a handful)
    ir = stratified_subsample(y[test_rows], cap, seed=ctx.seed("eval-real"),
                              floor=TYPE_EVAL_CELLS)
    test = cells.to_memory(test_rows[ir])
    y_real = y[test_rows][ir]
    with ctx.read_back("experiments"), H5adFile(ctx.path("synthetic", "eval.h5ad")) as syn:
        y_syn = syn.obs[ctx.label_key].astype(str).to_numpy()
        is_ = stratified_subsample(y_syn, cap, seed=ctx.seed("eval-synthetic"),
                                   floor=TYPE_EVAL_CELLS)
        syn_x = syn.X.take(is_)
        syn_names = syn.obs_names[is_]
        keys = [k for k in _covariates(ctx) if k in syn.obs]
        syn_obs = syn.obs.iloc[is_][[ctx.label_key, *keys]].reset_index(drop=True)
    has_counts = syn_x.shape[1] == cells.n_vars  # the reference model's cells are PCA coordinates
    if cfg.report.umap:
        iu = _as_many_as_real(y_syn[is_], y_real, seed=ctx.seed("umap-cells"))
        z_real = pca.transform(test.X)
        z_syn = (pca.transform(normalise_log1p(syn_x[iu], cfg.qc.target_sum)) if has_counts
                 else syn_x[iu].toarray().astype(np.float32))  # fmt: skip
        _write_umap(ctx, z_real, z_syn, [*test.obs_names, *syn_names[iu]],
                    [*y_real, *y_syn[is_][iu]])  # fmt: skip
    if cfg.report.fidelity and has_counts and cells.has_counts:
        try:
            _fidelity(ctx, cells, test, (y_real, y_syn[is_]), syn_x, syn_obs, keys)
        except DataError as exc:  # a few test cells: the run's other results still stand
            logger.warning("fidelity skipped: %s", exc)


def _fidelity(ctx: RunContext, cells: Cells, test: Any, labels: tuple, syn_x: Any,
              syn_obs: pd.DataFrame, keys: list[str]) -> None:
    """``metrics/fidelity.json`` (and ``covariates.json`` with covariates): the generated
    cells against the test cells, beside the floor, the leaks and the verdict."""
    from ..metrics.fidelity import fidelity_report, real_floor
    from ..metrics.space import fit_space

    cfg, cap = ctx.cfg, ctx.cfg.report.max_cells
    (y_real, y_syn), y, train = labels, cells.labels(), cells.split_rows()["train"]
    sub = train[balanced_subsample(y[train], cfg.features.max_cells_per_class,
                                   seed=ctx.seed("eval-space-cells"))]  # fmt: skip
    space = fit_space(cells.counts, y[sub], list(cells.genes), rows=sub,
                      seed=ctx.seed("eval-space"))  # fmt: skip
    real_c = sp.csr_matrix(test.layers[K.COUNTS])
    fid = fidelity_report(space, real_c, y_real, syn_x, y_syn, seed=ctx.seed("fidelity"))
    it = train[stratified_subsample(y[train], cap, seed=ctx.seed("eval-train"))]
    train_cells = cells.to_memory(it)
    train_c = sp.csr_matrix(train_cells.layers[K.COUNTS])
    donors = _donors(ctx, cells.obs.iloc[train], train_cells.obs, test.obs)
    result = {"real_vs_real": real_floor(space, real_c, y_real, seed=ctx.seed("floor")),
              "synthetic_vs_real": fid,
              **_leaks(ctx, space, train_c, y[it], real_c, syn_x, fid["overall"],
                       donors)}
    result.update(_judged(ctx, space, result, (real_c, y_real), (syn_x, y_syn)))
    write_json(ctx.path("metrics", "fidelity.json"), result)
    if keys:
        from ..metrics.effects import design_report

        write_json(ctx.path("metrics", "covariates.json"), design_report(
            space, real_c, test.obs.reset_index(drop=True), syn_x, syn_obs,
            label_key=ctx.label_key, keys=keys, seed=ctx.seed("design")))  # fmt: skip


def _judged(ctx: RunContext, space: Any, result: dict[str, Any], real: tuple, syn: tuple
            ) -> dict[str, Any]:  # fmt: skip
    """The gene-level test and the per-type floors of equal size (each ``{"skipped": why}``
    when the cells do not allow it), and the verdict they and ``result`` give
    (:func:`~cellsynth.metrics.verdict.fidelity_verdict`), logged line by line; the per-type
    table is written to ``metrics/per_type.csv``."""
    from ..metrics.genes import gene_fidelity
    from ..metrics.typewise import typewise_fidelity
    from ..metrics.verdict import fidelity_verdict
    from ..metrics.verdict_text import per_type_table, verdict_lines

    (rc, rl), (sc, sl) = real, syn
    out: dict[str, Any] = {}
    for name, fn in (("genes", lambda: gene_fidelity(
                         rc, sc, real_labels=rl, synth_labels=sl, seed=ctx.seed("genes"),
                         gene_names=list(space.genes), repeats=ctx.cfg.report.gene_repeats)),
                     ("typewise", lambda: typewise_fidelity(space, rc, rl, sc, sl,
                                                            seed=ctx.seed("typewise")))):
        try:
            out[name] = fn()
        except DataError as exc:  # too few cells
            logger.warning("%s skipped: %s", name, exc)
            out[name] = {"skipped": str(exc)}
    genes = out["genes"] if "overall" in out["genes"] else None
    typewise = out["typewise"] if "per_type" in out["typewise"] else None
    v = fidelity_verdict(result["synthetic_vs_real"], result["real_vs_real"], genes=genes,
                         typewise=typewise, memorisation=result["memorisation"])  # fmt: skip
    write_csv(ctx.path("metrics", "per_type.csv"),
              per_type_table(result["synthetic_vs_real"], result["real_vs_real"], verdicts=v,
                             genes=genes, typewise=typewise))
    for line in verdict_lines(v, privacy=result.get("privacy")):
        logger.info("%s", line)
    return {**out, "verdict": v}


def _covariates(ctx: RunContext) -> list[str]:
    """The covariates the run's generator conditions on (its section's ``covariates``)."""
    return covariates_of(ctx.cfg, ctx.cfg.generator.model)


def _donors(ctx: RunContext, *obs: pd.DataFrame) -> tuple[np.ndarray, ...] | None:
    """The donor (``dataset.donor_key``) of each cell of ``obs`` tables (every training cell,
    the evaluated training cells, the evaluated test cells), or None without a donor column."""
    key = ctx.cfg.dataset.donor_key
    return None if not key else tuple(donor_values(o[key]) for o in obs)


#: what a run's audit set too small says to do: the settings that give each its cells (the
#: audit's own names, "heldout" and "give more cells", named no setting of a run)
RUN_FIXES = {
    "train": "give more cells, or read more of the training cells (a larger report.max_cells)",
    "heldout": ("the run's test cells are its held-out set: hold out more (a larger split.test, "
                "the fractions summing to 1: --set split.train=0.6 --set split.test=0.3), "
                "read more of them (a larger report.max_cells) or give more cells"),
    "synthetic": ("generate more cells for the evaluation (a larger generator.n_per_type_eval) "
                  "or read more of them (a larger report.max_cells)"),
}


def _leaks(ctx: RunContext, space: Any, train_c: sp.csr_matrix, train_y: np.ndarray,
           test_c: sp.csr_matrix, syn_c: sp.csr_matrix, overall: dict[str, Any],
           donors: tuple[np.ndarray, ...] | None = None) -> dict[str, Any]:  # fmt: skip
    """``memorisation`` (copies of real cells, training cells included) and ``privacy`` (the
    audit of the generated cells against the training cells, the test cells held out, in a
    space fitted on other training cells; ``{"skipped": why}`` when the cells are too few),
    each logged as a WARNING when flagged. With ``donors`` (:func:`_donors`) the audit also
    attacks at donor level, on the test cells of held-out donors (``split.heldout_donors``)."""
    from ..metrics.memorisation import memorisation
    from ..metrics.privacy_counts import audit_counts, with_donor_key

    memo = memorisation(space, stack_rows([train_c, test_c]), syn_c,
                        c2st=overall["c2st_auc"], c2st_cells=overall.get("n_per_side"),
                        seed=ctx.seed("memorisation"))  # fmt: skip
    if memo["flagged"]:
        logger.warning("memorisation: the synthetic cells copy real ones (%s); their fidelity "
                       "scores do not measure generation", "; ".join(memo["reasons"]))
    try:
        pool, train_d, test_d = donors if donors is not None else (None, None, None)
        privacy = with_donor_key(audit_counts(
            train_c, test_c, syn_c, list(space.genes), seed=ctx.seed("privacy"),
            train_labels=train_y, train_donors=train_d, heldout_donors=test_d,
            donor_pool=pool, fixes=RUN_FIXES).to_dict(), ctx.cfg.dataset.donor_key)  # fmt: skip
    except DataError as exc:  # too few cells, or test cells that repeat training cells
        logger.warning("privacy audit skipped: %s", exc)
        privacy = {"skipped": str(exc)}
    return {"memorisation": memo, "privacy": privacy}


def _as_many_as_real(y_syn: np.ndarray, y_real: np.ndarray, *, seed: int) -> np.ndarray:
    """Sorted rows of ``y_syn``: per type at most as many generated cells as real cells of
    that type (a seeded draw), so that no side swamps the other in the UMAP; none of a type
    without real cells."""
    rng = np.random.default_rng(seed)
    n_real = pd.Series(y_real).value_counts()
    keep = []
    for t in pd.unique(y_syn):
        rows = np.flatnonzero(y_syn == t)
        k = min(len(rows), int(n_real.get(t, 0)))
        keep.append(rng.choice(rows, size=k, replace=False) if k < len(rows) else rows)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


#: fewer cells (real and generated together) than this get no UMAP
MIN_UMAP_CELLS = 20


def _write_umap(ctx: RunContext, z_real: np.ndarray, z_syn: np.ndarray, cells: list,
                labels: list) -> None:  # fmt: skip
    """``features/umap.csv``: one UMAP of real then generated cells (their PCA features; at
    most as many generated as real cells of each type, :func:`_as_many_as_real`)."""
    import umap  # umap-learn, a scanpy dependency; imported here as it is slow to import

    z = np.vstack([z_real, z_syn])
    if len(z) < MIN_UMAP_CELLS:
        logger.warning("UMAP skipped: %d cells to embed, a UMAP needs %d", len(z),
                       MIN_UMAP_CELLS)  # fmt: skip
        return
    try:
        emb = umap.UMAP(n_neighbors=min(15, len(z) - 1), n_jobs=1,  # seeded: one thread
                        random_state=ctx.seed("umap") % 2**31).fit_transform(z)  # fmt: skip
    except ValueError as exc:  # a few cells apart from the rest leave umap-learn no graph
        logger.warning("UMAP skipped: umap-learn could not embed %d cells (%s)", len(z), exc)
        return
    write_csv(ctx.path("features", "umap.csv"), pd.DataFrame({
        "cell": cells,
        "origin": ["real"] * len(z_real) + ["synthetic"] * len(z_syn),
        "label": labels,
        "x": emb[:, 0], "y": emb[:, 1],
    }), index=False)  # fmt: skip
