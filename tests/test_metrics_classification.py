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
    assert all(v == 1.0 for k, v in summary_row(rep).items() if k != "n")


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
    }
    assert row["n"] == 6


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
