"""Classification reports: perfect scores, hand-computed values, coarse groups, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellsynth.errors import DataError
from cellsynth.metrics import (
    classification_report,
    coarse_report,
    summary_row,
    to_coarse,
    write_report,
)


def test_perfect_predictions():
    y = np.array(["a", "b", "c", "a", "b"])
    rep = classification_report(y, y)
    assert rep["accuracy"] == 1.0 and rep["n"] == 5
    for avg in ("macro", "micro", "weighted"):
        assert rep[avg] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    for values in rep["per_class"].values():
        assert values["precision"] == values["recall"] == values["f1"] == 1.0
    assert rep["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 1]]
    row = summary_row(rep)
    assert all(v == 1.0 for k, v in row.items() if k not in ("n", "min_class_n", "f1_macro_interval"))
    assert row["min_class_n"] == 1 and row["f1_macro_interval"] == [1.0, 1.0]


def test_hand_computed_example():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    rep = classification_report(y_true, y_pred)
    assert rep["labels"] == ["a", "b", "c"]
    # a: tp 2, fp 0, fn 1 -> p 1, r 2/3; b: tp 1, fp 1, fn 1 -> p 1/2, r 1/2; c: tp 1, fp 1 -> p 1/2, r 1
    pc = rep["per_class"]
    assert pc["a"]["precision"] == pytest.approx(1.0)
    assert pc["a"]["recall"] == pytest.approx(2 / 3)
    assert pc["a"]["f1"] == pytest.approx(0.8)
    assert pc["b"]["f1"] == pytest.approx(0.5)
    assert pc["c"]["precision"] == pytest.approx(0.5) and pc["c"]["recall"] == 1.0
    assert pc["c"]["f1"] == pytest.approx(2 / 3)
    assert [pc[k]["support"] for k in "abc"] == [3, 2, 1]
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["macro"]["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert rep["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert rep["micro"]["f1"] == pytest.approx(4 / 6)
    assert rep["weighted"]["recall"] == pytest.approx(4 / 6)
    assert rep["weighted"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert rep["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    row = summary_row(rep)
    assert set(row) == {
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_micro",
        "recall_micro",
        "f1_micro",
        "accuracy",
        "n",
        "f1_macro_interval",
        "min_class_n",
    }
    assert row["n"] == 6 and row["min_class_n"] == 1


def test_unpredicted_class_and_explicit_labels():
    rep = classification_report(["a", "b"], ["a", "a"], labels=["b", "a", "z"])
    assert rep["labels"] == ["b", "a", "z"]
    assert rep["per_class"]["b"]["precision"] == 0.0  # zero_division=0
    assert rep["per_class"]["z"]["support"] == 0
    assert rep["confusion"] == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_to_coarse_keeps_unmapped():
    out = to_coarse(["CD4 T", "CD8 T", "B"], {"CD4 T": "T", "CD8 T": "T"})
    assert out.tolist() == ["T", "T", "B"]


def test_coarse_counts_within_group_errors_as_correct():
    groups = {"CD4 T": "T", "CD8 T": "T", "naive B": "B", "memory B": "B"}
    y_true = ["CD4 T", "CD8 T", "CD4 T", "naive B", "memory B", "naive B"]
    y_pred = ["CD8 T", "CD4 T", "CD4 T", "memory B", "naive B", "naive B"]
    fine = classification_report(y_true, y_pred)
    coarse = coarse_report(y_true, y_pred, groups)
    assert coarse["labels"] == ["B", "T"]
    assert coarse["accuracy"] == 1.0 and coarse["macro"]["f1"] == 1.0
    assert coarse["macro"]["f1"] > fine["macro"]["f1"]


def test_errors():
    with pytest.raises(DataError):
        classification_report(["a"], ["a", "b"])
    with pytest.raises(DataError):
        classification_report([], [])


def test_write_report(tmp_path):
    rep = classification_report(["a", "b", "b"], ["a", "b", "a"])
    write_report(rep, tmp_path / "out", "test")
    out = tmp_path / "out"
    assert json.loads((out / "test.json").read_text()) == rep
    per_class = pd.read_csv(out / "test_per_class.csv")
    assert per_class.columns.tolist() == ["label", "precision", "recall", "f1", "support"]
    assert per_class["label"].tolist() == ["a", "b"]
    confusion = pd.read_csv(out / "test_confusion.csv", index_col=0)
    assert confusion.columns.tolist() == ["a", "b"] and confusion.index.tolist() == ["a", "b"]
    assert confusion.to_numpy().tolist() == rep["confusion"]


def test_the_macro_f1_interval_is_wide_on_few_cells_and_narrow_on_many():
    from cellsynth.metrics.classification import f1_interval, small_sample_note

    rng = np.random.default_rng(0)
    widths = []
    for n in (8, 400):  # cells per class, one in five misread as the next class
        y = np.repeat(np.array(list("abcd")), n)
        p = np.where(rng.random(len(y)) < 0.2, np.roll(y, n), y)
        rep = classification_report(y, p)
        lo, hi = rep["f1_macro_interval"]
        assert lo <= rep["macro"]["f1"] <= hi
        widths.append(hi - lo)
        note = small_sample_note({"(a)": summary_row(rep)})
        if n == 8:
            assert note.startswith("Few cells scored (a class under 20 cells): (a) 32 cells, "
                                   "the smallest class 8: macro F1 ")
            assert f"interval {lo:.3f}-{hi:.3f}" in note
        else:
            assert note is None
    assert widths[0] > 4 * widths[1] and widths[1] < 0.05
    # the same confusion and seed give the same interval; a perfect one is a point
    c = np.array([[10, 2], [1, 7]])
    assert f1_interval(c, seed=3) == f1_interval(c, seed=3)
    assert f1_interval(np.diag([5, 5])) == [1.0, 1.0]
    rep = classification_report(["a"] * 5 + ["b"] * 5, ["a"] * 5 + ["b"] * 5)
    assert small_sample_note({"(c)": summary_row(rep)}).startswith(
        "Few cells scored (a class under 20 cells): (c) 10 cells, the smallest class 5: macro F1 "
        "1.000, no cell misread, yet an error rate up to 30.0% is not excluded")


def test_a_class_only_predicted_is_not_averaged_as_a_class_missed():
    """A type with no true cell that the classifier still predicts (a type whose cells all
    landed in training, predicted by a classifier trained on generated cells) is a row with
    support 0; its predictions cost the true classes' recall, but the macro mean is over the
    classes with true cells, as for a classifier that never predicts it."""
    from cellsynth.metrics.classification import classification_report

    r = classification_report(["a", "a", "b", "b"], ["a", "c", "b", "b"])
    assert r["labels"] == ["a", "b", "c"] and r["per_class"]["c"]["support"] == 0
    assert r["macro"]["f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["macro"]["recall"] == pytest.approx((0.5 + 1) / 2)
    assert r["accuracy"] == pytest.approx(0.75)
    lo, hi = r["f1_macro_interval"]
    assert lo <= r["macro"]["f1"] <= hi


def test_one_class_scored_is_a_report_without_a_warning():
    """One class in the truth and the predictions (TRTS of a type only one class scored) is
    a 1 x 1 table: scikit-learn's "single label" warning does not reach the user."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = classification_report(["a", "a", "a"], ["a", "a", "a"], labels=["a"])
    assert r["confusion"] == [[3]] and r["macro"]["f1"] == 1.0
