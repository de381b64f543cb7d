"""A saved PCA and classifier applied to new cells: genes matched by name, or refused."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth.classify.xgb import train_classifier
from cellsynth.config import ClassifierConfig
from cellsynth.errors import DataError
from cellsynth.features.pca import PCAModel


def _pca(n_genes: int = 12, k: int = 3) -> PCAModel:
    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.normal(size=(n_genes, k)))[0].T.astype(np.float32)
    return PCAModel(comps, rng.random(n_genes), None, np.ones(k), np.ones(k) / k,
                    [f"g{i}" for i in range(n_genes)])


def test_an_anndata_is_projected_by_gene_name_and_a_bare_matrix_is_checked(caplog):
    pca = _pca()
    rng = np.random.default_rng(1)
    x = np.log1p(rng.poisson(2.0, (20, 12))).astype(np.float32)
    want = pca.transform(x)
    order = rng.permutation(12)
    shuffled = ad.AnnData(sp.csr_matrix(x[:, order]))
    shuffled.var_names = [pca.genes[i] for i in order]
    extra = ad.concat([shuffled, ad.AnnData(np.ones((20, 1), np.float32),
                                            var={"_": ["x"]}).copy()], axis=1)
    extra.var_names = [*shuffled.var_names, "not_fitted"]
    np.testing.assert_allclose(pca.transform(shuffled), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pca.transform(extra), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="2 of the 12 genes the PCA was fitted on are not"):
        pca.transform(shuffled[:, 2:])
    with pytest.raises(DataError, match="fitted on 12 genes, the data has 11"):
        pca.transform(x[:, 1:])
    with pytest.raises(DataError, match="2-d matrix"):
        pca.transform(x[0])
    counts = shuffled.copy()
    counts.X = sp.csr_matrix(rng.poisson(40.0, (20, 12)).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        pca.transform(counts)
    assert "looks like raw counts" in caplog.text


def test_the_classifier_refuses_inputs_of_other_features():
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 30)
    x = rng.normal(size=(90, 5)).astype(np.float32) + (np.arange(90) // 30)[:, None]
    clf = train_classifier(x, y, x, y, ClassifierConfig(n_estimators=5, n_jobs=1), seed=0)
    assert clf.predict(x[:3]).shape == (3,)
    for bad in (x[:, :3], np.hstack([x, x])[:4], x[0]):
        with pytest.raises(DataError, match="trained on 5 features"):
            clf.predict(bad)
    with pytest.raises(DataError, match="not an AnnData"):
        clf.predict(ad.AnnData(x))


def test_every_class_the_classifier_knows_has_a_row_in_the_scores(tmp_path, caplog):
    import json

    import pandas as pd

    from cellsynth.pipeline.models import score

    y_true = np.array(["a", "a", "b", "b"])
    y_pred = np.array(["a", "b", "b", "b"])
    groups = {"a": "AB", "b": "AB", "rare": "R"}
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        summary = score(y_true, y_pred, groups, tmp_path, "a_real_real", ["a", "b", "rare"])
    fine = pd.read_csv(tmp_path / "a_real_real_fine_per_class.csv")
    assert fine["label"].tolist() == ["a", "b", "rare"]
    assert fine.set_index("label").loc["rare", "support"] == 0
    coarse = pd.read_csv(tmp_path / "a_real_real_coarse_per_class.csv")
    assert coarse["label"].tolist() == ["AB", "R"]
    # the macro average is over the types with cells to score: a, b
    report = json.loads((tmp_path / "a_real_real_fine.json").read_text())
    assert report["macro"]["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert summary["fine"] and "1 type(s) have no cells to score" in caplog.text
    assert "rare" in caplog.text


def test_the_report_says_which_cells_shap_explained():
    from cellsynth.report.html import _explained

    assert _explained({"split": "test"}) == "test cells"
    assert _explained({"split": "training"}).startswith("training cells: the type has no test")
    assert _explained({}) == "cells"  # a run written before the split was recorded


def test_a_classifier_that_learned_nothing_is_said(caplog):
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 40)
    noise = rng.normal(size=(120, 4)).astype(np.float32)  # features unrelated to the labels
    cfg = ClassifierConfig(n_estimators=30, early_stopping_rounds=3, n_jobs=1)
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        train_classifier(noise[:60], y[::2], noise[60:], y[1::2], cfg, seed=0)
    assert "learned next to nothing" in caplog.text
    caplog.clear()
    signal = noise + 3 * (np.arange(120) // 40)[:, None]
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        train_classifier(signal[::2], y[::2], signal[1::2], y[1::2], cfg, seed=0)
    assert "learned next to nothing" not in caplog.text


def test_the_report_shows_the_settings_the_run_used():
    from cellsynth.report.html import _rounds, _used

    assert _used(2000, 409) == "409 (asked 2000; the data allow no more)"
    assert _used(50, 50) == "50" and _used(50, None) == "50"
    assert _rounds({"n_estimators": 500}, {"best_iteration": 41}) == (
        "42 rounds kept (at most 500, early-stopped)")
    assert _rounds({"n_estimators": 500}, {}) == "at most 500 rounds"


def test_a_run_asking_for_a_missing_gpu_stops_before_any_stage(tmp_path, monkeypatch):
    from cellsynth import config
    from cellsynth.classify import xgb as module
    from cellsynth.errors import ConfigError
    from cellsynth.pipeline import run

    monkeypatch.setattr(module, "_has_gpu", lambda: False)
    cfg = config.load(None, ["classifier.device='cuda'"])
    with pytest.raises(ConfigError, match="XGBoost sees no CUDA device"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()
    import cellsynth.pipeline.experiment  # noqa: F401  a submodule import shadows no function
    from cellsynth import pipeline

    assert callable(pipeline.run)


def test_a_runs_classifier_annotates_new_cells_whatever_their_gene_order(tmp_path):
    import cellsynth as cs

    atlas = cs.simulate(600, 150, 3, seed=0)
    settings = ["classifier.n_estimators=20", "classifier.n_jobs=1", "generator.model='nb'",
                "qc.min_genes_per_cell=5",
                "generator.n_per_type_eval=20", "generator.n_per_type_train=40",
                "generator.n_per_type_val=10", "report.umap=false", "report.fidelity=false"]
    run = tmp_path / "run"
    cs.run(atlas, label_key="cell_type", out=run, overrides=settings)
    new = cs.simulate(300, 150, 3, seed=0)  # the same types, other cells
    truth = new.obs["cell_type"].astype(str).to_numpy()
    shuffled = new[:, np.random.default_rng(0).permutation(new.n_vars)].copy()
    table = cs.predict_types(shuffled, run)
    assert list(table.columns[:2]) == ["prediction", "probability"]
    known = np.isin(truth, table.columns[2:]) & ~new.obs["predicted_doublets"].to_numpy(bool)
    assert known.mean() > 0.8  # the simulator's doublets and uninformative labels aside
    predicted = shuffled.obs["cellsynth_prediction"].astype(str).to_numpy()
    import json

    own = json.loads((run / "metrics" / "a_summary.json").read_text())["fine"]["accuracy"]
    assert (predicted == truth)[known].mean() > own - 0.1  # as on the run's own test cells
    assert np.allclose(table.iloc[:, 2:].sum(axis=1), 1, atol=1e-4)
    again = cs.predict_types(new, run, key_added="again")  # the genes in the run's order
    assert (again["prediction"] == table["prediction"]).all()
    assert "again_probability" in new.obs
    with pytest.raises(DataError, match="not a DataFrame"):
        cs.predict_types(new.to_df(), run)
    with pytest.raises(DataError, match="classifier stages have finished"):
        cs.predict_types(new, tmp_path)
    with pytest.raises(DataError, match="genes the PCA was fitted on are not"):
        cs.predict_types(new[:, :100].copy(), run)


def test_evaluate_says_when_the_real_cells_are_the_generators_training_cells(tmp_path, caplog):
    from cellsynth.data.simulate import simulate_atlas
    from cellsynth.evaluation.overlap import warn_trained_on
    from cellsynth.pipeline.fit import fit_model
    from cellsynth.pipeline.generate import generate_to_file

    data, other = tmp_path / "data.h5ad", tmp_path / "test.h5ad"
    simulate_atlas(n_cells=300, n_genes=80, n_types=3, label_key="cell_type").write_h5ad(data)
    simulate_atlas(n_cells=200, n_genes=80, n_types=3, label_key="cell_type",
                   seed=1).write_h5ad(other)
    from cellsynth import config

    fit_model(config.load(None, []), data, "cell_type", tmp_path / "m", model="nb")
    generate_to_file(tmp_path / "m", tmp_path / "syn.h5ad", n_per_type=20)
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert warn_trained_on(data, tmp_path / "syn.h5ad")
    assert "scored against the cells the generator trained on" in caplog.text
    assert not warn_trained_on(other, tmp_path / "syn.h5ad")
    assert not warn_trained_on(data, data)  # no provenance: silent
