"""A simulated design with a known answer, and the nb peer conditioned on covariates (issue 18).

``simulate_atlas(n_donors=, n_conditions=)`` states its donor shifts and condition programs in
``uns["simulation"]``; the tests check that the programs are in the simulated cells
(``metrics.condition_effects`` against cells built from the stated truth), that a CVAE with
``covariate_keys=["condition"]`` generates stim cells carrying them and ctrl cells without, and
that ``NegBinBaseline(covariate_keys=...)`` fits per combination (falling back to the type),
takes the CVAE's requests, and survives save/load; that ``nb`` and ``scvi`` condition on
covariates from every entry point (``nb.covariates``/``scvi.covariates``, ``cellsynth fit
--covariates``, ``generate --where/--request/--like``, ``cellsynth run``); and that ``scvi``,
through scvi-tools' ``categorical_covariate_keys``, generates the requested levels.
"""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.data import simulate
from cellsynth.data.simulate import simulate_atlas, write_atlas
from cellsynth.errors import ConfigError, DataError, ModelFileError
from cellsynth.metrics import condition_effects
from cellsynth.models.nb import NegBinBaseline

KEY = "cell_type"
TYPES = ("type_00", "type_01", "type_02")


@pytest.fixture(scope="module")
def design() -> ad.AnnData:
    """2,400 cells, 300 genes, 3 types of 165-1,270 cells, 2 donors, ctrl and stim."""
    return simulate_atlas(2400, 300, 3, n_donors=2, n_conditions=2, seed=2, doublet_rate=0,
                          uninformative_rate=0)  # fmt: skip


def _program(a: ad.AnnData, t: str, condition: str = "stim") -> tuple[np.ndarray, np.ndarray]:
    """Columns and natural-log fold changes of the stated program of type ``t``."""
    prog = a.uns["simulation"]["condition_programs"][t][condition]
    return a.var_names.get_indexer(list(prog["genes"])), np.asarray(prog["log_fold_change"])


def _rows(obs: pd.DataFrame, t: str, condition: str) -> np.ndarray:
    return ((obs[KEY] == t) & (obs["condition"] == condition)).to_numpy()


def _log_mean(x, rows: np.ndarray) -> np.ndarray:
    """log of the mean share of each gene in the cells ``rows`` (library-size normalised)."""
    x = sp.csr_matrix(x[rows], dtype=np.float64)
    x = sp.diags(1.0 / np.maximum(x.sum(axis=1).A1, 1.0)) @ x
    return np.log(x.mean(axis=0).A1 + 1e-6)


# ---------------------------------------------------------------------------------------------
# the simulated design


def test_design_columns_and_stated_truth(design: ad.AnnData) -> None:
    assert list(design.obs["donor"].cat.categories) == ["D0", "D1"]
    assert list(design.obs["condition"].cat.categories) == ["ctrl", "stim"]
    truth = design.uns["simulation"]
    json.dumps(truth)  # plain JSON values
    assert truth["reference"] == "ctrl" and truth["conditions"] == ["ctrl", "stim"]
    shift = truth["donor_shift"]
    assert set(shift["genes"]) <= set(design.var_names)
    assert all(len(v) == len(shift["genes"]) for v in shift["log_fold_change"].values())
    for t in TYPES:
        cols, lfc = _program(design, t)
        assert (cols >= 0).all() and len(cols) == len(lfc) == 10 and (np.abs(lfc) > 0.3).all()
    # the plan (types, doublets, labels) is the plain atlas's: the covariates have streams of
    # their own; three conditions name stim2, and donors alone give no condition column
    plain = simulate_atlas(2400, 300, 3, seed=2, doublet_rate=0, uninformative_rate=0)
    assert plain.obs[KEY].equals(design.obs[KEY]) and "simulation" not in plain.uns
    three = simulate_atlas(300, 100, 2, n_conditions=3, seed=1)
    assert list(three.obs["condition"].cat.categories) == ["ctrl", "stim", "stim2"]
    assert "donor" not in three.obs and set(three.uns["simulation"]["condition_programs"]
                                            ["type_00"]) == {"stim", "stim2"}  # fmt: skip
    donors = simulate_atlas(300, 100, 2, n_donors=12, seed=1)
    assert "condition" not in donors.obs and donors.obs["donor"].cat.categories[-1] == "D11"
    with pytest.raises(ConfigError, match="n_donors, n_conditions"):
        simulate_atlas(100, 100, 2, n_donors=-1)


def test_write_atlas_with_a_design_equals_simulate(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(simulate, "_BLOCK", 300)  # several random blocks, chunks across them
    args = {"seed": 4, "n_donors": 3, "n_conditions": 2, "label_key": KEY}
    expected = simulate_atlas(1000, 150, 4, **args)
    path = write_atlas(tmp_path / "d.h5ad", 1000, 150, 4, chunk_size=450, **args)
    got = ad.read_h5ad(path)
    assert (got.X != expected.X).nnz == 0 and got.obs.equals(expected.obs)
    prog = got.uns["simulation"]["condition_programs"]["type_01"]["stim"]
    want = expected.uns["simulation"]["condition_programs"]["type_01"]["stim"]
    assert list(prog["genes"]) == want["genes"]
    np.testing.assert_array_equal(prog["log_fold_change"], want["log_fold_change"])


def test_cli_simulate_with_donors_and_conditions(tmp_path) -> None:
    from cellsynth.cli import main

    out = tmp_path / "sim.h5ad"
    assert main(["simulate", "--cells", "400", "--genes", "120", "--types", "3", "--donors", "2",
                 "--conditions", "3", "--out", str(out), "--quiet"]) == 0
    a = ad.read_h5ad(out)
    assert set(a.obs["donor"]) == {"D0", "D1"} and set(a.obs["condition"]) == {
        "ctrl", "stim", "stim2"}
    assert set(a.uns["simulation"]["condition_programs"]) == {"type_00", "type_01", "type_02"}


def test_known_condition_program_is_in_the_simulated_cells(design: ad.AnnData) -> None:
    """Per type, ``condition_effects`` of the simulated cells' stim-vs-ctrl effect against that
    of cells built from the stated truth (the type's ctrl cells, program genes times
    exp(lfc)): r 0.79-0.84 over all 300 genes (0.73-0.90 between halves of the real cells); the
    same fold changes put on other genes: r -0.03-0.05. On the program genes, the measured log
    fold change has r 0.99 and slope 0.97-1.03 on the stated one."""
    x = sp.csr_matrix(design.X)
    rng = np.random.default_rng(0)
    for t in TYPES:
        cols, lfc = _program(design, t)
        ctrl = np.flatnonzero(_rows(design.obs, t, "ctrl"))
        obs = pd.DataFrame({KEY: t, "condition": ["ctrl"] * len(ctrl) + ["stim"] * len(ctrl)})
        others = rng.choice(np.setdiff1d(np.arange(design.n_vars), cols), len(cols), False)
        r = {}
        for name, genes in (("truth", cols), ("elsewhere", others)):
            scale = np.ones(design.n_vars)
            scale[genes] = np.exp(lfc)
            oracle = sp.vstack([x[ctrl], x[ctrl] @ sp.diags(scale)], format="csr")
            r[name] = condition_effects(x, design.obs, oracle, obs, label_key=KEY,
                                        covariate="condition", level="stim",
                                        reference="ctrl")[t]["r"]  # fmt: skip
        assert r["truth"] > 0.7 and abs(r["elsewhere"]) < 0.3, (t, r)
        measured = (_log_mean(x, _rows(design.obs, t, "stim"))
                    - _log_mean(x, _rows(design.obs, t, "ctrl")))[cols]  # fmt: skip
        assert np.corrcoef(lfc, measured)[0, 1] > 0.95, t
        assert 0.85 < np.polyfit(lfc, measured, 1)[0] < 1.15, t


def test_cvae_generates_the_program_in_stim_cells_only(design: ad.AnnData,
                                                       one_torch_thread: None) -> None:
    """A CVAE on ``condition``, 20 epochs (about 10 s on one CPU thread): per type,
    ``condition_effects`` of generated against real cells r 0.88-0.93 (floor between halves of
    the real cells 0.73-0.90), slope 0.79-0.96; on the program genes, generated stim cells
    against real ctrl cells follow the stated fold changes (slope 0.82-1.02) and generated
    ctrl cells do not (slope 0.01-0.10)."""
    from cellsynth.models.cvae import CVAE

    model = CVAE(design, label_key=KEY, covariate_keys=["condition"])
    model.train(max_epochs=20, batch_size=128, n_hidden=[64], n_latent=8, select="elbo",
                min_steps=0, device="cpu", seed=0)
    table = pd.DataFrame({KEY: [t for t in TYPES for _ in (0, 1)],
                          "condition": ["ctrl", "stim"] * len(TYPES), "n": 300})
    syn = model.sample(table, seed=1)
    eff = condition_effects(design.X, design.obs, syn.X, syn.obs, label_key=KEY,
                            covariate="condition", level="stim", reference="ctrl")
    for t in TYPES:
        assert eff[t]["r"] > 0.6 and 0.5 < eff[t]["slope"] < 1.5, (t, eff[t])
        cols, lfc = _program(design, t)
        real_ctrl = _log_mean(design.X, _rows(design.obs, t, "ctrl"))[cols]
        stim = _log_mean(syn.X, _rows(syn.obs, t, "stim"))[cols] - real_ctrl
        ctrl = _log_mean(syn.X, _rows(syn.obs, t, "ctrl"))[cols] - real_ctrl
        assert np.polyfit(lfc, stim, 1)[0] > 0.5, (t, np.polyfit(lfc, stim, 1))
        assert abs(np.polyfit(lfc, ctrl, 1)[0]) < 0.25, (t, np.polyfit(lfc, ctrl, 1))


# ---------------------------------------------------------------------------------------------
# nb per combination


@pytest.fixture(scope="module")
def nb_pair(design: ad.AnnData) -> tuple[NegBinBaseline, NegBinBaseline]:
    by_type, by_combo = NegBinBaseline(), NegBinBaseline(covariate_keys=["condition", "donor"])
    by_type.fit(design, KEY, seed=0)
    by_combo.fit(design, KEY, seed=0)
    return by_type, by_combo


def test_nb_per_combination_recovers_the_combination_mean(design, nb_pair) -> None:
    """Generated stim cells against the real stim cells, per type, on the program genes: the
    per-combination fit's log mean is off by 0.06-0.16 on average, the type-only fit's by
    0.59-0.75 (it pools ctrl and stim); the per-combination fit's ``condition_effects`` r
    0.92-0.94 (floor 0.73-0.90), slope 0.91-1.05."""
    by_type, by_combo = nb_pair
    assert by_combo.history["combinations_fitted"] == 12 and by_combo.history["fallbacks"] == []
    for t in TYPES:
        cols, _ = _program(design, t)
        real = _log_mean(design.X, _rows(design.obs, t, "stim"))[cols]
        combo = by_combo.sample({t: 400}, where={"condition": "stim"}, seed=1)
        pooled = by_type.sample({t: 400}, seed=1)
        err_combo = np.abs(_log_mean(combo.X, np.ones(400, bool))[cols] - real).mean()
        err_type = np.abs(_log_mean(pooled.X, np.ones(400, bool))[cols] - real).mean()
        assert err_combo < 0.3 and err_type > 2 * err_combo, (t, err_combo, err_type)
    table = pd.DataFrame({KEY: [t for t in TYPES for _ in (0, 1)],
                          "condition": ["ctrl", "stim"] * len(TYPES), "n": 300})
    syn = by_combo.sample(table, seed=2)
    eff = condition_effects(design.X, design.obs, syn.X, syn.obs, label_key=KEY,
                            covariate="condition", level="stim", reference="ctrl")
    assert all(eff[t]["r"] > 0.7 and 0.7 < eff[t]["slope"] < 1.3 for t in TYPES), eff


def test_nb_falls_back_to_the_type_for_a_tiny_combination(design: ad.AnnData, caplog) -> None:
    """type_01 keeps 8 stim cells: that combination is the type's fit, the same draws as the
    type-only model's; it is recorded at fit and in the generated cells' provenance."""
    stim = np.flatnonzero(_rows(design.obs, "type_01", "stim"))
    keep = np.ones(design.n_obs, bool)
    keep[stim[8:]] = False
    a = design[keep].copy()
    a.obs["cellsynth_split"] = "train"
    model = NegBinBaseline(covariate_keys=["condition"], min_cells=20)
    history = model.fit(a, KEY)
    assert history["fallbacks"] == [{KEY: "type_01", "condition": "stim", "n_cells": 8}]
    plain = NegBinBaseline()
    plain.fit(a, KEY)
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        got = model.sample({"type_01": 60}, where={"condition": "stim"}, seed=3)
    assert "drawn from their type's fit, whatever their covariate levels" in caplog.text
    want = plain.sample({"type_01": 60}, seed=3)
    assert (got.X != want.X).nnz == 0
    assert got.uns["cellsynth"]["fallback_combinations"] == {KEY: ["type_01"], "condition": ["stim"]}
    assert got.uns["cellsynth"]["unseen_combinations"] == {}
    ctrl = model.sample({"type_01": 60}, where={"condition": "ctrl"}, seed=3)
    assert ctrl.uns["cellsynth"]["fallback_combinations"] == {} and (ctrl.X != want.X).nnz > 0


def test_nb_requests_where_and_unseen_combinations(design: ad.AnnData, tmp_path) -> None:
    held = _rows(design.obs, "type_00", "stim")
    model = NegBinBaseline(covariate_keys=["condition", "donor"])
    model.fit(design[~held].copy(), KEY, seed=0)
    syn = model.sample({"type_00": 40}, where={"condition": "stim"}, seed=0)
    assert syn.uns["cellsynth"]["unseen_combinations"] == {
        KEY: ["type_00"] * 2, "condition": ["stim"] * 2, "donor": ["D0", "D1"]}
    syn.write_h5ad(tmp_path / "unseen.h5ad")  # as sample returns it
    assert list(syn.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert list(syn.obs["donor"].cat.categories) == ["D0", "D1"]
    assert set(syn.obs["condition"]) == {"stim"}
    table = pd.DataFrame({KEY: ["type_01", "type_02", "type_02"],
                          "condition": ["stim", "ctrl", "stim"], "donor": ["D1", "D0", "*"],
                          "n": [7, 5, 9]})
    syn = model.sample(table, seed=0)
    got = syn.obs.groupby([KEY, "condition"], observed=True).size().to_dict()
    assert got == {("type_01", "stim"): 7, ("type_02", "ctrl"): 5, ("type_02", "stim"): 9}
    assert (syn.obs["donor"].iloc[:7] == "D1").all() and syn.X.shape == (21, design.n_vars)
    # a covariate not given follows the type's training composition
    syn = model.sample({"type_02": 400}, seed=0)
    share = (syn.obs["condition"] == "stim").mean()
    real = (design.obs.loc[design.obs[KEY] == "type_02", "condition"] == "stim").mean()
    assert abs(share - real) < 0.03
    assert (model.sample({"type_02": 400}, seed=0).X != syn.X).nnz == 0  # seeded


def test_nb_design_survives_save_and_load(nb_pair, tmp_path) -> None:
    _, model = nb_pair
    model.save(tmp_path / "m")
    loaded = NegBinBaseline.load(tmp_path / "m")
    assert loaded.design == model.design and loaded.combinations == model.combinations
    assert loaded.config == model.config and loaded.min_cells == 20
    a = model.sample({"type_02": 50}, where={"condition": "stim"}, seed=4)
    b = loaded.sample({"type_02": 50}, where={"condition": "stim"}, seed=4)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    from cellsynth.cli import main  # `cellsynth generate` takes an nb with its design

    out = tmp_path / "stim.h5ad"
    assert main(["generate", str(tmp_path / "m"), "--types", "type_01=30", "--where",
                 "condition=stim", "--out", str(out), "--quiet"]) == 0
    syn = ad.read_h5ad(out)
    assert syn.n_obs == 30 and set(syn.obs["condition"]) == {"stim"}
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["combinations"] = meta["combinations"][:-1]
    config.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="disagree"):
        NegBinBaseline.load(tmp_path / "m")


def test_nb_bad_covariates(design: ad.AnnData, nb_pair) -> None:
    plain, model = nb_pair
    with pytest.raises(DataError, match="covariate column 'batch' not in obs; columns are: "
                                        "cell_type, predicted_doublets, donor, condition"):
        NegBinBaseline(covariate_keys=["batch"]).fit(design, KEY)
    with pytest.raises(DataError, match="'IFN' is not a level of covariate 'condition' seen in "
                                        "training; seen: ctrl, stim"):
        model.sample({"type_01": 5}, where={"condition": "IFN"})
    with pytest.raises(DataError, match="no covariate 'tissue'"):
        model.sample({"type_01": 5}, where={"tissue": "lung"})
    with pytest.raises(DataError, match="trained without covariates"):
        plain.sample({"type_01": 5}, where={"condition": "stim"})
    with pytest.raises(ConfigError, match="min_cells"):
        NegBinBaseline(covariate_keys=["condition"], min_cells=0)


# ---------------------------------------------------------------------------------------------
# every entry point: the config, `cellsynth fit`, `generate` and `run`


def test_covariates_from_the_config_reach_nb_and_scvi() -> None:
    """``nb.covariates`` and ``scvi.covariates`` are declared as ``cvae.covariates``; at their
    defaults they leave every stage's and benchmark key as they were."""
    from cellsynth import config
    from cellsynth.benchmark import model_key
    from cellsynth.models.registry import make_generator
    from cellsynth.resume import hashed_settings

    cfg = config.load(None, ["nb.covariates=['condition']", "nb.min_cells=5",
                             "scvi.covariates=['donor', 'condition']"])  # fmt: skip
    assert config.covariates_of(cfg, "nb") == ["condition"]
    assert config.covariates_of(cfg, "scvi") == ["donor", "condition"]
    assert config.covariates_of(cfg, "cvae") == [] and config.covariates_of(cfg, "copy") == []
    nb = make_generator("nb", cfg)
    assert nb.covariate_keys == ["condition"] and nb.min_cells == 5
    assert make_generator("scvi", cfg).config.covariates == ["donor", "condition"]
    pp = make_generator("scvi-pp", cfg)  # re-draws training cells: no requests by covariate
    assert pp.config.covariates == [] and pp.design is None
    from cellsynth.pipeline.generate import _request

    with pytest.raises(DataError, match="the scvi-pp generator does not condition on covariates"):
        _request(pp, None, {"type_00": 5}, "condition=stim", None, None)
    with pytest.raises(ConfigError, match=r"nb\.min_cells"):
        config.load(None, ["nb.min_cells=1"])
    plain = config.load(None, [])
    assert hashed_settings(plain)["nb"] == {} and "covariates" not in hashed_settings(plain)["scvi"]
    assert model_key(cfg, "nb") != model_key(plain, "nb")
    assert model_key(cfg, "cvae") == model_key(plain, "cvae")


def _write(a: ad.AnnData, path) -> str:
    a.write_h5ad(path)
    return str(path)


def test_cli_fit_nb_with_covariates_end_to_end(design: ad.AnnData, tmp_path, capsys) -> None:
    """`fit --model nb --covariates`, then `generate --where` (an unseen combination listed in
    the file's uns), `--request` and `--like`; other generators are refused by name."""
    import tomllib

    from cellsynth.cli import main

    held = _rows(design.obs, "type_00", "stim")
    data = _write(design[~held].copy(), tmp_path / "train.h5ad")
    model = tmp_path / "nb"
    assert main(["fit", data, "--label-key", KEY, "--model", "nb", "--covariates",
                 "condition,donor", "--out", str(model), "--quiet"]) == 0  # fmt: skip
    saved = tomllib.loads((model / "run_config.toml").read_text())
    assert saved["nb"]["covariates"] == ["condition", "donor"]
    assert NegBinBaseline.load(model).design.keys == ["condition", "donor"]
    out = tmp_path / "stim.h5ad"
    assert main(["generate", str(model), "--types", "type_00=30,type_01=20", "--where",
                 "condition=stim", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    syn = ad.read_h5ad(out)
    assert syn.n_obs == 50 and set(syn.obs["condition"]) == {"stim"}
    assert list(syn.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert list(syn.obs["donor"].cat.categories) == ["D0", "D1"]
    unseen = syn.uns["cellsynth"]["unseen_combinations"]  # a table in the file
    assert list(unseen[KEY]) == ["type_00", "type_00"] and list(unseen["donor"]) == ["D0", "D1"]
    req = tmp_path / "request.tsv"
    req.write_text(f"{KEY}\tcondition\tdonor\tn\ntype_02\tctrl\tD1\t12\ntype_01\tstim\t*\t8\n")
    assert main(["generate", str(model), "--request", str(req), "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    syn = ad.read_h5ad(out)
    assert syn.n_obs == 20 and (syn.obs["donor"].iloc[:12] == "D1").all()
    assert (syn.obs["condition"].iloc[12:] == "stim").all()
    assert main(["generate", str(model), "--like", data, "--out", str(out), "--quiet"]) == 0
    cols = [KEY, "condition", "donor"]
    want = design[~held].obs[cols].astype(str).value_counts().sort_index()
    assert ad.read_h5ad(out).obs[cols].astype(str).value_counts().sort_index().equals(want)
    capsys.readouterr()
    assert main(["fit", data, "--label-key", KEY, "--model", "reference", "--covariates",
                 "condition", "--out", str(tmp_path / "ref")]) == 2  # fmt: skip
    assert ("the reference generator does not condition on covariates; use --model cvae, nb, "
            "scvi") in capsys.readouterr().err


def test_cvae_generate_writes_its_unseen_combinations(design: ad.AnnData, tmp_path) -> None:
    """`generate --where` of a cvae (cells streamed to the file chunk by chunk) with a
    combination no training cell had: the file lists it as a table (a list of dicts, as in
    memory, cannot be written to an h5ad)."""
    from cellsynth.cli import main

    small = design[np.random.default_rng(1).choice(design.n_obs, 600, replace=False)].copy()
    held = _rows(small.obs, "type_00", "stim")
    data = _write(small[~held].copy(), tmp_path / "small.h5ad")
    model, out = tmp_path / "cvae", tmp_path / "stim.h5ad"
    assert main(["fit", data, "--label-key", KEY, "--covariates", "condition", "--out",
                 str(model), "--quiet", "--set", "cvae.max_epochs=1", "--set",
                 "cvae.n_hidden=[16]", "--set", "cvae.n_latent=4", "--set",
                 "cvae.select='elbo'"]) == 0  # fmt: skip
    assert main(["generate", str(model), "--types", "type_00=10,type_01=5", "--where",
                 "condition=stim", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    unseen = ad.read_h5ad(out).uns["cellsynth"]["unseen_combinations"]
    assert list(unseen[KEY]) == ["type_00"] and list(unseen["condition"]) == ["stim"]


@pytest.mark.slow
def test_pipeline_nb_generates_and_scores_the_training_design(design: ad.AnnData,
                                                              tmp_path) -> None:  # fmt: skip
    """`cellsynth run` with generator.model = nb and nb.covariates: the experiments' cells
    carry the covariate, categorical with the training levels, in the training cells'
    composition per type, and the evaluation scores each (type x condition) combination
    (metrics/covariates.json), as a cvae run's (22 s; 10 s without the fidelity metrics)."""
    from cellsynth.cli import main
    from test_pipeline import FAST

    args = ["run", _write(design, tmp_path / "design.h5ad"), "--label-key", KEY, "--out",
            str(tmp_path / "run"), "--quiet"]  # fmt: skip
    for s in [*FAST, "generator.model='nb'", "nb.covariates=['condition']", "report.umap=false",
              "generator.n_per_type_eval=200", "qc.min_genes_per_cell=5"]:
        args += ["--set", s]
    assert main(args) == 0
    syn = ad.read_h5ad(tmp_path / "run" / "synthetic" / "train.h5ad")
    assert list(syn.obs["condition"].cat.categories) == ["ctrl", "stim"]
    real = design.obs.groupby(KEY, observed=True)["condition"].apply(lambda c: (c == "stim").mean())
    share = syn.obs.groupby(KEY, observed=True)["condition"].apply(lambda c: (c == "stim").mean())
    assert (np.abs(share - real.loc[share.index]) < 0.05).all(), (share, real)
    assert syn.uns["cellsynth"]["model"] == "nb"
    assert json.loads((tmp_path / "run" / "generator" / "config.json").read_text())[
        "config"]["covariate_keys"] == ["condition"]
    rep = json.loads((tmp_path / "run" / "metrics" / "covariates.json").read_text())
    per = rep["combinations"]["per_combination"]
    assert {c.split(" | ")[1] for c in per} == {"condition=ctrl", "condition=stim"}
    assert set(rep["effects"]["condition"]) <= {"ctrl vs stim", "stim vs ctrl"}


# ---------------------------------------------------------------------------------------------
# scvi with scvi-tools' categorical_covariate_keys


def test_scvi_with_covariates_through_the_cli(design: ad.AnnData, tmp_path, capfd) -> None:
    """`fit --model scvi --covariates` (2 epochs on 600 cells), then `generate --where` and
    `--like`: the requested levels in obs with the training categories, the unseen
    combination listed, the training design in ``config.json``."""
    pytest.importorskip("scvi")
    from cellsynth.cli import main

    small = design[np.random.default_rng(0).choice(design.n_obs, 600, replace=False)].copy()
    held = _rows(small.obs, "type_00", "stim")
    data = _write(small[~held].copy(), tmp_path / "small.h5ad")
    model = tmp_path / "scvi"
    assert main(["fit", data, "--label-key", KEY, "--model", "scvi", "--covariates", "condition",
                 "--out", str(model), "--quiet", "--set", "scvi.max_epochs=2", "--set",
                 "scvi.n_hidden=16", "--set", "scvi.n_latent=4"]) == 0  # fmt: skip
    err = capfd.readouterr().err  # --quiet: no trainer banners, tips or set-up warnings
    assert not any(s in err for s in ("GPU available", "Tip:", "Seed set", "log_every_n_steps")), err
    meta = json.loads((model / "config.json").read_text())
    assert meta["design"]["keys"] == ["condition"] and meta["module_kwargs"]["n_cats_per_cov"] == [2]
    out = tmp_path / "stim.h5ad"
    assert main(["generate", str(model), "--types", "type_00=20,type_01=10", "--where",
                 "condition=stim", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    syn = ad.read_h5ad(out)
    assert syn.n_obs == 30 and set(syn.obs["condition"]) == {"stim"}
    assert list(syn.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert set(syn.uns["cellsynth"]["unseen_combinations"]) == {KEY, "condition"}
    assert list(syn.uns["cellsynth"]["unseen_combinations"][KEY]) == ["type_00"]
    assert main(["generate", str(model), "--like", data, "--out", str(out), "--quiet"]) == 0
    cols = [KEY, "condition"]
    want = small[~held].obs[cols].astype(str).value_counts().sort_index()
    assert ad.read_h5ad(out).obs[cols].astype(str).value_counts().sort_index().equals(want)


@pytest.fixture(scope="module")
def scvi_fit(design: ad.AnnData):
    """SCVI on ``condition`` and ``donor`` with type_00 x stim held out: 30 epochs, 64 hidden
    units, 8 latent dimensions."""
    pytest.importorskip("scvi")
    from cellsynth.config import ScviConfig
    from cellsynth.models.scvi import ScviGenerator

    held = _rows(design.obs, "type_00", "stim")
    model = ScviGenerator(ScviConfig(covariates=["condition", "donor"], max_epochs=30,
                                     n_hidden=64, n_latent=8, gene_likelihood="nb"))  # fmt: skip
    model.fit(design[~held].copy(), KEY, seed=0)
    return model


def test_scvi_generates_the_requested_levels(design, scvi_fit, tmp_path) -> None:
    """The decoder takes the requested levels: on each type's program genes, generated stim
    cells against generated ctrl cells follow the stated fold changes (slope 0.60 and 0.68 for
    type_01 and type_02; 0.88 for type_00 x stim, never seen: scvi's decoder takes the
    condition as an input beside z, shared by the types), the obs carries the covariates with
    the training categories, the unseen combination is listed, and the design survives save
    and load (SCVI's fit: 7 s alone on two cores, a minute or more when they are busy)."""
    from cellsynth.models.scvi import ScviGenerator

    model = scvi_fit
    table = pd.DataFrame({KEY: [t for t in TYPES for _ in (0, 1)],
                          "condition": ["ctrl", "stim"] * len(TYPES), "n": 300})
    syn = model.sample(table, seed=1)
    assert list(syn.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert list(syn.obs["donor"].cat.categories) == ["D0", "D1"]
    assert syn.obs.groupby([KEY, "condition"], observed=True).size().eq(300).all()
    unseen = pd.DataFrame(syn.uns["cellsynth"]["unseen_combinations"])
    assert ((unseen[KEY] == "type_00") & (unseen["condition"] == "stim")
            & (unseen["donor"] == "D0")).any()
    syn.write_h5ad(tmp_path / "unseen.h5ad")  # as sample returns it
    slopes = {}
    for t in TYPES:
        cols, lfc = _program(design, t)
        diff = (_log_mean(syn.X, _rows(syn.obs, t, "stim"))
                - _log_mean(syn.X, _rows(syn.obs, t, "ctrl")))[cols]  # fmt: skip
        slopes[t] = np.polyfit(lfc, diff, 1)[0]
    assert all(slopes[t] > 0.5 for t in ("type_01", "type_02")), slopes
    assert slopes["type_00"] > 0.2, slopes  # never seen: only what the decoder shares
    where = model.sample({"type_01": 40}, where={"condition": "stim", "donor": "D1"}, seed=2)
    assert set(where.obs["condition"]) == {"stim"} and set(where.obs["donor"]) == {"D1"}
    assert where.uns["cellsynth"]["unseen_combinations"] == {}
    model.save(tmp_path / "scvi")
    loaded = ScviGenerator.load(tmp_path / "scvi")
    assert loaded.design == model.design and loaded.module_kwargs["n_cats_per_cov"] == [2, 2]
    again = loaded.sample({"type_01": 40}, where={"condition": "stim", "donor": "D1"}, seed=2)
    assert (again.X != where.X).nnz == 0 and again.obs.equals(where.obs)
    with pytest.raises(DataError, match="'IFN' is not a level of covariate 'condition'"):
        model.sample({"type_01": 5}, where={"condition": "IFN"})
    meta = json.loads((tmp_path / "scvi" / "config.json").read_text())
    meta["module_kwargs"]["n_cats_per_cov"] = [2, 3]
    (tmp_path / "scvi" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError):
        ScviGenerator.load(tmp_path / "scvi")
