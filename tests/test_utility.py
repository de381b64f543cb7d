"""Utility metrics: TSTR against TRTR, and rare-type augmentation arms."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.config import ClassifierConfig
from cellsynth.errors import DataError
from cellsynth.metrics import augmentation, fit_space, rarest_types, tstr

CFG = ClassifierConfig(n_estimators=40, learning_rate=0.3, max_depth=4, early_stopping_rounds=5,
                       device="cpu", n_jobs=1)
N_TYPES, DIM = 4, 8


def mixture(n_per_type: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per type, overlapping a little (classifiers score ~0.9)."""
    centres = np.random.default_rng(0).standard_normal((N_TYPES, DIM)) * 1.5
    rng = np.random.default_rng(seed)
    y = np.repeat([f"type{t}" for t in range(N_TYPES)], n_per_type)
    x = centres[np.repeat(np.arange(N_TYPES), n_per_type)] + rng.standard_normal((len(y), DIM))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def splits():
    return mixture([100] * N_TYPES, 1), mixture([25] * N_TYPES, 2), mixture([50] * N_TYPES, 3)


def test_tstr_copy_matches_trtr(splits):
    train, val, test = splits
    out = tstr(train, val, test, train, val, CFG, seed=0)
    trtr, tstr_f1 = out["trtr"]["macro_f1"], out["tstr"]["macro_f1"]
    assert trtr > 0.7 and abs(tstr_f1 - trtr) < 0.05
    assert out["trts"]["macro_f1"] > 0.85  # scored on the training cells themselves
    assert out["tstr_over_trtr"] == pytest.approx(tstr_f1 / trtr)
    assert out["trtr"]["summary"]["n"] == 200 and out["n"]["synth_train"] == 400
    assert set(out["trtr"]["report"]["labels"]) == {f"type{t}" for t in range(N_TYPES)}


def test_tstr_label_shuffled_synthetic_fails(splits):
    train, val, test = splits
    rng = np.random.default_rng(0)
    shuffled = (train[0], rng.permutation(train[1]))
    shuffled_val = (val[0], rng.permutation(val[1]))
    out = tstr(train, val, test, shuffled, shuffled_val, CFG, seed=0)
    assert out["tstr"]["macro_f1"] < out["trtr"]["macro_f1"] - 0.3
    assert out["tstr"]["macro_f1"] < 0.5


def test_tstr_on_counts_with_space():
    rng = np.random.default_rng(0)
    profiles = rng.lognormal(0, 1, (3, 60))
    profiles[np.arange(3), np.arange(3)] *= 30  # one strong marker per type

    def counts(n, seed):
        y = np.repeat(["a", "b", "c"], n)
        mu = profiles[np.repeat(np.arange(3), n)]
        mu = 500 * mu / mu.sum(axis=1, keepdims=True)
        return np.random.default_rng(seed).poisson(mu).astype(np.float32), y

    train, val, test = counts(40, 1), counts(10, 2), counts(20, 3)
    space = fit_space(*train, [f"g{i}" for i in range(60)], n_hvg=30, n_pcs=5)
    out = tstr(train, val, test, train, val, CFG, seed=0, space=space)
    assert out["trtr"]["macro_f1"] > 0.9 and out["tstr"]["macro_f1"] > 0.9


def test_augmentation_arms(splits):
    _, val, test = splits
    train = mixture([100, 100, 6, 6], 4)
    synth = {t: mixture([40] * N_TYPES, 5 + i)[0][i * 40 : (i + 1) * 40]
             for i, t in enumerate(["type0", "type1", "type2", "type3"])}
    assert rarest_types(train[1], 2) == ["type2", "type3"]
    out = augmentation(train, val, test, synth, 2, CFG, seed=0, n_per_type=30)
    assert out["rare_types"] == ["type2", "type3"]
    assert out["n_added"] == {"type2": 30, "type3": 30} and out["n_real_train"]["type2"] == 6
    assert set(out["arms"]) == {"real", "oversample", "generated"}
    for arm in out["arms"].values():
        assert set(arm["per_type_f1"]) == {"type2", "type3"}
        assert arm["mean_rare_f1"] == pytest.approx(np.mean(list(arm["per_type_f1"].values())))
        assert 0.0 <= arm["macro_f1"] <= 1.0
    # generated cells from the true distribution add what copies cannot: new rare-type cells
    assert out["arms"]["generated"]["mean_rare_f1"] > out["arms"]["real"]["mean_rare_f1"] + 0.05


def test_augmentation_errors(splits):
    train, val, test = splits
    synth = {"type0": train[0][:10]}
    with pytest.raises(DataError, match="no generated cells"):
        augmentation(train, val, test, synth, ["type1"], CFG, seed=0)
    with pytest.raises(DataError, match="n_per_type"):
        augmentation(train, val, test, synth, ["type0"], CFG, seed=0, n_per_type=11)
    with pytest.raises(DataError, match="pair"):
        tstr(train[0], val, test, train, val, CFG, seed=0)
