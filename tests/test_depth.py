"""Genes detected at a given depth (metrics.depth): about 1 for one distribution, below 1 for
cells whose lowly expressed genes are zero more often at the same library size."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import DataError
from cellsynth.metrics.depth import compare_depth, detection_at_depth


@pytest.fixture(scope="module")
def halves():
    a = simulate_atlas(2400, 1500, 3, seed=0)
    x, y = sp.csr_matrix(a.X), a.obs["cell_type"].astype(str).to_numpy()
    return x[::2], y[::2], x[1::2], y[1::2]


def _thinned(x: sp.csr_matrix, share: float, seed: int = 0) -> sp.csr_matrix:
    """``x`` with ``share`` of the single counts of its less expressed genes moved to each
    cell's most expressed gene: as many counts a cell, fewer genes detected."""
    x = sp.csr_matrix(x, copy=True)
    rng = np.random.default_rng(seed)
    means = np.asarray(x.mean(axis=0)).ravel()
    low = means < np.quantile(means[means > 0], 0.7)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    drop = low[x.indices] & (x.data == 1) & (rng.random(x.nnz) < share)
    moved = np.bincount(rows[drop], minlength=x.shape[0])
    x.data[drop] = 0  # stored zeros: not detections
    top = np.asarray(x.argmax(axis=1)).ravel()
    return x + sp.csr_matrix((moved, (np.arange(x.shape[0]), top)), shape=x.shape)


def test_one_distribution_reads_as_many_genes(halves):
    x, y, xs, ys = halves
    r = detection_at_depth(x, xs, real_labels=y, synth_labels=ys, seed=0)
    o = r["overall"]
    assert abs(o["ratio"] - 1) < 0.02 and abs(o["floor_ratio"] - 1) < 0.02
    assert o["auc"] < 0.56 and o["floor_auc"] < 0.56
    # every type with 20 cells a side has its row (the simulator's few doublets have none)
    big = {t for t in np.unique(y) if min((y == t).sum() // 2, (ys == t).sum()) >= 20}
    assert set(r["per_type"]) == big and {"type_00", "type_01", "type_02"} <= big
    assert o["n_synthetic"] == xs.shape[0]


def test_fewer_genes_at_the_same_depth_are_found(halves):
    x, y, xs, ys = halves
    thin = _thinned(xs, 0.25)
    assert np.allclose(np.asarray(thin.sum(axis=1)), np.asarray(xs.sum(axis=1)))  # same depth
    o = detection_at_depth(x, thin, real_labels=y, synth_labels=ys, seed=0)["overall"]
    assert o["ratio"] < 0.985 < o["floor_ratio"]
    assert o["auc"] > o["floor_auc"] + 0.05
    # without labels: one curve for every cell
    u = detection_at_depth(x, thin, seed=0)["overall"]
    assert u["ratio"] < 0.985 and u["auc"] > u["floor_auc"]


def test_inputs_are_checked_and_tiny_sides_give_none(halves):
    x, y, xs, ys = halves
    with pytest.raises(DataError, match="both real_labels and synth_labels"):
        detection_at_depth(x, xs, real_labels=y, seed=0)
    with pytest.raises(DataError, match="one label per cell"):
        detection_at_depth(x, xs, real_labels=y[:-1], synth_labels=ys, seed=0)
    other = np.array(["elsewhere"] * xs.shape[0])
    assert compare_depth(x[:50], x[50:100], xs, y[:50], y[50:100], other) is None
    with pytest.raises(DataError, match="too few cells of common types"):
        detection_at_depth(x, xs, real_labels=y, synth_labels=other, seed=0)


def test_gene_fidelity_and_the_per_type_table_carry_it(halves):
    from cellsynth.metrics.genes import gene_fidelity
    from cellsynth.metrics.verdict_text import per_type_table

    x, y, xs, ys = halves
    g = gene_fidelity(x, _thinned(xs, 0.25), real_labels=y, synth_labels=ys, seed=0,
                      n_genes=100, repeats=1)
    d = g["depth"]
    assert d["overall"]["ratio"] < 0.985 and set(d["per_type"]) <= set(np.unique(y))
    fid = {"overall": {}, "per_type": {t: {"c2st_auc": 0.5} for t in np.unique(y)}}
    table = per_type_table(fid, fid, genes=g)
    t = next(iter(d["per_type"]))
    assert table.loc[t, "genes_at_depth"] == pytest.approx(d["per_type"][t]["ratio"])
    assert table.loc[t, "genes_at_depth_floor"] == pytest.approx(d["per_type"][t]["floor_ratio"])


def test_fidelity_md_says_it():
    from cellsynth.evaluation.result import markdown

    genes = {"overall": {"n_genes": 500, "auc": 0.61, "floor_auc": 0.5, "n_cells": 200},
             "depth": {"overall": {"ratio": 0.963, "floor_ratio": 0.997, "auc": 0.641,
                                   "floor_auc": 0.503}}}
    _, tail = markdown({"genes": genes})
    assert ("generated cells detect 0.963x the genes real cells do (two halves of the real "
            "cells: 0.997x; rank AUC 0.641, floor 0.503)") in "\n".join(tail)
    _, tail = markdown({"genes": {**genes, "depth": None}})
    assert "library size" not in "\n".join(tail)
