"""Preprocessing as the reference did it: clean labels, split, filter, normalise.

Each step logs and records how many cells and genes it removed. Bounds and gene filters are
fitted on the training split only and applied to every split. The matrix stays sparse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import keys as K
from ..config import DatasetConfig, QCConfig, SplitConfig
from ..errors import DataError, listed
from ._mito import gene_symbols, mito_fraction, mito_genes
from ._qc_columns import (
    check_qc_columns,
    doublets,
    iqr_inliers,
    qc_column,
    say_no_doublet_column,
)
from .csr import cells_per_gene, genes_per_cell
from .genes import annotated_var, source_annotation, warn_other_features
from .groups import check_groups
from .io import Expression, counts_matrix, find_counts
from .labels import (
    check_label,
    missing_labels,
    prefixes_fix,
    warn_other_case_prefixes,
    warn_unannotated,
)
from .settings import data_settings
from .split import stratified_split
from .values import fractional_rows

logger = logging.getLogger(__name__)

#: a QC step that removes more than this share of the cells left is warned about
HEAVY_SHARE = 0.5


@dataclass
class QCReport:
    """What every step removed, in order."""

    steps: list[dict] = field(default_factory=list)
    dropped_types: list[str] = field(default_factory=list)
    cells_per_type_before: dict[str, int] = field(default_factory=dict)
    cells_per_type_after: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path) -> QCReport:
        """Read back the report the pipeline wrote as ``data/qc.json``."""
        import json
        from pathlib import Path

        d = json.loads(Path(path).read_text())
        return cls(d["steps"], d["dropped_types"], d["cells_per_type_before"],
                   d["cells_per_type_after"])

    def record(self, step: str, cells: tuple[int, int], genes: tuple[int, int]) -> None:
        row = {
            "step": step,
            "cells_removed": cells[0] - cells[1],
            "genes_removed": genes[0] - genes[1],
            "cells_left": cells[1],
            "genes_left": genes[1],
        }
        self.steps.append(row)
        logger.info("qc %-28s removed %7d cells, %6d genes (%d x %d left)", step,
                    row["cells_removed"], row["genes_removed"], cells[1], genes[1])


class _Cells:
    """The cells still in (their ``obs`` and positions in the input), the gene count, the report.

    Holds no matrix: the in-memory :func:`preprocess` and the chunked
    :func:`cellsynth.data.chunked.preprocess_backed` run the same steps on it and apply the
    resulting rows and genes to their matrix.
    """

    def __init__(self, obs: pd.DataFrame, n_genes: int, report: QCReport,
                 label_key: str | None = None):
        self.obs, self.n_genes, self.report, self.label_key = obs, n_genes, report, label_key
        self.rows = np.arange(len(obs))  # positions in the input, sorted
        self._heavy_steps: list[tuple[str, str | None, int, int]] = []

    def keep_cells(self, mask: np.ndarray, step: str, setting: str | None = None,
                   lost: int | None = logging.WARNING) -> None:
        """Keep the cells ``mask`` selects; ``setting`` is the config key that governs the step
        (named when the step removes most of the cells, or all of them). A type whose every
        cell the step removes is logged at level ``lost`` (None: the caller says it) and, at
        WARNING, added to the report's ``dropped_types``: no type vanishes unsaid."""
        before = len(self.rows)
        mask = np.asarray(mask, dtype=bool)
        if not mask.all():
            if lost is not None:
                self._lost_types(mask, step, setting, lost)
            self.rows = self.rows[mask]
            self.obs = self.obs.iloc[mask].copy()  # a frame of its own: columns are added later
        self.report.record(step, (before, len(self.rows)), (self.n_genes, self.n_genes))
        self._heavy(step, setting, before, len(self.rows))
        if len(self.rows) == 0:
            raise DataError(
                f"no cells left after the QC step '{step}'; "
                + (f"check {setting} for this data" if setting else
                   "check dataset.label_key, dataset.uninformative_prefixes and the qc.* "
                   "thresholds for this data")
            )

    def _lost_types(self, mask: np.ndarray, step: str, setting: str | None, level: int) -> None:
        if self.label_key is None:
            return
        col = self.obs[self.label_key]
        labels = col.astype(str).to_numpy()
        gone = sorted(set(labels[~mask & ~missing_labels(col)]) - set(labels[mask]))
        if not gone:
            return
        logger.log(level, "QC step '%s' removed every cell of %d type(s): %s%s", step, len(gone),
                   listed(gone, 10, quote=True),
                   f"; if that is not meant, check {setting}" if setting else "")
        if level >= logging.WARNING:
            self.report.dropped_types += [t for t in gone if t not in self.report.dropped_types]

    def keep_genes(self, mask: np.ndarray, step: str, setting: str | None = None) -> np.ndarray:
        """Keep the genes ``mask`` selects (returned); ``setting`` as for :meth:`keep_cells`."""
        mask = np.asarray(mask, dtype=bool)
        before, self.n_genes = self.n_genes, int(mask.sum())
        self.report.record(step, (len(self.rows), len(self.rows)), (before, self.n_genes))
        if self.n_genes == 0:
            raise DataError(
                f"no genes left after the QC step '{step}'; lower qc.min_cells_per_gene or "
                "qc.variance_threshold for a dataset this small" + self._culprit()
            )
        return mask

    def _heavy(self, step: str, setting: str | None, before: int, after: int) -> None:
        """Warn when one step removed most of the cells left: thresholds made for other data
        (a QC that leaves a handful of cells would otherwise run every stage on them). Genes
        are not warned about: most of a full gene space is rightly removed."""
        if before and (before - after) / before > HEAVY_SHARE:
            self._heavy_steps.append((step, setting, before, after))
            logger.warning("QC step '%s' removed %d of %d cells (%.0f%%)%s", step, before - after,
                           before, 100 * (before - after) / before,
                           f": if that is not meant for this data, change {setting}"
                           if setting else "")

    def _culprit(self) -> str:
        """An earlier step that removed most of the cells, said beside a later failure."""
        for step, setting, before, after in self._heavy_steps:
            return (f" (only {after} cells were left to count them in: the step '{step}' "
                    f"removed {before - after} of {before}"
                    + (f"; change {setting}" if setting else "") + ")")
        return ""

    def train(self) -> np.ndarray:
        """Which of the cells still in are training cells."""
        return (self.obs[K.SPLIT] == "train").to_numpy()


def normalise_log1p(
    x: sp.csr_matrix, target_sum: float, total: np.ndarray | None = None
) -> sp.csr_matrix:
    """Scale each cell to ``target_sum`` counts and take log1p, sparse.

    ``total`` gives the counts each row is scaled by (default: the row sums of ``x``); the
    chunked path passes the totals it stored so that a gene subset normalises as the whole did.
    """
    if total is None:
        total = np.asarray(x.sum(axis=1)).ravel()
    scale = np.where(total > 0, target_sum / np.maximum(total, 1e-12), 0.0).astype(np.float32)
    out = sp.csr_matrix(x, dtype=np.float32, copy=True)
    out.data *= np.repeat(scale, np.diff(out.indptr))
    np.log1p(out.data, out=out.data)
    return out


class GeneMoments:
    """Per-gene sum and sum of squares in float64, added a chunk of rows at a time."""

    def __init__(self, n_genes: int):
        self.n = 0
        self.sum = np.zeros(n_genes)
        self.sum_sq = np.zeros(n_genes)

    def add(self, x: sp.csr_matrix | np.ndarray) -> None:
        if sp.issparse(x):
            x = sp.csr_matrix(x)
            data = x.data.astype(np.float64)
            self.sum += np.bincount(x.indices, weights=data, minlength=self.sum.size)
            self.sum_sq += np.bincount(x.indices, weights=data * data, minlength=self.sum.size)
        else:
            x = np.asarray(x, dtype=np.float64)
            self.sum += x.sum(axis=0)
            self.sum_sq += (x * x).sum(axis=0)
        self.n += x.shape[0]

    def variance(self) -> np.ndarray:
        """Population variance of each gene over the rows added."""
        mean = self.sum / max(self.n, 1)
        return np.maximum(self.sum_sq / max(self.n, 1) - mean**2, 0.0)


def sparse_variance(x: sp.csr_matrix) -> np.ndarray:
    """Per-gene variance of a sparse matrix without densifying it (float64 sums)."""
    moments = GeneMoments(x.shape[1])
    moments.add(x)
    return moments.variance()


def filter_cells(
    obs: pd.DataFrame,
    genes: pd.Index,
    dataset: DatasetConfig,
    qc: QCConfig,
    split: SplitConfig,
    *,
    groups: dict[str, str] | None,
    seed: int,
    n_genes_cell: np.ndarray,
    mito: Callable[[], np.ndarray],
    detected: Callable[[np.ndarray], np.ndarray],
) -> tuple[_Cells, np.ndarray]:
    """Every QC step before normalisation, in order, each recorded in the report.

    The matrix is reached only through the arguments, so the in-memory and the chunked paths
    share the steps: ``n_genes_cell`` (genes detected per input cell, all genes), ``mito()``
    (mitochondrial fraction of every input cell, called only when ``obs`` lacks it) and
    ``detected(rows)`` (per gene, the number of the input rows ``rows`` that hold a value).

    Returns
    -------
    The cells kept (``rows``: their sorted positions in the input; ``obs`` with the label,
    split, group and QC columns) and the mask of genes kept by the detection filter.
    """
    label_key = dataset.label_key
    obs = obs.copy()
    obs[label_key] = obs[label_key].astype(object)
    st = _Cells(obs, len(genes), QCReport(), label_key)
    report = st.report
    # the report's "before QC": every labelled cell of the input, before any step removes one
    labelled = obs[label_key][~missing_labels(obs[label_key])].astype(str)
    report.cells_per_type_before = labelled.value_counts().to_dict()

    # QC columns are computed on the full gene set, before any gene is removed; a user's
    # column is checked (numbers; missing values kept, unjudged, with a warning)
    st.obs[K.MITO] = qc_column(st.obs, dataset.mito_key, "dataset.mito_key", mito)
    st.obs[K.N_GENES] = qc_column(st.obs, dataset.n_genes_key, "dataset.n_genes_key",
                                  lambda: n_genes_cell)

    st.keep_cells(n_genes_cell > 0, "no detected genes")
    if dataset.doublet_key and dataset.doublet_key in st.obs.columns:
        st.keep_cells(~doublets(st.obs, dataset.doublet_key), "predicted doublets",
                      "dataset.doublet_key")
    elif dataset.doublet_key:
        say_no_doublet_column(st.obs.columns, dataset.doublet_key)
    lab = st.obs[label_key]
    missing = missing_labels(lab)
    st.keep_cells(~missing, "no label", "dataset.label_key")
    prefixes = tuple(dataset.uninformative_prefixes)
    if prefixes:  # labels removed by name, as the setting asks: said at INFO
        uninformative = st.obs[label_key].astype(str).str.startswith(prefixes).to_numpy()
        st.keep_cells(~uninformative, "uninformative labels", "dataset.uninformative_prefixes",
                      lost=logging.INFO)
    warn_unannotated(st.obs[label_key], label_key, prefixes_fix(prefixes, st.obs[label_key]))
    labels = st.obs[label_key].astype(str).to_numpy()
    warn_other_case_prefixes(labels, prefixes)
    one = [t for t, n in pd.Series(labels).value_counts().items() if n == 1]
    if one and qc.on_single_cell_type == "error":
        raise DataError(
            f"{len(one)} cell type(s) have a single cell ({listed(one, quote=True)}), which "
            "cannot be split into train/val/test; "
            "remove them or set qc.on_single_cell_type = \"drop\""
        )

    if groups:
        groups = check_groups(groups, labels, "groups")
        st.obs[K.GROUP] = [groups.get(v, v) for v in labels]

    donors = None
    if dataset.donor_key:
        check_donor_key(st.obs.columns, dataset)  # preprocess checked it before QC already
        no_donor = missing_labels(st.obs[dataset.donor_key])
        if no_donor.any():
            raise DataError(f"{int(no_donor.sum())} cell(s) have no donor in obs"
                            f"['{dataset.donor_key}'] (dataset.donor_key); give every cell its "
                            "donor (or sample), or set dataset.donor_key = \"\"")
        donors = st.obs[dataset.donor_key].astype(str).to_numpy()
    if K.SPLIT in st.obs.columns:  # a run draws its own split: say the data's is not used
        logger.warning("the data's obs['%s'] is replaced by this run's own split (split.train, "
                       "split.val, split.test, seed %d): cells it marks test may be trained on "
                       "here; cellsynth fit keeps such a column, cellsynth run does not",
                       K.SPLIT, seed)  # fmt: skip
    st.obs[K.SPLIT] = stratified_split(labels, (split.train, split.val, split.test), seed=seed,
                                       donors=donors, heldout_donors=split.heldout_donors)
    st.keep_cells(n_genes_cell[st.rows] >= qc.min_genes_per_cell,
                  f"fewer than {qc.min_genes_per_cell} genes", "qc.min_genes_per_cell")

    counts = detected(st.rows[st.train()])
    keep_genes = st.keep_genes(counts >= qc.min_cells_per_gene,
                               f"genes in < {qc.min_cells_per_gene} train cells",
                               "qc.min_cells_per_gene")

    keep = iqr_inliers(st.obs[label_key].astype(str).to_numpy(), st.train(),
                       st.obs[K.MITO].to_numpy(dtype=np.float64),
                       st.obs[K.N_GENES].to_numpy(dtype=np.float64), qc.iqr_factor)
    st.keep_cells(keep, "per-type IQR outliers", "qc.iqr_factor")

    labels = st.obs[label_key].astype(str).to_numpy()
    train = st.train()
    n_train = pd.Series(labels[train]).value_counts()
    all_types = np.unique(labels)
    rare = sorted(t for t in all_types if n_train.get(t, 0) < qc.min_cells_per_type)
    if rare:
        n_all = pd.Series(labels).value_counts()
        logger.warning("dropping %d type(s) with fewer than %d training cells "
                       "(qc.min_cells_per_type): %s%s", len(rare), qc.min_cells_per_type,
                       listed([f"{t} ({n_train.get(t, 0)} of its {n_all[t]} cells)"
                               for t in rare], 20),
                       "; every cell of a held-out donor is a test cell (split.heldout_donors)"
                       if split.heldout_donors else "")
        report.dropped_types += rare
    st.keep_cells(~np.isin(labels, rare), f"types with < {qc.min_cells_per_type} train cells",
                  "qc.min_cells_per_type", lost=None)
    if len(all_types) < 2:  # no setting makes a second type
        raise DataError(
            f"obs['{label_key}'] has one cell type after QC ({', '.join(map(repr, all_types))}"
            "): a run's classifier experiments need at least 2; to learn and generate cells "
            "of one type, use `cellsynth fit` and `cellsynth generate`")
    if len(all_types) - len(rare) < 2:
        raise DataError(
            f"fewer than 2 cell types have {qc.min_cells_per_type} or more training cells; "
            "lower qc.min_cells_per_type or give a larger dataset"
        )
    return st, keep_genes


def keep_variable(cells: _Cells, variance: np.ndarray, qc: QCConfig) -> np.ndarray:
    """The last step: genes whose normalised variance over the training cells reaches the threshold."""
    return cells.keep_genes(variance >= qc.variance_threshold, f"variance < {qc.variance_threshold}",
                            "qc.variance_threshold")


def final_obs(cells: _Cells, label_key: str) -> pd.DataFrame:
    """``obs`` of the result (label, split and group categorical) and the per-type counts."""
    obs = cells.obs.copy()
    obs[label_key] = pd.Categorical(obs[label_key].astype(str))
    obs[K.SPLIT] = pd.Categorical(obs[K.SPLIT], categories=list(K.SPLITS))
    if K.GROUP in obs:
        obs[K.GROUP] = pd.Categorical(obs[K.GROUP].astype(str))
    cells.report.cells_per_type_after = obs[label_key].value_counts().to_dict()
    return obs


class WholeCheck:
    """Every value of a matrix taken as raw counts checked to be a whole number, in the pass
    that reads them (whole or chunk by chunk): ``find_counts`` decided from a sample, so a
    later batch of scaled or corrected values would otherwise go into the model as counts.

    ``add(block, first)`` takes CSR rows whose first row is ``first``; ``check(obs_names)``
    raises a one-line :class:`DataError` naming a few fractional cells and their number.
    """

    def __init__(self, where: str | None):
        self.where, self.n_cells, self.examples = where, 0, []

    def add(self, block: sp.csr_matrix, first: int) -> None:
        cells, _ = fractional_rows(block)
        if not len(cells):
            return
        self.n_cells += len(cells)
        self.examples.extend((first + cells[: 3 - len(self.examples)]).tolist())

    def check(self, obs_names: pd.Index) -> None:
        if not self.n_cells:
            return
        names = ", ".join(repr(str(obs_names[i])) for i in self.examples[:3])
        raise DataError(
            f"{self.where} was taken as raw counts (its first values are whole numbers), but "
            f"{self.n_cells} cells hold fractional values (e.g. {names}): scaled or corrected "
            "values cannot be modelled as counts; give raw counts for every cell, or set "
            "dataset.is_normalised = true if these are normalised values"
        )


def describe_expression(expr: Expression, needs_counts: str = "") -> bool:
    """Log where the counts are; whether there are any. ``needs_counts``: the error of a caller
    that needs raw counts (a run of a generator of counts), raised, before any QC step, where
    there are none (with a layer of another name that holds whole numbers, named)."""
    has_counts = expr.counts is not None
    if needs_counts and not has_counts and not expr.note:
        raise expr.no_counts(needs_counts)
    if expr.note:  # neither counts nor log-normalised values: PCA would read them wrongly
        # the note says what X looks like and how to mend it; the setting only overrides a
        # wrong guess (it would read counts or unlogged values as log-normalised ones)
        raise DataError(f"{expr.note}. Only if X does hold log-normalised values after all, set "
                        "dataset.is_normalised = true to read it as such")
    logger.info("expression: %s", f"raw counts in {expr.counts}" if has_counts else
                "normalised values only (no counts found): normalisation is skipped")
    return has_counts


def check_donor_key(obs_columns: Sequence[str] | pd.Index, dataset: DatasetConfig) -> None:
    """Refuse, before QC reads the counts, a ``dataset.donor_key`` that is not a column."""
    if dataset.donor_key and dataset.donor_key not in set(map(str, obs_columns)):
        raise DataError(f"donor column '{dataset.donor_key}' (dataset.donor_key) not in obs; "
                        f"columns are: {listed(obs_columns, 20) or '(none)'}; set "
                        "dataset.donor_key to one of them, or to \"\" for none")


def preprocess(
    adata: ad.AnnData,
    dataset: DatasetConfig,
    qc: QCConfig,
    split: SplitConfig,
    *,
    groups: dict[str, str] | None = None,
    seed: int = 0,
    needs_counts: str = "",
) -> tuple[ad.AnnData, QCReport]:
    """Run every QC step and return the preprocessed AnnData and the report.

    The whole matrix is held in memory; :func:`cellsynth.data.chunked.preprocess_backed` runs
    the same steps on a file, chunk by chunk, with the same result.

    Parameters
    ----------
    needs_counts
        Where the data must hold raw counts (a generator of counts is to be trained on them),
        the error raised, before any QC step, when they hold normalised values only ("": none
        needed; the values are then taken as they are).

    Returns
    -------
    An AnnData whose ``X`` is log1p(counts per ``target_sum``) (or the input's normalised values
    when it has no counts), with ``layers['counts']`` when counts exist, and ``obs`` holding the
    label, ``cellsynth_group``, ``cellsynth_split``, ``n_genes`` and ``mito``.
    """
    dataset, qc, split, seed = data_settings(dataset, qc, split, seed)  # Python's: unchecked
    label_key = dataset.label_key
    check_label(adata, label_key)
    check_donor_key(adata.obs.columns, dataset)
    check_qc_columns(adata.obs, dataset)
    expr = find_counts(adata, dataset.is_normalised)
    has_counts = describe_expression(expr, needs_counts)
    x, genes = counts_matrix(adata, expr)
    warn_other_features(adata, expr.counts)
    if has_counts:  # every value, not the sample find_counts looked at
        whole = WholeCheck(expr.counts)
        whole.add(x, 0)
        whole.check(adata.obs_names)
    cells, keep_detected = filter_cells(
        adata.obs, genes, dataset, qc, split, groups=groups, seed=seed,
        n_genes_cell=genes_per_cell(x),
        mito=lambda: mito_fraction(x, mito_genes(genes, gene_symbols(adata, expr.counts))),
        detected=lambda rows: cells_per_gene(x[rows]),
    )
    if len(cells.rows) < x.shape[0]:
        x = x[cells.rows]
    if not keep_detected.all():
        x, genes = x[:, keep_detected], genes[keep_detected]

    counts = x if has_counts else None
    xn = normalise_log1p(x, qc.target_sum) if has_counts else x
    keep_g = keep_variable(cells, sparse_variance(xn[cells.train()]), qc)
    if not keep_g.all():
        xn, genes = xn[:, keep_g], genes[keep_g]
        counts = counts[:, keep_g] if counts is not None else None

    obs = final_obs(cells, label_key)
    # the text columns of the source's var (gene symbols beside IDs) go on to the models
    var = annotated_var(genes, source_annotation(adata, expr.counts, genes))
    out = ad.AnnData(X=xn, obs=obs, var=var)
    if counts is not None:
        out.layers[K.COUNTS] = counts
    out.uns[K.UNS] = {"has_counts": has_counts, "label_key": label_key}
    return out, cells.report
