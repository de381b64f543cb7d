"""Faults of sweep 41b in the public API and the CLI: each test failed before its fix.

1. ``cs.ScviGenerator(adata)`` takes the data as ``cs.CVAE(adata)`` does (and
   ``covariate_keys=``), and refuses anything that is neither data nor a ``ScviConfig``.
2. ``cs.models``, ``cs.metrics`` and the other subpackages resolve lazily; an unknown name's
   error lists what exists.
3. ``cellsynth generate --request FILE --where ...`` says the command line's fix.
4. A level or type typed in another case gets the one that matches ignoring case as the
   suggestion (and is still refused).
5. ``cs.pl.history`` on a saved model directory without a curve names the model's kind.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

import cellsynth as cs
from cellsynth.cli import main
from cellsynth.config import NBConfig, ScviConfig
from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import ConfigError, DataError, did_you_mean
from cellsynth.models._design import Design
from cellsynth.models._training import known_label

LABEL = "cell_type"


@pytest.fixture(scope="module")
def atlas():
    """400 cells, 60 genes, 2 types, 2 donors, ctrl and stim (``condition``)."""
    return simulate_atlas(400, 60, 2, n_donors=2, n_conditions=2, seed=0, doublet_rate=0,
                          uninformative_rate=0)  # fmt: skip


@pytest.fixture(scope="module")
def nb_dir(atlas, tmp_path_factory):
    """A saved nb model conditioned on ``condition`` (fitted by moments: no epochs)."""
    model = cs.NegBinBaseline(covariate_keys=["condition"])
    model.fit(atlas, LABEL, seed=0)
    path = tmp_path_factory.mktemp("faults41") / "nb"
    model.save(path)
    return path


# -- 1: ScviGenerator takes the data as CVAE does -------------------------------------------------


def test_scvi_generator_takes_data_first_as_the_cvae_does(atlas):
    pytest.importorskip("scvi")
    params = list(inspect.signature(cs.ScviGenerator).parameters)
    assert params == list(inspect.signature(cs.CVAE).parameters) == [
        "adata", "label_key", "config", "covariate_keys"]
    model = cs.ScviGenerator(atlas, LABEL, covariate_keys="condition")
    assert model.design.keys == ["condition"] and model.labels == ["type_00", "type_01"]
    assert "covariates=['condition']" in repr(model)  # no AttributeError of the data
    with cs.settings.override(progress=False):
        history = model.train(max_epochs=1, n_hidden=8, n_latent=2, batch_size=128, seed=0)
    assert history["epochs"] == 1 and model.config.n_latent == 2
    cells = model.sample({"type_00": 5}, where={"condition": "stim"}, seed=1)
    assert cells.n_obs == 5 and set(cells.obs["condition"]) == {"stim"}
    # the earlier form, a ScviConfig first, is still the config
    old = cs.ScviGenerator(ScviConfig(n_latent=3, covariates=["condition"]))
    assert old.config.n_latent == 3 and old.adata is None


def test_scvi_generator_refuses_what_is_neither_data_nor_its_config(atlas):
    with pytest.raises(DataError, match=r"ScviGenerator takes an AnnData .* got NBConfig; give "
                                        r"the settings as config=ScviConfig"):
        cs.ScviGenerator(NBConfig())
    with pytest.raises(ConfigError, match="config is a NBConfig; give a ScviConfig"):
        cs.ScviGenerator(atlas, config=NBConfig())
    with pytest.raises(DataError, match=r"built without data; use ScviGenerator\(adata\)"):
        cs.ScviGenerator().train()
    with pytest.raises(ConfigError, match="unknown scvi setting"):
        cs.ScviGenerator(atlas).train(lr=1e-3)
    with pytest.raises(DataError, match="covariate column 'nope' not in obs"):
        cs.ScviGenerator(atlas, covariate_keys=["nope"])


# -- 4: a name typed in another case --------------------------------------------------------------


def _condition_design() -> Design:
    obs = pd.DataFrame({LABEL: ["B", "T"] * 10, "condition": ["ctrl"] * 10 + ["stim"] * 10})
    rows = np.arange(len(obs))
    design, _ = Design.fit(obs, ["condition"], LABEL, obs[LABEL].to_numpy(), rows, rows)
    return design


@pytest.mark.parametrize("typed", ["Stim", "STIM", "sTiM"])
def test_a_level_in_another_case_is_suggested_and_still_refused(typed):
    design = _condition_design()
    with pytest.raises(DataError, match=rf"'{typed}' is not a level of covariate 'condition' "
                                        r"seen in training \(did you mean 'stim'\?\)"):
        design.plan({"B": 3}, {"condition": typed}, ["B", "T"], LABEL)
    table = pd.DataFrame({LABEL: ["B"], "condition": [typed], "n": [3]})
    with pytest.raises(DataError, match=r"\(did you mean 'stim'\?\)"):
        design.plan(table, None, ["B", "T"], LABEL)


def test_a_type_in_another_case_is_the_one_suggestion():
    types = ["B cells", "CD4 T cells", "CD8 T cells", "NK cells"]
    with pytest.raises(DataError, match=r"unknown cell type 'b cells' \(did you mean 'B cells'\?\)"):
        known_label("b cells", types)
    with pytest.raises(DataError, match=r"\(did you mean 'NK cells'\?\)"):
        known_label("NK CELLS", types)
    # spelling, not case: the closest names as before
    assert did_you_mean("CD4 T cels", types).startswith(" (did you mean 'CD4 T cells'")
    assert did_you_mean("zzz", types) == ""


# -- 2: the subpackages from ``import cellsynth as cs`` -------------------------------------------


def test_documented_subpackages_are_attributes():
    assert cs.models.CVAE is cs.CVAE
    assert callable(cs.metrics.condition_effects)
    assert callable(cs.metrics.detection_at_depth)
    assert cs.metrics.verdict.RULES
    assert callable(cs.evaluation.compare)
    assert cs.config.ScviConfig is not None  # a module named in the docs (cellsynth.config.X)
    assert {"models", "metrics", "evaluation", "data"} <= set(dir(cs))


def test_an_unknown_attribute_lists_what_exists():
    with pytest.raises(AttributeError, match=r"no attribute 'metric' \(did you mean 'metrics'\?\)"
                       r".*CVAE.*subpackages.*metrics, models"):
        cs.metric  # noqa: B018
    with pytest.raises(AttributeError, match=r"\(did you mean 'CVAE'\?\)"):
        cs.cvae  # noqa: B018
    assert not hasattr(cs, "__wrapped__")  # a probe by a tool: a plain AttributeError


# -- 3: the command line's fix for --request with --where -----------------------------------------


def test_cli_request_with_where_says_the_command_line_fix(nb_dir, tmp_path, capsys):
    request = tmp_path / "req.tsv"
    request.write_text(f"{LABEL}\tn\ntype_00\t3\n")
    out = tmp_path / "x.h5ad"
    code = main(["generate", str(nb_dir), "--request", str(request), "--where", "condition=stim",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"--request {request} takes the covariate levels from its columns" in err
    assert "'condition'" in err and "drop --where" in err
    assert "where=" not in err and "request[name]" not in err  # the Python spelling
    # the same file with the column and without --where is the way the message gives
    request.write_text(f"{LABEL}\tcondition\tn\ntype_00\tstim\t3\n")
    assert main(["generate", str(nb_dir), "--request", str(request), "--out", str(out),
                 "--quiet"]) == 0


# -- 5: cs.pl.history of a saved model without a curve --------------------------------------------


def test_history_of_an_nb_directory_names_the_model_kind(nb_dir):
    with pytest.raises(DataError, match=r"is a saved nb model, which is fitted by moments "
                                        r"without epochs and has no training curve"):
        cs.pl.history(nb_dir)
    with pytest.raises(DataError, match="saved nb model"):  # its history.json path alike
        cs.pl.history(nb_dir / "history.json")
