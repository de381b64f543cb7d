"""Gene names and gene annotation: the checks a gene list passes, how two lists differ, and
the annotation columns of ``var`` a model keeps for the cells it generates."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError, listed

logger = logging.getLogger(__name__)

#: how to make the gene names of ``raw`` unique (a Raw has no var_names_make_unique)
RAW_UNIQUE = ("raw = adata.raw.to_adata(); raw.var_names_make_unique(); adata.raw = raw")


@contextmanager
def names_said_here() -> Iterator[None]:
    """Inside, anndata's raw warnings of duplicate cell or gene names ("Observation names are
    not unique ..."), printed with a path into site-packages, are not shown: a file read
    inside is checked after (``io.check_shape``, :func:`check_gene_names`), which refuses
    such names in one line that names them and the fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(Observation|Variable) names are not unique",
                                category=UserWarning)
        yield


def check_gene_names(genes: Any, name: str = "the data", *, raw: bool = False) -> None:
    """Refuse empty (or only whitespace, or missing) and duplicate gene names: a model, its
    cells and every comparison match genes by name. ``raw``: the names are ``raw.var_names``
    (the counts are in ``raw.X``), which the fixes then name."""
    genes = pd.Index(genes)
    if raw:
        name = f"{name} (raw.var_names, the genes of the counts in raw.X)"
    blank = np.flatnonzero(genes.isna() | (genes.astype(str).str.strip() == ""))
    if len(blank):
        raise DataError(
            f"{name} has {len(blank)} gene name(s) that are empty or only spaces (at "
            f"position(s) {listed(blank, 5)} of {'raw.var_names' if raw else 'var_names'}, "
            "counted from 0); genes are matched by name: name them (e.g. from a symbol column of var) or drop them (adata = "
            "adata[:, adata.var_names.str.strip() != ''].copy()), then write the file again"
        )
    if not genes.is_unique:
        dup = listed(pd.unique(genes[genes.duplicated()]), 3, quote=True)
        fix = RAW_UNIQUE if raw else "adata.var_names_make_unique()"
        raise DataError(
            f"{name} has duplicate gene names ({dup}); make them unique with "
            f"{fix} (then write the file again, for a file)"
        )


def gene_difference(genes: Any, other: Any, name: str, other_name: str) -> str:
    """How the gene list ``genes`` (of ``name``, e.g. "raw.X") differs from ``other`` (of
    ``other_name``), in words: the same genes in another order, or how many and which each
    has alone."""
    genes, other = pd.Index(map(str, genes)), pd.Index(map(str, other))
    only, only_other = genes.difference(other, sort=False), other.difference(genes, sort=False)
    if not len(only) and not len(only_other):
        first = next(i for i, (g, o) in enumerate(zip(genes, other, strict=True)) if g != o)
        return (f"the same {len(genes):,} genes as {other_name} in another order (gene "
                f"{first} is {genes[first]!r} in {name}, {other[first]!r} in {other_name})")
    parts = [f"{len(g):,} only in {who} ({listed(g, 3, quote=True)})"
             for g, who in ((only, name), (only_other, other_name)) if len(g)]
    return f"{len(genes):,} genes where {other_name} has {len(other):,}: {'; '.join(parts)}"


def gene_annotation(var: pd.DataFrame, genes: Any | None = None) -> pd.DataFrame:
    """The annotation a model keeps for the genes it generates: the text columns of ``var``
    (gene symbols beside Ensembl IDs, feature types, ...), one row per gene of ``genes``
    (default: ``var``'s index), missing values as None. Numeric and boolean columns are
    statistics of the training cells (means, highly variable flags), not annotation: left out."""
    index = pd.Index(map(str, var.index if genes is None else genes), dtype=object)
    out = pd.DataFrame(index=index)
    var = var.set_axis(pd.Index(map(str, var.index)), axis=0)
    for col in var.columns:
        values = var[col].reindex(index)
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype(object)
        known = values.dropna()
        if isinstance(col, str) and len(known) and all(isinstance(v, str) for v in known):
            out[col] = values.astype(object).where(values.notna(), None)
    return out


#: ``counts_var``'s ``attrs`` key: the columns of a raw.X's var taken from ``adata.var``
FROM_VAR = "cellsynth_from_var"


def counts_var(data: Any, counts: str | None) -> pd.DataFrame | None:
    """The ``var`` describing the genes of the counts a reader found (``counts``), as an
    AnnData or an open h5ad holds it; None where there is none. For counts in ``raw.X``,
    ``raw.var``, with the columns of ``var`` that it lacks beside the genes both hold (a raw
    frozen from a counts AnnData has no ``feature_name``, while ``var`` beside it, over the same
    genes, has: the symbols of Ensembl IDs), named in ``attrs[FROM_VAR]``."""
    var = getattr(data, "var", None)
    if counts != "raw.X":
        return var if isinstance(var, pd.DataFrame) else None
    own = getattr(getattr(data, "raw", None), "var", None)
    if not isinstance(own, pd.DataFrame):
        return None
    extra = [c for c in var.columns if c not in own.columns] \
        if isinstance(var, pd.DataFrame) else []
    if not extra:
        return own
    index = pd.Index(map(str, own.index))
    beside = var[extra].set_axis(pd.Index(map(str, var.index)), axis=0)
    beside = beside[~beside.index.duplicated()].reindex(index).set_axis(own.index, axis=0)
    out = pd.concat([own, beside], axis=1)
    out.attrs[FROM_VAR] = tuple(extra)
    return out


def source_annotation(data: Any, counts: str | None, genes: Any) -> pd.DataFrame | None:
    """:func:`gene_annotation` of the ``var`` beside the counts a reader found
    (:func:`counts_var`: ``"raw.X"`` reads ``raw.var``, and ``var``'s columns it lacks), for
    ``genes``; None where there is no ``var``."""
    var = counts_var(data, counts)
    return gene_annotation(var, genes) if var is not None else None


def annotated_var(genes: Any, annotation: pd.DataFrame | None = None) -> pd.DataFrame:
    """``var`` for ``genes`` with the text columns of ``annotation`` (:func:`gene_annotation`;
    gene symbols beside Ensembl IDs), each categorical as an h5ad holds it: the preprocessed
    data's ``var`` and generated cells' ``var``."""
    var = pd.DataFrame(index=pd.Index(list(map(str, genes)), dtype=str))
    for col in [] if annotation is None else annotation.columns:
        var[col] = pd.Categorical(annotation[col].reindex(var.index).to_numpy(dtype=object))
    return var


def naming_column(var: Any, genes: Any, other: Any) -> tuple[str, int] | None:
    """The text column of ``var`` (annotating ``genes``) that names more of the gene names
    ``other`` than ``genes`` themselves do, and more than half of the smaller list: gene symbols
    in ``var['gene_symbols']`` or ``var['feature_name']`` beside Ensembl IDs in var_names, while
    another data set is named by symbols. ``(column, genes it matches)``, or None."""
    if not isinstance(var, pd.DataFrame):
        return None
    genes, names = pd.Index(genes), set(map(str, other))
    by_name = sum(str(g) in names for g in genes)
    annotation = gene_annotation(var, genes)
    for col in annotation.columns:
        hits = int(annotation[col].isin(names).sum())
        if hits > max(by_name, 0.5 * min(len(names), len(genes))):
            return str(col), hits
    return None


def naming_hint(var: Any, genes: Any, other: Any, side: str, other_side: str, *,
                raw: bool = False) -> str:
    """``", but ..."``: the fix where :func:`naming_column` finds the column naming ``side``'s
    genes as ``other_side`` names its own; else "". ``raw``: ``genes`` are those of counts in
    ``raw.X`` (``var``: :func:`counts_var`'s), which renaming ``adata.var_names`` leaves as
    they are: the fix renames raw's."""
    found = naming_column(var, genes, other)
    if found is None:
        return ""
    col, hits = found
    if raw:
        own = col not in var.attrs.get(FROM_VAR, ())
        where = "raw.var" if own else "var"
        names = (f"raw.var[{col!r}].astype(str)" if own else f"adata.var[{col!r}].astype(str)"
                 ".reindex(raw.var_names).fillna(raw.var_names.to_series())")
        return (f", but the {side} data's {where}[{col!r}] holds {hits:,} of the "
                f"{len(other):,} {other_side} gene names (the genes of its counts, in raw.X, are "
                f"{listed(list(genes)[:2], 2, quote=True)}, ...): name raw's genes by it (raw "
                f"= adata.raw.to_adata(); raw.var_names = {names}; "
                "raw.var_names_make_unique(); adata.raw = raw, then write the file again, for a "
                "file)")
    return (f", but the {side} data's var[{col!r}] holds {hits:,} of the {len(other):,} "
            f"{other_side} gene names (its var_names are {listed(list(genes)[:2], 2, quote=True)}"
            f", ...): name the {side} genes by it (adata.var_names = adata.var[{col!r}]"
            ".astype(str); adata.var_names_make_unique(), then write the file again, for a file)")


def counts_naming_hint(data: Any, counts: str | None, genes: Any, other: Any, side: str,
                       other_side: str) -> str:
    """:func:`naming_hint` for the counts ``data`` holds in ``counts`` (``"raw.X"``: raw's
    genes and :func:`counts_var`, whose fix renames raw's)."""
    return naming_hint(counts_var(data, counts), genes, other, side, other_side,
                       raw=counts == "raw.X")


#: 10x's column of feature types, and its value for genes (others: "Antibody Capture",
#: "Peaks", "CRISPR Guide Capture", "Multiplexing Capture")
FEATURE_TYPES, GENE_EXPRESSION = "feature_types", "Gene Expression"


def warn_other_features(data: Any, counts: str | None) -> None:
    """Warn where ``var['feature_types']`` (10x's) beside the counts marks features that are
    not genes (antibody tags of CITE-seq, peaks of a multiome file): every feature of the
    matrix is modelled as a gene, and these are not; say how many and how to keep the genes."""
    var = counts_var(data, counts)
    if var is None or FEATURE_TYPES not in var.columns:
        return
    kinds = var[FEATURE_TYPES]
    kinds = kinds[kinds.notna()].astype(str)  # a feature without a type: not said to be other
    other = kinds[kinds != GENE_EXPRESSION].value_counts()
    if not len(other) or not (kinds == GENE_EXPRESSION).any():
        return
    fix = (f"adata = adata[:, adata.var[{FEATURE_TYPES!r}] == {GENE_EXPRESSION!r}].copy()"
           if counts != "raw.X" else "in raw.X, whose counts are read, as in X")
    logger.warning("var['%s'] marks %s of the %d features as other than %r (%s): they are "
                   "modelled as genes; keep the genes only (%s, then write the file again, for "
                   "a file)", FEATURE_TYPES, f"{int(other.sum()):,}", len(var), GENE_EXPRESSION,
                   listed([f"{k}: {n:,}" for k, n in other.items()], 4), fix)
