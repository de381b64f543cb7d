"""Whether held-out cells are cells the generator saw, and where synthetic cells come from.

The privacy audit reads held-out cells as unseen: training cells among them make it report no
leak whatever the generator does. A cell is the same cell when it has the same name *and* the
same counts (:func:`identical_share`): names alone repeat across files made apart (``0``,
``1``, ... of a matrix written without names; 10x barcodes of two channels). Used by
:func:`cellsynth.evaluation.compare`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.split import split_column
from ..data.store import H5adFile
from ..errors import CellsynthError, DataError, listed
from ..seeds import derive_seed
from .inputs import IN_MEMORY, _counts_where, _known_rows, _labels

logger = logging.getLogger(__name__)

#: names shared with the training cells, sampled to check whether they are the same cells
SHARED_SAMPLE = 200


def _named_counts(data: Any, names: pd.Index, what: str) -> tuple[sp.csr_matrix, pd.Index] | None:
    """The raw counts of the cells ``names`` of ``data`` (a path, a backed or in-memory
    AnnData), rows in the order of ``names``, with their gene names; None where its cell names
    repeat (a cell cannot be told by its name)."""
    if isinstance(data, str | Path) or getattr(data, "isbacked", False):
        path = Path(data) if isinstance(data, str | Path) else Path(data.filename)
        with H5adFile(path) as h5:
            index = pd.Index(h5.obs_names)
            if not index.is_unique:
                return None
            store, genes = h5.matrix(_counts_where(h5, what, str(path)))
            at = index.get_indexer(names)
            if (at < 0).any():  # a backed AnnData renamed in memory: cannot be read by name
                return None
            order = np.argsort(at, kind="stable")
            return sp.csr_matrix(store.take(at[order])[np.argsort(order)]), genes
    index = pd.Index(data.obs_names)
    if not index.is_unique:
        return None
    where = _counts_where(data, what, IN_MEMORY).counts
    x, genes = ((data.layers["counts"], data.var_names) if where == "layers/counts" else
                (data.raw.X, data.raw.var_names) if where == "raw.X" else
                (data.X, data.var_names))
    return sp.csr_matrix(x[index.get_indexer(names)], dtype=np.float32), pd.Index(genes)


def identical_share(a: Any, b: Any, shared: pd.Index, seed: int,
                    what: tuple[str, str]) -> float | None:
    """The share of the cells named in both ``a`` and ``b`` (``shared``) whose counts are
    identical in both, over the genes both hold, from a sample of up to :data:`SHARED_SAMPLE`
    of them; None where it cannot be read (cell or gene names that repeat, no gene in
    common). ``what`` names each side in an error."""
    rng = np.random.default_rng(derive_seed(seed, "heldout-shared"))
    names = shared[np.sort(rng.choice(len(shared), min(SHARED_SAMPLE, len(shared)),
                                      replace=False))]
    ra, rb = _named_counts(a, names, what[0]), _named_counts(b, names, what[1])
    if ra is None or rb is None:
        return None
    (xa, ga), (xb, gb) = ra, rb
    ga, gb = ga.astype(str), gb.astype(str)
    in_b = set(gb)
    genes = [g for g in ga if g in in_b]
    if not genes or not ga.is_unique or not gb.is_unique:
        return None
    xa = sp.csr_matrix(xa[:, ga.get_indexer(genes)])
    xb = sp.csr_matrix(xb[:, gb.get_indexer(genes)])
    return float(np.mean(np.diff(sp.csr_matrix(xa != xb).indptr) == 0))  # identical rows


def check_members(real: Any) -> None:
    """A :class:`DataError` when the real cells, the privacy audit's members (the generator's
    training cells), hold cells ``obs['cellsynth_split']`` marks ``test``: cells ``cellsynth
    fit`` leaves out (a run's ``data/preprocessed.h5ad``, a file split for a fit). Read as
    members it never saw, they pull every attack's AUC towards chance and hide a leak."""
    from .. import keys as K

    if isinstance(real, str | Path):
        with H5adFile(real) as h5:
            obs, source = h5.obs, str(real)
    else:  # not an AnnData (a list, a DataFrame): its reader says so
        obs, source = getattr(real, "obs", None), IN_MEMORY
    if not isinstance(obs, pd.DataFrame) or K.SPLIT not in obs:
        return
    test = int((split_column(obs) == "test").sum())  # "Test", "validation": refused, named
    if test:
        raise DataError(
            f"the real data ({source}) hold {test} cells marked 'test' in obs['{K.SPLIT}'], "
            "which cellsynth fit leaves out: with held-out cells, the real cells are the "
            "generator's training cells (the privacy audit's members), and these would count "
            "as members it never saw, hiding a leak; give only the cells it was fitted on "
            f"(adata[adata.obs['{K.SPLIT}'] != 'test'], written to a file for the command line), "
            f"or drop the column if it is not the fit's split (del adata.obs['{K.SPLIT}'])")


def _labelled_names(data: Any, label_key: str) -> pd.Index:
    """obs names of the cells with a label (a label missing as the evaluation reads it, text
    such as "" or "nan" included, leaves its cell out)."""
    if isinstance(data, str | Path):
        with H5adFile(data) as h5:
            obs, names = h5.obs, h5.obs_names
    else:  # a backed AnnData's obs as it is in memory (a view, edits)
        obs, names = data.obs, data.obs_names
    return pd.Index(names)[_known_rows(_labels(obs, label_key))[0]]


def check_disjoint(real: Any, heldout: Any, label_key: str, seed: int) -> None:
    """Refuse held-out cells that are training cells: cells of the same name in both whose
    counts are identical (a sample of up to 200 read from each), more than the privacy audit's
    ``OVERLAP_SHARE`` of the held-out cells. (Renamed copies are caught by the audit itself.)"""
    from ..metrics.privacy_dcr import OVERLAP_SHARE

    rn, hn = _labelled_names(real, label_key), _labelled_names(heldout, label_key)
    shared = rn.intersection(hn)
    if len(shared) <= OVERLAP_SHARE * len(hn):
        return
    same = identical_share(real, heldout, shared, seed, ("the real data", "the held-out data"))
    if same is None:  # names that repeat are refused before this; no gene in common after
        return
    n_same = round(same * len(shared))
    if n_same > OVERLAP_SHARE * len(hn):
        raise DataError(
            f"the held-out data share about {n_same} of their {len(hn)} cells with the real "
            f"(training) data ({len(shared)} names in both, {same:.0%} of those checked with "
            "identical counts): the privacy audit would be meaningless, as training cells would "
            "count as unseen ones; give held-out cells the generator never saw (e.g. the test "
            "split)")
    logger.info("%d held-out cell names are also real cell names, with other counts: other "
                "cells", len(shared))


def _provenance(synthetic: Any) -> tuple[Path, Path] | None:
    """``(model directory, the data file it was fitted on)`` of synthetic cells, a file or an
    AnnData: their ``uns['cellsynth']['model_path']`` (written by ``cellsynth generate``) and
    that model's ``run_config.toml``'s ``dataset.path``; None where any of it cannot be read."""
    import tomllib

    import h5py
    from anndata.io import read_elem

    try:
        if isinstance(synthetic, str | Path):
            with h5py.File(Path(synthetic).expanduser(), "r") as f:
                model = Path(str(read_elem(f["uns"]["cellsynth"]["model_path"])))
        else:
            model = Path(str(synthetic.uns["cellsynth"]["model_path"]))
        fitted = tomllib.loads((model / "run_config.toml").read_text())["dataset"]["path"]
        return model, Path(fitted).expanduser()
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return None


def check_heldout_unseen(synthetic: Any, heldout: Any, seed: int = 0) -> None:
    """A :class:`DataError` when held-out cells are cells the synthetic cells' generator was
    fitted on: by name and counts (:func:`identical_share`), against the cells of its training
    file that ``cellsynth fit`` trains and validates on (all of them, or those
    ``obs['cellsynth_split']`` does not mark test). The privacy audit reads held-out cells as
    unseen: trained-on ones make it say "no leak" whatever the generator does. Names alone do
    not make a cell one it saw (files made apart repeat names: ``0``, ``1``, ...; barcodes).
    Silent where the provenance cannot be read, and for a model inside a run directory (the
    run's own split holds its test cells back)."""
    from .. import keys as K
    from ..outputs import enclosing_run

    found = _provenance(synthetic)
    if found is None or enclosing_run(found[0]) is not None:
        return
    model, fitted = found
    try:
        with H5adFile(fitted) as h5:
            names, obs = pd.Index(h5.obs_names).astype(str), h5.obs
        if isinstance(heldout, str | Path):
            with H5adFile(heldout) as h5:
                held = pd.Index(h5.obs_names)
        else:
            held = pd.Index(heldout.obs_names)
    except CellsynthError:  # the training file moved or changed: nothing to compare
        return
    trained = names if K.SPLIT not in obs else names[obs[K.SPLIT].astype(str).to_numpy() != "test"]
    seen = held.astype(str).intersection(trained)
    if not len(seen):
        return
    try:
        same = identical_share(fitted, heldout, seen, seed, (str(fitted), "the held-out data"))
    except CellsynthError:  # the training file's counts cannot be read: the names decide
        same = None
    if same == 0:
        logger.info("%d held-out cell names are also names of cells %s was fitted on, with "
                    "other counts: other cells", len(seen), model)
        return
    n = len(seen) if same is None or same == 1 else f"about {max(1, round(same * len(seen)))}"
    how = "by cell name" if same is None else "by cell name and counts"
    raise DataError(f"{n} of the {len(held)} held-out cells ({listed(list(seen[:3]))}"
                    f"{', ...' if len(seen) > 3 else ''}) are cells the generator {model} was "
                    f"fitted on ({fitted}, {how}): the privacy audit would take them "
                    "for unseen cells and report no leak whatever the generator does; give "
                    "as heldout cells the fit never saw (a file of cells left out of it)")


def warn_trained_on(real: Any, synthetic: Any) -> bool:
    """A WARNING (and True) when the synthetic file's model (``uns['cellsynth']['model_path']``,
    written by ``cellsynth generate``) was fitted on the very file given as the real cells
    (its ``run_config.toml``'s ``dataset.path``): scored against its own training cells, a
    generator that copies them looks perfect. Silent where either side is not a file or the
    provenance cannot be read."""
    if not isinstance(real, str | Path) or not isinstance(synthetic, str | Path):
        return False
    found = _provenance(synthetic)
    if found is None:
        return False
    model, fitted = found
    try:
        same = fitted.resolve() == Path(real).expanduser().resolve()
    except OSError:
        return False
    if same:
        logger.warning("the synthetic cells come from %s, which was fitted on %s itself: they "
                       "are scored against the cells the generator trained on, where copying "
                       "looks perfect. Score them against cells it never saw (--real TEST.h5ad, "
                       "a file of cells left out of the fit), or give those as --heldout for "
                       "the privacy audit", model, real)
    return same
