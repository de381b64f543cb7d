"""Faults of the cell-type classifier found in session 48's sweep (each test fails without its
fix): ``cs.predict_types`` read values that were neither counts nor log-normalised at the run's
scale as if they were."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellsynth as cs
from cellsynth.classify import Classifier, train_classifier
from cellsynth.config import ClassifierConfig, FeaturesConfig
from cellsynth.data.qc import normalise_log1p
from cellsynth.errors import ConfigError, DataError, ModelFileError
from cellsynth.features.pca import fit_pca
from cellsynth.metrics.classification import classification_report

FAST = {"n_estimators": 5, "max_depth": 2}


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    return cs.simulate(240, 60, 3, seed=0)


def _make_run(run, cells: ad.AnnData, y: np.ndarray):
    """A run directory's files predict_types reads: the PCA, the classifier, the settings."""
    x = normalise_log1p(sp.csr_matrix(cells.X, dtype=np.float32), 1e4)
    genes = list(cells.var_names[:40])  # the run's features: the genes QC kept
    pca = fit_pca(x[:, :40], y, genes, FeaturesConfig(n_components=5), seed=0)
    z = pca.transform(x[:, :40])
    train_classifier(z, y, z, y, ClassifierConfig(**FAST), seed=0).save(run / "classifier")
    pca.save(run / "features")
    (run / "manifest.json").write_text(json.dumps({"config": {"qc": {"target_sum": 1e4}}}))
    (run / "data").mkdir()
    (run / "data" / "qc.json").write_text(json.dumps({"has_counts": True}))
    return run


@pytest.fixture(scope="module")
def run(cells, tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("run"), cells, cells.obs["cell_type"].astype(str)
                     .to_numpy())


def _with_x(cells: ad.AnnData, x) -> ad.AnnData:
    out = cells.copy()
    out.X = sp.csr_matrix(x, dtype=np.float32)
    return out


def test_predict_types_refuses_values_not_at_the_runs_scale(cells, run):
    """Normalised but not logged values, log1p of raw counts, and values normalised to another
    total (counts per million, scanpy's median total) were read as the run's log-normalised
    values: every cell got a confident type, most of them wrong, and nothing was said."""
    counts = sp.csr_matrix(cells.X, dtype=np.float32)
    expected = cs.predict_types(cells.copy(), run)["prediction"]
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scaled = sp.diags(1e4 / totals) @ counts
    assert (cs.predict_types(_with_x(cells, scaled.log1p()), run)["prediction"] == expected).all()
    kept = _with_x(cells, scaled.log1p())[:, :40].copy()  # the run's genes alone: fine
    assert (cs.predict_types(kept, run)["prediction"] == expected).all()
    with pytest.raises(DataError, match=r"not log-transformed.*sc\.pp\.log1p"):
        cs.predict_types(_with_x(cells, scaled), run)
    with pytest.raises(DataError, match=r"log1p of raw counts, not log-normalised.*"
                                        r"target_sum=10000"):
        cs.predict_types(_with_x(cells, counts.log1p()), run)
    for total in (1e6, float(np.median(totals))):
        other = sp.diags(total / totals) @ counts
        with pytest.raises(DataError, match=r"log-normalised to about .* counts a cell.*the "
                                            r"run's to 10000 \(its qc.target_sum\)"):
            cs.predict_types(_with_x(cells, other.log1p()), run)


def _labelled(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    y = np.array(["a", "b", "c"] * (n // 3))
    x = np.random.default_rng(seed).normal(size=(n, 4)) + (y == "b")[:, None] * 3
    return x, y


@pytest.mark.parametrize(("setting", "match"), [
    ({"n_estimators": 0}, r"classifier.n_estimators must be at least 1, got 0; give another "
                          r"n_estimators in the ClassifierConfig"),  # AttributeError
    ({"max_depth": -1}, r"classifier.max_depth must be in \[1, 2\*\*31\)"),  # XGBoostError
    ({"learning_rate": 0}, r"classifier.learning_rate must be in \(0, 1\]"),  # trained nothing
    ({"learning_rate": 1e9}, r"classifier.learning_rate must be in \(0, 1\]"),
    ({"subsample": 0}, r"classifier.subsample must be in \(0, 1\]"),
    ({"early_stopping_rounds": 0}, r"classifier.early_stopping_rounds must be at least 1"),
    ({"max_cells_per_class": "lots"}, r"max_cells_per_class must be int or \"auto\""),
])
def test_train_classifier_checks_a_config_built_in_python(setting, match):
    """A ClassifierConfig built in Python is not checked when built (a config file's or
    RunConfig's is): train_classifier passed it to XGBoost as it was, which failed with a
    traceback or trained to no purpose."""
    x, y = _labelled()
    with pytest.raises(ConfigError, match=match):
        train_classifier(x, y, x, y, ClassifierConfig(**{**FAST, **setting}), seed=0)


def test_train_classifier_names_what_it_takes_as_settings():
    x, y = _labelled()
    with pytest.raises(ConfigError, match=r"cfg takes a ClassifierConfig"):
        train_classifier(x, y, x, y, None, seed=0)
    with pytest.raises(ConfigError, match=r"did you mean 'classifier.n_estimators'"):
        train_classifier(x, y, x, y, {"n_estimator": 3}, seed=0)
    assert train_classifier(x, y, x, y, dict(FAST), seed=0).labels == ["a", "b", "c"]


def test_infinite_features_are_one_line_in_training_and_prediction():
    """An infinite feature ended in XGBoost's C++ check and stack trace, in training (in
    memory, sparse, or read in batches) and in prediction; a NaN stays a missing value."""
    x, y = _labelled()
    bad = x.copy()
    bad[7, 2] = np.inf
    cfg = ClassifierConfig(**FAST)
    for given, what in [((bad, y, x, y), "the training features"),
                        ((x, y, bad, y), "the validation features"),
                        ((sp.csr_matrix(bad), y, x, y), "the training features")]:
        with pytest.raises(DataError, match=rf"{what} hold infinite values \(1 of 60 cells, "
                                            r"e\.g\. row 7\)"):
            train_classifier(*given, cfg, seed=0)
    with pytest.raises(DataError, match=r"the features of rows 0-9 hold infinite values.*row 7"):
        train_classifier(bad, y, x, y, ClassifierConfig(**FAST, chunk_size=10), seed=0)
    missing = x.copy()
    missing[7, 2] = np.nan
    clf = train_classifier(missing, y, x, y, cfg, seed=0)
    with pytest.raises(DataError, match=r"the features to classify hold infinite values.*row 7"):
        clf.predict(bad)
    assert len(clf.predict(missing)) == 60


def test_classification_report_takes_each_class_of_labels_once(caplog):
    """A class named twice in ``labels`` (a column of labels given where its classes go) gave
    a confusion matrix with an empty row and a macro average over the class twice: silently
    wrong scores. Classes none of which is a true label were scikit-learn's ValueError."""
    y_true, y_pred = ["a", "b", "c", "a"], ["a", "a", "a", "a"]
    once = classification_report(y_true, y_pred, labels=["a", "b", "c"])
    twice = classification_report(y_true, y_pred, labels=["a", "a", "b", "c"])
    assert twice["confusion"] == once["confusion"] == [[2, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert twice["macro"] == once["macro"] and twice["labels"] == ["a", "b", "c"]
    assert "labels names 1 class(es) more than once ('a')" in caplog.text
    with pytest.raises(DataError, match=r"none of the 2 classes in labels \('x', 'y'\) is a "
                                        r"true label of a cell \(those are 'a', 'b', 'c'\)"):
        classification_report(y_true, y_pred, labels=["x", "y"])
    with pytest.raises(DataError, match=r"labels takes a list of classes, not one string"):
        classification_report(y_true, y_pred, labels="abc")


@pytest.mark.parametrize("missing", [None, np.nan, "", "nan"])
def test_a_missing_label_is_refused_not_learned_or_scored_as_a_class(missing):
    """A missing label (None, NaN, or one written as text) became a class named "None" or
    "nan": train_classifier learned it as a cell type and classification_report scored it."""
    x, y = _labelled()
    y = y.astype(object)
    y[4] = missing
    with pytest.raises(DataError, match=r"y_train: 1 missing label\(s\) of 60 \(None, NaN "
                                        r"or blank; e\.g\. cell 4.*leave those cells out"):
        train_classifier(x, y, x, _labelled()[1], ClassifierConfig(**FAST), seed=0)
    with pytest.raises(DataError, match=r"y_true: 1 missing label\(s\) of 60"):
        classification_report(y, _labelled()[1])


def test_numeric_labels_are_one_class_whether_stored_as_integers_or_floats(caplog):
    """Labels 1.0 and 1 (a float column beside an integer one) were the classes "1.0" and "1":
    validation cells were all dropped as types absent from training and every prediction was
    scored wrong (macro F1 0)."""
    x, _ = _labelled()
    y = np.tile([1.0, 2.0, 3.0], 20)
    clf = train_classifier(x, y, x, y.astype(int), ClassifierConfig(**FAST), seed=0)
    assert clf.labels == ["1", "2", "3"] and "absent from training" not in caplog.text
    report = classification_report(np.array([1.0, 2.0, 1.0]), np.array([1, 2, 1]))
    assert report["labels"] == ["1", "2"] and report["macro"]["f1"] == 1.0
    assert classification_report([1, 2], [1, 2], labels=[1.0, 2.0])["accuracy"] == 1.0
    # names stored as bytes (h5py's strings) stay the names astype(str) gave
    assert classification_report(np.array([b"a", b"b"]), ["a", "b"])["accuracy"] == 1.0


@pytest.mark.parametrize(("file", "content", "match"), [
    ("meta.json", '{"best_iteration": "abc"}', r"meta.json: best_iteration 'abc' is not one of "
                                               r"the 5 saved rounds \(0 to 4\)"),  # ValueError
    ("meta.json", '{"best_iteration": null}', r"best_iteration None is not one"),  # TypeError
    ("meta.json", "[1, 2]", r"meta.json must be a JSON object"),  # AttributeError
    ("labels.json", '["a", "a", "c"]', r"labels.json names 'a' more than once"),  # loaded
    ("labels.json", '["a", " ", "c"]', r"labels.json holds a blank label"),  # loaded
    ("model.ubj", "", r"cannot read .*model.ubj \(.*Invalid model format.*\): it is not an "
                      r"XGBoost model.*--force classifier"),  # a C++ stack trace in it
])
def test_a_damaged_classifier_is_one_line_when_loaded(tmp_path, file, content, match):
    """Classifier.load (a run's resume, cs.predict_types) read meta.json unchecked, a traceback
    for a best_iteration that is no round and for a meta.json that is no object; took a label
    list naming one type twice (predicting it for two output columns) or a blank one; and put
    XGBoost's C++ stack trace into its one-line error."""
    x, y = _labelled()
    train_classifier(x, y, x, y, ClassifierConfig(**FAST), seed=0).save(tmp_path)
    (tmp_path / file).write_text(content)
    with pytest.raises(ModelFileError, match=match) as err:
        Classifier.load(tmp_path)
    assert "\n" not in str(err.value) and "Stack trace" not in str(err.value)


@pytest.mark.parametrize(("setting", "match"), [
    ({"reg_lambda": 1e300}, r"classifier.reg_lambda must be in \[0, 1e\+30\], got 1e\+300"),
    ({"reg_alpha": 1e39}, r"classifier.reg_alpha must be in \[0, 1e\+30\]"),
    ({"max_depth": 2**31}, r"classifier.max_depth must be in \[1, 2\*\*31\)"),
    ({"n_jobs": 2**40}, r"classifier.n_jobs must be in \[0, 2\*\*31\)"),
])
def test_settings_xgboost_cannot_read_are_refused_before_any_stage(setting, match):
    """XGBoost reads its parameters as 32-bit numbers: a reg_lambda of 1e300 or a max_depth of
    2**31 passed the config's ranges, and the run stopped at the classifier stage, after the
    data and features stages, with XGBoost's traceback."""
    from cellsynth.config import RunConfig

    with pytest.raises(ConfigError, match=match):
        RunConfig(classifier=setting)
    x, y = _labelled()
    with pytest.raises(ConfigError, match=r"classifier.learning_rate = 1e-300 is below what "
                                          r"XGBoost reads \(a 32-bit float"):
        train_classifier(x, y, x, y, ClassifierConfig(**FAST, learning_rate=1e-300), seed=0)


def test_predict_types_says_which_cells_have_nothing_to_read(cells, run, caplog):
    """Cells with no count in the run's genes were each given a confident type, the one the
    classifier guesses for an empty cell, and nothing was said."""
    counts = sp.csr_matrix(cells.X, dtype=np.float32).tolil()
    counts[[3, 8], :] = 0
    empty = _with_x(cells, counts.tocsr())
    cs.predict_types(empty, run)
    assert (f"2 of 240 cells have no expression in the run's 40 genes (e.g. "
            f"'{cells.obs_names[3]}', '{cells.obs_names[8]}')") in caplog.text
    caplog.clear()
    cs.predict_types(cells.copy(), run)
    assert "no expression" not in caplog.text


def test_a_classifier_is_saved_and_loaded_where_its_path_says(tmp_path, monkeypatch):
    """Classifier.save wrote '~/clf' into a folder named '~' in the current one, and load looked
    for it there; a file where the directory goes, or no path at all, were tracebacks
    (FileExistsError, TypeError)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    x, y = _labelled()
    clf = train_classifier(x, y, x, y, ClassifierConfig(**FAST), seed=0)
    clf.save("~/clf")
    assert (tmp_path / "home" / "clf" / "model.ubj").is_file() and not (tmp_path / "~").exists()
    assert Classifier.load("~/clf").labels == clf.labels
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ModelFileError, match=r"the classifier directory afile is an existing "
                                             r"file, not a directory"):
        clf.save("afile")
    with pytest.raises(ConfigError, match=r"the classifier directory takes a path"):
        Classifier.load(None)


def test_a_type_named_like_a_prediction_column_keeps_its_own(cells, tmp_path):
    """A cell type named 'probability' or 'prediction' ended predict_types in pandas'
    ValueError ('cannot insert probability, already exists'): its probability column had the
    name of the column of each cell's best probability."""
    y = cells.obs["cell_type"].astype(str).to_numpy()
    kinds = sorted(set(y))
    y = np.select([y == kinds[0], y == kinds[1]], ["probability", "prediction"], y)
    out = cs.predict_types(cells.copy(), _make_run(tmp_path, cells, y))
    assert list(out.columns[:2]) == ["prediction", "probability"]
    assert {"probability (type)", "prediction (type)"} <= set(out.columns)
    chosen = out["prediction"].astype(str).map(lambda t: f"{t} (type)" if t in
                                               ("prediction", "probability") else t)
    assert np.allclose(out["probability"], [out.at[c, t] for c, t in chosen.items()])


def test_a_report_is_written_where_its_directory_says(tmp_path, monkeypatch):
    """write_report (cs.metrics) wrote '~/metrics' into a folder named '~', and a file where
    its directory goes was a FileExistsError traceback."""
    from cellsynth.metrics.classification import write_report

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    report = classification_report(["a", "b"], ["a", "a"])
    write_report(report, "~/metrics", "test")
    assert (tmp_path / "home" / "metrics" / "test_per_class.csv").is_file()
    assert not (tmp_path / "~").exists()
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(DataError, match=r"the report's directory afile is an existing file"):
        write_report(report, "afile", "test")


@pytest.mark.parametrize(("groups", "match"), [
    (None, r"groups takes a mapping of fine cell type to coarse group .* not NoneType"),
    ([("a", "g")], r"groups takes a mapping .* not list"),  # AttributeError
    ({"a": None}, r"groups maps 'a' to no group \(None\)"),  # "y_true has a missing label"
    ({"x": "g"}, r"groups names none of the labels' types: its fine types are 'x', the "
                 r"labels' 'a', 'b'"),  # a coarse report equal to the fine one, unsaid
    ({"g": "a"}, r"its groups are the labels' types: fine type first"),
])
def test_coarse_report_refuses_a_mapping_that_is_none(groups, match):
    """coarse_report (cs.metrics) with groups that are no mapping was an AttributeError; a type
    mapped to None was reported as a cell without a label; a mapping that names none of the
    types (another data set's, or its columns swapped) gave a coarse report equal to the fine
    one, as if it had merged types."""
    from cellsynth.metrics.classification import coarse_report

    with pytest.raises(DataError, match=match):
        coarse_report(["a", "b"], ["a", "a"], groups)
    assert coarse_report(["a", "b"], ["a", "a"], {})["labels"] == ["a", "b"]
    assert coarse_report(["a", "b"], ["a", "a"], {"a": "g", "b": "g"})["accuracy"] == 1.0


def test_predictions_in_obs_are_categorical_over_every_type(cells, run):
    """The docstring promised obs[key_added] categorical over the classifier's types; it was
    an object column holding only the types predicted (a batch's colours and categories
    differed from the next batch's)."""
    one = cells[:1].copy()
    out = cs.predict_types(one, run)
    column = one.obs["cellsynth_prediction"]
    assert isinstance(column.dtype, pd.CategoricalDtype)
    assert list(column.cat.categories) == list(out["prediction"].cat.categories)
    assert len(column.cat.categories) == cells.obs["cell_type"].nunique()
    assert column.iloc[0] == out["prediction"].iloc[0]


@pytest.mark.parametrize("twin", ["a ", " a", "a\u00a0", "a\t"])
def test_names_that_differ_only_by_spaces_are_one_type_split_in_two(twin):
    """Labels 'a' and 'a ' given to train_classifier (or classification_report) were learned and
    scored as two types (a data set's label column is refused so; labels given in Python were
    not)."""
    x, y = _labelled()
    y = y.astype(object)
    y[::6] = twin
    with pytest.raises(DataError, match=r"y_train: names that differ only by spaces or "
                                        r"Unicode form \(.*'a'.*\): one type split in two"):
        train_classifier(x, y, x, _labelled()[1], ClassifierConfig(**FAST), seed=0)
    with pytest.raises(DataError, match=r"y_true: names that differ only by spaces"):
        classification_report(y, _labelled()[1])
    composed, decomposed = "na\u00efve", "nai\u0308ve"
    with pytest.raises(DataError, match=r"differ only by spaces or Unicode form"):
        classification_report([composed, decomposed], [composed, composed])


def test_a_missing_synthetic_classifier_names_the_stage_that_writes_it(cells, run):
    """predict_types(classifier='classifier_synthetic') on a run whose experiments had not run
    said to finish the classifier stage, which was done; experiment (c)'s classifier is the
    experiments stage's."""
    with pytest.raises(DataError, match=r"classifier_synthetic/model.ubj is missing: give a run "
                                        r"directory whose features and experiments stages"):
        cs.predict_types(cells.copy(), run, classifier="classifier_synthetic")


@pytest.mark.parametrize(("given", "match"), [
    (np.zeros((60, 0)), r"X_train must be a cells x features matrix with at least one "
                        r"feature, got shape \(60, 0\)"),  # XGBoost's C++ stack trace
    (np.zeros(60), r"got shape \(60,\): one cell is x.reshape\(1, -1\)"),  # unpacking shape
    (np.zeros((60, 2, 2)), r"got shape \(60, 2, 2\)"),  # unpacking shape
    (np.full((60, 4), "a"), r"X_train must be a cells x features matrix of numbers"),
])
def test_training_features_that_are_no_matrix_are_one_line(given, match):
    """Features with no column, of one or three dimensions, or of text ended train_classifier
    in XGBoost's stack trace or a ValueError from unpacking their shape or converting them."""
    _, y = _labelled()
    x = _labelled()[0]
    with pytest.raises(DataError, match=match):
        train_classifier(given, y, x, y, ClassifierConfig(**FAST), seed=0)
    assert train_classifier(x.tolist(), y, x, y, ClassifierConfig(**FAST), seed=0).labels


def test_info_of_a_classifier_with_a_damaged_type_list_says_so(tmp_path):
    """`cellsynth info` on a classifier directory whose labels.json is an object, or names a
    type twice, showed it as a sound classifier (its loader refuses both)."""
    import json

    from cellsynth.errors import CellsynthError
    from cellsynth.info import describe

    (tmp_path / "model.ubj").write_bytes(b"{}")
    for labels in ({"a": 1}, ["B", "B"], ["B", 3]):
        (tmp_path / "labels.json").write_text(json.dumps(labels))
        with pytest.raises(CellsynthError, match="is not a list of distinct type names"):
            describe(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(["B", "T"]))
    assert describe(tmp_path)["n_classes"] == 2
