"""`cellsynth benchmark --holdout`: a combination never seen in training, generated and scored
beside its floor and pooling the type's other levels (issue 18, item 5)."""

from __future__ import annotations

import json

import pytest

from cellsynth import config
from cellsynth.benchmark import prepare
from cellsynth.errors import DataError
from cellsynth.holdout import benchmark_holdout, holdout_section, parse_holdout
from test_covariates import _design_atlas

SETS = ["qc.min_genes_per_cell=5", "qc.min_cells_per_type=10", "dataset.label_key='cell_type'",
        "cvae.n_hidden=[64]", "cvae.n_latent=8", "cvae.max_epochs=40", "cvae.batch_size=128",
        "cvae.select='elbo'", "cvae.min_steps=0", "cvae.device='cpu'"]


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    path = tmp_path_factory.mktemp("holdout") / "design.h5ad"
    _design_atlas().write_h5ad(path)
    cfg = config.load(None, [*SETS, f"dataset.path='{path}'"])
    return prepare(path, cfg), cfg


def test_parse_and_bad_holdouts(design, tmp_path):
    assert parse_holdout("cell_type=CD14+ Monocytes,condition=stim") == {
        "cell_type": "CD14+ Monocytes", "condition": "stim"}
    for bad in ("cell_type", "cell_type=a,cell_type=b", "=x"):
        with pytest.raises(DataError):
            parse_holdout(bad)
    pre, cfg = design
    for spec, match in (({"cell_type": "type_00"}, "at least one covariate"),
                        ({"cell_type": "type_00", "tissue": "x"}, "no column 'tissue'"),
                        ({"celltype": "type_00", "condition": "stim"}, "no column 'celltype'"),
                        ({"cell_type": "type_00", "condition": "IFN"}, "has no level 'IFN'")):
        with pytest.raises(DataError, match=match):
            benchmark_holdout(pre, ["nb"], cfg, tmp_path, spec)


@pytest.mark.slow
def test_held_out_combination_beats_pooling(design, tmp_path):
    """The cvae conditioned on condition generates type_00 x stim, which no training cell had,
    closer to its real cells than the type's ctrl cells are; nb, fitted per combination, falls
    back to the type for the unseen one."""
    pre, cfg = design
    spec = {"cell_type": "type_00", "condition": "stim"}
    result = benchmark_holdout(pre, ["cvae", "nb"], cfg, tmp_path, spec)
    rows = result["rows"]
    assert result["conditioned"] == {"cvae": True, "nb": "fallback"}
    pool, floor = rows["pooling (other levels)"]["c2st_auc"], rows["real vs real"]["c2st_auc"]
    assert floor < 0.65 and pool > 0.8  # the stim program sets the combination apart
    assert rows["cvae"]["c2st_auc"] < pool and rows["cvae"]["gene_auc"] < rows["nb"]["gene_auc"]
    assert json.loads((tmp_path / "holdout.json").read_text())["n_held_out"] == result["n_held_out"]
    text = "\n".join(holdout_section(result))
    assert "### Held-out combination: cell_type=type_00, condition=stim" in text
    assert "- cvae generated the combination" in text and "closer than pooling" in text
    assert "- nb fell back to the type's fit" in text


def test_saturated_aucs_are_ranked_by_mmd():
    """Two AUCs of 0.999 and 1.000 both mean "told apart every time": the page does not call
    one closer for it, the MMD decides; below saturation the AUC decides. cvae is also set
    beside scvi where scvi ran."""
    def row(auc, mmd):
        return {"c2st_auc": auc, "mmd": mmd, "knn_precision": 0.0, "knn_recall": 0.0,
                "gene_mean_spearman": 0.5, "gene_auc": 1.0, "n_cells": 100}

    result = {"holdout": {"cell_type": "a", "condition": "stim"}, "n_held_out": 100,
              "rows": {"real vs real": row(0.45, 0.0), "pooling (other levels)": row(1.0, 0.68),
                       "cvae": row(1.0, 0.52), "nb": row(0.999, 0.84), "scvi": row(0.983, 0.30)},
              "conditioned": {"cvae": True, "nb": "fallback", "scvi": True}}
    lines = {ln.split(" ")[1]: ln for ln in holdout_section(result) if ln.startswith("- ")}
    assert "closer than pooling by MMD (0.5200 against 0.6800" in lines["cvae"]
    assert "not closer than scvi (0.983)" in lines["cvae"]
    assert "not closer than pooling by MMD (0.8400 against 0.6800" in lines["nb"]
    assert "closer than pooling (1.000)" in lines["scvi"] and "than scvi" not in lines["scvi"]


def test_benchmark_checks_every_input_before_any_work(tmp_path, monkeypatch):
    """A missing second dataset or a --holdout level that a dataset lacks fails at once, not
    after the first dataset's generators were fitted."""
    from cellsynth import evaluation

    path = tmp_path / "design.h5ad"
    _design_atlas().write_h5ad(path)
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("fitted before the inputs were checked"))
    with pytest.raises(DataError, match=r"nothere\.h5ad does not exist"):
        evaluation.run_benchmark([str(path), str(tmp_path / "nothere.h5ad")], ["nb"],
                                 tmp_path / "out", overrides=SETS)
    with pytest.raises(DataError, match=r"design \(.*design.h5ad\): --holdout: condition has no "
                                        r"level 'stimulated'"):
        evaluation.run_benchmark([str(path)], ["nb"], tmp_path / "out", overrides=SETS,
                                 holdout={"cell_type": "type_00", "condition": "stimulated"})
