"""Covariates misused (session 49's sweep): one of cellsynth's own columns as a covariate; a
covariate named in another Unicode form; covariates given both in a config and as
covariate_keys; a covariate whose name holds a comma; levels holding a comma listed apart; a
covariate held in a request table's index; where= beside a plan; a level named like any level."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth import keys as K
from cellsynth.cli import main
from cellsynth.errors import DataError
from test_covariates import _design_atlas


def test_cellsynth_s_own_columns_are_refused_as_covariates(tmp_path, capsys):
    """``fit --covariates cellsynth_split`` on a file without that column fitted a model
    conditioned on the split the fit itself had drawn (one level, 'train', with a warning that
    it tells nothing), and on a run's preprocessed data, on its train/val/test split."""
    from cellsynth.models import NegBinBaseline, check_covariate_columns

    a = _design_atlas(seed=1)[:300].copy()
    a.write_h5ad(tmp_path / "design.h5ad")
    assert main(["fit", str(tmp_path / "design.h5ad"), "--label-key", "cell_type", "--model",
                 "nb", "--covariates", K.SPLIT, "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "covariate 'cellsynth_split' is one of cellsynth's own obs columns" in err
    assert "adata.obs.rename(columns={'cellsynth_split': 'split'})" in err
    assert not (tmp_path / "m").exists()
    a.obs[K.SPLIT] = np.array(["train", "train", "val", "test"])[np.arange(a.n_obs) % 4]
    a.obs[K.GROUP] = "all"
    for key in (K.SPLIT, K.GROUP):
        with pytest.raises(DataError, match=f"covariate '{key}' is one of cellsynth's own"):
            NegBinBaseline(covariate_keys=["condition", key]).fit(a, "cell_type")
        with pytest.raises(DataError, match=f"covariate '{key}' is one of cellsynth's own"):
            check_covariate_columns(a.obs, [key], "cell_type")  # a run's, before QC


def test_a_covariate_named_in_another_unicode_form(tmp_path, capsys):
    """A covariate's name with a decomposed accent (copied from a file name on macOS), where
    levels and types are matched whatever their Unicode form, was refused as "the model has no
    covariate 'état' (did you mean 'état'?)", two names that print alike; a request file's
    header so was refused row by row without the line. A fit's column so is said to differ in
    its Unicode form."""
    import unicodedata

    from cellsynth.models import NegBinBaseline

    nfc, nfd = (unicodedata.normalize(form, "état") for form in ("NFC", "NFD"))
    a = _design_atlas(seed=1)[:400].copy()
    a.obs[nfc] = a.obs["donor"].astype(str)
    model = NegBinBaseline(covariate_keys=[nfc])
    model.fit(a, "cell_type")
    syn = model.sample({"type_01": 4}, where={nfd: "d2"}, seed=0)
    assert list(syn.obs[nfc]) == ["d2"] * 4
    twice = f"names the covariate '{nfc}' twice \\({nfc!r} and {nfd!r}, written two ways"
    with pytest.raises(DataError, match=twice):
        model.sample({"type_01": 4}, where={nfc: "d1", nfd: "d2"})
    with pytest.raises(DataError, match=r"did you mean 'état'\? The same name in another "
                                        r"Unicode form.*write it as the data does\)"):
        NegBinBaseline(covariate_keys=[nfd]).fit(a, "cell_type")
    model.save(tmp_path / "model")
    request = tmp_path / "r.tsv"
    request.write_text(f"cell_type\t{nfd}\tn\ntype_00\td1\t3\ntype_01\td9\t2\n", "utf-8")
    assert main(["generate", str(tmp_path / "model"), "--request", str(request), "--out",
                 str(tmp_path / "o.h5ad"), "--quiet"]) == 2
    assert "r.tsv, line 3: 'd9' is not a level of covariate 'état'" in capsys.readouterr().err
    request.write_text(f"cell_type\t{nfd}\tn\ntype_00\td1\t3\n", "utf-8")
    assert main(["generate", str(tmp_path / "model"), "--request", str(request), "--out",
                 str(tmp_path / "o.h5ad"), "--quiet"]) == 0


def test_covariates_given_in_the_config_and_as_covariate_keys_are_refused_unless_alike():
    """``CVAE(adata, config=CVAEConfig(covariates=['condition']), covariate_keys=['donor'])``
    (a run's ``cfg.cvae`` reused with other keys) conditioned on donor alone, the config's
    condition dropped without a word; the command line refuses ``--covariates`` beside another
    ``cvae.covariates``."""
    from cellsynth.config import CVAEConfig, ScviConfig
    from cellsynth.errors import ConfigError
    from cellsynth.models import CVAE, ScviGenerator

    a = _design_atlas(seed=1)[:300].copy()
    with pytest.raises(ConfigError, match=r"the covariates are given twice: "
                                          r"covariate_keys=\['donor'\] and CVAEConfig\(covariates="
                                          r"\['condition'\]\); give one"):
        CVAE(a, "cell_type", config=CVAEConfig(covariates=["condition"]), covariate_keys="donor")
    with pytest.raises(ConfigError, match=r"covariate_keys=\[\] and ScviConfig"):
        ScviGenerator(a, "cell_type", config=ScviConfig(covariates=["condition"]),
                      covariate_keys=[])
    same = CVAE(a, "cell_type", config=CVAEConfig(covariates=["condition"]),
                covariate_keys=["condition"])
    assert same.design.keys == ["condition"]
    assert CVAE(a, "cell_type", config=CVAEConfig(), covariate_keys=["donor"]).design.keys == [
        "donor"]


def test_a_covariate_whose_name_holds_a_comma(tmp_path, capsys):
    """``fit --covariates "dose, ng"`` was refused as "covariate column 'dose' not in obs (did
    you mean 'dose, ng'?)", the name given, which --covariates splits again; a model fitted on
    it (--set) could not be asked for its levels with ``--where "dose, ng=10"``, refused as
    "got 'dose'; levels holding ',' or '=' go in a --request file"."""
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=1)[:400].copy()
    a.obs["dose, ng"] = np.where(a.obs["condition"] == "stim", "10", "0")
    a.write_h5ad(tmp_path / "dose.h5ad")
    assert main(["fit", str(tmp_path / "dose.h5ad"), "--label-key", "cell_type", "--model", "nb",
                 "--covariates", "dose, ng", "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "columns are: cell_type; " in err
    assert ("the column 'dose, ng' holds a comma, at which --covariates splits its list: give it "
            "as --set \"cvae.covariates=['dose, ng']\"") in err
    model = NegBinBaseline(covariate_keys=["dose, ng"])
    model.fit(a, "cell_type")
    model.save(tmp_path / "m")
    out = tmp_path / "o.h5ad"
    assert main(["generate", str(tmp_path / "m"), "--types", "type_01=5", "--where",
                 "dose, ng=10", "--out", str(out), "--quiet"]) == 0
    import anndata as ad

    assert list(ad.read_h5ad(out).obs["dose, ng"]) == ["10"] * 5
    assert main(["generate", str(tmp_path / "m"), "--types", "type_01=5", "--where",
                 "dose,ng=10", "--out", str(out), "--quiet"]) == 2
    assert "read whole when written as the model has it" in capsys.readouterr().err


def test_levels_holding_a_comma_are_listed_apart(tmp_path):
    """``cellsynth info MODEL`` listed the levels 'ctrl' and 'IFN-b, 10 ng' as "ctrl, IFN-b,
    10 ng" (three levels to a reader, who then asked for --where condition=IFN-b), and an
    unknown level's error listed 'a,b' and 'c' as "a,b, c"."""
    from cellsynth.info import describe
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=1)[:400].copy()
    a.obs["condition"] = np.where(a.obs["condition"] == "stim", "IFN-b, 10 ng", "ctrl")
    a.obs["pair"] = np.where(a.obs["donor"] == "d1", "a,b", "c")
    model = NegBinBaseline(covariate_keys=["condition", "pair"])
    model.fit(a, "cell_type")
    model.save(tmp_path / "m")
    assert describe(tmp_path / "m")["covariates"] == {"condition": "IFN-b, 10 ng; ctrl",
                                                      "pair": "a,b; c"}
    with pytest.raises(DataError, match=r"'d' is not a level of covariate 'pair' seen in "
                                        r"training; seen: a,b; c$"):
        model.sample({"type_01": 2}, where={"pair": "d"})


def test_a_covariate_held_in_a_request_table_s_index_is_refused(tmp_path):
    """A request table with its covariate in the index (``set_index('condition')``, or a
    groupby's ``reset_index(level='cell_type')``) generated the types in their training
    composition over it, the conditions asked for ignored without a word, or was refused as
    "rows 1 and 4 both ask for type_00" (they asked for two conditions). A request file's rows
    are indexed by their lines under a name no covariate has: a model conditioned on a cell
    'line' still reads one."""
    import pandas as pd

    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=1)[:400].copy()
    model = NegBinBaseline(covariate_keys=["condition"])
    model.fit(a, "cell_type")
    asked = pd.DataFrame({"cell_type": ["type_00", "type_01"], "n": [6, 6]},
                         index=pd.Index(["stim", "stim"], name="condition"))
    grouped = a.obs.groupby(["condition", "cell_type"], observed=True).size().rename(
        "n").reset_index(level="cell_type")
    for request in (asked, grouped):
        with pytest.raises(DataError, match=r"the request table's index holds the covariate "
                                            r"'condition'.*request\.reset_index\('condition'\)"):
            model.sample(request)
    assert set(model.sample(asked.reset_index(), seed=0).obs["condition"]) == {"stim"}
    a.obs["line"] = a.obs["donor"].astype(str)
    lines = NegBinBaseline(covariate_keys=["line"])
    lines.fit(a, "cell_type")
    lines.save(tmp_path / "m")
    (tmp_path / "r.tsv").write_text("cell_type\tn\ntype_00\t3\n")
    assert main(["generate", str(tmp_path / "m"), "--request", str(tmp_path / "r.tsv"),
                 "--out", str(tmp_path / "o.h5ad"), "--quiet"]) == 0


def test_where_beside_a_plan_is_refused():
    """``model.sample(plan, where={'condition': 'stim'})``, a plan made for ctrl, generated
    ctrl cells: a plan's levels are its codes, and where= was ignored without a word."""
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=1)[:400].copy()
    model = NegBinBaseline(covariate_keys=["condition"])
    model.fit(a, "cell_type")
    plan, _ = model.plan({"type_00": 4}, {"condition": "ctrl"})
    with pytest.raises(DataError, match=r"a plan \[\(type, level codes, n\), \.\.\.\] carries "
                                        r"its levels in its codes, and where=\{'condition': "
                                        r"'stim'\} is not read"):
        model.sample(plan, where={"condition": "stim"})
    assert list(model.sample(plan, where={}, seed=0).obs["condition"]) == ["ctrl"] * 4


def test_a_level_named_like_any_level_is_refused_at_fit(tmp_path, capsys):
    """A covariate with the level '*' (an annotation's "any") was fitted, but a request's '*'
    means any level: a request table's row for it, and a --like twin of its cells, got the
    type's training composition (half '*', half 'ctrl') instead of its cells."""
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=1)[:400].copy()
    a.obs["group"] = np.where(a.obs["condition"] == "stim", " *", "ctrl")
    with pytest.raises(DataError, match=r"covariate 'group' has the level ' \*', which a request "
                                        r"reads as any level .*replace\('\*', 'other'\)"):
        NegBinBaseline(covariate_keys=["group"]).fit(a, "cell_type")
    a.write_h5ad(tmp_path / "star.h5ad")
    assert main(["fit", str(tmp_path / "star.h5ad"), "--label-key", "cell_type", "--model", "nb",
                 "--covariates", "group", "--out", str(tmp_path / "m"), "--quiet"]) == 2
    assert "has the level ' *'" in capsys.readouterr().err
