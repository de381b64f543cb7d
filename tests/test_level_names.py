"""A covariate level is one level however a file stores it (data.levels, issue 18): a donor
written 1 in training and 1.0 in a request, an age column of floats asked for as "12", a column
read back as categories of numbers: the same level everywhere a level is read (fit, requests,
``--like``, ``--holdout``, the per-combination metrics), and text levels are never merged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsynth.data.levels import LevelLookup, level_name, level_text
from cellsynth.errors import DataError
from cellsynth.holdout import holdout_mask
from cellsynth.metrics.effects import combination
from cellsynth.models._design import Design
from cellsynth.pipeline.generate import like_request


def test_level_names_of_numbers_and_text():
    assert [level_name(v) for v in (1, np.int64(2), 3.0, np.float32(4.0), 2.5, "07", True)] == [
        "1", "2", "3", "4", "2.5", "07", "True"]
    assert level_text(pd.Series([1.0, 12.0, np.nan, 2.5])).tolist() == ["1", "12", "nan", "2.5"]
    assert level_text(pd.Series([3, 1], dtype="int32")).tolist() == ["3", "1"]
    cats = pd.Series(pd.Categorical([12.0, np.nan, 16.0]))
    assert level_text(cats).tolist() == ["12", "nan", "16"]
    text = pd.Series(["01", "1", "1.0", "stim"])  # text stays as written: three levels, not one
    assert level_text(text).tolist() == ["01", "1", "1.0", "stim"]
    assert level_text(pd.Series([True, False])).tolist() == ["True", "False"]


def test_lookup_matches_by_name_then_by_value():
    look = LevelLookup(["12.0", "16", "ctrl"])  # "12.0": a model that named its levels so
    assert [look.code(v) for v in ("12", 12, 12.0, np.int64(16), "16.0", "ctrl", "stim", 13)] == [
        0, 0, 0, 1, 1, 2, -1, -1]
    # "01" is text (not written as a number is): by name only, so 1.0 and "1.0" ask for "1"
    shared = LevelLookup(["01", "1", "2"])
    assert [shared.code(v) for v in ("01", "1", 1.0, "1.0", "2.0")] == [0, 1, 1, 1, 2]
    twice = LevelLookup(["1", "1.0"])  # two levels written as the number 1: by name only
    assert [twice.code(v) for v in ("1", "1.0", 1, "1.00")] == [0, 1, 0, -1]
    assert look.codes(np.array(["16", "12", "x", "16"])).tolist() == [1, 0, -1, 1]
    spaced = LevelLookup(["stim ", "ctrl", " ctrl "])  # spaces kept by an atlas
    assert [spaced.code(v) for v in ("stim", "stim ", "ctrl", " ctrl ", "ctrl ")] == [
        0, 0, 1, 2, -1]
    assert look.codes(np.array([], dtype=str)).tolist() == []
    # a missing value names no level, wherever it stands (not the last distinct value's)
    missing = np.array([np.nan, "ctrl", None, "12"], dtype=object)
    assert look.codes(missing).tolist() == [-1, 2, -1, 0]


def _obs(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    donor = rng.integers(1, 4, n)  # int64 donors 1..3
    return pd.DataFrame({"cell_type": pd.Categorical(np.where(np.arange(n) % 2, "B", "T")),
                         "donor": donor, "age": donor * 4.0 + 8.0})  # float ages 12, 16, 20


def test_a_design_reads_a_level_however_it_is_written():
    obs = _obs()
    design, codes = Design.fit(obs, ["donor", "age"], "cell_type", obs["cell_type"].to_numpy(),
                               np.arange(len(obs)), np.arange(len(obs)))
    assert design.levels == {"donor": ["1", "2", "3"], "age": ["12", "16", "20"]}
    assert all(type(v) is str for v in design.levels["age"])  # JSON-ready
    floats = obs.assign(donor=obs["donor"].astype(float), age=pd.Categorical(obs["age"]))
    assert (design.codes(floats) == codes).all()
    for where in ({"donor": 2}, {"donor": "2"}, {"donor": 2.0}, {"donor": np.int64(2)},
                  {"donor": 2, "age": "16"}, {"age": 16}, {"age": "16.0"}):
        plan, _ = design.plan({"B": 10}, where, ["B", "T"], "cell_type")
        assert {c for _, c, _ in plan} == {(1, 1)}, where
    table = pd.DataFrame({"cell_type": ["B", "T"], "donor": [3.0, "*"], "n": [4, 6]})  # a float
    plan, _ = design.plan(table, None, ["B", "T"], "cell_type")
    assert sum(k for t, c, k in plan if t == "B" and c[0] == 2) == 4
    assert sum(k for t, _, k in plan if t == "T") == 6
    with pytest.raises(DataError, match=r"'2.5' is not a level of covariate 'donor'.*1, 2, 3"):
        design.plan({"B": 1}, {"donor": 2.5}, ["B", "T"], "cell_type")
    with pytest.raises(DataError, match=r"'200' is not a level of covariate 'age' seen in "
                                        r"training \(did you mean '20'"):
        design.plan({"B": 1}, {"age": "200"}, ["B", "T"], "cell_type")


def test_like_holdout_and_metrics_name_levels_alike(tmp_path):
    import anndata as ad
    import scipy.sparse as sp

    obs = _obs()
    adata = ad.AnnData(sp.csr_matrix(np.ones((len(obs), 3), np.float32)),
                       obs=obs.assign(donor=obs["donor"].astype(float)).set_axis(
                           [f"c{i}" for i in range(len(obs))]))
    adata.write_h5ad(tmp_path / "like.h5ad")
    table = like_request(tmp_path / "like.h5ad", "cell_type", ["donor", "age"])
    assert set(table["donor"]) == {"1", "2", "3"} and set(table["age"]) == {"12", "16", "20"}
    assert table["n"].sum() == len(obs)
    mask = holdout_mask(obs, {"cell_type": "B", "age": "12"}, "cell_type")
    assert mask.sum() == ((obs["cell_type"] == "B") & (obs["age"] == 12.0)).sum() > 0
    assert (holdout_mask(obs, {"cell_type": "B", "age": "12.0"}, "cell_type") == mask).all()
    with pytest.raises(DataError, match="age has no level '13'; it has 12, 16, 20"):
        holdout_mask(obs, {"cell_type": "B", "age": "13"}, "cell_type")
    as_int = combination(obs, "cell_type", ["donor", "age"])
    as_float = combination(obs.assign(donor=obs["donor"].astype(float)), "cell_type",
                           ["donor", "age"])
    assert (as_int == as_float).all()
    assert "B | donor=2 | age=16" in set(as_int) and not any(".0" in c for c in as_int)


def test_a_covariate_cannot_take_the_request_tables_count_column():
    obs = _obs().rename(columns={"donor": "n"})
    with pytest.raises(DataError, match=r"a covariate cannot be called 'n'.*rename"):
        Design.fit(obs, ["n"], "cell_type", obs["cell_type"].to_numpy(), np.arange(len(obs)),
                   np.arange(len(obs)))


def test_like_leaves_out_cells_without_a_label_or_level_and_says_so(tmp_path, caplog):
    import logging

    import anndata as ad
    import scipy.sparse as sp

    obs = _obs().astype({"donor": float, "cell_type": object})
    obs.iloc[0, obs.columns.get_loc("cell_type")] = ""  # no label, written as text
    obs.iloc[1, obs.columns.get_loc("donor")] = np.nan
    adata = ad.AnnData(sp.csr_matrix(np.ones((len(obs), 3), np.float32)),
                       obs=obs.set_axis([f"c{i}" for i in range(len(obs))]))
    adata.write_h5ad(tmp_path / "like.h5ad")
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        table = like_request(tmp_path / "like.h5ad", "cell_type", ["donor"])
    assert table["n"].sum() == len(obs) - 2 and "" not in set(table["cell_type"])
    assert "2 of the 60 cells" in caplog.text and "the twin leaves them out" in caplog.text


def test_a_level_a_type_never_had_gets_the_other_covariates_that_go_with_it():
    """Kang's design: donors are stimulated or not. Stim asked of a type seen only in ctrl gets
    the stimulated donors (as every type's stim cells had them), not the type's ctrl donors."""
    rows = [("Mono", "ctrl", "c1"), ("Mono", "ctrl", "c2"),
            ("B", "ctrl", "c1"), ("B", "stim", "s1"), ("B", "stim", "s2"),
            ("T", "ctrl", "c2"), ("T", "stim", "s2")]
    obs = pd.DataFrame([r for r in rows for _ in range(10)],
                       columns=["cell_type", "condition", "donor"])
    design, _ = Design.fit(obs, ["condition", "donor"], "cell_type", obs["cell_type"].to_numpy(),
                           np.arange(len(obs)), np.arange(len(obs)))
    plan, unseen = design.plan({"Mono": 40}, {"condition": "stim"}, ["B", "Mono", "T"],
                               "cell_type")
    donors = {design.levels["donor"][c[1]]: k for _, c, k in plan}
    assert set(donors) == {"s1", "s2"} and sum(donors.values()) == 40
    assert donors["s2"] > donors["s1"]  # s2 held twice the stim cells
    assert {design.levels["condition"][c[0]] for _, c, _ in plan} == {"stim"}
    assert unseen  # and they are named as combinations no training cell had
    # a level the type had keeps the type's own composition
    plan, _ = design.plan({"B": 20}, {"condition": "stim"}, ["B", "Mono", "T"], "cell_type")
    assert {design.levels["donor"][c[1]]: k for _, c, k in plan} == {"s1": 10, "s2": 10}


def test_a_type_is_read_as_a_level_is_a_number_included():
    """Labels "0.0", "1.0" (a float cluster column made text) are asked for as 1, as a
    covariate's levels are."""
    from cellsynth.models._training import known_label

    labels = ["0.0", "1.0", "B cells"]
    assert [known_label(v, labels) for v in ("1", 1, "1.0", " B cells")] == ["1.0", "1.0",
                                                                              "1.0", "B cells"]
    with pytest.raises(DataError, match="unknown cell type '2'"):
        known_label("2", labels)


def test_a_twin_leaves_out_unknown_types_and_levels_and_refuses_when_none_is_left(caplog):
    import logging

    from cellsynth.errors import DataError
    from cellsynth.pipeline.generate import _known_rows

    known = {"cell_type": ["B", "T"], "donor": ["1", "2"]}
    ask = pd.DataFrame({"cell_type": ["B", "T", "NK", "B"], "donor": [1, np.nan, 2, 3.0],
                        "n": [4, 5, 6, 7]})
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        kept = _known_rows(ask, known, "cell_type", "like.h5ad")
    # named as the model names them (session 46: rows naming one combination are summed)
    assert kept.to_dict("list") == {"cell_type": ["B"], "donor": ["1"], "n": [4]}
    assert "1 cell type(s) the model does not know, left out of the twin (6 cells" in caplog.text
    assert "2 level(s) of 'donor' the model never saw, left out of the twin (12 cells)" in (
        caplog.text)
    with pytest.raises(DataError, match="no cells of the types and covariate levels"):
        _known_rows(ask.iloc[2:], known, "cell_type", "like.h5ad")


def test_a_zero_padded_text_level_is_not_asked_for_by_value():
    """Text donors "01" and "02": `--where donor=1` (or 001) generated donor "01" without a
    word, while with "01", "1" and "2" the same request meant "1". A text level is matched by
    its name; only levels written as numbers are (12, 12.0, "12" ask for "12")."""
    from cellsynth.data.levels import LevelLookup

    padded = LevelLookup(["01", "02"])
    assert [padded.code(v) for v in ("01", "1", "001", 1, 1.0)] == [0, -1, -1, -1, -1]
    both = LevelLookup(["01", "1", "2"])
    assert [both.code(v) for v in ("1", 1, "01", "001")] == [1, 1, 0, 1]  # "1" is a number
    numbers = LevelLookup(["8", "12", "12.5", "16.0"])
    assert [numbers.code(v) for v in (8, "8.0", 12.5, "16", 16)] == [0, 0, 2, 3, 3]
