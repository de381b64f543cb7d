"""SHAP explanations: additivity, the informative feature, gene mapping, errors, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb

from cellsynth.classify import train_classifier
from cellsynth.config import ClassifierConfig
from cellsynth.errors import DataError
from cellsynth.explain import explain_type, plot_shap, shap_contributions, write_shap
from cellsynth.explain.shap import class_booster

N_FEATURES = 10
INFORMATIVE = 3  # "target" differs from the others only in this feature (PC4)


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.array(["other_a", "other_b", "target"])[rng.integers(0, 3, size=n)]
    X = rng.normal(size=(n, N_FEATURES))
    X[y == "target", INFORMATIVE] += 5.0
    X[y == "other_b", 7] += 5.0  # makes the two other classes separable too
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def clf():
    X, y = make_data(400, 0)
    cfg = ClassifierConfig(n_estimators=30, max_depth=3, learning_rate=0.3, device="cpu", n_jobs=2)
    return train_classifier(X[:300], y[:300], X[300:], y[300:], cfg, seed=0)


@pytest.fixture(scope="module")
def target_cells():
    X, y = make_data(300, 1)
    return X[y == "target"]


def test_contributions_sum_to_margin(clf, target_cells):
    X = target_cells[:5]
    contribs = shap_contributions(clf, X, "target")
    assert contribs.shape == (5, N_FEATURES + 1)
    margin = clf.booster.predict(
        xgb.DMatrix(X), output_margin=True, iteration_range=(0, clf.best_iteration + 1)
    )[:, clf.labels.index("target")]
    np.testing.assert_allclose(contribs.sum(axis=1), margin, rtol=1e-4, atol=1e-4)


def test_one_class_trees_give_every_class_contributions_exactly(clf, target_cells, monkeypatch):
    X = target_cells[:20]
    n_rounds = clf.best_iteration + 1
    full = clf.booster.predict(xgb.DMatrix(X), pred_contribs=True,
                               iteration_range=(0, n_rounds)).reshape(len(X), 3, -1)  # fmt: skip
    for k, label in enumerate(clf.labels):
        one = class_booster(clf.booster, k, n_rounds)
        assert one is not None and one.num_boosted_rounds() == n_rounds
        np.testing.assert_allclose(shap_contributions(clf, X, label), full[:, k], atol=1e-6)
    # a booster it cannot cut (here: told so) is used whole, with the same answer
    monkeypatch.setattr("cellsynth.explain.shap.class_booster", lambda *a: None)
    np.testing.assert_allclose(shap_contributions(clf, X, "target"),
                               full[:, clf.labels.index("target")], atol=1e-6)  # fmt: skip


def test_informative_feature_ranks_first(clf, target_cells):
    genes = [f"g{i}" for i in range(N_FEATURES)]
    res = explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, n_top=5)
    assert res.pc_importance["component"].iloc[0] == f"PC{INFORMATIVE + 1}"
    assert res.pc_importance["mean_shap"].iloc[0] > 0  # pushes towards "target"
    assert list(res.pc_importance.columns) == ["component", "mean_abs_shap", "mean_shap"]
    assert res.pc_importance["mean_abs_shap"].is_monotonic_decreasing
    assert res.gene_importance["gene"].iloc[0] == f"g{INFORMATIVE}"
    assert len(res.gene_importance) == 5
    assert res.n_cells == len(target_cells)


def test_identity_components_equal_pc_ranking(clf, target_cells):
    genes = [f"g{i}" for i in range(N_FEATURES)]
    res = explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, n_top=N_FEATURES)
    pcs = res.pc_importance.set_index("component")
    by_gene = res.gene_importance.set_index("gene")
    for i in range(N_FEATURES):
        assert by_gene.loc[f"g{i}", "score"] == pytest.approx(pcs.loc[f"PC{i + 1}", "mean_shap"])
        assert by_gene.loc[f"g{i}", "magnitude"] == pytest.approx(
            pcs.loc[f"PC{i + 1}", "mean_abs_shap"]
        )
    pc_order = pcs["mean_shap"].abs().sort_values(ascending=False, kind="stable").index
    assert [f"g{int(c[2:]) - 1}" for c in pc_order] == res.gene_importance["gene"].tolist()


def test_gene_mapping_through_loadings(clf, target_cells):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(N_FEATURES, 25))
    genes = [f"gene{j}" for j in range(25)]
    res = explain_type(clf, target_cells, "target", W, genes, n_top=25)
    mean_shap = (
        res.pc_importance.set_index("component")
        .loc[[f"PC{i + 1}" for i in range(N_FEATURES)], "mean_shap"]
        .to_numpy()
    )
    expected = mean_shap @ W
    got = res.gene_importance.set_index("gene").loc[genes, "score"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert res.gene_importance["abs_score"].is_monotonic_decreasing


def test_max_cells_subsample(clf, target_cells):
    genes = [f"g{i}" for i in range(N_FEATURES)]
    a = explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, max_cells=10, seed=1)
    b = explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, max_cells=10, seed=1)
    assert a.n_cells == 10
    assert a.pc_importance.equals(b.pc_importance)


def test_unknown_type_and_bad_shapes(clf, target_cells):
    genes = [f"g{i}" for i in range(N_FEATURES)]
    with pytest.raises(DataError, match="other_a, other_b, target"):
        explain_type(clf, target_cells, "nope", np.eye(N_FEATURES), genes)
    with pytest.raises(DataError, match="components"):
        explain_type(clf, target_cells, "target", np.eye(N_FEATURES + 1), [*genes, "x"])
    with pytest.raises(DataError, match="gene names"):
        explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes[:-1])


def test_plot_and_write(clf, target_cells, tmp_path):
    genes = [f"g{i}" for i in range(N_FEATURES)]
    res = explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, n_top=5)
    plot_shap(res, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    res.cell_type = "CD4+ T/naive"  # an awkward name for the file
    write_shap(res, tmp_path / "out")
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"shap_pcs.csv", "shap_genes.csv", "shap.json"} <= names
    assert "shap_CD4_T_naive.png" in names
    summary = json.loads((out / "shap.json").read_text())
    assert summary["cell_type"] == "CD4+ T/naive" and len(summary["top_genes"]) == 5
    assert summary["split"] == "test"  # which cells were explained is recorded
    write_shap(res, tmp_path / "out", split="training")
    assert json.loads((out / "shap.json").read_text())["split"] == "training"


def test_a_long_type_name_gives_a_file_name_the_system_takes(clf, target_cells, tmp_path):
    """A free-text annotation of 400 characters: the plot's file name is cut, with a hash that
    keeps two such names that start alike apart (it crashed the run's last stage)."""
    genes = [f"g{i}" for i in range(N_FEATURES)]
    res = explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, n_top=5)
    names = []
    for end in ("one", "two"):
        res.cell_type = "CD4 T cells " + "very long descriptive annotation " * 12 + end
        out = tmp_path / end
        write_shap(res, out)
        (png,) = out.glob("shap_*.png")
        assert len(png.name) <= 100 and png.name.startswith("shap_CD4_T_cells_very_long")
        names.append(png.name)
    assert names[0] != names[1]


def test_explain_refuses_a_count_of_no_cells_and_a_single_flat_row(clf, target_cells):
    genes = [f"g{i}" for i in range(N_FEATURES)]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="max_cells must be a whole number"):
            explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, max_cells=bad)
    with pytest.raises(DataError, match="n_top must be"):
        explain_type(clf, target_cells, "target", np.eye(N_FEATURES), genes, n_top=0)
    with pytest.raises(DataError, match=r"reshape\(1, -1\)"):
        explain_type(clf, np.asarray(target_cells)[0], "target", np.eye(N_FEATURES), genes)
    one = explain_type(clf, np.asarray(target_cells)[:1], "target", np.eye(N_FEATURES), genes)
    assert one.n_cells == 1 and np.isfinite(one.pc_importance["mean_abs_shap"]).all()
