"""The inputs of an evaluation: stratified subsamples of each side read row by row.

A file is never loaded whole: it is opened with :class:`~cellsynth.data.store.H5adFile`
(``obs`` in memory, matrices on disk) and only the picked rows are read. Also here: the genes
both sides hold (too few is an error naming how many); whether held-out cells are training
cells is :mod:`.overlap`'s. Used by :func:`cellsynth.evaluation.compare`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.csr import canonical
from ..data.io import Expression, check_gene_names, check_shape, find_counts
from ..data.labels import check_label, missing_labels
from ..data.split import stratified_subsample
from ..data.store import H5adFile
from ..data.values import check_libraries, check_values, fractional_rows
from ..errors import DataError, listed
from ..metrics.privacy import donor_values
from ..outputs import generated_h5ad
from ..seeds import derive_seed

logger = logging.getLogger(__name__)

#: the ``real`` / ``synthetic`` source named in a result for an AnnData given in memory
IN_MEMORY = "AnnData"


@dataclass
class _Sample:
    """The cells of one side read for an evaluation: a subsample's counts and labels."""

    counts: sp.csr_matrix  # (n_used, n_genes) raw counts, float32
    labels: np.ndarray  # (n_used,) cell types, str
    genes: pd.Index  # gene names of the columns
    n_total: int  # cells in the input
    source: str  # the path, or "AnnData" for an object in memory
    where: str  # where the counts were found: X, layers/counts or raw.X
    donors: np.ndarray | None = None  # (n_used,) obs[donor_key] as str, when asked for
    var: pd.DataFrame | None = None  # the var beside the counts (raw.var for raw.X): symbols
    donor_pool: np.ndarray | None = None  # every labelled cell's donor, read or not (unique)


def _counts_where(data: Any, what: str, source: str) -> Expression:
    """Where ``data`` (an AnnData or an :class:`H5adFile`) holds raw counts; else a DataError."""
    try:
        expr = find_counts(data)
    except DataError as exc:  # which of the inputs it was: "X holds NaN" alone does not say
        raise DataError(f"{what} ({source}): {exc}") from None
    if expr.counts is None and "counts" in data.layers:  # there is one, of other values
        raise DataError(f"{what} ({source}): layers['counts'] holds non-integer values (denoised "
                        "or normalised?), not raw counts, and X holds none either; evaluation "
                        "compares raw counts: put them in layers['counts'] (or X)")
    if expr.counts is None:
        raise DataError((f"{what} ({source}): {expr.for_counts()}" if expr.note else
            f"{what} ({source}) holds normalised values in X and no raw counts in "
            "layers['counts'] or raw.X; evaluation compares counts: give the unnormalised file"
        ) + expr.elsewhere)  # fmt: skip
    return expr


def _labels(obs: pd.DataFrame, label_key: str) -> np.ndarray:
    """``obs[label_key]`` as an object array of ``str`` (as ``.astype(str)`` gives, ``"nan"``
    for a missing label), each name one shared object: 8 bytes a cell, not a string each."""
    col = obs[label_key]
    cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
    names = np.append(cat.cat.categories.astype(str).to_numpy(dtype=object), "nan")
    return names[cat.cat.codes.to_numpy()]  # code -1 (missing) picks the last, "nan"


def _check_columns(data: Any, label_key: str, donor_key: str | None, what: str,
                   source: str) -> None:
    """The label column (and the donor column, when asked for) exist; errors name the side."""
    try:
        check_label(data, label_key)
    except DataError as err:
        hint = (" (the synthetic file must carry the real file's cell-type column, as "
                "cellsynth generate writes it)" if "synthetic" in what else
                f" (the held-out cells must carry the real cells' cell-type column; add "
                f"obs['{label_key}'] to them)" if "held-out" in what else "")
        raise DataError(f"{what} ({source}): {err}{hint}") from None
    if donor_key is not None and donor_key not in data.obs.columns:
        cols = ", ".join(map(str, data.obs.columns)) or "(none)"
        raise DataError(f"{what} ({source}): donor column '{donor_key}' not in obs; columns "
                        f"are: {cols}; give donor_key (--donor-key) one of them, or leave it out")


def _donors(obs: pd.DataFrame, donor_key: str | None, rows: np.ndarray) -> np.ndarray | None:
    return None if donor_key is None else donor_values(obs[donor_key])[rows]


def _donor_pool(obs: pd.DataFrame, donor_key: str | None, labels: np.ndarray) -> np.ndarray | None:
    """Every donor of the labelled cells, not only of those read (a donor of a few training
    cells, none of them in the subsample, is still no held-out donor)."""
    if donor_key is None:
        return None
    return np.unique(donor_values(obs[donor_key])[_known_rows(labels)[0]])


def _read_side(data: Any, label_key: str, pick: Callable[[np.ndarray], np.ndarray],
               what: str, *, donor_key: str | None = None) -> _Sample:
    """The cells ``pick(labels)`` (sorted positions) of ``data`` (a path, an AnnData in memory
    or a backed one), read from disk row by row when ``data`` is a file."""
    if isinstance(data, str | Path):
        return _read_file(Path(data), label_key, pick, what, donor_key)
    if not hasattr(data, "obs") or not hasattr(data, "var_names"):
        raise DataError(f"{what} is a {type(data).__name__}; give an AnnData or an .h5ad path")
    if getattr(data, "isbacked", False):  # its counts are read from its file, its obs as it is
        return _read_file(Path(data.filename), label_key, pick, what, donor_key, backed=data)
    check_shape(data, what)
    _check_columns(data, label_key, donor_key, what, IN_MEMORY)
    where = _counts_where(data, what, IN_MEMORY).counts
    labels = _labels(data.obs, label_key)
    rows = _pick_labelled(data.obs, label_key, labels, pick, what)
    if where == "layers/counts":
        x, genes = data.layers["counts"], data.var_names
    elif where == "raw.X":
        x, genes = data.raw.X, data.raw.var_names
    else:
        x, genes = data.X, data.var_names
    if where == "raw.X":  # check_shape checked var_names, not raw's
        check_gene_names(genes, what, raw=True)
    x = x[rows] if len(rows) < data.n_obs else x
    x = canonical(sp.csr_matrix(x, dtype=np.float32))  # a gene stored twice in a cell: summed
    return _checked(_Sample(x, labels[rows], pd.Index(genes),
                            data.n_obs, IN_MEMORY, where, _donors(data.obs, donor_key, rows),
                            _var_of(data, where), _donor_pool(data.obs, donor_key, labels)), what)


def _var_of(data: Any, where: str | None) -> pd.DataFrame | None:
    """The ``var`` describing the genes of the counts in ``where`` (``raw.var`` for raw.X)."""
    from ..data.genes import counts_var

    return counts_var(data, where)


def _known_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the cells that have a label (missing as a fit reads them: NaN, or
    missing written as text), and the missing names found."""
    names = pd.unique(labels)  # a few names shared by every cell: checked once each
    gone = names[missing_labels(pd.Series(names, dtype=object))]
    return np.flatnonzero(~np.isin(labels, gone)), gone


def _pick_labelled(obs: pd.DataFrame, label_key: str, labels: np.ndarray,
                   pick: Callable[[np.ndarray], np.ndarray], what: str) -> np.ndarray:
    """``pick`` among the cells that have a label (sorted positions); cells without one are
    left out with a count in the log, as a run's QC does."""
    known, gone = _known_rows(labels)
    if not len(known):
        raise DataError(f"{what}: none of the {len(labels)} cells has a label in "
                        f"obs['{label_key}'] (every value is missing: {listed(gone, 3, quote=True)})"
                        "; give the cells' types in that column, as the other side names them")
    if len(known) < len(labels):
        logger.warning("%s: %d cells have no label in obs['%s'] and are left out", what,
                       len(labels) - len(known), label_key)  # fmt: skip
    return known[pick(labels[known])]


def _read_file(path: Path, label_key: str, pick: Callable[[np.ndarray], np.ndarray],
               what: str, donor_key: str | None = None, backed: Any = None) -> _Sample:
    """As :func:`_read_side` for a file; with ``backed`` (an AnnData backed by ``path``, or a
    view of one), its cells, genes and ``obs`` as they are in memory (a subset, edited labels),
    the counts read from the file."""
    with H5adFile(path) as h5:
        check_shape(h5, str(path))
        side = h5 if backed is None else backed
        _check_columns(side, label_key, donor_key, what, str(path))
        expr = _counts_where(h5, what, str(path))
        store, genes = h5.matrix(expr)
        if expr.counts == "raw.X":  # check_shape checked var_names, not raw's
            check_gene_names(genes, str(path), raw=True)
        labels = _labels(side.obs, label_key)
        rows = _pick_labelled(side.obs, label_key, labels, pick, what)
        if backed is None:
            x = store.take(rows)  # only the subsample's rows are read
        else:  # a view may order its cells its own way: read in the file's order, then its
            at = _file_rows(h5.obs_names, backed.obs_names, path)[rows]
            order = np.argsort(at, kind="stable")
            x = store.take(at[order])[np.argsort(order)]
        if backed is not None and expr.counts != "raw.X" and not genes.equals(backed.var_names):
            cols = genes.get_indexer(backed.var_names)  # a view of some genes: those
            if (cols < 0).any():
                raise DataError(f"{path}: {int((cols < 0).sum())} genes of the backed AnnData "
                                "are not in its file (renamed in memory?); call .to_memory() on "
                                "it, or write it to a file")
            x, genes = x[:, cols], pd.Index(backed.var_names)
        var = _var_of(side if expr.counts != "raw.X" else h5, expr.counts)
        return _checked(_Sample(x, labels[rows], genes, side.n_obs, str(path), expr.counts,
                                _donors(side.obs, donor_key, rows), var,
                                _donor_pool(side.obs, donor_key, labels)), what)


def _file_rows(in_file: pd.Index, cells: pd.Index, path: Path) -> np.ndarray:
    """Positions in the file of the cells of a backed AnnData (a view: some of them)."""
    if len(cells) == len(in_file) and cells.equals(in_file):
        return np.arange(len(cells))
    if not in_file.is_unique:
        raise DataError(f"{path}: a view of this backed file cannot be matched to its rows (its "
                        "obs_names repeat); call .to_memory() on the view, or write it to a file")
    at = in_file.get_indexer(cells)
    if (at < 0).any():
        raise DataError(f"{path}: {int((at < 0).sum())} cells of the backed AnnData are not in "
                        "its file (renamed in memory?); call .to_memory() on it, or write it to "
                        "a file")
    return at


def _real_rows(labels: np.ndarray, max_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint stratified subsamples of the real cells: one (``max_cells`` at most, half
    the cells at most) to evaluate, one (``max_cells`` at most, from the rest) to fit the
    evaluation space on. Returns their sorted positions together and a mask of the first's."""
    n = len(labels)
    ev = stratified_subsample(labels, min(max_cells, -(-n // 2)),
                              seed=derive_seed(seed, "eval-real-cells"))
    rest = np.setdiff1d(np.arange(n), ev, assume_unique=True)
    fit = rest[stratified_subsample(labels[rest], max_cells,
                                    seed=derive_seed(seed, "eval-space-cells"))]
    rows = np.union1d(ev, fit)
    return rows, np.isin(rows, ev, assume_unique=True)


def _checked(sample: _Sample, what: str) -> _Sample:
    values = sample.counts.data
    check_values(values, f"{what} ({sample.source}, {sample.where})")
    bad, example = fractional_rows(sample.counts)  # every value read: a batch of normalised
    if len(bad):  # cells after the first million values was compared as counts
        raise DataError(
            f"{what} ({sample.source}) holds non-integer values in {sample.where} (in "
            f"{len(bad):,} of the {sample.counts.shape[0]:,} cells read; e.g. {example:.6g}); "
            "evaluation compares raw counts: give the unnormalised counts in X, "
            "layers['counts'] or raw.X, for every cell"
        )
    # normalised values rounded to whole numbers pass as counts: said, as a fit says it
    check_libraries(np.asarray(sample.counts.sum(axis=1)).ravel(), f"{what} ({sample.source})")
    return sample


#: the genes both sides hold must be at least this share of the real genes, and at least
#: ``MIN_GENES`` (or all the real genes, when it has fewer): fewer is a mismatch of names
#: (symbols against Ensembl IDs, another organism, a gene panel), not a comparison
MIN_GENE_SHARE = 0.5
MIN_GENES = 100


def _near_names(real_genes: Any, synthetic_genes: Any) -> str:
    """Why gene names that do not match may still be the same genes: alike but for case or an
    Ensembl version suffix (``ENSG...1.5``), with an example and the fix; else ""."""
    def plain(g: str) -> str:
        return re.sub(r"^(ENS[A-Z]*G\d+)\.\d+$", r"\1", str(g)).upper()

    real = {plain(g): str(g) for g in real_genes}
    for g in map(str, synthetic_genes):
        if plain(g) in real and real[plain(g)] != g:
            how = ("case" if real[plain(g)].upper() == g.upper() else "a version suffix")
            return (f", but they are alike but for {how} (real {real[plain(g)]!r}, synthetic "
                    f"{g!r}): rename one side's var_names to the other's")
    return ""


def _named_in_var(r: _Sample, s: _Sample) -> str:
    """Where one side's genes are named in a text column of the other side's ``var`` (gene
    symbols beside Ensembl IDs), which column, with the fix; else ""."""
    from ..data.genes import naming_hint

    return (naming_hint(r.var, r.genes, s.genes, "real", "synthetic", raw=r.where == "raw.X")
            or naming_hint(s.var, s.genes, r.genes, "synthetic", "real",
                           raw=s.where == "raw.X"))


def _shared_genes(r: _Sample, s: _Sample) -> list[str]:
    """The genes both sides hold (in the real order); too few is an error naming how many,
    unless every synthetic gene is a real one (a generator of a subset of genes, HVGs)."""
    in_synth = set(map(str, s.genes))
    genes = [g for g in map(str, r.genes) if g in in_synth]
    in_real = set(map(str, r.genes))
    unmatched = [g for g in map(str, s.genes) if g not in in_real]
    if not genes:
        raise DataError("the real and synthetic data share no gene names"
                        + (_named_in_var(r, s) or _near_names(r.genes, s.genes))
                        + "; compare files with the same gene names in var_names")
    # the share is of the genes the real cells express: a generator keeps the genes detected in
    # its training cells (a fit leaves out the rest), and a gene no real cell has is no evidence
    detected = np.asarray((r.counts != 0).sum(axis=0)).ravel() > 0
    real = r.genes[detected] if detected.any() else r.genes
    shared = sum(str(g) in in_synth for g in real)
    need = max(MIN_GENE_SHARE * len(real), min(MIN_GENES, len(real)))
    subset = not unmatched and len(genes) >= min(MIN_GENES, len(real))
    if shared < need and not subset:
        near = _named_in_var(r, s) or _near_names(r.genes, unmatched)
        raise DataError(
            f"the real and synthetic data share only {shared} of the {len(real)} gene names the "
            f"real cells express (the real data hold {len(r.genes)}, the synthetic "
            f"{len(s.genes)}, {len(unmatched)} of them not among the real ones{near}); "
            f"evaluation needs at least {int(np.ceil(need))} (half of them, and {MIN_GENES} or "
            "all): give files with the same gene names in var_names (e.g. both symbols or both "
            "Ensembl IDs)")
    if len(genes) < len(r.genes) or len(genes) < len(s.genes):
        why = (": every synthetic gene is a real one (a generator of some genes, e.g. HVGs); "
               "the scores are of those genes" if subset and len(genes) < len(r.genes) else
               _near_names(r.genes, unmatched))
        logger.warning("comparing the %d genes both hold (real %d, synthetic %d)%s",
                       len(genes), len(r.genes), len(s.genes), why)
    return genes


def _columns(sample: _Sample, genes: list[str], what: str) -> sp.csr_matrix:
    idx = sample.genes.get_indexer(genes)
    if (idx < 0).any():
        from ..data.genes import naming_hint

        near = (naming_hint(sample.var, sample.genes, genes, "held-out", "real",
                            raw=sample.where == "raw.X")
                or _near_names(genes, sample.genes).replace("synthetic", "held-out"))
        raise DataError(f"{what} ({sample.source}) lack {int((idx < 0).sum())} of the {len(genes)} "
                        f"genes compared ({listed(np.asarray(genes)[idx < 0], 3, quote=True)})"
                        f"{near}; give held-out cells of the same genes as the real data")
    return sp.csr_matrix(sample.counts[:, idx])


def _same_file(real: Any, synthetic: Any) -> bool:
    """Whether two paths are one file, or two files of the same bytes."""
    import filecmp

    if not (isinstance(real, str | Path) and isinstance(synthetic, str | Path)):
        return real is synthetic
    a, b = Path(real), Path(synthetic)
    try:
        return a.samefile(b) or (a.stat().st_size == b.stat().st_size
                                 and filecmp.cmp(a, b, shallow=False))  # fmt: skip
    except OSError:
        return False


def _norm(name: str) -> str:
    """A type's name as a match by hand reads it: case, spaces, and "_" or "." for a space
    (``B_cells``, as R's make.names and many file formats write ``B cells``) and the Unicode
    form (``naïve`` as one code point or as ``i`` and a combining diaeresis), set aside."""
    text = unicodedata.normalize("NFKC", str(name))
    return " ".join(re.sub(r"[_.]", " ", text).split()).casefold()


def _type_hint(name: str, near: dict[str, str], key: str) -> str:
    """A synthetic type named with the real type it would be, but for case, spaces or the
    Unicode form (which print alike: shown as code points, with the fix)."""
    real = near.get(_norm(name))
    if real is None:
        return repr(name)
    if unicodedata.normalize("NFC", real) == unicodedata.normalize("NFC", name):
        return (f"{name!a} (real: {real!a}, the same name in another Unicode form: "
                f"write both alike, e.g. adata.obs['{key}'] = adata.obs['{key}'].astype(str)"
                ".map(lambda s: unicodedata.normalize('NFC', s)).astype('category'))")
    return f"{name!r} (real: {real!r})"


def _check_labels(real: pd.Series, synthetic: pd.Series, label_key: str) -> None:
    """Synthetic cell types are scored against real ones of the same name: a synthetic file
    whose types match none of the real ones is an error, and types that match none are named
    (with the real type they would be, but for case, spaces or the Unicode form), so that an
    overall verdict is not read from the few types that happen to match."""
    real_types, syn_types = set(map(str, real.index)), list(map(str, synthetic.index))
    unknown = [t for t in syn_types if t not in real_types]
    if not unknown:
        return
    near = {_norm(t): t for t in real_types}
    hints = listed([_type_hint(t, near, label_key) for t in unknown], 8)
    share = float(synthetic[unknown].sum() / max(synthetic.sum(), 1))
    what = f"synthetic cell types with no real type of that name in obs['{label_key}']: {hints}"
    if len(unknown) == len(syn_types):
        raise DataError(f"no synthetic cell type is a real one: every one of them has no real "
                        f"type of that name in obs['{label_key}'] ({hints}); give the same label "
                        "column (label_key=, --label-key) and "
                        f"type names on both sides (real types: {listed(sorted(real_types), 8)})")
    logger.warning("%d of the %s (%.0f%% of the synthetic cells): not scored", len(unknown),
                   what, 100 * share)


def _looks_generated(data: Any) -> bool:
    """Whether ``data`` (a path or an AnnData) holds cells cellsynth generated."""
    if isinstance(data, str | Path):
        return generated_h5ad(Path(data), simulated=False)
    return "model" in (getattr(data, "uns", {}).get("cellsynth") or {})  # not preprocessed


def _check_sides(real: Any, synthetic: Any) -> None:
    """Warn when the real data look generated and the synthetic data do not: the two inputs
    are likely swapped, and the floor would be built from generated cells."""
    if _looks_generated(real) and not _looks_generated(synthetic):
        logger.warning("the real data hold cells cellsynth generated (uns['cellsynth']) and the "
                       "synthetic data do not: are --real and --synthetic swapped? The floor "
                       "is built from the real side")


def check_audit_sizes(sets: dict[str, tuple[int, int]], max_cells: int) -> None:
    """The privacy audit's sets, each of at least ``MIN_CELLS`` cells, checked before any
    work (the audit runs last: a too small held-out set failed it after the fidelity's
    minutes, losing them). ``sets``: each set's ``(cells read, cells a larger max_cells
    would read)``: where ``max_cells`` held a set back, the fix is a larger one, not more
    cells (300 real cells at --max-cells 15 were told to "give more cells")."""
    from ..metrics.privacy_dcr import MIN_CELLS, check_audit_size

    for name, (n, most) in sets.items():
        more = (f"raise max_cells (--max-cells, now {max_cells}): the input gives up to "
                f"{most}" if n < MIN_CELLS <= most else "give more cells")
        check_audit_size(n, name, f"{more}, or leave heldout out (no audit)")
