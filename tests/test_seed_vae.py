"""The seed CVAE: fit, sample, reproducibility, save/load and the errors a user can hit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cellsynth.config import SeedVAEConfig
from cellsynth.errors import DataError, ModelFileError
from cellsynth.models import SeedCVAE
from cellsynth.models import _training as tr
from cellsynth.models.modules import LossOutput, SeedVAEModule

LABELS = ["alpha", "beta", "gamma"]
N_DIM = 20


def tiny_config(**changes) -> SeedVAEConfig:
    base = {"n_embed": 8, "n_hidden": [64, 32], "n_latent": 8, "max_epochs": 3, "batch_size": 64}
    base.update(changes)
    base.setdefault("device", "cpu")
    return SeedVAEConfig(**base)


def gaussian_classes(n: int = 300, sep: float = 6.0, seed: int = 0):
    """Three Gaussian classes in 20 dims; class k is shifted by ``sep`` on its own block of dims."""
    rng = np.random.default_rng(seed)
    y = np.array(LABELS * (n // len(LABELS)), dtype=object)
    means = np.zeros((len(LABELS), N_DIM), dtype=np.float32)
    for k in range(len(LABELS)):
        means[k, 5 * k : 5 * k + 5] = sep
    codes = np.array([LABELS.index(v) for v in y])
    X = (means[codes] + rng.normal(size=(len(y), N_DIM))).astype(np.float32)
    return X, y, means


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    X, y, means = gaussian_classes(300, seed=0)
    Xv, yv, _ = gaussian_classes(90, seed=1)
    return X, y, Xv, yv, means


@pytest.fixture(scope="module")
def fitted(data):
    X, y, Xv, yv, _ = data
    model = SeedCVAE(N_DIM, LABELS, tiny_config())
    model.fit(X, y, Xv, yv, seed=0)
    return model


def test_fit_returns_finite_history(data):
    X, y, Xv, yv, _ = data
    model = SeedCVAE(N_DIM, LABELS, tiny_config())
    hist = model.fit(X, y, Xv, yv, seed=0)
    assert set(hist) >= {"train_loss", "val_loss", "best_epoch", "epochs", "seconds"}
    assert hist["epochs"] == len(hist["train_loss"]) == len(hist["val_loss"]) <= 3
    assert all(math.isfinite(v) for v in hist["train_loss"] + hist["val_loss"])
    assert 0 <= hist["best_epoch"] < hist["epochs"]
    assert hist["val_loss"][hist["best_epoch"]] == min(hist["val_loss"])
    assert model.is_trained and "SeedCVAE" in repr(model)


def test_fit_is_reproducible_on_cpu(data):
    X, y, Xv, yv, _ = data
    h1 = SeedCVAE(N_DIM, LABELS, tiny_config()).fit(X, y, Xv, yv, seed=3)
    h2 = SeedCVAE(N_DIM, LABELS, tiny_config()).fit(X, y, Xv, yv, seed=3)
    assert h1["train_loss"] == h2["train_loss"] and h1["val_loss"] == h2["val_loss"]


def test_unknown_validation_labels_are_dropped(data):
    X, y, Xv, yv, _ = data
    yv = yv.copy()
    yv[:5] = "delta"
    hist = SeedCVAE(N_DIM, LABELS, tiny_config(max_epochs=1)).fit(X, y, Xv, yv)
    assert math.isfinite(hist["val_loss"][0])
    y_bad = y.copy()
    y_bad[0] = "delta"
    with pytest.raises(DataError, match="delta"):
        SeedCVAE(N_DIM, LABELS, tiny_config()).fit(X, y_bad, Xv, yv)
    with pytest.raises(DataError, match="shape"):
        SeedCVAE(N_DIM, LABELS, tiny_config()).fit(X[:, :5], y, Xv, yv)


def test_sample_counts_shape_and_order(fitted):
    counts = {"gamma": 7, "alpha": 3}
    X, labels = fitted.sample(counts, seed=0)
    assert X.shape == (10, N_DIM) and X.dtype == np.float32
    assert labels.dtype == object and labels.shape == (10,)
    assert list(labels) == ["gamma"] * 7 + ["alpha"] * 3
    assert np.isfinite(X).all()


def test_sample_is_seeded(fitted):
    counts = {"alpha": 20, "beta": 20}
    a, _ = fitted.sample(counts, seed=1)
    b, _ = fitted.sample(counts, seed=1)
    c, _ = fitted.sample(counts, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_samples_resemble_their_class(data):
    X, y, Xv, yv, means = data
    cfg = tiny_config(max_epochs=30, lr=3e-3, patience=30)
    model = SeedCVAE(N_DIM, LABELS, cfg)
    model.fit(X, y, Xv, yv, seed=0)
    Xs, ys = model.sample(dict.fromkeys(LABELS, 200), seed=0)
    for k, label in enumerate(LABELS):
        rows = Xs[ys == label]  # (200, N_DIM)
        dists = np.linalg.norm(rows[:, None, :] - means[None], axis=-1)  # (200, 3)
        assert np.argmin(np.linalg.norm(rows.mean(0) - means, axis=-1)) == k
        assert (dists.argmin(1) == k).mean() > 0.75, label


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {"config.json", "weights.safetensors", "labels.json", "history.json",
                     "checksums.json"}
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (
        meta["n_input"] == N_DIM and meta["config"]["n_latent"] == 8 and meta["cellsynth_version"]
    )
    loaded = SeedCVAE.load(tmp_path / "m")
    assert loaded.labels == LABELS and loaded.config == fitted.config
    assert loaded.history == fitted.history
    counts = {"beta": 11, "alpha": 4}
    a, la = fitted.sample(counts, seed=5)
    b, lb = loaded.sample(counts, seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_load_rejects_missing_or_inconsistent_files(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"weights\.safetensors"):
        SeedCVAE.load(tmp_path / "m")

    fitted.save(tmp_path / "t")
    (tmp_path / "t" / "labels.json").write_text(json.dumps([*LABELS, "delta"]))
    with pytest.raises(ModelFileError, match=r"labels\.json changed after the model was saved"):
        SeedCVAE.load(tmp_path / "t")
    (tmp_path / "t" / "checksums.json").unlink()  # an older save: the shapes still tell
    with pytest.raises(ModelFileError, match="4 cell types"):
        SeedCVAE.load(tmp_path / "t")

    fitted.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    meta["n_input"] = N_DIM + 1
    (tmp_path / "c" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"config\.json changed after the model was saved"):
        SeedCVAE.load(tmp_path / "c")
    (tmp_path / "c" / "checksums.json").unlink()
    with pytest.raises(ModelFileError, match="n_input"):
        SeedCVAE.load(tmp_path / "c")

    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        SeedCVAE.load(tmp_path / "c")
    with pytest.raises(ModelFileError, match="missing"):
        SeedCVAE.load(tmp_path / "nowhere")


def test_sample_rejects_unknown_type_and_bad_counts(fitted):
    with pytest.raises(DataError, match="known types"):
        fitted.sample({"delta": 5})
    with pytest.raises(DataError, match="no cells requested"):  # a 0 is left out
        fitted.sample({"alpha": 0})
    with pytest.raises(DataError, match="positive"):
        fitted.sample({"alpha": -2})
    with pytest.raises(DataError):
        fitted.sample({})


def test_labels_must_be_unique():
    with pytest.raises(DataError, match="unique"):
        SeedCVAE(N_DIM, ["a", "a"], tiny_config())


def test_early_stopping_stops_and_keeps_best(data):
    # lr 0: the weights never change, so the validation loss only jitters with the latent
    # noise; with patience 1 training stops at the first epoch that does not improve.
    X, y, Xv, yv, _ = data
    model = SeedCVAE(N_DIM, LABELS, tiny_config(max_epochs=50, lr=0.0, patience=1))
    hist = model.fit(X, y, Xv, yv, seed=0)
    assert hist["epochs"] < 50
    assert hist["epochs"] == hist["best_epoch"] + 2
    assert hist["val_loss"][-1] >= hist["val_loss"][hist["best_epoch"]]


def test_early_stopping_helper_restores_best_weights():
    module = torch.nn.Linear(2, 1)
    stopper = tr.EarlyStopping(patience=2)
    losses = [3.0, 2.0, float("nan"), 2.5]
    stops = []
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            module.weight.fill_(epoch)
        stops.append(stopper.step(loss, epoch, module))
    assert stops == [False, False, False, True]
    assert stopper.best_epoch == 1 and stopper.best_loss == 2.0
    assert stopper.restore(module)
    assert torch.all(module.weight == 1.0)


def test_kl_weight_anneals_linearly():
    assert tr.kl_weight(0, 0.1, 10) == pytest.approx(0.1)
    assert tr.kl_weight(5, 0.1, 10) == pytest.approx(0.55)
    assert tr.kl_weight(10, 0.1, 10) == tr.kl_weight(50, 0.1, 10) == 1.0
    assert tr.kl_weight(0, 0.1, 0) == 1.0


def test_balanced_batches_even_out_classes():
    codes = np.array([0] * 900 + [1] * 100)
    batches = tr.balanced_batches(codes, 100, torch.Generator().manual_seed(0))
    idx = np.concatenate([np.asarray(b) for b in batches])
    assert len(idx) == 1000 and 0.4 < (codes[idx] == 1).mean() < 0.6


def test_resolve_device():
    assert tr.resolve_device("cpu").type == "cpu"
    assert tr.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_module_loss_shapes():
    module = SeedVAEModule(n_input=6, n_labels=2, n_embed=3, n_hidden=[8, 4], n_latent=2)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 0, 1, 1])
    out = module.loss(x, y, kl_weight=0.5)
    assert isinstance(out, LossOutput) and out.loss.shape == ()
    assert torch.isclose(out.loss, out.reconstruction + 0.5 * out.kl)
    assert module.sample(y).shape == (5, 6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_sample_on_cuda_and_load_on_cpu(data, tmp_path):
    X, y, Xv, yv, _ = data
    model = SeedCVAE(N_DIM, LABELS, tiny_config(device="cuda", max_epochs=2))
    assert model.device.type == "cuda"
    model.fit(X, y, Xv, yv, seed=0)
    a, _ = model.sample({"alpha": 5}, seed=0)
    b, _ = model.sample({"alpha": 5}, seed=0)
    np.testing.assert_array_equal(a, b)
    model.save(tmp_path / "m")
    cpu = SeedCVAE.load(tmp_path / "m", device="cpu")
    assert cpu.device.type == "cpu"
    np.testing.assert_allclose(cpu.sample({"alpha": 5}, seed=0)[0], a, atol=1e-3)
