"""Beyond one machine: XGBoost on a Dask cluster, the CVAE data-parallel under torchrun."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist

from cellsynth.classify import Classifier, train_classifier
from cellsynth.config import ClassifierConfig, CVAEConfig
from cellsynth.data.simulate import simulate_atlas
from cellsynth.models import CVAE
from cellsynth.models.distributed import _shard, fit_distributed, main, torchrun_command

LABELS = ["alpha", "beta", "delta", "gamma"]
LABEL_KEY = "cell_type"
SEED = 3

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def _require_dask() -> None:
    pytest.importorskip("distributed", reason="dask.distributed is not installed (cellsynth[dask])")
    pytest.importorskip("xgboost.dask", reason="xgboost.dask cannot be imported (needs dask)")


# ---------------------------------------------------------------------------------------------
# XGBoost on Dask


def gaussian_classes(n: int, seed: int, n_features: int = 20):
    """``n`` cells of 4 separable Gaussian classes (the same centres for every seed)."""
    centers = np.random.default_rng(42).normal(scale=3.0, size=(len(LABELS), n_features))
    rng = np.random.default_rng(seed)
    y = np.array(LABELS)[rng.integers(0, len(LABELS), size=n)]
    X = centers[np.searchsorted(LABELS, y)] + rng.normal(size=(n, n_features))
    return X.astype(np.float32), y


def small_cfg(**kw) -> ClassifierConfig:
    base = dict(n_estimators=30, max_depth=3, learning_rate=0.3, device="cpu", n_jobs=1)
    return ClassifierConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def splits():
    return gaussian_classes(600, 0), gaussian_classes(150, 1), gaussian_classes(300, 2)


@pytest.fixture(scope="module")
def cluster():
    _require_dask()
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.WARNING
    ) as c:
        yield c


@pytest.mark.slow
def test_dask_classifier_matches_local(splits, tmp_path):
    """A local 2-worker cluster started by the function; same accuracy and predictions."""
    _require_dask()
    from cellsynth.classify.dask import train_classifier_dask

    (X, y), (Xv, yv), (Xt, yt) = splits
    cfg = small_cfg()
    local = train_classifier(X, y, Xv, yv, cfg, seed=0)
    start = time.perf_counter()
    dasked = train_classifier_dask(X, y, Xv, yv, cfg, seed=0, n_workers=2)
    print(f"dask 2 workers (cluster start included): {time.perf_counter() - start:.1f} s")
    assert isinstance(dasked, Classifier)
    assert dasked.labels == local.labels == LABELS
    assert set(dasked.evals_result) == {"train", "val"}
    assert 0 <= dasked.best_iteration < dasked.booster.num_boosted_rounds()
    acc_local = float((local.predict(Xt) == yt).mean())
    acc_dask = float((dasked.predict(Xt) == yt).mean())
    assert acc_dask > 0.9
    assert abs(acc_dask - acc_local) <= 0.05
    assert (dasked.predict(Xt) == local.predict(Xt)).mean() > 0.9
    dasked.save(tmp_path / "clf")
    loaded = Classifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(loaded.predict_proba(Xt), dasked.predict_proba(Xt))
    assert loaded.best_iteration == dasked.best_iteration


@pytest.mark.slow
def test_dask_classifier_sparse_on_given_cluster(splits, cluster, caplog):
    """CSR input through a caller's client and a scheduler address; unknown val types dropped."""
    from distributed import Client

    from cellsynth.classify.dask import train_classifier_dask

    (X, y), (Xv, yv), (Xt, yt) = splits
    Xs, Xvs = sp.csr_matrix(np.where(X > 1, X, 0)), sp.csr_matrix(np.where(Xv > 1, Xv, 0))
    yv = yv.copy()
    yv[:5] = "epsilon"  # not a training type
    cfg = small_cfg(max_cells_per_class=100)
    with Client(cluster) as client, caplog.at_level(logging.WARNING):
        clf = train_classifier_dask(Xs, y, Xvs, yv, cfg, seed=1, client=client)
        assert client.status == "running"  # the caller's client stays open
    assert "dropping 5 validation cells" in caplog.text
    assert clf.labels == LABELS
    assert (clf.predict(sp.csr_matrix(np.where(Xt > 1, Xt, 0))) == yt).mean() > 0.85
    by_address = train_classifier_dask(X, y, Xv, yv, small_cfg(), seed=0,
                                       scheduler=cluster.scheduler_address)  # fmt: skip
    assert (by_address.predict(Xt) == yt).mean() > 0.9


# ---------------------------------------------------------------------------------------------
# the CVAE under torch.distributed


def tiny_cvae(**changes) -> CVAEConfig:
    # the data-parallel fit keeps the best validation ELBO, so the one-process fit it is
    # compared with does too
    base = dict(n_embed=8, n_hidden=[64, 32], n_latent=8, max_epochs=3, batch_size=64,
                select="elbo")
    return CVAEConfig(**{**base, "device": "cpu", **changes})


@pytest.fixture(scope="module")
def atlas():
    return simulate_atlas(n_cells=400, n_genes=200, n_types=4, label_key=LABEL_KEY)


@pytest.fixture(scope="module")
def atlas_path(atlas, tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "atlas.h5ad"
    atlas.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def single(atlas) -> CVAE:
    """The single-process reference fit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = CVAE(config=tiny_cvae())
        model.fit(atlas, LABEL_KEY, seed=SEED)
    finally:
        torch.set_num_threads(n)
    return model


@pytest.mark.parametrize("n", [1, 7, 10, 11])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_deals_every_row_once(n, world):
    shards = [_shard(n, rank, world, seed=0) for rank in range(world)]
    assert len({len(pos) for pos, _ in shards}) == 1  # every rank takes the same steps
    real = np.concatenate([pos[keep] for pos, keep in shards])
    np.testing.assert_array_equal(np.sort(real), np.arange(n))
    for pos, _ in shards:
        assert len(set(pos.tolist())) == len(pos) and np.all(np.diff(pos) > 0)
    if world == 1:
        np.testing.assert_array_equal(shards[0][0], np.arange(n))


@needs_gloo
def test_one_process_equals_fit(atlas_path, single, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = fit_distributed(atlas_path, LABEL_KEY, tmp_path / "m", config=tiny_cvae(),
                                seed=SEED)  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert not dist.is_initialized()  # the group it formed is gone
    assert model.history["val_loss"] == single.history["val_loss"]
    assert model.history["train_loss"] == single.history["train_loss"]
    assert model.history["world_size"] == 1
    ref = single.module.state_dict()
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=key)
    loaded = CVAE.load(tmp_path / "m")
    assert loaded.labels == single.labels and loaded.genes == single.genes
    a = loaded.sample({single.labels[0]: 20}, seed=0)
    b = single.sample({single.labels[0]: 20}, seed=0)
    assert (a.X != b.X).nnz == 0


@needs_gloo
def test_one_process_resumes_from_its_checkpoint(atlas_path, single, tmp_path, monkeypatch, caplog):
    """Killed after an epoch, the data-parallel fit resumes and ends as the uninterrupted fit."""
    from cellsynth.models import _checkpoint

    write = _checkpoint.Checkpoint.write

    def write_then_die(self, tensors, meta):
        write(self, tensors, meta)
        raise KeyboardInterrupt

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt, cfg = tmp_path / "checkpoint", tiny_cvae(checkpoint_seconds=0.0)
    try:
        with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
            m.setattr(_checkpoint.Checkpoint, "write", write_then_die)
            fit_distributed(atlas_path, LABEL_KEY, config=cfg, seed=SEED,
                            checkpoint_dir=ckpt)  # fmt: skip
        assert not dist.is_initialized() and (ckpt / "cvae-rank0.safetensors").is_file()
        with caplog.at_level(logging.INFO, logger="cellsynth"):
            model = fit_distributed(atlas_path, LABEL_KEY, config=cfg, seed=SEED,
                                    checkpoint_dir=ckpt)  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert "resuming CVAE training from epoch 1" in caplog.text
    assert model.history["resumed_from"] == 1
    assert model.history["val_loss"] == single.history["val_loss"]
    ref = single.module.state_dict()
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=key)
    assert not ckpt.exists()


@needs_gloo
def test_entry_point_reports_bad_input(atlas_path, tmp_path, capsys):
    code = main(["--data", str(atlas_path), "--label-key", "nope", "--out", str(tmp_path / "m"),
                 "--quiet"])  # fmt: skip
    assert code == 2
    assert "label column 'nope' not in obs" in capsys.readouterr().err
    assert not dist.is_initialized()
    code = main(["--data", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 2 and not (tmp_path / "m").exists()


def test_torchrun_command(tmp_path):
    cmd = torchrun_command("a.h5ad", "cell_type", tmp_path, nproc_per_node=4,
                           overrides=["cvae.max_epochs=5"], seed=7)  # fmt: skip
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=4"]  # fmt: skip
    assert cmd[5:7] == ["-m", "cellsynth.models.distributed"]
    assert cmd[-4:] == ["--seed", "7", "--set", "cvae.max_epochs=5"]
    cmd = torchrun_command("a.h5ad", "cell_type", tmp_path, checkpoint_dir=tmp_path / "c",
                           checkpoint_key="k")  # fmt: skip
    assert cmd[-4:] == ["--checkpoint-dir", str(tmp_path / "c"), "--checkpoint-key", "k"]


@needs_gloo
@pytest.mark.slow
def test_torchrun_two_processes_agree_with_one(atlas_path, single, tmp_path):
    out = tmp_path / "m"
    c = tiny_cvae()
    sets = [f"cvae.n_embed={c.n_embed}", f"cvae.n_hidden={c.n_hidden}",
            f"cvae.n_latent={c.n_latent}", f"cvae.max_epochs={c.max_epochs}",
            f"cvae.batch_size={c.batch_size}", 'cvae.device="cpu"']  # fmt: skip
    cmd = torchrun_command(atlas_path, LABEL_KEY, out, nproc_per_node=2, overrides=sets,
                           seed=SEED)  # fmt: skip
    cmd.append("--quiet")
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    print(f"torchrun 2 processes: {time.perf_counter() - start:.1f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    model = CVAE.load(out)
    assert model.history["world_size"] == 2
    assert model.history["epochs"] == c.max_epochs
    assert model.labels == single.labels and model.genes == single.genes
    syn = model.sample({t: 10 for t in model.labels[:2]}, seed=0)
    assert syn.n_obs == 20 and syn.n_vars == len(single.genes)
    two, one = model.history["val_loss"][-1], single.history["val_loss"][-1]
    assert abs(two - one) / one < 0.2
