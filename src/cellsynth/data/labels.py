"""A data set's labels: which cells have none (missing values, and missing values written as
text), whether a label column holds names, and names that differ only by spaces, Unicode form
or case (one type split in two)."""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import DataError, listed
from .levels import level_text

logger = logging.getLogger(__name__)


#: text a missing value becomes when a column is turned into strings (``.astype(str)`` gives
#: "nan"; ``str(None)`` "None"; pandas' NA "<NA>"): a missing value, never a name
MISSING_TEXT = ("", "nan", "NaN", "None", "<NA>", "null")


def missing_labels(col: pd.Series) -> np.ndarray:
    """Which cells have no label: missing values, or missing values written as text
    (:data:`MISSING_TEXT`: a cell type called "nan" is what ``.astype(str)`` makes of NaN)."""
    text = col.astype(object).astype(str).str.strip()
    return col.isna().to_numpy() | text.isin(MISSING_TEXT).to_numpy()


#: what portals and annotation tools call cells without a type (casefolded, ``_``/``-`` as
#: spaces), alone or first in a name: "Unknown", "unassigned", "Unclassified_3"; and alone
#: only, R's missing value written as text and Expression Atlas' "not available"
UNANNOTATED = ("unknown", "unassigned", "unannotated", "unclassified", "unlabeled",
               "unlabelled", "undetermined", "not assigned", "no annotation")
UNANNOTATED_ALONE = ("na", "n/a", "not available", "not applicable")
_UNANNOTATED = re.compile(rf"^(?:(?:{'|'.join(UNANNOTATED)})(?:\b|\d|$)"
                          rf"|(?:{'|'.join(UNANNOTATED_ALONE)})$)")
_UNANNOTATED_WARNED: set[tuple[str, ...]] = set()


def unannotated_names(names: Any) -> list[str]:
    """The names among ``names`` that say a cell has no type (:data:`UNANNOTATED`)."""
    text = pd.Series(pd.unique(pd.Series(names, dtype=object).astype(str)), dtype=object)
    plain = text.str.casefold().str.replace(r"[_\-]+", " ", regex=True).str.strip()
    return sorted(text[plain.str.contains(_UNANNOTATED)].tolist())


def fit_fix(key: str, names: list[str]) -> str:
    """How to leave the cells of the types ``names`` out of a fit (for
    :func:`warn_unannotated`)."""
    return f"drop them first (adata = adata[~adata.obs['{key}'].isin({names!r})].copy())"


def prefixes_fix(prefixes: Any, labels: Any) -> Any:
    """How to leave the cells of the types ``names`` out of a run (for
    :func:`warn_unannotated`): add them to ``dataset.uninformative_prefixes`` (``prefixes``),
    naming the other ``labels`` that such a prefix would drop too ("NA" drops "NAIVE_B")."""
    def fix(key: str, names: list[str]) -> str:
        names_of = pd.unique(pd.Series(np.asarray(labels, dtype=object)).astype(str))
        also = [t for t in names_of if t not in names and t.startswith(tuple(names))]
        caveat = (f"; as prefixes they would also drop {listed(also, 3, quote=True)}: instead, "
                  + fit_fix(key, names) if also else "")
        return ("add them to dataset.uninformative_prefixes (--set "
                f"\"dataset.uninformative_prefixes={[*prefixes, *names]}\"){caveat}")
    return fix


def warn_unannotated(labels: Any, key: str, fix: Any = fit_fix) -> None:
    """Warn, once, that cells labelled as having no type ("Unknown", "unassigned") are
    learned as a cell type of their own, with how many and ``fix(key, names)``, how to leave
    them out (default: out of a fit, :func:`fit_fix`)."""
    labels = pd.Series(np.asarray(labels, dtype=object)).astype(str)
    names = unannotated_names(labels.unique())
    if not names or (key, *names) in _UNANNOTATED_WARNED:
        return
    _UNANNOTATED_WARNED.add((key, *names))  # once: the labels are read at several steps
    n = labels.value_counts()
    logger.warning("%s cells are labelled as having no type in obs['%s'] (%s): they are "
                   "learned as a cell type of their own and generated as one; to leave them "
                   "out, %s", f"{int(n[names].sum()):,}", key,
                   listed([f"{t}: {n[t]:,}" for t in names], 6), fix(key, names))


def check_label(adata: ad.AnnData, label_key: str) -> None:
    """The label column exists and holds names, not numbers."""
    if not isinstance(label_key, str):
        raise DataError(f"label_key takes the name of one obs column (a string such as "
                        f"'cell_type'), not {type(label_key).__name__} {label_key!r}")
    if label_key not in adata.obs.columns:
        cols = ", ".join(map(str, adata.obs.columns)) or "(none)"
        raise DataError(
            f"label column '{label_key}' not in obs; columns are: {cols}; "
            "set dataset.label_key (--label-key, label_key=) to one of them"
        )
    col = adata.obs[label_key]
    if len(col) and pd.api.types.is_float_dtype(col) and col.isna().all():  # not numbers
        raise DataError(  # a column of only NaN is float to pandas
            f"label column '{label_key}' holds no label: all {len(col)} of its values are "
            f"missing (NaN); give the column of cell-type names "
            "(dataset.label_key / --label-key), or fill this one")
    if is_bool_labels(col):
        raise DataError(  # "False" as a name is among dataset.uninformative_prefixes' defaults
            f"label column '{label_key}' is True/False ({col.dtype}); cellsynth needs cell-type "
            f"names: map them to names, e.g. adata.obs['{label_key}'] = adata.obs['{label_key}']"
            ".map({True: 'positive', False: 'negative'}).astype('category') (\"False\" as a "
            "name would be dropped as uninformative: dataset.uninformative_prefixes)")
    if pd.api.types.is_numeric_dtype(col) and not isinstance(col.dtype, pd.CategoricalDtype):
        values = col.dropna().to_numpy(dtype=float)
        whole = pd.api.types.is_float_dtype(col) and bool(np.all(values == np.round(values)))
        via = ".astype('Int64')" if whole else ""  # cluster 3.0 named "3", not "3.0"
        raise DataError(
            f"label column '{label_key}' is numeric ({col.dtype}); cellsynth needs cell-type names: "
            f"convert it, e.g. adata.obs['{label_key}'] = adata.obs['{label_key}']"
            f"{via}.astype('string').astype('category') (missing values stay missing)"
        )
    values = col.dropna().astype(str)
    n_distinct = values.nunique()
    if n_distinct >= 50 and n_distinct > len(values) / 2:
        numeric = pd.to_numeric(pd.Series(values.unique()), errors="coerce").notna().mean()
        if numeric > 0.9:
            raise DataError(
                f"label column '{label_key}' looks continuous ({n_distinct} distinct numeric "
                f"values in {len(values)} cells), not cell types; give the column of type "
                "names (dataset.label_key / --label-key)")
        # names, but one or two cells each: an identifier (barcode, sample), not cell types;
        # a fit would learn a model per label (1,556 of them took minutes for nothing)
        raise DataError(
            f"label column '{label_key}' has {n_distinct} distinct values in {len(values)} "
            f"cells ({len(values) / n_distinct:.1f} cells a value): it looks like a cell or "
            "sample identifier, not cell types; give the column of type names "
            "(dataset.label_key / --label-key)")
    check_spaced_names(values.unique(), label_key, "cell types")


def is_bool_labels(col: pd.Series) -> bool:
    """Whether a label column holds True/False: bool, pandas' nullable boolean, Python bools
    among missing values (an object column) or a categorical of bools (``"False"`` as a name
    is dropped as uninformative, ``"True"`` kept: half the cells lost to a type name)."""
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col
    return bool(len(values)) and (pd.api.types.is_bool_dtype(values.dtype)
                                  or pd.api.types.infer_dtype(values, skipna=True) == "boolean")


_CASE_WARNED: set[tuple[str, ...]] = set()


def check_spaced_names(names: Any, key: str, what: str) -> None:
    """Refuse names that differ only by surrounding spaces ("B cells" and "B cells "): one cell
    type (or level) split in two, which a model would learn as two and a request would find one
    of; warn, once, of names that differ only by case. ``key`` is the obs column in the error,
    ``what`` what its values are (plural)."""
    text = pd.Series(pd.unique(pd.Series(names, dtype=object).astype(str)))
    broken = [t for t in text if any(unicodedata.category(c) == "Cc" and c != "\t" for c in t)]
    if broken:  # a newline splits every line that names it (verdicts, tables, request files)
        raise DataError(
            f"obs['{key}'] holds {what} with control characters (line breaks...): "
            f"{listed(broken, 3, quote=True)}; rename them, e.g. adata.obs['{key}'] = "
            f"adata.obs['{key}'].str.replace(r'\\s+', ' ', regex=True).astype('category')")
    stripped = text.str.strip()
    twins = text[stripped.duplicated(keep=False)]
    if len(twins):
        shown = sorted(twins.tolist(), key=lambda t: (t.strip(), t))
        raise DataError(
            f"obs['{key}'] holds {what} that differ only by surrounding spaces "
            f"({listed(shown, 6, quote=True)}): one {what[:-1]} split in two; strip them, e.g. "
            f"adata.obs['{key}'] = adata.obs['{key}'].str.strip().astype('category')")
    # "B  cell" and "B cell": read alike in every table and page, as surrounding spaces are
    squeezed = stripped.str.replace(r"\s+", " ", regex=True)
    twins = text[squeezed.duplicated(keep=False)]
    if len(twins):
        shown = sorted(twins.tolist(), key=lambda t: (" ".join(t.split()), t))
        raise DataError(
            f"obs['{key}'] holds {what} that differ only by the spaces within them "
            f"({listed(shown, 6, quote=True)}): one {what[:-1]} split in two; write them alike, "
            f"e.g. adata.obs['{key}'] = adata.obs['{key}'].str.replace(r'\\s+', ' ', "
            "regex=True).astype('category')")
    composed = stripped.map(lambda t: unicodedata.normalize("NFC", t))
    forms = text[composed.duplicated(keep=False)]
    if len(forms):  # "naïve" as one code point and as i + a combining diaeresis: one name
        shown = sorted(forms.tolist(), key=lambda t: (unicodedata.normalize("NFC", t), t))
        raise DataError(
            f"obs['{key}'] holds {what} that are one name written in two Unicode forms "
            f"({listed(map(ascii, shown), 6)}): one {what[:-1]} split in two; write them alike, "
            f"e.g. adata.obs['{key}'] = adata.obs['{key}'].astype(str).map(lambda s: "
            "unicodedata.normalize('NFC', s)).astype('category')")
    folded = text[stripped.str.casefold().duplicated(keep=False)]
    shown = sorted(folded.tolist(), key=lambda t: (t.casefold(), t))
    if shown and (key, *shown) not in _CASE_WARNED:  # "B cells", "b cells": most likely one
        _CASE_WARNED.add((key, *shown))  # once: the labels are checked at several steps
        logger.warning("obs['%s'] holds %s that differ only by case (%s): they are learned as "
                       "different %s; if they are one, rename them to one spelling", key, what,
                       listed(shown, 6, quote=True), what)  # fmt: skip


def warn_other_case_prefixes(labels: np.ndarray, prefixes: tuple[str, ...]) -> None:
    """Warn of types kept whose name starts with one of ``prefixes`` (the labels QC removes as
    uninformative, ``dataset.uninformative_prefixes``) in another case only: ``Doublets``
    beside the default ``DOUBLET`` would be learned as a cell type. Names of cells without a
    type (``unknown``) are left to :func:`warn_unannotated`, which says them once."""
    folded = tuple(p.casefold() for p in prefixes)
    names, counts = np.unique(np.asarray(labels).astype(str), return_counts=True)
    said = set(unannotated_names(names))
    near = [f"'{n}' ({k} cells)" for n, k in zip(names, counts, strict=True)
            if n.casefold().startswith(folded) and not n.startswith(prefixes) and n not in said]
    if near:
        logger.warning("%d type(s) kept start with an uninformative prefix in another case: %s "
                       "(dataset.uninformative_prefixes, matched as written: %s); add them to "
                       "dataset.uninformative_prefixes to leave them out, if they are not cell "
                       "types", len(near), listed(near, 10), listed(list(prefixes), 10,
                                                                    quote=True))


def label_names(y: Any, what: str) -> np.ndarray:
    """Labels given in Python (a list, array, Series or Categorical, one per cell) as names, a
    str array: numbers named as covariate levels are (:func:`~.levels.level_text`: ``1.0`` and
    ``1`` are both ``"1"``, where ``astype(str)`` made ``"1.0"`` a class of its own that no
    integer label matched), a missing label (None, NaN, or missing written as text,
    :data:`MISSING_TEXT`) refused: it became a class named "nan" or "None"; so are names that
    differ only by spaces or Unicode form (:func:`check_spaced_names`' rule for a data set's
    column). ``what`` names the labels in the error (``"y_train"``)."""
    if isinstance(y, pd.Series | pd.Index | pd.Categorical):
        values = pd.Series(np.asarray(y, dtype=object) if isinstance(y, pd.Index) else y)
    else:
        arr = np.asarray(y, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:  # a column of labels
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(f"{what} takes one label per cell (1-d), got shape {arr.shape}")
        values = pd.Series(arr)
    codes, kinds = pd.factorize(values)  # missing: -1; each kind named once
    if any(isinstance(k, bytes) for k in kinds):  # b"B cells" (h5py's strings) is "B cells"
        kinds = pd.Index([k.decode("utf-8", "replace") if isinstance(k, bytes) else k
                          for k in kinds], dtype=object)
    names = level_text(pd.Series(kinds)).astype(object)
    blank = np.isin(np.array([n.strip() for n in names], dtype=object), MISSING_TEXT)
    missing = (codes < 0) | np.append(blank, True)[codes]
    text = np.append(names, "").astype(str)[codes]
    if missing.any():
        rows = np.flatnonzero(missing)
        raise DataError(f"{what}: {len(rows)} missing label(s) of {len(text)} (None, NaN or "
                        f"blank; e.g. cell {rows[0]}, {str(values.iloc[rows[0]])!r}): leave those "
                        "cells out, or give them their type")
    alike: dict[str, list[str]] = {}
    for name in names:  # "B cells" and "B cells ": one type learned and scored as two
        alike.setdefault(unicodedata.normalize("NFC", " ".join(name.split())), []).append(name)
    if twins := sorted(sorted(v) for v in alike.values() if len(v) > 1):
        raise DataError(f"{what}: names that differ only by spaces or Unicode form "
                        f"({listed(map(ascii, twins[0]), 4)}"
                        f"{f', and {len(twins) - 1} more such set(s)' if len(twins) > 1 else ''}"
                        "): one type split in two; write them alike, e.g. "
                        "unicodedata.normalize('NFC', ' '.join(name.split()))")
    return text
