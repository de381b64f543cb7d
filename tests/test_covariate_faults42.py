"""Covariates misused (session 42's sweep): a held-out combination too small or written
differently from ``obs``, missing covariate values written every way, blank cells in a request,
and covariate levels that only the real test cells have (held-out donors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellsynth import config
from cellsynth.errors import DataError
from cellsynth.holdout import check_holdout
from test_covariates import _design_atlas
from test_holdout import SETS


def _obs(n_held: int, pool: int = 50) -> pd.DataFrame:
    """Type "1" (numbers written as text) with ``n_held`` stim cells and ``pool`` ctrl ones."""
    return pd.DataFrame({
        "cluster": ["1"] * (n_held + pool) + ["2"] * 60,
        "condition": ["stim"] * n_held + ["ctrl"] * pool + ["stim", "ctrl"] * 30})


def test_holdout_counts_its_cells_and_the_pool_up_front():
    mask, levels = check_holdout(_obs(45), {"cluster": "1", "condition": "stim"}, "cluster")
    assert mask.sum() == 45 and levels == {"cluster": "1", "condition": "stim"}
    with pytest.raises(DataError, match=r"has 5 cells in the file; .* at least 40"):
        check_holdout(_obs(5), {"cluster": "1", "condition": "stim"}, "cluster", after="in the file")
    with pytest.raises(DataError, match=r"has 0 cells .* at least 40"):
        check_holdout(_obs(0), {"cluster": "1", "condition": "stim"}, "cluster")
    with pytest.raises(DataError, match=r"1 has 3 cells .* outside the combination"):
        check_holdout(_obs(45, pool=3), {"cluster": "1", "condition": "stim"}, "cluster")


def test_holdout_levels_are_the_data_s_own_spelling():
    """A number written another way (1.0 for a column of 1, 2) names the level as obs writes it,
    so pooling and the tables use it (the pool was once looked up by the user's spelling)."""
    obs = pd.DataFrame({"cluster": ["a"] * 100 + ["b"] * 20,  # b: age 1 kept for training
                        "age": [1] * 50 + [2] * 50 + [1, 2] * 10})
    mask, levels = check_holdout(obs, {"cluster": "a", "age": "1.0"}, "cluster")
    assert levels == {"cluster": "a", "age": "1"} and mask.sum() == 50


def test_benchmark_refuses_a_small_holdout_before_any_fit(tmp_path, monkeypatch):
    from cellsynth import evaluation

    a = _design_atlas()
    keep = ~((a.obs["cell_type"] == "type_00") & (a.obs["condition"] == "stim")).to_numpy()
    keep[np.flatnonzero(~keep)[:12]] = True  # 12 stim cells of type_00 left
    path = tmp_path / "small.h5ad"
    a[keep].copy().write_h5ad(path)
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("fitted before the holdout was counted"))
    with pytest.raises(DataError, match=r"small \(.*\): the combination cell_type=type_00, "
                                        r"condition=stim has 12 cells in the file"):
        evaluation.run_benchmark([str(path)], ["nb"], tmp_path / "out", overrides=SETS,
                                 holdout={"cell_type": "type_00", "condition": "stim"})


def test_missing_covariate_values_are_counted_together_and_one_fix_mends_them():
    """NaN, "nan" and "" in one covariate: one message counting all 30, and the fix it gives
    (applied here as written) leaves a column the model trains on."""
    import re

    from cellsynth.models import CVAE

    a = _design_atlas(seed=1)
    cond = a.obs["condition"].astype(object)
    cond.iloc[:10], cond.iloc[10:20], cond.iloc[20:30] = np.nan, "nan", ""
    a.obs["condition"] = cond
    with pytest.raises(DataError) as err:
        CVAE(a, label_key="cell_type", covariate_keys=["condition"])
    text = str(err.value)
    assert "missing for 30 cells: 10 NaN, 20 written as text ('', 'nan')" in text
    fix = re.search(r"e\.g\. (adata\.obs.*)\) or drop", text).group(1)
    exec(fix, {"adata": a})
    assert (a.obs["condition"] == "unknown").sum() == 30
    CVAE(a, label_key="cell_type", covariate_keys=["condition"])  # no error


@pytest.fixture(scope="module")
def nb_model(tmp_path_factory):
    """An nb model with covariates, saved (fast: fitted by moments)."""
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=2)
    model = NegBinBaseline(covariate_keys=["condition", "donor"])
    model.fit(a, "cell_type")
    path = tmp_path_factory.mktemp("nb42") / "model"
    model.save(path)
    return model, path


def test_a_blank_request_level_is_refused_and_a_star_asks_for_any(nb_model, tmp_path):
    from cellsynth.cli import main
    from cellsynth.pipeline.generate import read_request

    model, path = nb_model
    blank = pd.DataFrame({"cell_type": ["type_01", "type_01"], "condition": ["stim", np.nan],
                          "n": [5, 7]})
    with pytest.raises(DataError, match=r"request row 2 \(type_01\): no level of 'condition'"):
        model.plan(blank)
    star = blank.assign(condition=["stim", "*"])
    syn = model.sample(star, seed=0)
    assert syn.n_obs == 12 and set(syn.obs["condition"]) <= {"stim", "ctrl"}
    req = tmp_path / "request.tsv"
    req.write_text("cell_type\tcondition\tn\ntype_01\tstim\t5\ntype_01\t \t7\n")
    with pytest.raises(DataError, match=r"line 3: no level in column\(s\) 'condition'; give "
                                        r"one, or \* for"):
        read_request(req, "cell_type")
    out = tmp_path / "out.h5ad"
    assert main(["generate", str(path), "--request", str(req), "--out", str(out),
                 "--quiet"]) == 2  # the CLI's error exit: nothing generated
    assert not out.exists()


def test_a_request_from_a_pipe_is_read(nb_model, tmp_path):
    """``--request <(printf ...)``: a named pipe is not a regular file, and was called missing."""
    import os
    import threading

    from cellsynth.pipeline.generate import read_request

    fifo = tmp_path / "request.fifo"
    os.mkfifo(fifo)
    text = "cell_type\tcondition\tn\ntype_01\tstim\t5\n"
    writer = threading.Thread(target=lambda: fifo.write_text(text))
    writer.start()
    table = read_request(fifo, "cell_type")
    writer.join()
    assert table.to_dict("list") == {"cell_type": ["type_01"], "condition": ["stim"], "n": [5]}


def test_effects_skip_levels_no_generated_cell_has(caplog, monkeypatch):
    """A held-out donor is a level of the real test cells only: the effects are read against a
    reference both sides have (every effect was skipped against it), and the level is named."""
    from cellsynth.metrics import effects
    from cellsynth.metrics.effects import design_report
    from cellsynth.metrics.space import fit_space

    # the per-combination two-sample tests (a classifier each: 30 s here) are not what is tested
    monkeypatch.setattr(effects, "combination_fidelity", lambda *a, **k: {})

    a = _design_atlas(seed=3)
    rng = np.random.default_rng(0)
    a.obs["donor"] = pd.Categorical(rng.choice(["d1", "d2", "d3"], a.n_obs,
                                               p=[0.6, 0.2, 0.2]))
    real = a[:700]
    syn = a[700:1400][(a.obs["donor"].iloc[700:1400] != "d1").to_numpy()]  # d1 never generated
    space = fit_space(a.X, a.obs["cell_type"].astype(str).to_numpy(),
                      list(map(str, a.var_names)), seed=0)
    with caplog.at_level("WARNING"):
        rep = design_report(space, real.X, real.obs, syn.X, syn.obs, label_key="cell_type",
                            keys=["donor"], seed=0)
    assert rep["levels_not_generated"] == {"donor": ["d1"]}
    assert "1 level(s) of the real test cells were not generated (d1)" in caplog.text
    (pair, per_type), = rep["effects"]["donor"].items()  # d2 against d3, or d3 against d2
    assert set(pair.split(" vs ")) == {"d2", "d3"}
    assert any("r" in e for e in per_type.values())


def test_a_donor_covariate_with_held_out_donors_is_warned(caplog):
    from types import SimpleNamespace

    from cellsynth.pipeline.data import check_covariates

    cfg = config.load(None, ["cvae.covariates=['donor']", "dataset.donor_key='donor'",
                             "split.heldout_donors=1", "generator.model='cvae'"])
    obs = _design_atlas(seed=1).obs
    with caplog.at_level("WARNING"):
        check_covariates(SimpleNamespace(cfg=cfg, label_key="cell_type"), obs)
    assert "covariate 'donor' is the donor column, and split.heldout_donors = 1" in caplog.text


def test_like_without_a_covariate_column_gives_the_fixes(tmp_path):
    from cellsynth.pipeline.generate import like_request

    a = _design_atlas(seed=1)
    del a.obs["donor"]
    path = tmp_path / "no_donor.h5ad"
    a.write_h5ad(path)
    with pytest.raises(DataError, match=r"no obs column\(s\) \['donor'\] .*adata\.obs\['donor'\] "
                                        r"= 'LEVEL'.*--request table with \* in that column"):
        like_request(path, "cell_type", ["condition", "donor"])


def test_combinations_carry_their_levels_as_a_dict():
    """A level holding " | " or "=" makes a combination's name ambiguous; its dict is not."""
    from cellsynth.metrics.effects import _levels, _named, combination

    obs = pd.DataFrame({"cell_type": ["B", "B", "T"], "weird": ["a | b=c", "x", "a | b=c"],
                        "age": [1.0, 2.0, 1.0]})
    names, text = _named(obs, "cell_type", ["weird", "age"])
    assert (names == combination(obs, "cell_type", ["weird", "age"])).all()
    got = _levels(names, text)
    assert got[names[0]] == {"cell_type": "B", "weird": "a | b=c", "age": "1"}
    assert len(got) == 3 and got[names[2]]["cell_type"] == "T"


def test_an_scvi_fit_without_a_terminal_shows_signs_of_life(monkeypatch, caplog):
    """Without a terminal the SCVI fit logged nothing between its start and its end (a
    benchmark's held-out scvi fit was silent for minutes): its epochs are logged as the CVAE's."""
    import logging

    import cellsynth as cs
    from cellsynth import options

    pytest.importorskip("scvi")
    monkeypatch.setattr(options, "LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="cellsynth.progress")
    a = _design_atlas(seed=1)[:300].copy()
    model = cs.ScviGenerator(a, "cell_type")
    with cs.settings.override(progress=False):
        model.train(max_epochs=2, n_hidden=8, n_latent=2, batch_size=128, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "cellsynth.progress"]
    assert any(m.startswith("SCVI: ") and "/2 epoch" in m for m in lines), lines
