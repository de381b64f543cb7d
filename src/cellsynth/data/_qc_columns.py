"""The QC columns a user may give in ``obs``, checked before any work and read one way, and
the per-type IQR fences on them.

``dataset.mito_key`` (each cell's mitochondrial share) and ``dataset.n_genes_key`` (genes
detected per cell) are numbers, computed from the counts where the column is absent or has no
value; ``dataset.doublet_key`` holds doublet calls. A column that cannot be read as what it is
taken for is refused with a one-line :class:`~cellsynth.errors.DataError` that names the column,
what it holds and the fix; missing values are never read as a value (they are kept and counted
in a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ..config import DatasetConfig
from ..errors import DataError, listed
from .labels import missing_labels

logger = logging.getLogger(__name__)

#: doublet calls read as a doublet and as a singlet (compared stripped and in lower case): the
#: spellings of scrublet (True/False), DoubletFinder and scDblFinder (Doublet/Singlet), 1/0 flags
DOUBLET_TEXT = ("doublet", "true", "t", "yes", "y", "1", "1.0")
SINGLET_TEXT = ("singlet", "false", "f", "no", "n", "0", "0.0")

_WHAT = {
    "mito_key": "each cell's mitochondrial share of its counts (a fraction or a percentage)",
    "n_genes_key": "the number of genes detected in each cell",
}


def qc_numbers(col: pd.Series, key: str, setting: str) -> np.ndarray:
    """The values of the numeric QC column ``obs[key]`` as float64, NaN where missing.

    Raises
    ------
    DataError
        The column holds text, True/False, infinite or negative values, or (the mitochondrial
        share) values above 100; the message names the column, what it holds and the fix.
    """
    def refuse(found: str, mend: str = "correct it") -> DataError:
        return DataError(f"obs['{key}'] ({setting}) is read as {_WHAT[setting.split('.')[-1]]}, "
                         f"but it holds {found}; {mend}, set {setting} to the obs column that "
                         f"holds it, or set {setting} = \"\" (or rename the column) to compute "
                         "it from the counts")

    if pd.api.types.is_bool_dtype(col):
        raise refuse("True/False values", "give numbers")
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_complex_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(col.astype(object), errors="coerce").to_numpy(dtype=np.float64)
        text = np.isnan(values) & ~missing_labels(col)
        if text.any():
            examples = pd.unique(col[text].astype(str))
            raise refuse(f"text in {int(text.sum())} of {len(col)} cells "
                         f"({listed(examples, 3, quote=True)})", "convert it to numbers")
    known = values[~np.isnan(values)]
    if np.isinf(known).any():
        raise refuse(f"{int(np.isinf(known).sum())} infinite value(s)")
    if (known < 0).any():
        raise refuse(f"{int((known < 0).sum())} negative value(s) (e.g. {known.min():g})")
    if setting.endswith("mito_key") and known.size and known.max() > 100:
        raise refuse(f"values up to {known.max():g}, neither a fraction (0 to 1) nor a "
                     "percentage (0 to 100)")
    return values


def _numeric_keys(dataset: DatasetConfig) -> list[tuple[str, str]]:
    return [(dataset.mito_key, "dataset.mito_key"), (dataset.n_genes_key, "dataset.n_genes_key")]


def needs_computing(obs: pd.DataFrame, key: str) -> bool:
    """Whether a numeric QC column is computed from the counts: ``obs`` has no column ``key``,
    or it has no value (:func:`qc_column` warns in that case)."""
    return not key or key not in obs.columns or bool(missing_labels(obs[key]).all())


def qc_column(
    obs: pd.DataFrame, key: str, setting: str, compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """Each cell's value of a numeric QC column as float32: ``obs[key]`` where it has values
    (checked by :func:`qc_numbers`; missing values stay NaN and are counted in a warning: the
    IQR fences are fitted on and applied to the other cells), else ``compute()``."""
    if not key or key not in obs.columns:
        return np.asarray(compute(), dtype=np.float32)
    values = qc_numbers(obs[key], key, setting)
    missing = np.isnan(values)
    if missing.all():
        logger.warning("obs['%s'] (%s) has no values (all %d missing): computed from the counts "
                       "instead", key, setting, len(values))
        return np.asarray(compute(), dtype=np.float32)
    if missing.any():
        logger.warning("obs['%s'] (%s) is missing for %d of %d cells: those cells are kept, and "
                       "the per-type IQR fences on it are fitted on and applied to the other "
                       "cells; fill the missing values, or set %s = \"\" to compute the column "
                       "from the counts", key, setting, int(missing.sum()), len(values), setting)
    return values.astype(np.float32)


def doublet_flags(col: pd.Series, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Which cells ``obs[key]`` (``dataset.doublet_key``) calls doublets, and which have no call.

    Read: True/False, 1/0 (integers or floats) and the words of :data:`DOUBLET_TEXT` and
    :data:`SINGLET_TEXT` in any case. A cell with no call (a missing value) is not a doublet.

    Raises
    ------
    DataError
        Numbers other than 0 and 1 (a doublet score, not a call) or text that is no call; the
        message lists the values found and what is read.
    """
    fix = ("or set dataset.doublet_key to the obs column of calls, or to \"\" to skip the "
           "doublet filter")
    missing = missing_labels(col)
    if pd.api.types.is_bool_dtype(col):
        return col.astype("boolean").fillna(False).to_numpy(dtype=bool), missing
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_complex_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        seen = np.unique(values[~missing])
        if not np.isin(seen, (0.0, 1.0)).all():
            raise DataError(
                f"obs['{key}'] (dataset.doublet_key) is read as doublet calls (1/0, True/False), "
                f"but it holds {len(seen)} distinct numbers from {seen.min():g} to "
                f"{seen.max():g}, e.g. a doublet score; write calls into it (e.g. "
                f"adata.obs['{key}'] = adata.obs['{key}'] > THRESHOLD) " + fix)
        return values == 1.0, missing
    text = col.astype(object).astype(str).str.strip().str.lower()
    doublet = text.isin(DOUBLET_TEXT).to_numpy()
    unknown = ~(doublet | text.isin(SINGLET_TEXT).to_numpy() | missing)
    if unknown.any():
        found = pd.unique(col[unknown].astype(str))
        raise DataError(
            f"obs['{key}'] (dataset.doublet_key) is read as doublet calls, but {int(unknown.sum())}"
            f" cells hold other values ({listed(found, 5, quote=True)}); doublets are read from "
            "doublet/true/yes/1 and singlets from singlet/false/no/0 (any case): map the values "
            f"to these (adata.obs['{key}'] = adata.obs['{key}'].map({{...}})) " + fix)
    return doublet, missing


def doublets(obs: pd.DataFrame, key: str) -> np.ndarray:
    """:func:`doublet_flags` of ``obs[key]``, with a warning for cells without a call."""
    flags, missing = doublet_flags(obs[key], key)
    if missing.any():
        logger.warning("obs['%s'] (dataset.doublet_key) has no call for %d of %d cells: they "
                       "are kept as singlets", key, int(missing.sum()), len(missing))
    return flags


def say_no_doublet_column(columns: Any, key: str) -> None:
    """Say that the doublet filter is skipped, ``obs`` having no column ``key``: at INFO, or a
    WARNING naming the columns that look like doublet calls under another name (scanpy's
    scrublet writes ``predicted_doublet``, scDblFinder ``scDblFinder.class``, DoubletFinder
    ``DF.classifications_...``), with the setting that reads them."""
    def calls(name: str) -> bool:
        name = name.casefold()
        return "score" not in name and ("doublet" in name or "dblfinder.class" in name
                                        or name.startswith("df.classification"))

    near = [str(c) for c in columns if calls(str(c))]
    if not near:
        logger.info("no doublet column '%s' in obs: doublet filter skipped", key)
        return
    logger.warning("no doublet column '%s' in obs (dataset.doublet_key), but obs has %s: the "
                   "doublet filter is skipped; if that column holds doublet calls, set "
                   "dataset.doublet_key to it (--set \"dataset.doublet_key='%s'\")", key,
                   listed(near, 3, quote=True), near[0])


def _inside(v: np.ndarray, fit: np.ndarray, k: float, *, lower: bool = True) -> np.ndarray:
    """Cells inside the IQR fences of ``v`` fitted on the cells ``fit`` (the upper fence only
    unless ``lower``). A missing value (NaN) is not judged: it passes; fewer than 4 known
    values among ``fit`` fit no fence."""
    known = ~np.isnan(v)
    if (fit & known).sum() < 4:
        return np.ones(len(v), dtype=bool)
    q1, q3 = np.percentile(v[fit & known], [25, 75])
    lo, hi = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    return ~known | ((v <= hi) & ((v >= lo) if lower else True))


def iqr_inliers(
    labels: np.ndarray, train: np.ndarray, mito: np.ndarray, n_genes: np.ndarray, k: float
) -> np.ndarray:
    """The cells inside their type's IQR fences (``k`` IQRs beyond the quartiles) on the
    mitochondrial share (upper fence) and genes per cell (both), fitted on the type's training
    cells and applied to every split; a type with fewer than 4 training cells is not fenced,
    and a missing value (NaN) is not judged on (see :func:`qc_column`)."""
    keep = np.ones(len(labels), dtype=bool)
    flat: dict[str, list[str]] = {}  # a fence of zero width: the types it removed cells of
    for t in np.unique(labels):
        is_t = labels == t
        fit = is_t & train
        if fit.sum() < 4:
            continue
        inside = {"dataset.mito_key": _inside(mito, fit, k, lower=False),
                  "dataset.n_genes_key": _inside(n_genes, fit, k)}
        for (setting, kept), v in zip(inside.items(), (mito, n_genes), strict=True):
            out = int((is_t & ~kept).sum())
            if out and _zero_width(v, fit):
                flat.setdefault(setting, []).append(f"{t}: {out}")
        keep &= ~is_t | (inside["dataset.mito_key"] & inside["dataset.n_genes_key"])
    for setting, removed in flat.items():
        what, off = (("mitochondrial share", "is above") if setting == "dataset.mito_key"
                     else ("genes per cell", "differs from"))
        logger.warning("QC step 'per-type IQR outliers' removed the cells whose %s %s the one "
                       "value the middle half of their type's training cells share (an IQR of "
                       "0: a fence of zero width), in %d type(s): %s cells; if they are not "
                       "outliers (a single-nucleus atlas holds few mitochondrial reads), an "
                       "obs column (%s) of one value for every cell, such as 0, leaves this "
                       "fence out", what, off, len(removed), listed(removed, 10), setting)
    return keep


def _zero_width(v: np.ndarray, fit: np.ndarray) -> bool:
    """Whether the IQR of ``v`` over the known values of the cells ``fit`` is zero."""
    known = v[fit & ~np.isnan(v)]
    return len(known) >= 4 and bool(np.subtract(*np.percentile(known, [75, 25])) == 0)


#: a mitochondrial gene in another spelling than ``MT-ND1``/``mt-Nd1``: R's make.names
#: (``MT.ND1``), another separator (``MT_ND1``), a genome prefix (``GRCh38_MT-ND1``)
_OTHER_MT = r"^(?:.*[_.\-])?MT[._](?:ND|CO|ATP|CYB|RNR|T[A-Z])|^.+[_.\-]MT-"


def mito_spelling(names: Any) -> str:
    """A hint for gene names that hold mitochondrial genes in another spelling (said beside
    "no mitochondrial genes"), or ""."""
    names = pd.Index([str(n) for n in names])
    other = names[names.str.upper().str.contains(_OTHER_MT, regex=True)]
    if not len(other):
        return ""
    return (f": {len(other)} gene name(s) look mitochondrial in another spelling "
            f"({listed(list(other), 3, quote=True)}); rename them with the MT- prefix (as "
            "MT-ND1, mt-Nd1 in mouse) in adata.var_names, or give a per-cell mitochondrial "
            "fraction in obs (dataset.mito_key)")


def check_qc_columns(obs: pd.DataFrame, dataset: DatasetConfig) -> None:
    """Refuse, before any work, a QC column in ``obs`` that cannot be read as what it is taken
    for (the mitochondrial share, genes per cell, doublet calls): see :func:`qc_numbers` and
    :func:`doublet_flags`."""
    for key, setting in _numeric_keys(dataset):
        if key and key in obs.columns:
            qc_numbers(obs[key], key, setting)
    if dataset.doublet_key and dataset.doublet_key in obs.columns:
        doublet_flags(obs[dataset.doublet_key], dataset.doublet_key)
