"""The XGBoost classifier: accuracy, save/load, sparse input, weights, caps, errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth import config
from cellsynth.classify import (
    Classifier,
    balanced_weights,
    cap_per_class,
    resolve_cap,
    resolve_device,
    train_classifier,
)
from cellsynth.config import ClassifierConfig
from cellsynth.errors import ConfigError, DataError, ModelFileError

LABELS = ["alpha", "beta", "delta", "gamma"]


def gaussian_classes(n: int = 300, n_features: int = 20, seed: int = 0, spread: float = 4.0):
    """``n`` cells of 4 well-separated Gaussian classes (the same centres for every seed)."""
    centers = np.random.default_rng(42).normal(scale=spread, size=(len(LABELS), n_features))
    rng = np.random.default_rng(seed)
    y = np.array(LABELS)[rng.integers(0, len(LABELS), size=n)]
    X = centers[np.searchsorted(LABELS, y)] + rng.normal(size=(n, n_features))
    return X.astype(np.float32), y


def small_cfg(**kw) -> ClassifierConfig:
    base = dict(n_estimators=30, max_depth=3, learning_rate=0.3, device="cpu", n_jobs=2)
    base.update(kw)
    return ClassifierConfig(**base)


@pytest.fixture(scope="module")
def data():
    X, y = gaussian_classes(400)
    return X[:300], y[:300], X[300:], y[300:]


@pytest.fixture(scope="module")
def trained(data):
    Xtr, ytr, Xva, yva = data
    return train_classifier(Xtr, ytr, Xva, yva, small_cfg(), seed=0)


def test_accuracy_on_separable_data(trained):
    X_test, y_test = gaussian_classes(200, seed=1)
    assert trained.labels == LABELS
    assert (trained.predict(X_test) == y_test).mean() > 0.95
    proba = trained.predict_proba(X_test)
    assert proba.shape == (200, 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert trained.predict(X_test).dtype == object
    assert 0 <= trained.best_iteration < 30
    assert len(trained.evals_result["val"]["mlogloss"]) == trained.booster.num_boosted_rounds()
    assert "train" in trained.evals_result


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "clf")
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {
        "model.ubj",
        "labels.json",
        "meta.json",
    }
    meta = json.loads((tmp_path / "clf" / "meta.json").read_text())
    assert meta["best_iteration"] == trained.best_iteration and "xgboost_version" in meta
    loaded = Classifier.load(tmp_path / "clf")
    X, _ = gaussian_classes(50, seed=2)
    np.testing.assert_array_equal(loaded.predict_proba(X), trained.predict_proba(X))
    assert loaded.labels == trained.labels
    assert loaded.best_iteration == trained.best_iteration


@pytest.mark.parametrize("missing", ["model.ubj", "labels.json"])
def test_load_missing_file(trained, tmp_path, missing):
    trained.save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ModelFileError, match=missing):
        Classifier.load(tmp_path)


def test_load_tampered_labels(trained, tmp_path):
    trained.save(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(LABELS[:3]))
    with pytest.raises(ModelFileError, match="3 labels"):
        Classifier.load(tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        Classifier.load(tmp_path / "nowhere")


def test_sparse_input(data, trained):
    Xtr, ytr, Xva, yva = data
    Xtr_s, Xva_s = sp.csr_matrix(np.maximum(Xtr, 0)), sp.csr_matrix(np.maximum(Xva, 0))
    clf = train_classifier(Xtr_s, ytr, Xva_s, yva, small_cfg(), seed=0)
    assert (clf.predict(Xva_s) == yva).mean() > 0.9
    # sparse and dense prediction agree for the same values
    np.testing.assert_allclose(
        trained.predict_proba(sp.csr_matrix(Xva)), trained.predict_proba(Xva), atol=1e-6
    )


def test_balanced_weights_values():
    w = balanced_weights(["a", "a", "a", "b"])
    np.testing.assert_allclose(w, [4 / 6, 4 / 6, 4 / 6, 2.0])
    assert w[:3].sum() == pytest.approx(w[3:].sum())


def test_balanced_weights_favour_minority():
    rng = np.random.default_rng(3)
    n_major, n_minor = 540, 60
    X = np.concatenate([rng.normal(0, 1, (n_major, 5)), rng.normal(1.0, 1, (n_minor, 5))])
    y = np.array(["major"] * n_major + ["minor"] * n_minor)
    perm = rng.permutation(len(y))
    X, y = X[perm].astype(np.float32), y[perm]
    X_eval = rng.normal(1.0, 1, (300, 5)).astype(np.float32)  # minority-distributed cells
    minority_calls = {}
    for balanced in (False, True):
        clf = train_classifier(
            X[:500],
            y[:500],
            X[500:],
            y[500:],
            small_cfg(balanced_weights=balanced),
            seed=0,
        )
        minority_calls[balanced] = (clf.predict(X_eval) == "minor").sum()
    assert minority_calls[True] > minority_calls[False]


def test_cap_per_class():
    y = np.array(["a"] * 50 + ["b"] * 5 + ["c"] * 20)
    idx = cap_per_class(y, 10, np.random.default_rng(0))
    kept = y[idx]
    assert (kept == "a").sum() == 10 and (kept == "b").sum() == 5 and (kept == "c").sum() == 10
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, cap_per_class(y, 10, np.random.default_rng(0)))
    assert len(cap_per_class(y, 0, np.random.default_rng(0))) == len(y)


def test_auto_cap_keeps_rare_types_whole_and_the_total_in_budget(monkeypatch):
    from cellsynth.classify import xgb as xgb_mod

    y = np.repeat(["rare", "mid", "big", "huge"], [5, 40, 300, 1000])
    monkeypatch.setattr(xgb_mod, "AUTO_MAX_CELLS", 2000)
    assert resolve_cap(y, "auto") == 0  # 1,345 cells: within the budget, every cell
    assert resolve_cap(y, 7) == 7 and resolve_cap(y, 0) == 0  # numbers are kept
    monkeypatch.setattr(xgb_mod, "AUTO_MAX_CELLS", 400)
    cap = resolve_cap(y, "auto")
    kept = y[cap_per_class(y, cap, np.random.default_rng(0))]
    counts = {k: int((kept == k).sum()) for k in ("rare", "mid", "big", "huge")}
    # 5 + 40 whole; 355 left for the two big types: 177 each, and 178 would be over budget
    assert cap == 177 and counts == {"rare": 5, "mid": 40, "big": 177, "huge": 177}
    assert 400 - 2 < sum(counts.values()) <= 400
    with pytest.raises(ConfigError, match="max_cells_per_class"):
        config.load(overrides=["classifier.max_cells_per_class=-1"])
    assert config.load().classifier.max_cells_per_class == "auto"


def test_train_with_cap_logs_and_trains(data, caplog):
    Xtr, ytr, Xva, yva = data
    with caplog.at_level(logging.INFO, logger="cellsynth.classify.xgb"):
        clf = train_classifier(
            Xtr, ytr, Xva, yva, small_cfg(max_cells_per_class=20), seed=0
        )
    assert "80 of 300 kept" in caplog.text
    assert "best iteration" in caplog.text
    assert (clf.predict(Xva) == yva).mean() > 0.85


def test_single_class_raises(data):
    Xtr, _, Xva, _ = data
    y = np.array(["only"] * len(Xtr))
    with pytest.raises(DataError, match="at least two cell types"):
        train_classifier(
            Xtr, y, Xva, np.array(["only"] * len(Xva)), small_cfg(), seed=0
        )


def test_unknown_val_labels_dropped_and_two_classes(data, caplog):
    Xtr, ytr, Xva, yva = data
    two = np.isin(ytr, ["alpha", "beta"])
    with caplog.at_level(logging.WARNING, logger="cellsynth.classify.xgb"):
        clf = train_classifier(Xtr[two], ytr[two], Xva, yva, small_cfg(), seed=0)
    assert "absent from training" in caplog.text
    assert clf.labels == ["alpha", "beta"]
    keep = np.isin(yva, ["alpha", "beta"])
    assert clf.predict_proba(Xva).shape == (len(yva), 2)
    assert (clf.predict(Xva[keep]) == yva[keep]).mean() > 0.95


def test_progress_bar_runs(data):
    Xtr, ytr, Xva, yva = data
    clf = train_classifier(Xtr, ytr, Xva, yva, small_cfg(n_estimators=3), seed=0)
    assert clf.booster.num_boosted_rounds() <= 3


def test_resolve_device(monkeypatch):
    from cellsynth.classify import xgb as module

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    monkeypatch.setattr(module, "_has_gpu", lambda: True)
    assert resolve_device("cuda") == "cuda"
    monkeypatch.setattr(module, "_has_gpu", lambda: False)  # asked for, not there: said
    with pytest.raises(ConfigError, match="XGBoost sees no CUDA device"):
        resolve_device("cuda")


def test_auto_device_uses_xgboosts_cuda_without_a_cuda_torch(monkeypatch):
    """The pinned CPU torch sees no GPU; XGBoost's CUDA build on a GPU machine still uses it."""
    import torch

    from cellsynth.classify import xgb as module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "cuda_driver_devices", lambda: 1)
    monkeypatch.setattr(module, "_xgboost_has_cuda", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(module, "_xgboost_has_cuda", lambda: False)  # a CPU-only XGBoost
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(module, "_xgboost_has_cuda", lambda: True)
    monkeypatch.setattr(module, "cuda_driver_devices", lambda: 0)  # no device
    assert resolve_device("auto") == "cpu"
    # this machine: the driver probe answers without raising, and agrees with torch where it can
    assert module.cuda_driver_devices() >= 0


def test_no_validation_cells_trains_all_rounds(data):
    Xtr, ytr, _, _ = data
    empty = np.empty((0, Xtr.shape[1]), dtype=np.float32)
    clf = train_classifier(
        Xtr, ytr, empty, np.array([], dtype=str), small_cfg(n_estimators=5), seed=0
    )
    assert clf.best_iteration == 4 and "val" not in clf.evals_result


@pytest.mark.parametrize("cap", [0, 150])
def test_data_iterator_trains_the_same_model(tmp_path, caplog, cap):
    """Row batches through a DataIter (from a memmap) predict as one in-memory array does."""
    from cellsynth.classify import xgb as xgb_mod

    X, y = gaussian_classes(1200, seed=3, spread=1.5)  # overlapping classes: a real fit
    Xv, yv = gaussian_classes(400, seed=4, spread=1.5)
    X_test, _ = gaussian_classes(500, seed=5, spread=1.5)
    cfg = small_cfg(max_cells_per_class=cap, n_estimators=25)
    one = train_classifier(X, y, Xv, yv, cfg, seed=0)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mm[:] = X
    with caplog.at_level(logging.INFO, logger="cellsynth.classify.xgb"):
        batched = train_classifier(mm, y, Xv, yv, small_cfg(max_cells_per_class=cap,
                                   n_estimators=25, chunk_size=173), seed=0)
    assert "173-cell batches" in caplog.text
    auto = xgb_mod._chunk_size(small_cfg(), np.load(tmp_path / "x.npy", mmap_mode="r"))
    assert auto == xgb_mod.MEMMAP_CHUNK  # memmaps are read in batches without being asked
    p1, p2 = one.predict_proba(X_test), batched.predict_proba(X_test)
    # the quantile sketch is merged over batches: cut points may move slightly
    assert (p1.argmax(1) == p2.argmax(1)).mean() > 0.97
    assert np.abs(p1 - p2).mean() < 0.02
    assert batched.labels == one.labels
    with pytest.raises(ConfigError, match="chunk_size"):
        train_classifier(X, y, Xv, yv, small_cfg(chunk_size=-1), seed=0)


def test_predict_in_row_chunks(trained, monkeypatch):
    from cellsynth.classify import xgb as xgb_mod

    X_test, _ = gaussian_classes(250, seed=1)
    whole = trained.predict_proba(X_test)
    monkeypatch.setattr(xgb_mod, "PREDICT_ROWS", 60)
    assert np.array_equal(trained.predict_proba(X_test), whole)
    assert np.array_equal(trained.predict_proba(sp.csr_matrix(X_test)), whole)


def test_threads_follow_omp_num_threads_then_the_cores_this_process_may_use(monkeypatch):
    """classifier.n_jobs = 0 takes OMP_NUM_THREADS (a pytest worker's, a job script's), else the
    process's CPU affinity (a cluster job's cores, not the node's)."""
    import os

    from cellsynth.runtime import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")
    assert cpu_threads() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() == len(os.sched_getaffinity(0))
