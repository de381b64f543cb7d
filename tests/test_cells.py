"""One cell source in memory or on disk (cellsynth.cells), and `cellsynth fit` reading through it."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellsynth import keys as K
from cellsynth.cells import for_training, from_preprocessed
from cellsynth.cli import main
from cellsynth.data.simulate import simulate_atlas, write_atlas
from cellsynth.errors import DataError

LABEL = "celltype_annotation"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A small atlas on disk with one gene never detected and a few cells without a label."""
    path = tmp_path_factory.mktemp("cells") / "atlas.h5ad"
    a = simulate_atlas(500, 120, 4, seed=2, label_key=LABEL)
    x = sp.csr_matrix(a.X)
    x[:, 7] = 0  # gene 7: no count anywhere
    x.eliminate_zeros()
    a.X = x
    labels = a.obs[LABEL].astype(object)
    labels.iloc[[3, 50, 400]] = np.nan
    a.obs[LABEL] = labels.astype("category")
    a.write_h5ad(path)
    return path


def _undetected(path, split):
    """Genes with no count in the training cells of ``split``, read straight from the file."""
    a = ad.read_h5ad(path)
    x = sp.csr_matrix(a.X)[split == "train"]
    return set(a.var_names[np.asarray((x > 0).sum(axis=0)).ravel() == 0])


def _same(a, b):
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    return a.shape == b.shape and (a != b).nnz == 0


@pytest.mark.parametrize("drop", [True, False])
def test_training_cells_are_the_same_in_memory_and_on_disk(atlas, drop, caplog):
    caplog.set_level(logging.INFO, logger="cellsynth")
    mem = for_training(atlas, LABEL, seed=1, backed=False, drop_undetected=drop, chunk_size=64)
    disk = for_training(atlas, LABEL, seed=1, backed=True, drop_undetected=drop, chunk_size=64)
    try:
        assert not mem.on_disk and disk.on_disk
        assert (mem.split() == disk.split()).all()
        gone = _undetected(atlas, mem.split())
        assert ad.read_h5ad(atlas).var_names[7] in gone
        assert mem.genes == disk.genes and len(mem.genes) == 120 - drop * len(gone)
        assert not (set(mem.genes) & gone) or not drop
        split = mem.split()
        assert set(split[[3, 50, 400]]) == {"none"}  # unlabelled cells are left out
        assert {"train", "val"} <= set(split) and "test" not in set(split)
        rows = mem.split_rows()["train"][::7]
        assert _same(mem.counts.take(rows), disk.counts.take(rows))
        assert _same(mem.to_memory(rows).layers[K.COUNTS], disk.to_memory(rows).X)
        # the same mini-batches from either
        codes = np.zeros(len(rows), dtype=np.int64)
        lm = mem.loader(rows, codes, batch_size=16, device=torch.device("cpu"), seed=0)
        ld = disk.loader(rows, codes, batch_size=16, device=torch.device("cpu"), seed=0)
        xm, _, libm, _ = lm.batch(np.arange(5))
        xd, _, libd, _ = ld.batch(np.arange(5))
        assert torch.equal(xm, xd) and torch.equal(libm, libd)
        sums_m, sums_d = (ld_.type_sums(1) for ld_ in (lm, ld))
        assert np.allclose(sums_m["sum_x"], sums_d["sum_x"])
    finally:
        mem.close()
        disk.close()
    assert "3 cells have no label" in caplog.text
    if drop:
        assert f"leaving out {len(gone)} of 120 genes" in caplog.text


def test_fractional_values_after_the_first_chunk_are_found(tmp_path, monkeypatch):
    """Every value is checked, not a sample: a scaled batch at the end of the file is refused
    (where the counts are is judged on the first values, here fewer than the file holds)."""
    from cellsynth.data import io

    monkeypatch.setattr(io, "_PROBE_VALUES", 500)
    a = simulate_atlas(300, 60, 3, seed=0, label_key=LABEL)
    x = sp.csr_matrix(a.X, dtype=np.float32)
    x.data[x.indptr[290]:] *= 0.37  # the last 10 cells: scaled
    a.X = x
    path = tmp_path / "scaled.h5ad"
    a.write_h5ad(path)
    for backed in (False, True):
        with pytest.raises(DataError, match=r"non-integer values \(cells at rows 29\d"):
            for_training(path, LABEL, seed=0, backed=backed, chunk_size=50)


def test_counts_in_raw_are_found_under_normalised_x(atlas):
    """scanpy's layout (log-normalised X, counts in raw.X): training reads raw.X's counts, in
    memory as from a file; normalised X without counts anywhere is refused, saying where it
    looked."""
    a = ad.read_h5ad(atlas)
    counts = sp.csr_matrix(a.X)
    a.raw = a.copy()
    a.X = sp.csr_matrix(np.log1p(counts.toarray() / np.maximum(counts.sum(1).A, 1) * 1e4))
    rows = np.arange(a.n_obs)
    cells = for_training(a, LABEL, seed=0)
    assert _same(cells.counts.take(rows), counts)
    assert cells.genes == list(a.var_names)
    from cellsynth.models.base import training_counts

    assert _same(training_counts(a), counts)  # nb, scvi and the reference read it too
    b = a[:, :50].copy()
    with pytest.raises(DataError, match=r"over 120 genes where X has 50: 70 only in raw.X .*; "
                       r"train on adata.raw"):
        training_counts(b)
    a.raw = None
    for read in (lambda x: for_training(x, LABEL, seed=0), training_counts):
        with pytest.raises(DataError, match=r"needs raw counts.*layers\['counts'\] or raw.X"):
            read(a)


def test_preprocessed_cells_read_alike(tmp_path):
    from cellsynth import config
    from cellsynth.data.chunked import preprocess_backed
    from cellsynth.data.qc import preprocess

    path = write_atlas(tmp_path / "a.h5ad", 400, 150, 4, seed=3)
    cfg = config.load(None, ["qc.min_genes_per_cell=20", "qc.min_cells_per_gene=20",
                             f"dataset.label_key={LABEL!r}"])
    pre, _ = preprocess(ad.read_h5ad(path), cfg.dataset, cfg.qc, cfg.split, seed=0)
    preprocess_backed(path, cfg.dataset, cfg.qc, cfg.split, seed=0, out_path=tmp_path / "p.h5ad")
    mem, disk = from_preprocessed(pre), from_preprocessed(tmp_path / "p.h5ad")
    with disk:
        assert not mem.on_disk and disk.on_disk and mem.label_key == disk.label_key == LABEL
        for s, rows in mem.split_rows().items():
            assert np.array_equal(rows, disk.split_rows()[s])
        rows = mem.split_rows()["test"]
        assert _same(mem.normalised.take(rows), disk.normalised.take(rows))
        a, b = mem.to_memory(rows), disk.to_memory(rows)
        assert _same(a.X, b.X) and _same(a.layers[K.COUNTS], b.layers[K.COUNTS])
        z = disk.per_cell_array(tmp_path / "z.npy", (len(rows), 3), lambda out: out.fill(2.0))
        assert isinstance(z, np.memmap) and (tmp_path / "z.npy").is_file() and z[0, 0] == 2.0
        zm = mem.per_cell_array(tmp_path / "zm.npy", (len(rows), 3), lambda out: out.fill(1.0))
        assert not isinstance(zm, np.memmap) and not (tmp_path / "zm.npy").exists()


def test_fit_from_disk(atlas, tmp_path, capsys):
    """`cellsynth fit --set dataset.backed=true` trains from disk and says what it left out."""
    out = tmp_path / "model"
    args = ["fit", str(atlas), "--label-key", LABEL, "--out", str(out), "--quiet",
            "--set", "dataset.backed=true", "--set", "cvae.n_hidden=[16]",
            "--set", "cvae.n_latent=4", "--set", "cvae.max_epochs=2"]
    assert main(args) == 0
    genes = json.loads((out / "genes.json").read_text())
    with for_training(atlas, LABEL, seed=0, backed=True) as cells:
        gone = _undetected(atlas, cells.split())
    assert f"{120 - len(gone)} genes" in capsys.readouterr().out
    assert len(genes) == 120 - len(gone) and not set(genes) & gone
    from cellsynth.models.cvae import CVAE

    model = CVAE.load(out)
    syn = model.sample({model.labels[0]: 5}, seed=0)
    assert syn.n_obs == 5 and list(syn.var_names) == genes
