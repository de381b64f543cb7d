"""Simulated labelled atlases of raw counts: the embedded demo dataset and the scale test.

Types fall into coarse groups that share markers and gene-program activity, each type adds 20-50
markers of its own (siblings are the hard pairs); type sizes span orders of magnitude. Counts are
gamma-Poisson, drawn without touching the zeros: NB(m, theta) is compound Poisson
(``Poisson(theta * log1p(m / theta))`` events, each a log-series count), drawn for a batch of
cells at its highest rate and thinned to each cell's rate. Each block of ``_BLOCK`` cells has its
own :class:`numpy.random.SeedSequence` child, so the data do not depend on the chunk size.

A design with a known answer (``n_donors``, ``n_conditions``): every cell gets a donor
(``D0``, ``D1``...) and a condition (``ctrl``, ``stim``, ``stim2``...). A donor multiplies the
mean of a random subset of genes by ``exp(lfc)`` (its own lfc per gene); a condition other than
``ctrl`` multiplies, per type, a program of genes (a core shared by the types, scaled by the
type's response, and genes of the type's own) by ``exp(lfc)``, at the cell's drawn library
size; the shares are not renormalised, so the cell's total counts change with them. The
effects are stated in ``uns["simulation"]``. They come from random streams of their own, so
without them the atlas is the same bit for bit (:mod:`._sim_design`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

from ..keys import MITO, N_GENES
from ..options import progress_bar
from ..outputs import check_disk_space, check_file_out, generated_h5ad
from ..runtime import available_memory
from ._sim_checks import (
    check_args,
    check_counts_memory,
    check_flag,
    check_label_key,
    check_writing,
    file_bytes,
    nonzeros_per_cell,
)
from ._sim_design import (
    CONDITION_KEY,
    DONOR_KEY,
    Effects,
    level_names,
    make_effects,
    stream,
    truth,
    type_names,
)
from .csr import stack_rows
from .csr_writer import CSRWriter
from .store import h5ad_file

logger = logging.getLogger(__name__)

#: E-ANND-5's size: ``write_atlas(path, *ATLAS_SCALE)`` writes an atlas of the real one's shape
ATLAS_SCALE = (828_328, 33_538, 126)
DOUBLET_KEY = "predicted_doublets"
LOW_Q_LABEL = "LOW_Q_HIGH_MITO"  # small library, high mitochondrial fraction
DOUBLET_LABEL = "DOUBLET_MIXED"  # doublets the annotators caught but the detector did not flag

_BLOCK = 10_000  # cells per random stream: the output does not depend on the chunk size
_BATCH = 256  # most cells in one thinning batch
_LIB_STEP = 0.2  # a batch spans libraries within a factor exp(_LIB_STEP): few rejected events
_N_PROGRAMS = 6  # shared gene programs
_MITO = "ND1 ND2 CO1 CO2 ATP8 ATP6 CO3 ND3 ND4L ND4 ND5 ND6 CYB".split()


@dataclass(frozen=True)
class _Model:
    q: np.ndarray  # (n_types, n_nuclear) share of a cell's nuclear counts per gene
    theta: np.ndarray  # (n_nuclear,) NB inverse dispersion
    program_genes: np.ndarray  # (n_program_genes,) genes in any program
    programs: np.ndarray  # (n_programs, n_program_genes) non-negative module loadings
    program_pos: np.ndarray  # (n_nuclear,) column of each gene in ``programs``, -1 if none
    mito_weights: np.ndarray  # (n_mito,) share of the mito counts per mito gene
    proportions: np.ndarray  # (n_types,) expected share of cells per type
    groups: np.ndarray  # (n_types,) coarse group per type
    type_size: np.ndarray  # (n_types,) library-size factor per type


@dataclass(frozen=True)
class _Plan:
    type1: np.ndarray  # (n_cells,) type of each cell (of its first part for doublets)
    type2: np.ndarray  # (n_cells,) type of a doublet's second part, -1 for singlets
    lib1: np.ndarray  # (n_cells,) expected nuclear counts of the first part
    lib2: np.ndarray  # (n_cells,) ... of the second part, 0 for singlets
    mito: np.ndarray  # (n_cells,) expected mitochondrial fraction
    labels: pd.Categorical  # (n_cells,) annotation, uninformative labels included
    doublet: np.ndarray  # (n_cells,) bool, the predicted_doublets flag


def _make_model(n_genes: int, n_types: int, n_mito: int, seed: int) -> _Model:
    rng = stream(seed, 0)
    n_nuc = n_genes - n_mito
    base = rng.normal(0.0, 2.0, n_nuc)
    theta = np.exp(rng.normal(0.0, 0.7, n_nuc) + 0.2 * base).clip(0.05, 100.0)
    n_groups = int(np.clip(round(n_types**0.66), 1, n_types))  # 8 types: 4, 126: 24
    groups = np.concatenate([np.arange(n_groups), rng.integers(n_groups, size=n_types - n_groups)])
    rng.shuffle(groups)
    visible = np.flatnonzero(base > np.median(base))  # markers are expressed enough to be seen
    k = int(np.clip(n_nuc // 40, 3, 50))
    lfc = np.zeros((n_types, n_nuc))
    for g in range(n_groups):
        genes = rng.choice(visible, size=min(k, len(visible)), replace=False)
        lfc[np.ix_(groups == g, genes)] += rng.normal(2.0, 0.5, len(genes))
    for t in range(n_types):
        n_up = min(int(rng.integers(max(k // 2, 1), k + 1)), len(visible))
        genes = rng.choice(visible, size=min(n_up + n_up // 4, len(visible)), replace=False)
        up = rng.normal(2.5, 0.5, len(genes))
        up[n_up:] = -rng.normal(1.5, 0.4, len(genes) - n_up)  # some markers go down
        lfc[t, genes] += rng.uniform(0.1, 1.0) * up  # weak markers make hard sibling pairs
    programs = np.zeros((_N_PROGRAMS, n_nuc))
    for p in range(_N_PROGRAMS):
        genes = rng.choice(n_nuc, size=int(np.clip(n_nuc // 40, 5, 150)), replace=False)
        programs[p, genes] = rng.uniform(0.5, 1.0, len(genes))
    activity = rng.normal(0.0, 1.0, (n_groups, _N_PROGRAMS))[groups]  # shared within a group
    activity += rng.normal(0.0, 0.2, (n_types, _N_PROGRAMS))
    log_w = base + lfc + activity @ programs  # (n_types, n_nuclear)
    q = np.exp(log_w - np.logaddexp.reduce(log_w, axis=1, keepdims=True))
    share = np.exp(rng.normal(0.0, 1.3, n_types))  # sizes span orders of magnitude
    in_program = np.flatnonzero(programs.any(axis=0))
    pos = np.full(n_nuc, -1, dtype=np.int32)
    pos[in_program] = np.arange(len(in_program))
    return _Model(q, theta, in_program, programs[:, in_program], pos,
                  rng.dirichlet(np.full(n_mito, 4.0)) if n_mito else np.zeros(0),
                  share / share.sum(), groups, np.exp(rng.normal(0.0, 0.25, n_types)))  # fmt: skip


def _make_plan(
    model: _Model, n_cells: int, seed: int, doublet_rate: float, uninf_rate: float, lib: float
) -> _Plan:
    rng, p = stream(seed, 1), model.proportions
    n_types = len(p)
    n_doublet = round(doublet_rate * n_cells) if n_types > 1 else 0
    n_uninf = round(uninf_rate * n_cells)
    n_mixed = n_uninf // 3 if n_types > 1 else 0
    n_plain = n_cells - n_doublet - n_uninf  # these hold the 15 cells a type
    floor = min(15, n_plain // n_types)  # then shares by p, with the largest remainders
    share = (n_plain - floor * n_types) * p
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share)[: n_plain - floor * n_types - counts.sum()]] += 1
    counts += floor
    rest = rng.choice(n_types, n_cells - n_plain, p=p)
    type1 = np.concatenate([np.repeat(np.arange(n_types), counts), rest])
    # kind 0: plain, 1: flagged doublet, 2: DOUBLET_MIXED, 3: LOW_Q_HIGH_MITO
    kind = np.repeat([0, 1, 2, 3], [n_plain, n_doublet, n_mixed, n_uninf - n_mixed])
    order = rng.permutation(n_cells)
    type1, kind = type1[order].astype(np.int32), kind[order]
    two = (kind == 1) | (kind == 2)
    other = rng.choice(n_types, int(two.sum()), p=p)
    while (clash := other == type1[two]).any():  # a doublet joins two different types
        other[clash] = rng.choice(n_types, int(clash.sum()), p=p)
    type2 = np.full(n_cells, -1, dtype=np.int32)
    type2[two] = other
    libs = np.exp(rng.normal(np.log(lib), 0.45, (2, n_cells)))
    lib1 = libs[0] * model.type_size[type1]
    lib2 = np.where(two, libs[1] * model.type_size[type2], 0.0)
    mito = np.exp(rng.normal(np.log(0.035), 0.45, n_cells)).clip(0.003, 0.15)
    lib1[kind == 3] *= 0.35
    mito[kind == 3] = rng.uniform(0.2, 0.6, int((kind == 3).sum()))
    codes = np.where(kind == 2, n_types, np.where(kind == 3, n_types + 1, type1))
    labels = pd.Categorical.from_codes(codes, [*type_names(n_types), DOUBLET_LABEL, LOW_Q_LABEL])
    return _Plan(type1, type2, lib1, lib2, mito, labels.remove_unused_categories(), kind == 1)


def _nb_counts(
    rng: np.random.Generator, model: _Model, q: np.ndarray, libs: np.ndarray, jitter: np.ndarray
) -> sp.csr_matrix:
    """NB counts of up to ``_BATCH`` cells of gene shares ``q`` (a type's, or a type's in a
    donor and condition): canonical CSR (cells x nuclear genes).

    Events come at the batch's highest rate per gene (largest library and program jitter; the
    loadings are non-negative), each kept with probability rate / highest rate.
    """
    theta, n_nuc = model.theta, len(model.theta)
    shift = np.exp(jitter @ model.programs)  # (n_cells, n_program_genes)
    m_max = libs.max() * q  # (n_nuc,)
    m_max[model.program_genes] *= shift.max(axis=0)
    rate_max = theta * np.log1p(m_max / theta)
    rate = rate_max * len(libs)  # events per gene: Poisson(rate), each for a random cell
    if (cum := np.cumsum(rate))[-1] >= n_nuc:
        gene = np.repeat(np.arange(n_nuc, dtype=np.int32), rng.poisson(rate))
    else:  # few: their total, then sorted uniforms (exponential spacings) on the cumulative rate
        at = np.cumsum(rng.exponential(size=rng.poisson(cum[-1]) + 1))
        gene = np.searchsorted(cum, at[:-1] * (cum[-1] / at[-1]), side="right")
        gene = gene.clip(max=n_nuc - 1).astype(np.int32)
    cell = rng.integers(len(libs), size=len(gene), dtype=np.int32)
    m = libs[cell] * q[gene]
    pos = model.program_pos[gene]
    in_program = np.flatnonzero(pos >= 0)
    m[in_program] *= shift[cell[in_program], pos[in_program]]
    th = theta[gene]
    keep = rng.random(len(gene)) * rate_max[gene] < th * np.log1p(m / th)
    m, th = m[keep], th[keep]
    count = rng.logseries(m / (m + th)).astype(np.float32)
    # canonical: events come sorted by gene, and coo -> csr sorts stably by cell
    return sp.csr_matrix((count, (cell[keep], gene[keep])), shape=(len(libs), n_nuc))


def _block(model: _Model, plan: _Plan, effects: Effects | None, start: int, stop: int,
           seed: int) -> sp.csr_matrix:  # fmt: skip
    """Counts of cells ``start:stop`` (inside one ``_BLOCK``), canonical CSR float32."""
    rng = stream(seed, 2, start // _BLOCK)
    n, cells = stop - start, slice(start, stop)
    two = np.flatnonzero(plan.type2[cells] >= 0)  # components: n cells, doublets' second parts
    types = np.concatenate([plan.type1[cells], plan.type2[cells][two]])
    if effects is not None:  # a doublet's parts share the cell's donor and condition
        at = np.concatenate([np.arange(start, stop), start + two])
        types = effects.component(types, at, len(model.proportions))
    shares = (lambda c: model.q[c]) if effects is None else partial(effects.shares, model)
    libs = np.concatenate([plan.lib1[cells], plan.lib2[cells][two]])
    jitter = rng.normal(0.0, 0.35, (len(types), _N_PROGRAMS))  # per-cell program activity
    level = np.floor(np.log(libs) / _LIB_STEP)
    order = np.lexsort((libs, level, types))
    cut = (np.diff(types[order]) != 0) | (np.diff(level[order]) != 0)
    runs = np.split(order, np.flatnonzero(cut) + 1)
    batches = [run[i : i + _BATCH] for run in runs for i in range(0, len(run), _BATCH)]
    stacked = stack_rows(
        [_nb_counts(rng, model, shares(int(types[b[0]])), libs[b], jitter[b]) for b in batches]
    )  # rows in ``order``
    rank = np.argsort(order)
    nuc, second = stacked[rank[:n]], stacked[rank[n:]]
    del stacked
    if len(two):  # add each doublet's second part to its row
        indptr = np.zeros(n + 1, dtype=np.int64)
        indptr[two + 1] = np.diff(second.indptr)
        indptr = np.cumsum(indptr)
        nuc = nuc + sp.csr_matrix((second.data, second.indices, indptr), shape=nuc.shape)
    if not len(model.mito_weights):
        return nuc
    frac, total = plan.mito[cells], plan.lib1[cells] + plan.lib2[cells]
    mean = (total * frac / (1 - frac))[:, None] * model.mito_weights
    mito = rng.poisson(rng.gamma(20.0, mean / 20.0)).astype(np.float32)  # (n, n_mito)
    return sp.hstack([sp.csr_matrix(mito), nuc], format="csr")


def _chunks(model: _Model, plan: _Plan, effects: Effects | None, seed: int,
            chunk_size: int) -> Iterator[sp.csr_matrix]:  # fmt: skip
    """The count matrix in row chunks of ``chunk_size`` cells (the last may be shorter)."""
    n_cells, parts, held = len(plan.type1), [], 0
    for start in range(0, n_cells, _BLOCK):
        stop = min(start + _BLOCK, n_cells)
        parts.append(_block(model, plan, effects, start, stop, seed))
        held += stop - start
        while held >= chunk_size or (stop == n_cells and held):
            buf = parts[0] if len(parts) == 1 else stack_rows(parts)
            parts = [buf[chunk_size:]] if held > chunk_size else []  # copies only when cut
            held = held - chunk_size if held > chunk_size else 0
            yield buf[:chunk_size] if parts else buf


def _check_label_key(label_key: str) -> None:
    check_label_key(label_key, (DOUBLET_KEY, MITO, N_GENES, DONOR_KEY, CONDITION_KEY))


def _check(
    n_cells: int, n_genes: int, n_types: int, n_mito: int, seed: int,
    doublet_rate: float, uninformative_rate: float, library_size: float | None,
    n_donors: int = 0, n_conditions: int = 0,
) -> int:  # fmt: skip
    """Every argument checked, and the memory of the model and the plan; returns the seed."""
    rates = {"doublet_rate": doublet_rate, "uninformative_rate": uninformative_rate}
    return check_args(n_cells, n_genes, n_types, n_mito, seed, rates, library_size, n_donors,
                      n_conditions, available_memory())


def _setup(
    n_cells: int, n_genes: int, n_types: int, n_mito: int, seed: int,
    doublet_rate: float, uninformative_rate: float, library_size: float | None,
    n_donors: int = 0, n_conditions: int = 0, chunk_size: int | None = None,
) -> tuple[_Model, _Plan, Effects | None, float]:  # fmt: skip
    """The model, the cells' plan and the design's effects, and about the non-zero counts a
    cell holds; every argument checked (:func:`_check`), and the memory the counts need
    (``chunk_size``: the cells :func:`write_atlas` holds at once, None: all), before any work."""
    seed = _check(n_cells, n_genes, n_types, n_mito, seed, doublet_rate, uninformative_rate,
                  library_size, n_donors, n_conditions)
    # automatic: ~10% nonzeros at 2,000 genes, ~1,300 genes detected a cell at 33,538
    lib = 600.0 * (n_genes / 2000) ** 0.43 if library_size is None else float(library_size)
    model = _make_model(n_genes, n_types, n_mito, seed)
    nonzeros = nonzeros_per_cell(model.q, model.theta, model.type_size, model.proportions, lib,
                                 n_mito, doublet_rate)
    check_counts_memory(n_cells, chunk_size, nonzeros, available_memory(), _BLOCK)
    plan = _make_plan(model, n_cells, seed, doublet_rate, uninformative_rate, lib)
    # types some cell is labelled with: a low-quality or mixed cell's own type is not shown
    if (got := len(set(plan.labels.categories) - {DOUBLET_LABEL, LOW_Q_LABEL})) < n_types:
        logger.warning("%d of the %d cell types got no cell: %d cells are too few for that many "
                       "types (the rarer types are drawn seldom); ask for more cells "
                       "(n_cells= or --cells) or fewer types (n_types= or --types)",
                       n_types - got, n_types, n_cells)  # fmt: skip
    if not (n_donors or n_conditions):
        return model, plan, None, nonzeros
    effects = make_effects(model, n_cells, n_donors, n_conditions, seed)
    for what, flag, n, codes in (("donors", "n_donors= or --donors", n_donors, effects.donor),
                                 ("conditions", "n_conditions= or --conditions", n_conditions,
                                  effects.condition)):  # fmt: skip
        if n and (got := len(np.unique(codes))) < n:
            logger.warning("%d of the %d %s got no cell (%d cells%s): their levels are obs "
                           "categories without cells, their effects stated but shown by none; "
                           "ask for more cells (n_cells= or --cells) or fewer %s (%s)", n - got,
                           n, what, n_cells, ", fewer than the levels" if n_cells < n else "",
                           what, flag)
    return model, plan, effects, nonzeros


def _annotations(
    model: _Model, plan: _Plan, effects: Effects | None, label_key: str, seed: int,
    qc: tuple[np.ndarray, ...] | None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:  # fmt: skip
    """``obs``, ``var`` and ``uns``; ``qc`` holds the mito fraction and genes detected, or None."""
    n_cells, n_mito, n_types = len(plan.type1), len(model.mito_weights), len(model.proportions)
    n_genes = n_mito + model.q.shape[1]
    cells = pd.Index([f"cell_{i:0{len(str(n_cells - 1))}d}" for i in range(n_cells)])
    obs = pd.DataFrame({label_key: plan.labels, DOUBLET_KEY: plan.doublet}, index=cells)
    if qc is not None:
        obs[MITO], obs[N_GENES] = qc
    mito = [f"MT-{_MITO[i]}" if i < len(_MITO) else f"MT-EXTRA{i + 1}" for i in range(n_mito)]
    genes = pd.Index(mito + [f"GENE{i:05d}" for i in range(1, n_genes - n_mito + 1)])
    var = pd.DataFrame({"gene_ids": [f"ENSSIMG{i:011d}" for i in range(1, n_genes + 1)]}, genes)
    source = f"cellsynth.data.simulate: {n_cells} x {n_genes}, {n_types} types, seed {seed}"
    group = [f"group_{chr(65 + g) if g < 26 else g + 1}" for g in model.groups.tolist()]
    groups = dict(zip(type_names(n_types), group, strict=True))
    uns = {"label_key": label_key, "source": source, "celltype_groups": groups}
    if effects is not None:
        donors, conditions = level_names(effects.n_donors, effects.n_conditions)
        for key, levels, codes in ((DONOR_KEY, donors, effects.donor),
                                   (CONDITION_KEY, conditions, effects.condition)):  # fmt: skip
            if levels:
                obs[key] = pd.Categorical.from_codes(codes, categories=levels)
        uns["simulation"] = truth(effects, genes, n_mito, model.q)
    return obs, var, uns


def _qc(x: sp.csr_matrix, n_mito: int) -> tuple[np.ndarray, np.ndarray]:
    """Mitochondrial fraction and genes detected per cell (the ``MT-`` genes come first)."""
    total, mito = x.sum(axis=1).A1, x[:, :n_mito].sum(axis=1).A1
    frac = np.divide(mito, total, out=np.zeros_like(total), where=total > 0).astype(np.float32)
    return frac, np.diff(x.indptr).astype(np.int32)


def simulate_atlas(
    n_cells: int = 3000, n_genes: int = 2000, n_types: int = 8, *, seed: int = 0,
    label_key: str = "cell_type", doublet_rate: float = 0.02, uninformative_rate: float = 0.01,
    n_mito: int = 13, qc_columns: bool = False, library_size: float | None = None,
    n_donors: int = 0, n_conditions: int = 0,
) -> ad.AnnData:  # fmt: skip
    """Simulate a labelled atlas of raw counts in memory.

    Parameters
    ----------
    n_cells, n_genes, n_types
        Cells, genes (mitochondrial included) and informative fine cell types.
    seed
        The one seed: the same arguments give the same atlas.
    label_key
        ``obs`` column of the annotation, also named in ``uns["label_key"]``.
    doublet_rate
        Share of cells summing two cells of different types (``obs["predicted_doublets"]``).
    uninformative_rate
        Share of cells labelled ``LOW_Q_HIGH_MITO`` (2/3) or ``DOUBLET_MIXED`` (1/3).
    n_mito
        Mitochondrial genes (``MT-``), the first columns.
    qc_columns
        Add ``obs["mito"]`` (mitochondrial fraction) and ``obs["n_genes"]``, as E-ANND-5 has.
    library_size
        Median nuclear counts per cell; ``None`` grows it with ``n_genes``.
    n_donors
        Donors (``obs["donor"]``: ``D0``, ``D1``...), each shifting a random subset of genes by
        a fold change of its own; 0: no donor column.
    n_conditions
        Conditions (``obs["condition"]``: ``ctrl``, ``stim``, ``stim2``...), each after ``ctrl``
        with a gene program per type; 0: no condition column. With either, the effects are
        stated in ``uns["simulation"]``; without, the atlas is the same bit for bit.

    Returns
    -------
    AnnData with whole counts in ``X`` (CSR float32), the annotation and doublet flag in ``obs``,
    ``gene_ids`` in ``var``, and ``label_key``, ``source``, ``celltype_groups`` (fine to coarse)
    in ``uns``; with donors or conditions, their columns in ``obs`` and ``uns["simulation"]``:
    ``donors``, ``conditions``, ``reference`` (``ctrl``), ``donor_shift`` (``genes``, and
    ``log_fold_change`` per donor) and ``condition_programs`` (per type, per condition:
    ``genes`` and ``log_fold_change``), natural-log fold changes of a gene's mean at a fixed
    library size, and ``total_ratio`` (per condition, each type's mean nuclear total over
    ``ctrl``'s: the change of counts normalised per cell).

    Examples
    --------
    >>> adata = simulate_atlas(2000, 500, 4, n_donors=3, n_conditions=2, seed=0)
    >>> adata.uns["simulation"]["condition_programs"]["type_00"]["stim"]["genes"][:3]
    ['GENE00006', 'GENE00048', 'GENE00091']
    """
    _check_label_key(label_key)
    check_flag(qc_columns, "qc_columns")
    args = (n_cells, n_genes, n_types, n_mito, seed, doublet_rate, uninformative_rate)
    model, plan, effects, _ = _setup(*args, library_size, n_donors, n_conditions)
    parts = list(_chunks(model, plan, effects, seed, _BLOCK))
    x = parts[0] if len(parts) == 1 else stack_rows(parts)
    obs, var, uns = _annotations(
        model, plan, effects, label_key, seed, _qc(x, n_mito) if qc_columns else None
    )
    return ad.AnnData(X=x, obs=obs, var=var, uns=uns)


def _write_x(
    f: h5py.File, model: _Model, plan: _Plan, effects: Effects | None, seed: int, chunk_size: int,
    compression: str | None, qc: tuple[np.ndarray, np.ndarray] | None,
) -> int:  # fmt: skip
    """Append the counts to ``f["X"]`` (anndata's CSR layout) chunk by chunk; the nonzeros."""
    n_cells, n_mito = len(plan.type1), len(model.mito_weights)
    writer = CSRWriter(f, "X", n_mito + model.q.shape[1], compression=compression,
                       n_rows=n_cells)
    n_chunks = -(-n_cells // chunk_size)
    for x in progress_bar(_chunks(model, plan, effects, seed, chunk_size), total=n_chunks):
        row, stop = writer.n_rows, writer.n_rows + x.shape[0]
        writer.append(x)
        if qc is not None:
            qc[0][row:stop], qc[1][row:stop] = _qc(x, n_mito)
        logger.debug("wrote cells %d:%d (%d nonzeros so far)", row, stop, writer.nnz)
    return writer.nnz


def write_atlas(
    path: str | Path, n_cells: int, n_genes: int, n_types: int, *, seed: int = 0,
    label_key: str = "celltype_annotation", chunk_size: int = 50_000,
    doublet_rate: float = 0.02, uninformative_rate: float = 0.01, n_mito: int = 13,
    qc_columns: bool = False, library_size: float | None = None,
    compression: Literal["gzip", "lzf"] | None = None, n_donors: int = 0, n_conditions: int = 0,
) -> Path:  # fmt: skip
    """Simulate an atlas straight into an ``.h5ad`` file, ``chunk_size`` cells at a time.

    The data equal :func:`simulate_atlas`'s for the same arguments, whatever ``chunk_size``, and
    memory stays bounded by a chunk (plus ``obs``). The file is written beside ``path``, renamed
    when complete, and reads with ``anndata.read_h5ad``, also with ``backed="r"``.

    Parameters
    ----------
    path
        The ``.h5ad`` file to write (replaced if present).
    n_cells, n_genes, n_types
        As in :func:`simulate_atlas`; ``write_atlas(path, *ATLAS_SCALE)`` gives E-ANND-5's shape.
    chunk_size
        Cells generated and appended per step.
    compression
        HDF5 compression of ``X`` (``None``: faster, larger files).

    The other keywords are those of :func:`simulate_atlas`.

    Returns
    -------
    The path written.
    """
    chunk_size = check_writing(chunk_size, compression)
    _check_label_key(label_key)
    check_flag(qc_columns, "qc_columns")
    started = time.perf_counter()
    args = (n_cells, n_genes, n_types, n_mito, seed, doublet_rate, uninformative_rate)
    _check(*args, library_size, n_donors, n_conditions)  # before the path's log line
    path = check_file_out(path, "a simulated atlas", generated_h5ad)
    model, plan, effects, nonzeros = _setup(*args, library_size, n_donors, n_conditions,
                                            chunk_size)
    logger.info("writing a simulated atlas of %d cells x %d genes to %s", n_cells, n_genes, path)
    qc = (np.zeros(n_cells, np.float32), np.zeros(n_cells, np.int32)) if qc_columns else None
    with h5ad_file(path) as f:
        if compression is None:  # a compressed file's size is not known before it is written
            check_disk_space(path, file_bytes(n_cells, nonzeros), "the simulated atlas")
        nnz = _write_x(f, model, plan, effects, seed, chunk_size, compression, qc)
        obs, var, uns = _annotations(model, plan, effects, label_key, seed, qc)
        for key, elem in {"obs": obs, "var": var, "uns": uns}.items():
            write_elem(f, key, elem)
    elapsed = time.perf_counter() - started
    logger.info("wrote %s: %d nonzeros (%.0f a cell) in %.1f s", path, nnz, nnz / n_cells, elapsed)
    return path
