"""Held-out donors: ``split.heldout_donors`` puts whole donors in the test split, and the run's
privacy audit attacks at donor level on them (``dataset.donor_key``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellsynth import config
from cellsynth.data.simulate import simulate_atlas
from cellsynth.data.split import stratified_split
from cellsynth.errors import ConfigError, DataError


def test_heldout_donors_are_test_cells_whole():
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c"], 3000)
    donors = rng.choice([f"d{i:02d}" for i in range(12)], 3000)
    split = stratified_split(labels, (0.7, 0.1, 0.2), seed=3, donors=donors, heldout_donors=4)
    held = sorted(set(donors) - set(donors[split != "test"]))
    assert len(held) == 4  # every cell of 4 donors is a test cell
    others = ~np.isin(donors, held)
    for part, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        for t in ("a", "b", "c"):  # the other donors' cells: stratified as without donors
            got = np.mean(split[others & (labels == t)] == part)
            assert abs(got - share) < 0.02, (part, t, got)
    again = stratified_split(labels, (0.7, 0.1, 0.2), seed=3, donors=donors, heldout_donors=4)
    assert (again == split).all()
    other = stratified_split(labels, (0.7, 0.1, 0.2), seed=4, donors=donors, heldout_donors=4)
    assert sorted(set(donors) - set(donors[other != "test"])) != held  # drawn from the seed
    plain = stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    assert (stratified_split(labels, (0.7, 0.1, 0.2), seed=3, donors=donors) == plain).all()


def test_bad_donor_settings():
    labels, donors = np.array(["a", "b"] * 10), np.array(["x", "y"] * 10)
    with pytest.raises(DataError, match="2 donor"):
        stratified_split(labels, (0.7, 0.1, 0.2), seed=0, donors=donors, heldout_donors=2)
    with pytest.raises(ConfigError, match=r"dataset\.donor_key"):
        config.load(overrides=["split.heldout_donors=3"])
    assert config.load(overrides=["split.heldout_donors=3", "dataset.donor_key='donor'"])


@pytest.mark.slow
def test_run_audits_held_out_donors(tmp_path, capsys):
    """`cellsynth run` with a donor column and held-out donors: the privacy audit scores the
    training donors against the held-out ones (its donor level) and the report shows it."""
    from cellsynth.cli import main
    from test_pipeline import FAST

    data = tmp_path / "donors.h5ad"
    simulate_atlas(2400, 200, 3, n_donors=16, seed=5).write_h5ad(data)
    args = ["run", str(data), "--label-key", "cell_type", "--out", str(tmp_path / "run"),
            "--quiet"]
    for s in [*FAST, "dataset.donor_key='donor'", "split.heldout_donors=6",
              "qc.min_genes_per_cell=20", "qc.min_cells_per_gene=20"]:
        args += ["--set", s]
    assert main(args) == 0
    fid = json.loads((tmp_path / "run" / "metrics" / "fidelity.json").read_text())
    assert fid["genes"]["config"]["repeats"] == 1  # report.gene_repeats in FAST ("auto": more)
    priv = fid["privacy"]
    assert priv["donor_key"] == "donor" and priv["donor_skipped"] is None
    for attack in ("distance", "density", "redraw"):
        a = priv["donor_attacks"][attack]
        assert a["n_nonmembers"] == 6 and a["n_members"] == 10, a
        assert 0.0 <= a["auc"] <= 1.0
    assert priv["attacks"]["distance"]["n_members"] > 100  # the cell level as before
    assert "distance attack (donor level)" in (tmp_path / "run" / "report.html").read_text()
    bad = [a for a in args if a != str(tmp_path / "run")]
    bad[bad.index("--out") + 1:bad.index("--out") + 1] = [str(tmp_path / "bad")]
    bad[bad.index("dataset.donor_key='donor'")] = "dataset.donor_key='patient'"
    assert main(bad) == 2  # a donor column the data lack: an error naming the columns
    assert "donor column 'patient'" in capsys.readouterr().err
    a = simulate_atlas(600, 100, 3, n_donors=4, seed=1)
    a.obs["donor"] = a.obs["donor"].astype(object)
    a.obs.iloc[:5, a.obs.columns.get_loc("donor")] = None
    a.write_h5ad(tmp_path / "gaps.h5ad")
    bad[bad.index(str(data))] = str(tmp_path / "gaps.h5ad")
    bad[bad.index("dataset.donor_key='patient'")] = "dataset.donor_key='donor'"
    assert main(bad) == 2  # cells without a donor: an error, not a donor called "nan"
    assert "5 cell(s) have no donor" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_audits_held_out_donors(tmp_path):
    """`cellsynth benchmark` with held-out donors: the copy control is flagged at donor level
    too, and the page gains the donor-level columns."""
    from cellsynth.cli import main

    data = tmp_path / "donors.h5ad"
    simulate_atlas(1600, 150, 3, n_donors=20, seed=6).write_h5ad(data)
    args = ["benchmark", "--data", str(data), "--models", "copy", "--label-key", "cell_type",
            "--out", str(tmp_path / "bench"), "--quiet"]
    for s in ("dataset.donor_key='donor'", "split.heldout_donors=8", "qc.min_genes_per_cell=20",
              "qc.min_cells_per_gene=20"):
        args += ["--set", s]
    assert main(args) == 0
    details = json.loads((tmp_path / "bench" / "donors" / "benchmark.json").read_text())
    donors = details["models"]["copy"]["privacy"]["donor_attacks"]
    assert all(a["flagged"] and a["n_nonmembers"] == 8 and a["n_members"] == 12
               for a in donors.values()), donors
    page = (tmp_path / "bench" / "RESULTS.md").read_text()
    assert "donor-level AUC (largest)" in page and "| 12 / 8 |" in page
