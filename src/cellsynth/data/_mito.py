"""Mitochondrial genes, found by name or by the gene symbols beside IDs, and their share of
each cell's counts (QC's mito fraction, in memory and out of core)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._qc_columns import mito_spelling
from .genes import counts_var

logger = logging.getLogger("cellsynth.data.qc")


#: ``var`` columns that hold gene symbols where ``var_names`` are IDs (CELLxGENE's first)
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_symbol", "gene_name", "symbol")


def gene_symbols(data: Any, counts: str | None) -> pd.Series | None:
    """The gene symbols beside the genes of the counts in ``counts`` (``"raw.X"``: raw's
    ``var``, or ``var``'s where raw's has none: :func:`~cellsynth.data.genes.counts_var`), from the first of :data:`SYMBOL_COLUMNS` there; None without one."""
    var = counts_var(data, counts)
    if var is None:
        return None
    column = next((c for c in SYMBOL_COLUMNS if c in var.columns), None)
    return None if column is None else var[column].rename(column)


def _mt(names: Any) -> np.ndarray:
    return np.flatnonzero(pd.Index(names).astype(str).str.upper().str.startswith("MT-"))


def mito_genes(genes: pd.Index, symbols: pd.Series | None = None) -> np.ndarray:
    """Positions of the mitochondrial genes (``MT-``/``mt-``), by name or, where the names are
    IDs, by the ``symbols`` beside them (:func:`gene_symbols`); warns when there are none."""
    idx = _mt(genes)
    if not idx.size and symbols is not None and len(symbols) == len(genes):
        idx = _mt(symbols)
        if idx.size:
            logger.info("mitochondrial genes found by their symbols in var[%r]: %d",
                        symbols.name, idx.size)
    if not idx.size:
        read = symbols is not None and len(symbols) == len(genes)  # none among them either
        ids = pd.Index(genes).astype(str).str.match(r"ENS[A-Z]*G\d").mean() > 0.5
        hint = (f" (nor among the symbols in var[{symbols.name!r}]); give a per-cell "
                "mitochondrial fraction in obs (dataset.mito_key) if the data have one" if read else
                ": the gene names look like Ensembl IDs; put symbols in a var column named "
                f"one of {', '.join(SYMBOL_COLUMNS)} (or name the genes of the counts by "
                "them), or give a per-cell mitochondrial fraction in obs (dataset.mito_key)"
                if ids else "")
        hint = mito_spelling(genes if symbols is None else [*genes, *symbols]) or hint
        logger.warning("no mitochondrial genes (MT-/mt- prefix): the mito fraction is 0 for "
                       "every cell%s", hint)
    return idx


def mito_fraction(x: sp.csr_matrix, mito: np.ndarray) -> np.ndarray:
    """Share of each row's counts in the genes ``mito`` (row-wise: chunks give the same values)."""
    if not mito.size:
        return np.zeros(x.shape[0], dtype=np.float32)
    total = np.asarray(x.sum(axis=1)).ravel()
    m = np.asarray(x[:, mito].sum(axis=1)).ravel()
    return (m / np.maximum(total, 1e-12)).astype(np.float32)
