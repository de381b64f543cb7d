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

import numpy as np
import pandas as pd
import pytest

import cellsynth as cs
from cellsynth.errors import DataError, did_you_mean
from cellsynth.models._design import Design
from cellsynth.models._training import known_label

LABEL = "cell_type"


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
