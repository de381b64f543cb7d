"""Covariates misused (session 47's sweep): an empty ``--covariates``; ``--holdout`` of a
combination that takes a whole level (or a covariate with missing values) out of training,
whose type has few training cells to pool, of levels that hold a comma, or given twice;
validation cells' missing levels in a run; a request table with a column twice;
``covariate_keys`` as pandas or numpy give them; a request file's unknown value named by its
line; a column mixing numbers and text; benchmark generators' covariates checked before any
fit; real test cells without a level in the design report; and test cells' missing levels left
alone by a generator built on the data."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from cellsynth.cli import main
from cellsynth.errors import ConfigError, DataError
from test_covariates import _design_atlas


def test_an_empty_covariates_option_is_refused(tmp_path, capsys):
    """``fit --covariates "$COVS"`` with COVS unset (or ``--covariates ,``) fitted a model
    without covariates, without a word."""
    data = tmp_path / "design.h5ad"
    _design_atlas(seed=1)[:300].copy().write_h5ad(data)
    for given in ("", " , "):
        assert main(["fit", str(data), "--label-key", "cell_type", "--model", "nb",
                     "--covariates", given, "--out", str(tmp_path / "m"), "--quiet"]) == 2
        assert "--covariates names no column" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()


def test_a_holdout_that_takes_a_level_out_of_training_is_refused_before_any_fit(tmp_path,
                                                                               monkeypatch):
    """``--holdout cell_type=type_00,condition=stim`` where only type_00 has stim cells: every
    generator was fitted (the whole benchmark first), then refused "'stim' is not a level of
    covariate 'condition' seen in training"; a covariate with missing values elsewhere was
    refused by the first conditioned fit alike."""
    from cellsynth import evaluation
    from cellsynth.holdout import check_holdout
    from test_holdout import SETS

    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("fitted before the holdout was checked"))
    a = _design_atlas()
    only = np.where((a.obs["cell_type"] == "type_00").to_numpy(),
                    a.obs["condition"].astype(str), "ctrl")
    holdout = {"cell_type": "type_00", "condition": "stim"}
    for name, column, said in (
            ("only.h5ad", pd.Categorical(only), r"holds out every cell of condition=stim: no "
                                                r"generator would be trained on the level"),
            ("gaps.h5ad", a.obs["condition"].astype(object).where(np.arange(a.n_obs) % 50 > 0),
             r"conditions the generators on condition, .*missing for \d+ cells")):
        b = a.copy()
        b.obs["condition"] = column
        b.write_h5ad(tmp_path / name)
        with pytest.raises(DataError, match=said):
            evaluation.run_benchmark([str(tmp_path / name)], ["nb"], tmp_path / "out",
                                     overrides=SETS, holdout=holdout)
    # the prepared cells: the level's other cells all in the test split count as none
    obs = pd.DataFrame({"cell_type": ["a"] * 60 + ["b"] * 40,
                        "condition": ["stim"] * 45 + ["ctrl"] * 15 + ["stim", "ctrl"] * 20})
    split = np.array(["train"] * 100, dtype=object)
    split[60:100:2] = "test"  # every stim cell of b
    spec = {"cell_type": "a", "condition": "stim"}
    assert check_holdout(obs, spec, "cell_type")[0].sum() == 45
    with pytest.raises(DataError, match="holds out every training cell of condition=stim"):
        check_holdout(obs, spec, "cell_type", split=split)


@pytest.mark.parametrize(("model", "refused"), [("cvae", True), ("scvi", True), ("nb", False)])
def test_a_run_checks_the_validation_cells_levels_before_the_classifier(model, refused):
    """A run of the cvae (or scvi) on a covariate missing in validation cells alone trained the
    classifier, then the generator's fit refused them (it stops early on validation cells);
    nb reads its training cells only, and is not refused for them."""
    from types import SimpleNamespace

    from cellsynth import config
    from cellsynth import keys as K
    from cellsynth.cells import from_preprocessed
    from cellsynth.pipeline.data import check_before_training

    a = _design_atlas(seed=1)[:400].copy()
    a.layers["counts"] = a.X.copy()
    split = np.array(["train", "train", "train", "val", "test"] * 80)
    a.obs[K.SPLIT] = split
    cond = a.obs["condition"].astype(object)
    cond.iloc[np.flatnonzero(split == "val")[:3]] = np.nan
    a.obs["condition"] = cond
    cfg = config.load(None, [f"generator.model='{model}'", f"{model}.covariates=['condition']"])
    ctx = SimpleNamespace(cfg=cfg, label_key="cell_type")
    cells = from_preprocessed(a, label_key="cell_type")
    if not refused:
        check_before_training(ctx, cells)
        return
    with pytest.raises(DataError, match="covariate 'condition' is missing for 3 cells: 3 NaN"):
        check_before_training(ctx, cells)


def test_a_holdout_level_holding_a_comma_is_read_whole(tmp_path):
    """``--holdout 'cell_type=CD4-positive, alpha-beta T cell,condition=stim'`` (a Cell
    Ontology name) was refused as "--holdout wants COLUMN=LEVEL pairs ..., got ' alpha-beta T
    cell'": no type or level with a comma could be held out from the command line."""
    from cellsynth.holdout import check_holdout, parse_holdout

    t_cell = "CD4-positive, alpha-beta T cell"
    spec = parse_holdout(f"cell_type={t_cell},condition=stim, 10 ng,donor=d1")
    assert spec == {"cell_type": t_cell, "condition": "stim, 10 ng", "donor": "d1"}
    obs = pd.DataFrame({"cell_type": [t_cell] * 60 + ["B cell"] * 40,
                        "condition": ["stim, 10 ng"] * 45 + ["ctrl"] * 15 + ["stim, 10 ng",
                                                                           "ctrl"] * 20,
                        "donor": "d1"})
    mask, _ = check_holdout(obs, spec, "cell_type")
    assert int(mask.sum()) == 45 and np.flatnonzero(mask).max() == 44
    with pytest.raises(DataError, match=r"no column 'conditon' \(did you mean 'condition'\?\); "
                                        r"the columns are cell_type, condition, donor$"):
        check_holdout(obs, parse_holdout(f"cell_type={t_cell},conditon=x"), "cell_type")
    with pytest.raises(DataError, match=r"no column '10'; .*or the rest of a level holding ',' "
                                        r"and '='.*run_benchmark"):
        check_holdout(obs, parse_holdout(f"cell_type={t_cell},condition=x, 10=ng"), "cell_type")


def test_holdout_given_twice_is_refused(tmp_path, monkeypatch, capsys):
    """``benchmark --holdout A --holdout B`` held out B alone, without a word (argparse keeps
    the last value), as ``--where`` twice once did."""
    from cellsynth import evaluation

    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("benchmarked"))
    data = tmp_path / "design.h5ad"
    _design_atlas(seed=1)[:300].copy().write_h5ad(data)
    with pytest.raises(SystemExit) as stop:
        main(["benchmark", "--data", str(data), "--models", "nb", "--out", str(tmp_path / "out"),
              "--holdout", "cell_type=type_00,condition=stim", "--holdout",
              "cell_type=type_01,condition=stim", "--quiet"])
    assert stop.value.code == 2
    assert "argument --holdout: given twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def nb_model():
    """An nb model conditioned on condition and donor (fast: fitted by moments)."""
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=2)[:800].copy()
    model = NegBinBaseline(covariate_keys=["condition", "donor"])
    model.fit(a, "cell_type")
    return model, a


def test_a_request_naming_a_column_twice_is_refused(nb_model):
    """A request table with a column twice (``pd.concat(..., axis=1)``) ended in pandas'
    "'DataFrame' object has no attribute 'str'" for a covariate, and generated the last
    column's n (or type) without a word; a Series counted over a column twice, or over a
    column called n, in "cannot insert cell_type, already exists"."""
    model, a = nb_model
    for cols, row in ((["cell_type", "condition", "condition", "n"], ["type_01", "stim", "ctrl", 2]),
                      (["cell_type", "condition", "n", "n"], ["type_01", "stim", 2, 3]),
                      (["cell_type", "cell_type", "n"], ["type_01", "type_02", 2])):
        twice = next(c for c in cols if cols.count(c) == 2)
        with pytest.raises(DataError, match=f"names the column '{twice}' twice"):
            model.sample(pd.DataFrame([row], columns=cols))
    counts = a.obs[["cell_type", "condition"]].value_counts()
    twice = counts.copy()
    twice.index = twice.index.set_names(["cell_type", "cell_type"])
    with pytest.raises(DataError, match="the request's index names 'cell_type' twice"):
        model.sample(twice)
    obs = a.obs.assign(n=1)
    with pytest.raises(DataError, match="the request's index names 'n' as the count column"):
        model.sample(obs[["cell_type", "condition", "n"]].value_counts())
    assert model.sample(counts, seed=0).n_obs == a.n_obs


def test_covariate_keys_as_pandas_and_numpy_give_them(nb_model):
    """``NegBinBaseline(covariate_keys=adata.obs.columns[2:4])`` ended in "The truth value of a
    Index is ambiguous"; a number raised TypeError; the CVAE kept numpy's str type in its
    design."""
    from cellsynth.models import CVAE, NegBinBaseline

    _, a = nb_model
    for keys in (pd.Index(["condition", "donor"]), np.array(["condition", "donor"])):
        model = NegBinBaseline(covariate_keys=keys)
        assert model.covariate_keys == ["condition", "donor"]
        model.fit(a, "cell_type")
        assert model.design.keys == ["condition", "donor"]
        cvae = CVAE(a, label_key="cell_type", covariate_keys=keys)
        assert [type(k) for k in cvae.design.keys] == [str, str]
    for bad in (5, True):
        with pytest.raises(ConfigError, match="covariate_keys are obs column names"):
            NegBinBaseline(covariate_keys=bad)
        with pytest.raises(ConfigError, match="covariate_keys are obs column names"):
            CVAE(None, covariate_keys=bad)


def test_a_request_file_s_unknown_value_is_named_by_its_line(nb_model, tmp_path, capsys):
    """A request file with a misspelt type or level on one row was refused naming the value
    alone (a twin's table has thousands of rows), and two rows written alike ('stim' and
    'stim ', 1 and 1.0) as "the request asks twice", without their lines."""
    model, _ = nb_model
    model.save(tmp_path / "model")
    head = "cell_type\tcondition\tdonor\tn\n# a comment\ntype_01\tstim\td1\t5\n\n"
    for row, said in (("type_09\tstim\td1\t3", r"line 5: unknown cell type 'type_09'"),
                      ("type_02\tstimm\t*\t3", r"line 5: 'stimm' is not a level of covariate "
                                               r"'condition'"),
                      ("type_01\tstim \td1\t3", r"lines 3 and 5 ask for one combination, "
                                                r"written two ways")):
        (tmp_path / "r.tsv").write_text(head + row + "\n")
        assert main(["generate", str(tmp_path / "model"), "--request", str(tmp_path / "r.tsv"),
                     "--out", str(tmp_path / "out.h5ad"), "--quiet"]) == 2
        assert re.search(r"request file \S+r\.tsv, " + said, capsys.readouterr().err), row
    (tmp_path / "r.tsv").write_text(head + "type_02\tctrl\t*\t3\ntype_01\tstim \td1\t0\n"
                                    "type_09\tctrl\td1\t0\n")  # rows of 0 are left out
    assert main(["generate", str(tmp_path / "model"), "--request", str(tmp_path / "r.tsv"),
                 "--out", str(tmp_path / "out.h5ad"), "--quiet"]) == 0


def test_a_number_beside_text_in_one_column_is_one_level(nb_model):
    """``ad.concat`` of a batch that stores its donors as numbers (1.0) and one that writes
    them as text ('1') gives a column of both: the donor was two levels, "1.0" and "1" (a
    numeric column's 1.0 is "1"), without a word."""
    import anndata as ad

    from cellsynth.data.levels import level_text
    from cellsynth.models import NegBinBaseline

    _, a = nb_model
    donor = np.where(a.obs["donor"].astype(str) == "d1", 1, 2)
    first, second = a[: a.n_obs // 2].copy(), a[a.n_obs // 2:].copy()
    first.obs["donor"] = donor[: a.n_obs // 2].astype(float)
    second.obs["donor"] = donor[a.n_obs // 2:].astype(str)
    both = ad.concat([first, second])
    assert both.obs["donor"].dtype == object
    assert sorted(set(level_text(both.obs["donor"]))) == ["1", "2"]
    model = NegBinBaseline(covariate_keys=["donor"])
    model.fit(both, "cell_type")
    assert model.design.levels == {"donor": ["1", "2"]}
    mixed = np.array([True, 1.5, "x", None, np.nan, 3], dtype=object)
    assert list(level_text(pd.Series(mixed))) == ["True", "1.5", "x", "None", "nan", "3"]


def test_a_benchmark_checks_each_generator_s_covariates_before_any_fit(tmp_path, monkeypatch):
    """``benchmark --models reference,nb --set nb.covariates=['conditon']`` (or a covariate
    with missing values) fitted the reference first (hours on an atlas), then nb's fit
    refused the column (a second data set's after the first was benchmarked: a missing
    value, read in the cells its fit reads, before that data set's fits)."""
    from cellsynth import evaluation
    from test_holdout import SETS

    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("fitted before the covariates were checked"))
    a = _design_atlas(seed=4)
    a.write_h5ad(tmp_path / "good.h5ad")
    gaps = a.copy()
    gaps.obs["condition"] = gaps.obs["condition"].astype(object).where(
        np.arange(a.n_obs) % 50 > 0)
    gaps.write_h5ad(tmp_path / "gaps.h5ad")
    for data, cov, said in (
            (["good", "gaps"], "'conditon'", r"good \(.*good\.h5ad\): nb conditions on "
                                             r"nb\.covariates = \['conditon'\]: covariate column "
                                             r"'conditon' not in obs"),
            (["gaps"], "'condition'", r"gaps \(.*gaps\.h5ad\): nb conditions on "
                                              r"nb\.covariates = \['condition'\]: covariate "
                                              r"'condition' is missing for \d+ cells")):
        with pytest.raises(DataError, match=said):
            evaluation.run_benchmark([str(tmp_path / f"{d}.h5ad") for d in data],
                                     ["reference", "nb"], tmp_path / "out",
                                     overrides=[*SETS, f"nb.covariates=[{cov}]"])


def test_real_test_cells_without_a_level_are_left_out_of_the_design_report(monkeypatch, caplog):
    """Test cells with a missing covariate (allowed: no generator reads them) were scored as a
    level "nan" that "no training cell had (held-out donors?)", their combinations listed."""
    from cellsynth.metrics import effects
    from cellsynth.metrics.effects import design_report
    from cellsynth.metrics.space import fit_space

    got = {}
    monkeypatch.setattr(effects, "combination_fidelity",
                        lambda space, rc, ro, *a, **k: got.update(n=len(ro)) or {})
    a = _design_atlas(seed=3)
    real, syn = a[:700].copy(), a[700:1400].copy()
    cond = real.obs["condition"].astype(object)
    cond.iloc[:12] = np.nan
    real.obs["condition"] = cond
    space = fit_space(a.X, a.obs["cell_type"].astype(str).to_numpy(),
                      list(map(str, a.var_names)), seed=0)
    with caplog.at_level("WARNING"):
        rep = design_report(space, real.X, real.obs, syn.X, syn.obs, label_key="cell_type",
                            keys=["condition"], seed=0)
    assert rep["levels_not_generated"] == {} and got["n"] == 688
    assert "12 of the 700 real test cells have no level" in caplog.text
    assert "held-out donors" not in caplog.text
    assert list(rep["effects"]["condition"]) == ["stim vs ctrl"]


def test_a_holdout_whose_type_has_few_training_cells_to_pool_is_refused_before_any_fit():
    """The pool was counted over every split before the fits, and over the training cells by
    benchmark_holdout, after the whole benchmark: a type of 12 cells at other levels, 5 of
    them training ones, passed the first and failed the second."""
    from cellsynth.holdout import check_holdout

    obs = pd.DataFrame({"cell_type": ["a"] * 57 + ["b"] * 40,
                        "condition": ["stim"] * 45 + ["ctrl"] * 12 + ["stim", "ctrl"] * 20})
    split = np.array(["train"] * len(obs), dtype=object)
    split[45:52] = "test"  # 7 of a's 12 ctrl cells
    spec = {"cell_type": "a", "condition": "stim"}
    assert check_holdout(obs, spec, "cell_type")[0].sum() == 45
    with pytest.raises(DataError, match=r"a has 5 training cells after QC outside the "
                                        r"combination cell_type=a, condition=stim: pooling"):
        check_holdout(obs, spec, "cell_type", split=split)


def test_a_holdout_covariate_missing_in_cells_qc_removes_is_not_refused(tmp_path, monkeypatch):
    """Unlabelled cells, left out before any fit, may lack the covariate too: the check of
    the file's cells (before QC) does not refuse their missing values."""
    from cellsynth import evaluation
    from test_holdout import SETS

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(evaluation.runner, "benchmark_dataset", reached)
    a = _design_atlas()
    unlabelled = np.arange(a.n_obs) % 50 == 0
    for key in ("cell_type", "condition"):
        a.obs[key] = a.obs[key].astype(object).where(~unlabelled)
    a.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(Reached):
        evaluation.run_benchmark([str(tmp_path / "a.h5ad")], ["nb"], tmp_path / "out",
                                 overrides=SETS,
                                 holdout={"cell_type": "type_00", "condition": "stim"})


def test_a_generator_built_on_the_data_leaves_its_test_cells_levels_alone():
    """``CVAE(adata, covariate_keys=[...])`` (and ``ScviGenerator``) on cells with a split
    column refused a covariate missing in test cells, which their fit never reads (``cellsynth
    fit``, nb and the run took the same cells)."""
    from cellsynth import keys as K
    from cellsynth.models import CVAE, ScviGenerator

    a = _design_atlas(seed=2)[:500].copy()
    split = np.array(["train"] * 8 + ["val", "test"])[np.arange(a.n_obs) % 10]
    a.obs[K.SPLIT] = split
    cond = a.obs["condition"].astype(object)
    cond.iloc[np.flatnonzero(split == "test")[:3]] = np.nan
    a.obs["condition"] = cond
    assert CVAE(a, label_key="cell_type", covariate_keys=["condition"]).design.keys == [
        "condition"]
    assert ScviGenerator(a, "cell_type", covariate_keys=["condition"]).design.keys == [
        "condition"]
    cond.iloc[np.flatnonzero(split == "val")[:2]] = np.nan  # validation cells are read
    a.obs["condition"] = cond
    for make in (CVAE, ScviGenerator):
        with pytest.raises(DataError, match="covariate 'condition' is missing for 2 cells"):
            make(a, "cell_type", covariate_keys=["condition"])
