"""The gene scale of covariate levels within a type (models._levels, issue 18): the factors a
known design gives, their shrinkage, the levels left without one, and a decoder's attenuated
condition effect restored in generated cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellsynth.models._levels import (
    LEVEL_MIN_CELLS,
    Combinations,
    carried_target,
    effect_shift,
    level_factors,
    transferred_effects,
)
from cellsynth.models.cvae import CVAE
from test_covariates import PROGRAM, _design_atlas


def _combinations(rows: dict[tuple[int, ...], tuple[np.ndarray, int]]) -> Combinations:
    """A Combinations holding the given per-combination sums and cell counts."""
    out = Combinations()
    for key, (total, n) in rows.items():
        out.index[key] = len(out.sums)
        out.sums.append(np.asarray(total, dtype=np.float64))
        out.cells.append(n)
    return out


def test_add_sums_rows_per_combination():
    comb = Combinations()
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 4.0]])
    comb.add(x, torch.tensor([[0, 1], [1, 0], [0, 1]]))
    comb.add(x[:1], torch.tensor([[1, 0]]))
    assert comb.cells[comb.index[(0, 1)]] == 2 and comb.cells[comb.index[(1, 0)]] == 2
    np.testing.assert_allclose(comb.sums[comb.index[(0, 1)]], [5.0, 4.0])
    np.testing.assert_allclose(comb.sums[comb.index[(1, 0)]], [3.0, 1.0])


def test_factors_recover_a_donor_and_a_condition_effect():
    """A balanced 3 donors x 2 conditions design whose counts the decoder's means miss by a
    donor factor times a condition factor: the fitted factors' product is each combination's
    miss, and a gene with a handful of counts is shrunk towards one."""
    genes = 4
    donor = np.array([[1.0, 1.0, 1.0, 1.0], [1.5, 0.5, 1.0, 1.0], [0.8, 2.0, 1.0, 1.0]])
    cond = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 0.5, 1.0]])
    base = np.array([50.0, 40.0, 30.0, 0.002])  # decoded mean per cell; the last gene is rare
    n = 200
    observed, decoded = {}, {}
    for d in range(3):
        for c in range(2):
            observed[(d, c)] = (n * base * donor[d] * cond[c] * np.array([1, 1, 1, 3]), n)
            decoded[(d, c)] = (2 * n * base, 2 * n)  # twice as many draws: means are what count
    got = level_factors(_combinations(observed), _combinations(decoded), np.ones(genes), [3, 2])
    assert sorted(got) == [0, 1, 2, 3, 4]  # donor levels at 0-2, the condition's at 3-4
    for d in range(3):
        for c in range(2):
            fitted = got[d] * got[3 + c]
            np.testing.assert_allclose(fitted[:3], (donor[d] * cond[c])[:3], rtol=0.02)
    # the rare gene: 3x in every combination, but 1.2 counts against 0.4 each: shrunk towards one
    assert 1.0 < got[0][3] * got[3][3] < 2.0


def test_levels_without_enough_cells_or_a_second_level_get_no_factor():
    few = LEVEL_MIN_CELLS - 1
    observed = {(0, 0): (np.full(3, 500.0), 100), (1, 0): (np.full(3, 90.0), few)}
    decoded = {(0, 0): (np.full(3, 200.0), 100), (1, 0): (np.full(3, 9.0), few)}
    got = level_factors(_combinations(observed), _combinations(decoded), np.ones(3), [2, 1])
    assert list(got) == [0]  # level 1 has too few cells; the second covariate one level
    np.testing.assert_allclose(got[0], np.full(3, (500 + 5) / (200 + 5)))
    over = Combinations()
    over.overflow = True
    assert level_factors(over, _combinations(decoded), np.ones(3), [2, 1]) == {}


def _stim_design(n_types: int, own: bool) -> list[Combinations]:
    """Types with a ctrl and a stim level (type 0: ctrl only), 40 genes: stim multiplies genes
    0-4 by 4 in every type and, with ``own``, one gene of each type's own (5 + type) by 4."""
    rng = np.random.default_rng(0)
    base = rng.uniform(20, 60, (n_types, 40))  # mean counts per cell, each type its own
    out = []
    for t in range(n_types):
        stim = np.ones(40)
        stim[:5] = 4.0
        if own:
            stim[5 + t] = 4.0
        rows = {(0,): (100 * base[t], 100)}
        if t:
            rows[(1,)] = (100 * base[t] * stim, 100)
        out.append(_combinations(rows))
    return out


def test_a_level_a_type_lacked_carries_the_effect_the_other_types_share():
    """Type 0 never had stim: it gets the response all three others share, little of the genes
    each of them changes on its own, and nothing elsewhere."""
    got = transferred_effects(_stim_design(4, own=True), [2])
    assert list(got) == [(0, 0, 1)]
    effect = got[(0, 0, 1)]
    np.testing.assert_allclose(effect[:5], np.log(4.0), rtol=0.02)
    assert np.abs(effect[6:9]).max() < 0.3 * np.log(4.0)  # the others' own genes
    assert np.abs(effect[9:]).max() < 0.02


def test_no_effect_is_carried_from_fewer_than_two_types_or_past_the_cap(monkeypatch, caplog):
    assert transferred_effects(_stim_design(2, own=False), [2]) == {}
    assert len(transferred_effects(_stim_design(3, own=False), [2])) == 1
    # a type with no counts at all has no likeness to the others: no NaN reaches the effect
    design = _stim_design(4, own=False)
    design[0].sums = [np.zeros(40)]
    assert np.isfinite(transferred_effects(design, [2])[(0, 0, 1)]).all()
    monkeypatch.setattr("cellsynth.models._levels.MAX_TRANSFER_PAIRS", 0)
    assert transferred_effects(_stim_design(3, own=False), [2]) == {}
    assert "more than 0" in caplog.text


def _program_ratios(model, a, program) -> tuple[float, float]:
    """Generated and real stim / ctrl ratio of the program's mean counts per 10k, type_01."""
    def ratio(x, stim):
        x = sp.csr_matrix(x).toarray()
        x = x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4
        return float(x[stim][:, program].mean() / x[~stim][:, program].mean())

    table = pd.DataFrame({"cell_type": ["type_01"] * 2, "condition": ["ctrl", "stim"], "n": 600})
    syn = model.sample(table, seed=5)
    real = a[(a.obs["cell_type"] == "type_01").to_numpy()]
    return (ratio(syn.X, (syn.obs["condition"] == "stim").to_numpy()),
            ratio(real.X, (real.obs["condition"] == "stim").to_numpy()))


def test_a_briefly_trained_decoder_keeps_the_condition_effect_through_the_level_scale():
    """Two epochs leave the decoder's stim program attenuated; the level scale brings the
    generated stim / ctrl ratio to the training cells', and switching it off loses it."""
    a = _design_atlas()
    model = CVAE(a, label_key="cell_type", covariate_keys=["condition", "donor"])
    model.train(max_epochs=2, batch_size=128, n_hidden=[64], n_latent=8, select="elbo",
                min_steps=0, device="cpu", seed=0)
    module = model.module
    assert module.level_scale.shape[0] > 1 and int(module.level_rows.max()) > 0
    calibrated, real = _program_ratios(model, a, PROGRAM)
    rows, table = module.level_rows.clone(), module.level_scale.clone()
    module.set_level_scale(torch.zeros_like(rows), torch.ones(1, module.n_input))
    raw, _ = _program_ratios(model, a, PROGRAM)
    assert abs(np.log(calibrated / real)) < 0.15, (calibrated, real)
    assert abs(np.log(raw / real)) > 2 * abs(np.log(calibrated / real)), (raw, calibrated, real)
    module.set_level_scale(rows, table)
    with pytest.raises(ValueError, match="first row of ones"):
        module.set_level_scale(rows, table * 2)


def test_a_gene_the_level_induces_from_no_counts_is_induced_where_the_effect_is_carried():
    """Three types raise gene 0 from no counts to 5 a cell at stim (an interferon gene) and
    double gene 1; type 3 never had stim. Carried on the scale it is estimated on (log1p of
    normalised expression), the effect raises type 3's gene 0 towards the others' level (a
    product with its mean of zero left it at zero: on Kang a third of the carried effect was
    lost) and still doubles gene 1, leaving gene 2 as it was."""
    n = 100
    ctrl = np.array([0.0, 10.0, 3.0, 987.0])  # counts a cell: a library of 1,000
    design = []
    for t in range(4):
        rows = {(0,): (ctrl * n, n)}
        if t < 3:
            rows[(1,)] = (np.array([5.0, 20.0, 3.0, 972.0]) * n, n)
        design.append(_combinations(rows))
    effect = transferred_effects(design, [2])[(3, 0, 1)]
    assert effect_shift(ctrl) == pytest.approx(0.1)  # one count per 10,000 of the library
    target = carried_target(ctrl * n, effect, effect_shift(ctrl) * n) / n  # per cell
    assert target[0] > 3.0  # induced, not 0 x exp(effect)
    assert target[1] == pytest.approx(20.0, rel=0.05)
    assert target[2] == pytest.approx(3.0, rel=0.05)
    assert np.all(carried_target(np.zeros(3), np.full(3, -5.0), 1.0) == 0)  # never negative
