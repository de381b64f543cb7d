"""``cellsynth evaluate`` / ``cs.evaluate`` on files: subsamples read from disk, never the whole
file; counts found in ``X``, ``layers['counts']`` or ``raw.X``; the same numbers from a path and
from the AnnData in memory."""

from __future__ import annotations

import json
import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth import evaluation
from cellsynth.data.simulate import simulate_atlas, write_atlas
from cellsynth.errors import DataError

LABEL = "cell_type"


def _x_bytes(path) -> int:
    """Bytes of the stored CSR ``X`` (values, column indices, row pointer)."""
    with h5py.File(path, "r") as f:
        return sum(f["X"][k].size * f["X"][k].dtype.itemsize for k in ("data", "indices", "indptr"))


@pytest.fixture(scope="module")
def large_pair(tmp_path_factory):
    """Two files written chunk by chunk from one simulated model (20,000 and 12,000 cells of
    2,000 genes; 20 MB and more of counts each)."""
    d = tmp_path_factory.mktemp("large")
    real, syn = d / "real.h5ad", d / "syn.h5ad"
    write_atlas(real, 20_000, 2000, 4, seed=0, label_key=LABEL)
    write_atlas(syn, 12_000, 2000, 4, seed=0, label_key=LABEL)
    return real, syn


def test_large_files_are_read_as_subsamples_with_bounded_memory(large_pair, monkeypatch):
    """With max_cells far below the files' sizes neither file is read whole (no
    anndata.read_h5ad), the metrics get the subsamples only, and the peak of traced memory stays
    well below one file's matrix: obs and the subsamples, not the file."""
    real, syn = large_pair
    x_bytes = min(_x_bytes(real), _x_bytes(syn))

    def whole(*args, **kwargs):
        raise AssertionError("evaluation read a whole h5ad with anndata.read_h5ad")

    monkeypatch.setattr(ad, "read_h5ad", whole)
    monkeypatch.setattr("cellsynth.data.io.ad.read_h5ad", whole)
    # find_counts probes up to 1M stored values (a constant 8 MB, whatever the file's size):
    # fewer here, so that the test's small files show what grows with them
    monkeypatch.setattr("cellsynth.data.io._PROBE_VALUES", 20_000)
    seen = {}

    def space(counts, labels, genes, **kw):
        seen["space"] = counts.shape
        return "space"

    def floor(sp_, counts, labels, **kw):
        seen["floor"] = counts.shape
        return {"halves": [1, 1]}

    def report(sp_, rc, rl, sc, sl, **kw):
        seen["report"] = (rc.shape, sc.shape)
        return {"overall": {"c2st_auc": 0.5}}

    def memorised(sp_, real, synthetic, **kw):
        seen["memorisation"] = (real.shape, synthetic.shape)
        return {"flagged": False, "reasons": []}

    monkeypatch.setattr(evaluation, "fit_space", space)  # the metrics' own cost is not the
    monkeypatch.setattr(evaluation, "real_floor", floor)  # point here (and is slow traced);
    monkeypatch.setattr(evaluation, "fidelity_report", report)  # what they are given is
    monkeypatch.setattr(evaluation, "memorisation", memorised)

    def extras(space_, evaluated, r, h, scored, fitted, synth, genes, seed, heldout, donor_key,
               gene_repeats):
        seen["extras"] = (scored[0].shape, synth[0].shape)
        return {"genes": {"skipped": "stub"}, "typewise": {"skipped": "stub"},
                "trts": {"skipped": "stub"}, "privacy": None}

    monkeypatch.setattr(evaluation, "_extras", extras)  # gene level, per-type floors, TRTS
    max_cells = 300
    tracemalloc.start()
    try:
        result = evaluation.compare(real, syn, label_key=LABEL, max_cells=max_cells)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x_bytes / 4, (peak, x_bytes)
    n = result["n_cells"]
    assert n["real"]["total"] == 20_000 and n["synthetic"]["total"] == 12_000
    for side in ("real", "synthetic"):  # each type keeps its share, rounded: about max_cells
        assert abs(n[side]["used"] - max_cells) <= 6, n
    assert abs(n["real"]["space"] - max_cells) <= 6, n  # other real cells: the space's
    used = (n["real"]["used"], 2000), (n["synthetic"]["used"], 2000)
    assert seen == {"space": (n["real"]["space"], 2000), "floor": used[0], "report": used,
                    "memorisation": ((n["real"]["used"] + n["real"]["space"], 2000), used[1]),
                    "extras": used}
    # every type is named in the verdict, even with the metrics stubbed out (too few: no numbers)
    assert set(result["verdict"]["too_few"]) == {row["type"] for row in result["per_type"]}


def test_evaluate_writes_the_cells_used(large_pair, tmp_path):
    """The CLI's function: fidelity.json and fidelity.md say how many cells of each were used."""
    real, syn = large_pair
    md = evaluation.evaluate(real, syn, LABEL, tmp_path / "out", max_cells=150, seed=1)
    result = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    n = result["n_cells"]
    assert (n["real"]["total"], n["synthetic"]["total"]) == (20_000, 12_000)
    assert result["max_cells"] == 150 and result["n_genes"] == 2000
    assert result["synthetic_vs_real"]["n_real"] == n["real"]["used"] < 160
    assert result["synthetic_vs_real"]["n_synth"] == n["synthetic"]["used"] < 160
    assert sum(result["real_vs_real"]["halves"]) == n["real"]["used"]
    text = md.read_text()
    assert f"{n['real']['used']} of 20000 real" in text and "at most 150)" in text
    assert f"fitted on {n['real']['space']} other real cells" in text
    assert f"--real {real}" in text
    # one simulated model on both sides: about as distinguishable as the floor's two halves
    # (a space fitted on the scored real cells gave 0.99 here: it knew them from any others)
    auc = result["synthetic_vs_real"]["overall"]["c2st_auc"]
    assert auc < 0.65 and abs(auc - result["real_vs_real"]["overall"]["c2st_auc"]) < 0.1


def _normalised_with_counts(where: str, seed: int) -> ad.AnnData:
    """A simulated atlas with log-normalised X and its counts in a layer or in raw."""
    a = simulate_atlas(500, 120, 3, seed=seed, label_key=LABEL)
    counts = a.X.copy()
    x = counts.multiply(1e4 / np.maximum(counts.sum(axis=1), 1)).tocsr()
    x.data = np.log1p(x.data)
    if where == "layers":
        a.layers["counts"] = counts
        a.X = x.astype(np.float32)
    elif where == "raw":
        a.raw = a.copy()
        a.X = x.astype(np.float32)
    return a


@pytest.mark.parametrize("where", ["X", "layers", "raw"])
def test_counts_wherever_they_are_and_the_same_from_a_path(tmp_path, where):
    """The cells read from a file (on disk, by rows), from the AnnData in memory and from a
    backed AnnData are the same cells with the same counts and labels."""
    adata = _normalised_with_counts(where, 1)
    adata.write_h5ad(tmp_path / "real.h5ad")
    expected = {"X": "X", "layers": "layers/counts", "raw": "raw.X"}[where]

    def pick(labels):
        return evaluation.stratified_subsample(labels, 150, seed=7)

    memory = evaluation._read_side(adata, LABEL, pick, "the real data")
    disk = evaluation._read_side(tmp_path / "real.h5ad", LABEL, pick, "the real data")
    backed = ad.read_h5ad(tmp_path / "real.h5ad", backed="r")
    try:
        via_backed = evaluation._read_side(backed, LABEL, pick, "the real data")
    finally:
        backed.file.close()
    for got in (disk, via_backed):
        assert got.where == memory.where == expected
        assert got.n_total == memory.n_total == 500
        assert 145 <= got.counts.shape[0] <= 155 and (got.counts != memory.counts).nnz == 0
        assert (got.labels == memory.labels).all() and got.genes.equals(memory.genes)
    assert disk.source.endswith("real.h5ad") and memory.source == evaluation.IN_MEMORY
    assert np.all(np.mod(disk.counts.data, 1) == 0)  # the counts, not X's normalised values


@pytest.mark.slow
def test_in_memory_pair(tmp_path):
    """AnnData objects in, with the same numbers for the same seed, and the results page."""
    real = simulate_atlas(400, 150, 3, seed=1, label_key=LABEL)
    syn = simulate_atlas(300, 150, 3, seed=2, label_key=LABEL)  # another model: far apart
    one = evaluation.compare(real, syn, label_key=LABEL, max_cells=120, seed=3, gene_repeats=2)
    two = evaluation.compare(real, syn, label_key=LABEL, max_cells=120, seed=3, gene_repeats=2)
    assert one["synthetic_vs_real"]["overall"]["c2st_auc"] == two["synthetic_vs_real"]["overall"]["c2st_auc"]
    assert one["genes"] == two["genes"] and one["genes"]["config"]["repeats"] == 2
    assert one["synthetic_vs_real"]["overall"]["c2st_auc"] > 0.9
    assert one["real_vs_real"]["overall"]["c2st_auc"] < 0.75
    n = one["n_cells"]
    assert n["real"]["total"] == 400 and n["synthetic"]["total"] == 300
    assert 115 <= n["real"]["used"] <= 125 and 115 <= n["real"]["space"] <= 125
    text = evaluation.write(one, tmp_path / "out").read_text()
    assert "on AnnData objects" in text and "| real vs real |" in text


def test_refusals_say_what_to_do(tmp_path):
    a = simulate_atlas(200, 60, 3, seed=0, label_key=LABEL)
    norm = a.copy()
    norm.X = sp.csr_matrix(np.log1p(a.X.toarray()) / 3, dtype=np.float32)
    with pytest.raises(DataError, match="no raw counts"):
        evaluation.compare(norm, a, label_key=LABEL)
    with pytest.raises(DataError, match="label column 'kind' not in obs"):
        evaluation.compare(a, a, label_key="kind")
    with pytest.raises(DataError, match="max_cells must be at least 4"):
        evaluation.compare(a, a, label_key=LABEL, max_cells=2)
    other = a.copy()
    other.var_names = [f"x{i}" for i in range(other.n_vars)]
    with pytest.raises(DataError, match="share no gene names"):
        evaluation.compare(a, other, label_key=LABEL)
    lower = a.copy()
    lower.var_names = [g.lower() for g in a.var_names]
    with pytest.raises(DataError, match=r"alike but for case \(real '.+', synthetic '.+'\): "
                                        "rename one side's var_names"):
        evaluation.compare(a, lower, label_key=LABEL)
    ids, versioned = a.copy(), a.copy()
    ids.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    versioned.var_names = [f"{g}.3" for g in ids.var_names]
    with pytest.raises(DataError, match="alike but for a version suffix"):
        evaluation.compare(ids, versioned, label_key=LABEL)
    with pytest.raises(DataError, match="does not exist"):
        evaluation.compare(tmp_path / "missing.h5ad", a, label_key=LABEL)
    with pytest.raises(DataError, match=r"give an AnnData or an \.h5ad path"):
        evaluation.compare([1, 2], a, label_key=LABEL)


def test_gene_repeats_is_passed_on_and_checked(tmp_path):
    """``gene_repeats`` (``--gene-repeats``; ``report.gene_repeats`` in a run) sets the halvings
    the gene-level AUCs average over (what "auto" takes: tests/test_gene_fidelity.py)."""
    from cellsynth.cli import main

    real = simulate_atlas(300, 80, 3, seed=1, label_key=LABEL)
    syn = simulate_atlas(300, 80, 3, seed=2, label_key=LABEL)
    real.write_h5ad(tmp_path / "real.h5ad")
    syn.write_h5ad(tmp_path / "syn.h5ad")
    args = ["evaluate", "--real", str(tmp_path / "real.h5ad"), "--synthetic",
            str(tmp_path / "syn.h5ad"), "--label-key", LABEL, "--max-cells", "100", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one"), "--gene-repeats", "1"]) == 0
    one = json.loads((tmp_path / "one" / "fidelity.json").read_text())
    assert one["genes"]["config"]["repeats"] == 1
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "bad"), "--gene-repeats", "0"])
    for bad in (0, 1.5, "some", True):
        with pytest.raises(DataError, match="gene_repeats must be 'auto' or a whole number"):
            evaluation.compare(real, syn, label_key=LABEL, gene_repeats=bad)
