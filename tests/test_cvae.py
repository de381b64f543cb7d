"""The count-space CVAE: fit per likelihood, sampling, seeds, save/load, errors, the prior."""

from __future__ import annotations

import json
import logging
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellsynth import keys as K
from cellsynth.config import CVAEConfig
from cellsynth.errors import ConfigError, DataError, ModelFileError
from cellsynth.models import CVAE
from cellsynth.models._counts import (
    Rows,
    fit_sampler,
    initial_decoder,
    library_model,
    library_sizes,
)
from cellsynth.models.base import Generator
from cellsynth.models.modules._sparse_input import nonzero
from cellsynth.models.modules.cvae import CVAEModule
from cellsynth.models.modules.likelihoods import (
    NegativeBinomial,
    log_nb,
    log_poisson_softmax,
    log_zinb,
)

SIM_TYPES = ["alpha", "beta", "gamma"]


def tiny_config(**changes) -> CVAEConfig:
    base = {"n_embed": 8, "n_hidden": [64, 32], "n_latent": 8, "max_epochs": 1, "batch_size": 128}
    base.update(changes)
    base.setdefault("device", "cpu")
    return CVAEConfig(**base)


def simulated_counts(n_per_type: int = 100, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """NB counts of three types; type k expresses its own block of 20 genes 20-fold higher."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, n_genes)  # (n_genes,)
    profiles = np.tile(base, (len(SIM_TYPES), 1))  # (3, n_genes)
    for k in range(len(SIM_TYPES)):
        profiles[k, 20 * k : 20 * k + 20] *= 20.0
    profiles /= profiles.sum(1, keepdims=True)
    codes = np.repeat(np.arange(len(SIM_TYPES)), n_per_type)
    library = rng.lognormal(np.log(800), 0.3, len(codes))[:, None]  # (n, 1)
    mu = profiles[codes] * library
    theta = 5.0
    x = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.array(SIM_TYPES)[codes])},
        index=[f"c{i}" for i in range(len(codes))],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=var)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_kang(kang_path) -> ad.AnnData:
    """400 Kang cells (80 per type) and the 300 most detected genes, raw counts in X."""
    full = ad.read_h5ad(kang_path)
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(full.obs["cell_type"] == t), 80, replace=False)
            for t in sorted(full.obs["cell_type"].unique())
        ]
    )
    detected = np.asarray((full.X > 0).sum(0)).ravel()
    genes = np.sort(np.argsort(-detected, kind="stable")[:300])
    return full[np.sort(rows), genes].copy()


@pytest.fixture(scope="module")
def fitted(small_kang) -> CVAE:
    model = CVAE(small_kang, config=tiny_config())
    model.train(seed=0)
    return model


@pytest.mark.parametrize(
    ("likelihood", "dispersion_fit"),
    [("nb", "moments"), ("nb", "learned"), ("zinb", "learned"), ("gaussian", "learned")],
)
def test_one_epoch_fit_and_sample_per_likelihood(small_kang, likelihood, dispersion_fit):
    model = CVAE(small_kang, config=tiny_config(likelihood=likelihood, dispersion_fit=dispersion_fit))
    assert isinstance(model, Generator) and not model.is_trained
    hist = model.train(seed=0)
    assert set(hist) >= {
        "train_loss",
        "val_loss",
        "best_epoch",
        "epochs",
        "seconds",
        "cells_per_second",
    }
    assert hist["epochs"] == 1 and hist["best_epoch"] == 0 and hist["cells_per_second"] > 0
    assert all(math.isfinite(v) for v in hist["train_loss"] + hist["val_loss"])
    assert model.labels == sorted(small_kang.obs["cell_type"].unique())
    request = {model.labels[2]: 7, model.labels[0]: 3}
    out = model.sample(request, seed=0)
    assert sp.issparse(out.X) and out.X.format == "csr" and out.X.dtype == np.float32
    assert out.shape == (10, 300)
    assert np.all(out.X.data == np.rint(out.X.data)) and np.all(out.X.data >= 0)
    assert out.X.sum() > 0
    assert list(out.obs["cell_type"]) == [model.labels[2]] * 7 + [model.labels[0]] * 3
    assert list(out.var_names) == model.genes == list(small_kang.var_names)
    info = out.uns[K.UNS]
    assert info["model"] == "cvae" and info["seed"] == 0 and info["version"]
    assert info["config"]["likelihood"] == likelihood


def test_fit_protocol_form_and_split_column(small_kang):
    adata = small_kang.copy()
    split = np.where(np.arange(adata.n_obs) % 5 == 0, "val", "train").astype(object)
    b_cells = (adata.obs["cell_type"] == "B cells").to_numpy()
    split[b_cells] = "test"  # B cells never reach training: not a label
    adata.obs[K.SPLIT] = split
    model = CVAE(config=tiny_config())
    model.fit(adata, "cell_type", seed=0)
    assert "B cells" not in model.labels and len(model.labels) == 4
    with pytest.raises(DataError, match="known types"):
        model.sample({"B cells": 3})
    assert CVAE(adata, config=tiny_config()).labels == model.labels


def test_fit_is_reproducible_on_cpu(small_kang):
    cfg = tiny_config(max_epochs=2, balanced_sampling=True)
    h1 = CVAE(small_kang, config=cfg).train(seed=3)
    h2 = CVAE(small_kang, config=cfg).train(seed=3)
    assert h1["train_loss"] == h2["train_loss"] and h1["val_loss"] == h2["val_loss"]


def test_sample_is_seeded(fitted):
    request = {fitted.labels[0]: 20, fitted.labels[1]: 15}
    a = fitted.sample(request, seed=1).X
    b = fitted.sample(request, seed=1).X
    c = fitted.sample(request, seed=2).X
    assert (a != b).nnz == 0
    assert a.data.tobytes() == b.data.tobytes() and a.indices.tobytes() == b.indices.tobytes()
    assert (a != c).nnz > 0


def test_latent_sources(fitted, tmp_path):
    request = {fitted.labels[0]: 600}  # more than one chunk of 4 * batch_size
    prior = fitted.sample(request, seed=4, latent="prior")
    mixture = fitted.sample(request, seed=4)
    assert (prior.X != mixture.X).nnz > 0
    assert prior.uns[K.UNS]["config"]["latent_sampler"] == "prior"
    prior.write_h5ad(tmp_path / "synthetic.h5ad")
    back = ad.read_h5ad(tmp_path / "synthetic.h5ad")
    assert (back.X != prior.X).nnz == 0 and back.uns[K.UNS]["model"] == "cvae"
    # (n_labels, K): ~72 training cells per type, one component per n_latent + 1 = 9, at most 5
    weight = fitted.module.mixture_weight
    assert weight.shape == (5, 5) and torch.allclose(weight.sum(1), torch.ones(5))
    assert fitted.module.mixture_chol.shape == (5, 5, 9, 9)
    with pytest.raises(DataError, match="latent"):
        fitted.sample(request, latent="posterior")


def test_small_types_get_one_gaussian_not_their_cells():
    """A type with fewer than 2 (n_latent + 1) cells gets one Gaussian over (z, log library)
    fitted to its cells' posteriors, not a component per cell (which would re-draw each of
    its training cells); a type of one cell keeps that cell's posterior and library."""
    adata = simulated_counts(40, n_genes=30, seed=2)
    adata = adata[np.r_[0:3, 40:41, 80:120]].copy()  # 3 alpha cells, 1 beta cell
    adata.obs[K.SPLIT] = np.where(np.arange(adata.n_obs) % 10 == 9, "val", "train")
    model = CVAE(adata, config=tiny_config())
    model.train(seed=0)
    alpha = model.labels.index("alpha")
    weight = model.module.mixture_weight[alpha]
    assert weight[0] == 1 and torch.all(weight[1:] == 0)
    # the component's library is the mean log library of the three cells, with a spread
    own = np.log(np.asarray(adata.X[:3].sum(1)).ravel())
    np.testing.assert_allclose(model.module.mixture_mean[alpha, 0, -1].item(), own.mean(), rtol=1e-5)
    assert model.module.mixture_chol[alpha, 0, -1, -1] > 0
    beta = model.labels.index("beta")
    lib = np.log(float(adata.X[3].sum()))
    np.testing.assert_allclose(model.module.mixture_mean[beta, 0, -1].item(), lib, rtol=1e-5)
    assert torch.all(model.module.mixture_chol[beta, 0, -1] == 0)
    out = model.sample({"alpha": 25, "beta": 5}, seed=0)
    assert out.n_obs == 30 and np.isfinite(out.X.data).all()
    assert len({tuple(r) for r in out.X[:25].toarray()}) > 1


def test_mixture_keeps_the_depth_of_each_state():
    """One type, two states: a deep one expressing genes 0-19, a shallow one genes 20-39.

    Generated cells must keep the coupling (a library drawn apart from z gives it no sign).
    """
    rng = np.random.default_rng(3)
    n, n_genes = 600, 40
    deep = np.arange(n) % 2 == 0
    profile = np.ones((n, n_genes))
    profile[deep, :20] *= 20.0
    profile[~deep, 20:] *= 20.0
    profile /= profile.sum(1, keepdims=True)
    library = np.where(deep, rng.lognormal(np.log(4000), 0.2, n), rng.lognormal(np.log(400), 0.2, n))
    x = rng.poisson(rng.gamma(5.0, profile * library[:, None] / 5.0)).astype(np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame({"cell_type": pd.Categorical(["one"] * n)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )
    model = CVAE(adata, config=tiny_config(max_epochs=30, patience=30, min_steps=0, lr=3e-3))
    model.train(seed=0)
    out = model.sample({"one": 400}, seed=1).X.toarray()
    lib = out.sum(1)
    state = out[:, :20].sum(1) / np.maximum(lib, 1)  # share of the deep state's genes
    looks_deep = state > 0.5
    assert 0.25 < looks_deep.mean() < 0.75  # both states generated
    # deep-looking cells are about 10x deeper, as in the training cells
    assert np.median(lib[looks_deep]) > 4 * np.median(lib[~looks_deep])
    prior = model.sample({"one": 400}, seed=1, latent="prior").X.toarray()
    lib_p = prior.sum(1)
    deep_p = prior[:, :20].sum(1) / np.maximum(lib_p, 1) > 0.5
    if 0 < deep_p.sum() < len(deep_p):  # the prior draws the library apart from z
        assert np.median(lib_p[deep_p]) < 4 * np.median(lib_p[~deep_p])


def test_sample_rejects_unknown_type_and_bad_counts(fitted):
    with pytest.raises(DataError, match="known types"):
        fitted.sample({"delta": 5})
    with pytest.raises(DataError, match="no cells requested"):  # a 0 is left out
        fitted.sample({fitted.labels[0]: 0})
    with pytest.raises(DataError, match="positive"):
        fitted.sample({fitted.labels[0]: -2})
    with pytest.raises(DataError):
        fitted.sample({})
    t = fitted.labels[0]
    for wrong in (t, [t], (t, 5), 5):  # not a {type: n} dict nor a table
        with pytest.raises(DataError, match=r"a request is a \{type: n\} dict .* got "):
            fitted.sample(wrong)


def test_sample_refuses_more_cells_than_memory_holds(fitted, monkeypatch):
    """An in-memory request larger than the memory available is refused before any drawing,
    with the streaming alternatives named (a typo'd count would otherwise run until killed)."""
    from cellsynth import runtime

    t = fitted.labels[0]
    with pytest.raises(DataError, match=r"1,000,000,000,000 cells would take up to .* GB in "
                                        r"memory, but .* is available.*sample_chunks"):
        fitted.sample({t: 10**12})
    monkeypatch.setattr(runtime, "available_memory", lambda: 1e3)  # 1 kB
    with pytest.raises(DataError, match="1,000 cells would take"):
        fitted.sample({t: 1_000})
    monkeypatch.setattr(runtime, "available_memory", lambda: None)  # unknown: no check
    assert fitted.sample({t: 3}).n_obs == 3


def test_replaced_weights_read_as_changed_not_as_corrupt(fitted, tmp_path):
    """Weights overwritten after saving (e.g. by a misdirected output) are named as changed
    since the save, not only as unreadable."""
    fitted.save(tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"\x89HDF\r\n" + bytes(100))
    with pytest.raises(ModelFileError, match=r"weights\.safetensors changed after the model "
                                             r"was saved"):
        CVAE.load(tmp_path / "m")


def test_settings_out_of_range_in_python_name_the_keyword(small_kang):
    model = CVAE(small_kang, config=tiny_config())
    with pytest.raises(ConfigError, match=r"lr must be positive \(> 0\), got -1.0; give another "
                                          r"lr \(model.configure\(lr=...\) or model.train\)$"):
        model.train(lr=-1.0)


def test_a_path_is_taken_for_data(small_kang, tmp_path):
    path = tmp_path / "cells.h5ad"
    small_kang.write_h5ad(path)
    model = CVAE(str(path), config=tiny_config())
    assert model.labels == sorted(small_kang.obs["cell_type"].astype(str).unique())
    with pytest.raises(DataError, match="CVAE takes an AnnData or the path"):
        CVAE(small_kang.X, config=tiny_config())


def test_normalised_input_is_refused(small_kang):
    adata = small_kang.copy()
    adata.X = adata.X.astype(np.float32) * 0.37
    with pytest.raises(DataError, match="raw counts"):
        CVAE(config=tiny_config()).fit(adata, "cell_type")


def test_get_latent(fitted, small_kang):
    z = fitted.get_latent(small_kang[:50])
    assert z.shape == (50, 8) and z.dtype == np.float32 and np.isfinite(z).all()
    with pytest.raises(DataError, match="genes"):
        fitted.get_latent(small_kang[:10, :100])


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {
        "config.json",
        "weights.safetensors",
        "labels.json",
        "genes.json",
        "history.json",
        "checksums.json",
    }
    assert "genes.json" in json.loads((tmp_path / "m" / "checksums.json").read_text())
    loaded = CVAE.load(tmp_path / "m")
    assert loaded.labels == fitted.labels and loaded.genes == fitted.genes
    assert loaded.config == fitted.config and loaded.history == fitted.history
    assert loaded.label_key == "cell_type"
    torch.testing.assert_close(loaded.module.library_log_mean, fitted.module.library_log_mean)
    request = {fitted.labels[3]: 11, fitted.labels[1]: 4}
    a, b = fitted.sample(request, seed=5), loaded.sample(request, seed=5)
    assert (a.X != b.X).nnz == 0
    assert list(a.obs["cell_type"]) == list(b.obs["cell_type"])


def test_load_rejects_missing_or_inconsistent_files(fitted, tmp_path):
    for name in ("genes.json", "weights.safetensors"):
        fitted.save(tmp_path / name)
        (tmp_path / name / name).unlink()
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            CVAE.load(tmp_path / name)

    fitted.save(tmp_path / "labels")
    (tmp_path / "labels" / "labels.json").write_text(json.dumps([*fitted.labels, "delta"]))
    with pytest.raises(ModelFileError, match=r"labels\.json changed after the model was saved"):
        CVAE.load(tmp_path / "labels")
    (tmp_path / "labels" / "checksums.json").unlink()  # as an older save: the sizes disagree
    with pytest.raises(ModelFileError, match="6 cell types"):
        CVAE.load(tmp_path / "labels")

    fitted.save(tmp_path / "genes")
    (tmp_path / "genes" / "genes.json").write_text(json.dumps(fitted.genes[:-1]))
    with pytest.raises(ModelFileError, match=r"genes\.json changed after the model was saved"):
        CVAE.load(tmp_path / "genes")
    (tmp_path / "genes" / "checksums.json").unlink()
    with pytest.raises(ModelFileError, match="299 genes"):
        CVAE.load(tmp_path / "genes")

    (tmp_path / "genes" / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"config\.json is corrupt"):  # the file named
        CVAE.load(tmp_path / "genes")

    # edited files that the checksums no longer guard (deleted): each is named, not read as
    # an untrained model or a missing file
    fitted.save(tmp_path / "edited")
    (tmp_path / "edited" / "checksums.json").unlink()
    config = json.loads((tmp_path / "edited" / "config.json").read_text())
    (tmp_path / "edited" / "history.json").write_text("{}")
    with pytest.raises(ModelFileError, match=r"history\.json is missing or holds no training"):
        CVAE.load(tmp_path / "edited")
    fitted.save(tmp_path / "edited")
    (tmp_path / "edited" / "checksums.json").unlink()
    (tmp_path / "edited" / "config.json").write_text(json.dumps({**config, "n_genes": "300"}))
    with pytest.raises(ModelFileError, match=r"n_genes = '300' but genes\.json lists 300"):
        CVAE.load(tmp_path / "edited")
    (tmp_path / "edited" / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match=r"must hold a JSON object .* not a list"):
        CVAE.load(tmp_path / "edited")
    # another generator's folder, or a file: said what it is
    from cellsynth.models.nb import NegBinBaseline

    nb = NegBinBaseline()
    nb.fit(simulated_counts(30, seed=0), "cell_type", seed=0)
    nb.save(tmp_path / "nb")
    with pytest.raises(ModelFileError, match=r"holds a saved nb model, not a CVAE.*load_model"):
        CVAE.load(tmp_path / "nb")
    with pytest.raises(ModelFileError, match=r"is a file, not a model directory"):
        CVAE.load(tmp_path / "nb" / "config.json")
    fitted.save(tmp_path / "cvae")
    with pytest.raises(ModelFileError, match=r"holds a saved CVAE model, not an nb"):
        NegBinBaseline.load(tmp_path / "cvae")


def test_conditional_prior_generates_each_type(tmp_path):
    adata = simulated_counts(100, seed=0)
    cfg = tiny_config(max_epochs=15, patience=15, lr=3e-3, kl_anneal_epochs=5)
    model = CVAE(adata, config=cfg)
    model.train(seed=0)

    def log_means(a: ad.AnnData) -> np.ndarray:  # (3, n_genes) per-type mean log1p(normalised)
        x = a.X.toarray()
        x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
        labels = a.obs["cell_type"].to_numpy()
        return np.stack([x[labels == t].mean(0) for t in SIM_TYPES])

    real = log_means(adata)
    for latent in ("prior", "mixture"):
        out = model.sample(dict.fromkeys(SIM_TYPES, 60), seed=0, latent=latent)
        dists = np.linalg.norm(log_means(out)[:, None] - real[None], axis=-1)  # (fake, real)
        assert list(dists.argmin(1)) == [0, 1, 2], latent
        # the library model follows the training libraries (median 800)
        assert 500 < np.median(np.asarray(out.X.sum(1)).ravel()) < 1300


def test_nb_log_prob_matches_torch():
    mu, theta = torch.tensor([[0.5, 3.0, 40.0]]), torch.tensor([0.8, 2.0, 10.0])
    x = torch.tensor([[0.0, 2.0, 37.0]])
    ref = torch.distributions.NegativeBinomial(total_count=theta, logits=mu.log() - theta.log())
    torch.testing.assert_close(log_nb(x, mu, theta), ref.log_prob(x), atol=1e-4, rtol=1e-4)
    no_zeros = log_zinb(x, mu, theta, torch.full_like(mu, -30.0))
    torch.testing.assert_close(no_zeros, ref.log_prob(x), atol=1e-4, rtol=1e-4)
    px = NegativeBinomial(mu, theta, zi_logits=torch.zeros_like(mu))
    torch.testing.assert_close(px.mean, mu / 2)
    torch.manual_seed(0)
    draws = NegativeBinomial(mu, theta).sample((4000,))  # (4000, 1, 3)
    assert draws.shape == (4000, 1, 3) and torch.all(draws == draws.round())
    torch.testing.assert_close(draws.mean(0), mu, rtol=0.1, atol=0.05)


def test_module_shapes_and_prior():
    module = CVAEModule(
        n_input=6,
        n_labels=2,
        n_embed=3,
        n_hidden=[8, 4],
        n_latent=2,
        likelihood="zinb",
        dispersion="gene-label",
    )
    x = torch.poisson(torch.full((5, 6), 3.0))
    y, lib = torch.tensor([0, 1, 0, 1, 1]), x.sum(1)
    out = module.loss(x, y, lib, kl_weight=0.5)
    assert out.loss.shape == () and torch.isclose(out.loss, out.reconstruction + 0.5 * out.kl)
    out.loss.backward()
    assert module.prior_mean.grad is not None and module.px_r.shape == (2, 6)
    standard = CVAEModule(n_input=6, n_labels=2, n_hidden=[8], n_latent=2, prior="standard")
    p = standard.prior(y)
    assert torch.all(p.loc == 0) and torch.all(p.scale == 1)
    with pytest.raises(ValueError, match="likelihood"):
        CVAEModule(n_input=6, n_labels=2, likelihood="poisson")


def test_library_model_per_type():
    lib = np.array([100, 1000, 10, 10, 10], dtype=np.float32)
    mean, std = library_model(lib, np.array([0, 0, 1, 1, 2]), 3)
    np.testing.assert_allclose(mean.numpy(), np.log([np.sqrt(1e5), 10, 10]), rtol=1e-5)
    assert std[0] > 0 and std[1] == 0 and std[2] > 0  # one cell: the pooled sd


def test_gathered_batches_match_host_densified(small_kang):
    counts = sp.csr_matrix(small_kang.X, dtype=np.float32)
    codes = np.arange(counts.shape[0]) % 5
    host = Rows(counts, codes, torch.device("cpu"), gather=False)
    gathered = Rows(counts, codes, torch.device("cpu"), gather=True)
    idx = np.random.default_rng(0).permutation(counts.shape[0])[:64]
    idx[:3] = [5, 5, counts.shape[0] - 1]  # repeats (balanced sampling) and the last row
    for a, b in zip(host.batch(idx)[:3], gathered.batch(idx)[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x, _, lib, _ = host.batch(idx)
    assert x.shape == (64, counts.shape[1]) and torch.equal(lib, x.sum(1).clamp_min(1))
    empty = sp.csr_matrix((3, 4), dtype=np.float32)
    x, _, lib, _ = Rows(empty, np.zeros(3), torch.device("cpu"), gather=True).batch(np.arange(3))
    assert torch.all(x == 0) and torch.all(lib == 1)


def test_decoder_starts_at_the_data_dispersion():
    adata = simulated_counts(200, seed=1)  # theta = 5 for every gene
    model = CVAE(adata, config=tiny_config())
    counts = sp.csr_matrix(adata.X)
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    bias, log_r = initial_decoder(counts, codes, library_sizes(counts), model.module)
    assert 3.5 < np.median(np.exp(log_r.numpy())) < 7
    share = np.asarray(counts.sum(0)).ravel() / counts.sum()
    np.testing.assert_allclose(np.exp(bias.numpy()), share, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_sample_on_cuda_and_load_on_cpu(small_kang, tmp_path):
    model = CVAE(small_kang, config=tiny_config(device="cuda", max_epochs=2))
    hist = model.train(seed=0)
    assert model.device.type == "cuda" and all(math.isfinite(v) for v in hist["val_loss"])
    request = {model.labels[0]: 50, model.labels[1]: 20}
    a, b = model.sample(request, seed=0), model.sample(request, seed=0)
    assert (a.X != b.X).nnz == 0
    z = model.get_latent(small_kang[:20])
    model.save(tmp_path / "m")
    cpu = CVAE.load(tmp_path / "m", device="cpu")
    assert cpu.device.type == "cpu"
    np.testing.assert_allclose(cpu.get_latent(small_kang[:20]), z, atol=1e-3)
    assert cpu.sample(request, seed=0).shape == a.shape
    counts = sp.csr_matrix(small_kang.X, dtype=np.float32)
    rows = Rows(counts, np.zeros(counts.shape[0], dtype=np.int64), torch.device("cuda"))
    assert rows.on_device  # a small CSR is gathered on the GPU
    idx = np.r_[0:100:3, 7, 7]
    torch.testing.assert_close(rows.batch(idx)[0].cpu(), torch.from_numpy(counts[idx].toarray()))


def _toy_loop(val_losses, *, steps_per_epoch: int = 1, kl_seen: list | None = None,
              evaluate_every: int = 1, tolerance: float = 0.0, **settings) -> dict:
    """``train_loop`` on a one-weight module that never learns (lr 0): the validation losses
    are ``val_losses`` in turn; ``kl_seen`` collects the KL weight of every step. The history."""
    from types import SimpleNamespace

    from cellsynth.models import _loop

    module = torch.nn.Linear(1, 1)
    losses = iter(val_losses)
    seen = [] if kl_seen is None else kl_seen
    settings = {"max_epochs": 50, "patience": 1, "kl_start": 1.0, "kl_anneal_epochs": 0,
                **settings}
    steps = _loop.Steps(
        module, torch.optim.SGD(module.parameters(), lr=0.0),
        lambda idx, beta: seen.append(beta) or (module.weight**2).sum(),
        lambda: [[i] for i in range(steps_per_epoch)], steps_per_epoch,
        torch.Generator().manual_seed(0))
    return _loop.train_loop(
        steps, lambda: float(next(losses)), SimpleNamespace(**settings),
        _loop.LoopOptions("test", "test.lr", evaluate_every, tolerance=tolerance)).history


def test_a_noisy_check_keeps_the_most_trained_epoch_within_its_tolerance():
    """``tolerance``: a later check within it of the lowest so far is kept instead; patience
    still counts from the lowest, and a check further off is never kept."""
    checks = [0.60, 0.53, 0.545, 0.535, 0.60, 0.538, 0.59, 0.58, 0.57]
    assert _toy_loop(checks, patience=3)["best_epoch"] == 1  # no tolerance: the lowest
    h = _toy_loop(checks, patience=3, tolerance=0.01)
    assert h["best_epoch"] == 3  # 0.535 is within 0.01 of 0.53; 0.545 is not
    assert h["epochs"] == 5  # three checks after the lowest (0.53) without a lower one
    h = _toy_loop(checks, patience=10, tolerance=0.01, max_epochs=len(checks))
    assert h["best_epoch"] == 5 and h["epochs"] == len(checks)  # 0.538, after a check off
    h = _toy_loop([0.6, 0.5, 0.509, 0.48, 0.489, 0.495], patience=5, tolerance=0.01,
                  max_epochs=6)
    assert h["best_epoch"] == 4  # within 0.01 of the new lowest, 0.48; 0.495 is not


def test_early_stopping_waits_for_min_steps():
    """Few cells make an epoch a few steps: the loop may not stop before ``min_steps``."""

    def run(min_steps: int) -> int:
        # the losses never improve after the first epoch
        return _toy_loop(range(1000), steps_per_epoch=2, min_steps=min_steps)["epochs"]

    assert run(0) == 2  # the first epoch is the best; one more without improvement stops it
    assert run(10) == 5  # 2 steps an epoch: not before 10 steps


def test_fidelity_selection_is_not_held_by_min_steps(monkeypatch):
    """``cvae.min_steps`` holds early stopping on the ELBO only: the fidelity checks are spaced
    in optimiser steps already, and patience counts checks."""
    from cellsynth.models import _select

    monkeypatch.setattr(_select.FidelityCheck, "__call__", lambda self: 0.6)  # never improves
    adata = simulated_counts(n_per_type=100)
    config = tiny_config(select="fidelity", max_epochs=30, min_steps=10**6, patience=1,
                         batch_size=16)  # fmt: skip
    h = CVAE(adata, config=config).train(seed=0)
    checked = [e for e, v in enumerate(h["val_loss"]) if v is not None]
    assert checked == [5, 11] and h["epochs"] == 12  # stopped at the second check
    assert h["best_epoch"] == 11  # equal checks: the later one is kept (within the tolerance)


def test_min_improvement_stops_a_loss_that_only_creeps_down():
    """On atlases the validation loss falls by hundredths of a percent an epoch for the whole
    budget: ``cvae.min_improvement`` counts such epochs as no improvement."""
    from cellsynth.config import load
    from cellsynth.resume import hashed_settings

    def run(**stop) -> dict:
        creeping = (1000.0 * (1 - 0.0003 * e) for e in range(100))  # -0.03% an epoch
        return _toy_loop(creeping, patience=3, **stop)

    assert run()["epochs"] == 50  # every epoch improves: the whole budget
    assert run(min_improvement=0.0002)["epochs"] == 50  # 0.03% beats 0.02%
    stopped = run(min_improvement=0.001)
    # 3 epochs later the loss is 0.09% below the first: no improvement, patience 3 runs out
    assert (stopped["best_epoch"], stopped["epochs"]) == (0, 4)
    assert "min_improvement" not in hashed_settings(load())["cvae"]
    assert load(overrides=["cvae.min_improvement=0.001"]).cvae.min_improvement == 0.001


def test_kl_weight_scales_the_warm_up_and_adding_it_keeps_old_hashes():
    """``cvae.kl_weight`` is where the KL warm-up ends; at 1 (the behaviour before the setting)
    it is left out of the settings hash, so results kept before it still match."""
    from cellsynth.config import load
    from cellsynth.errors import ConfigError
    from cellsynth.resume import hashed_settings

    def weights(**kl) -> list[float]:
        seen: list[float] = []
        _toy_loop([1.0] * 4, kl_seen=seen, max_epochs=4, patience=10, kl_start=0.0,
                  kl_anneal_epochs=2, **kl)
        return seen

    assert weights() == [0.0, 0.5, 1.0, 1.0]  # no kl_weight (the seed VAE): up to 1
    assert weights(kl_weight=0.5) == [0.0, 0.25, 0.5, 0.5]
    assert "kl_weight" not in hashed_settings(load())["cvae"]
    assert hashed_settings(load(overrides=["cvae.kl_weight=0.5"]))["cvae"]["kl_weight"] == 0.5
    with pytest.raises(ConfigError, match=r"cvae\.kl_weight must be positive"):
        load(overrides=["cvae.kl_weight=0"])


def test_auto_epoch_budget_follows_the_training_cells(small_kang, monkeypatch):
    from cellsynth.config import load
    from cellsynth.models import _loop

    assert CVAEConfig().max_epochs == "auto"
    assert _loop.epoch_budget("auto", 1_000, 256) == 400  # small data: at most 400 epochs
    assert _loop.epoch_budget("auto", 6_400, 256) == 400  # ...up to 10,000 steps
    assert _loop.epoch_budget("auto", 12_800, 256) == 200
    assert _loop.epoch_budget("auto", 12_800, 128) == 100  # half the batch, half the epochs
    assert _loop.epoch_budget("auto", 533_086, 256) == 5  # E-ANND-5's training split
    assert _loop.epoch_budget("auto", 10**9, 256) == 1
    assert _loop.epoch_budget(7, 10**9, 256) == 7  # a number is kept
    assert load(overrides=["cvae.max_epochs=auto"]).cvae.max_epochs == "auto"
    assert load(overrides=["cvae.max_epochs=5"]).cvae.max_epochs == 5
    # the fit runs the resolved budget: 1 epoch when the rule gives 1
    model = CVAE(small_kang, label_key="cell_type", config=tiny_config(max_epochs="auto"))
    monkeypatch.setattr(_loop, "AUTO_STEPS", 1)
    model.train()
    assert model.history["epochs"] == 1


@pytest.mark.parametrize("zero_inflated", [False, True])
@pytest.mark.parametrize("per_cell_theta", [False, True])
@pytest.mark.parametrize("found", [False, True])  # the non-zero counts found by the caller
def test_sparse_log_prob_sum_equals_the_dense_sum(zero_inflated, per_cell_theta, found):
    gen = torch.Generator().manual_seed(0)
    b, g = 16, 50
    mu = (torch.rand(b, g, generator=gen) * 5).requires_grad_()
    shape = (b, g) if per_cell_theta else (g,)
    theta = (torch.rand(shape, generator=gen) * 3 + 0.1).requires_grad_()
    zi = (torch.randn(b, g, generator=gen)).requires_grad_() if zero_inflated else None
    x = torch.poisson(mu.detach()) * (torch.rand(b, g, generator=gen) < 0.4)  # many zeros
    x[3] = 0.0  # a cell with no counts
    px = NegativeBinomial(mu, theta, zi_logits=zi)
    dense = px.log_prob(x).sum(-1)
    sparse = px.log_prob_cells(x, nonzero(x) if found else None)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-4)
    params = [t for t in (mu, theta, zi) if t is not None]
    g_dense = torch.autograd.grad(dense.sum(), params)
    g_sparse = torch.autograd.grad(sparse.sum(), params)
    for a, b_ in zip(g_sparse, g_dense, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("found", [False, True])  # the non-zero counts found by the caller
def test_poisson_from_logits_is_the_dense_sum_and_moments_training_leaves_the_dispersion(found):
    logits = torch.randn(6, 9, dtype=torch.float64) * 2
    library = torch.rand(6, dtype=torch.float64) * 30 + 1
    x = torch.poisson(library[:, None] * torch.softmax(logits, -1))
    x[0] = 0  # a cell without counts: only its zeros
    logits.requires_grad_(True)

    def dense(lg: torch.Tensor) -> torch.Tensor:
        mu = library[:, None] * torch.softmax(lg, -1)
        return torch.distributions.Poisson(mu).log_prob(x).sum(-1)

    nz = nonzero(x) if found else None
    torch.testing.assert_close(log_poisson_softmax(x, logits, library, nz), dense(logits))
    (g_dense,) = torch.autograd.grad(dense(logits).sum(), logits)
    (g_sparse,) = torch.autograd.grad(log_poisson_softmax(x, logits, library, nz).sum(), logits)
    torch.testing.assert_close(g_sparse, g_dense)

    module = CVAEModule(n_input=9, n_labels=2, n_hidden=[8], n_latent=2, dispersion_fit="moments")
    xf, y = x.float(), torch.tensor([0, 1, 0, 1, 1, 0])
    lib = xf.sum(1).clamp_min(1.0)
    out = module.loss(xf, y, lib)
    out.loss.backward()
    assert module.px_r.grad is None and module.z_mean.weight.grad is not None
    with pytest.raises(ValueError, match="dispersion_fit"):
        CVAEModule(n_input=9, n_labels=2, likelihood="zinb", dispersion_fit="moments")
    with pytest.raises(ConfigError, match=r'change cvae\.dispersion_fit to "learned"'):
        CVAE(config=CVAEConfig(likelihood="gaussian"))


def test_dispersion_by_moments_recovers_a_known_negative_binomial():
    """Decoded means equal to the true NB means: the moments give back the true theta, per type
    (theta 2 and 10) or pooled over types ("gene": between the two)."""
    rng = np.random.default_rng(0)
    n_genes, n_per_type, thetas = 30, 3000, np.array([2.0, 10.0])
    share = rng.dirichlet(np.ones(n_genes), size=2)  # (2, n_genes)
    codes = np.repeat([0, 1], n_per_type)
    library = rng.lognormal(np.log(1000), 0.2, len(codes))
    mu = share[codes] * library[:, None]
    theta = thetas[codes][:, None]
    x = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    rows = Rows(sp.csr_matrix(x), codes, torch.device("cpu"))

    def true_mean(z, y, library, c=None, *, one_type=False):  # generative's signature
        scale = torch.as_tensor(share, dtype=torch.float32)[y]
        return NegativeBinomial(library[:, None] * scale, torch.ones(n_genes))

    fitted = {}
    for dispersion in ("gene-label", "gene"):
        module = CVAEModule(n_input=n_genes, n_labels=2, n_hidden=[8], n_latent=2,
                            dispersion=dispersion, dispersion_fit="moments")
        module.generative = true_mean  # the decoder a perfect fit would have
        fitted[dispersion] = fit_sampler(module, rows, codes, 512, seed=0).px_r.exp().numpy()
    per_type = fitted["gene-label"]
    assert per_type.shape == (2, n_genes)
    expressed = share.min(0) * 1000 > 5  # a few counts a cell: the moments are precise
    for t, want in enumerate(thetas):
        np.testing.assert_allclose(np.median(per_type[t, expressed]), want, rtol=0.1)
    pooled = fitted["gene"]
    assert pooled.shape == (n_genes,)
    assert 2.0 < np.median(pooled[expressed]) < 10.0
    learned = CVAEModule(n_input=n_genes, n_labels=2, n_hidden=[8], n_latent=2)
    assert fit_sampler(learned, rows, codes, 512, seed=0).px_r is None


def _three_types():
    """Counts of three types of 150, 900 and 1,200 cells over 20 genes, their rows, and a fresh
    small NB module for them (same weights at each call)."""
    rng = np.random.default_rng(1)
    codes = np.repeat(np.arange(3), [150, 900, 1200])
    share = rng.dirichlet(np.ones(20), size=3)
    x = rng.poisson(share[codes] * 500).astype(np.float32)
    rows = Rows(sp.csr_matrix(x), codes, torch.device("cpu"))

    def module_for():
        torch.manual_seed(0)
        return CVAEModule(n_input=20, n_labels=3, n_hidden=[8], n_latent=2,
                          dispersion_fit="moments")

    return x, codes, rows, module_for


def test_sampler_fit_shows_signs_of_life(monkeypatch, caplog):
    """Without a terminal, each of the sampler fit's passes over the types logs where it is once
    it has run LOG_SECONDS (an atlas's final fit takes minutes); inside a check (quiet) none."""
    import logging

    from cellsynth import options

    _, codes, rows, module_for = _three_types()
    monkeypatch.setattr(options, "LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="cellsynth.progress")
    with options.settings.override(progress=False):
        fit_sampler(module_for(), rows, codes, 256, seed=0)
        lines = [r.getMessage() for r in caplog.records]
        for what in ("latent mixtures", "gene scale", "zero inflation"):
            assert any(m.startswith(f"CVAE sampler: {what}: ") and "/3 type" in m for m in lines)
        caplog.clear()
        fit_sampler(module_for(), rows, codes, 256, seed=0, quiet=True)
        assert not caplog.records


def test_share_budget_cuts_the_largest_types_to_one_cap():
    from cellsynth.models._moments import share_budget

    sizes = np.array([10, 300, 3000, 4000])
    assert share_budget(sizes, None).tolist() == sizes.tolist()
    assert share_budget(sizes, 10_000).tolist() == sizes.tolist()  # fits: as they are
    cut = share_budget(sizes, 1_000, least=1)
    assert cut.tolist() == [10, 300, 345, 345] and cut.sum() <= 1_000
    assert share_budget(sizes, 100, least=50).tolist() == [10, 50, 50, 50]  # the floor


def test_sampler_budget_bounds_the_cells_read_and_drawn():
    """A budget that holds every type's share changes nothing; a smaller one reads and decodes
    at most that many cells in all (the zero inflation's draws a quarter of it), and the moment
    fits still find the data's level."""
    x, codes, rows, module_for = _three_types()

    def fitted(budget, seen=None):
        module = module_for()
        if seen is not None:
            batch, generative = rows.batch, module.generative
            rows.batch = lambda idx: (seen["read"].append(len(idx)), batch(idx))[1]
            module.generative = lambda z, *a, **k: (seen["decoded"].append(len(z)),
                                                    generative(z, *a, **k))[1]
        try:
            return fit_sampler(module, rows, codes, 256, seed=0, budget=budget), module
        finally:
            rows.__dict__.pop("batch", None)

    plain, _ = fitted(None)
    same, _ = fitted(100_000)
    for a, b in zip(plain, same, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    seen = {"read": [], "decoded": []}
    bounded, module = fitted(600, seen)
    assert sum(seen["read"]) <= 600
    # decoded: the moments at each cell read, the gene scale's draws, the zero inflation's
    assert sum(seen["decoded"]) <= 600 + 600 + 3 * 128
    assert not torch.equal(bounded.gene_scale, plain.gene_scale)
    # the gene scale still brings generated means to the training means
    mean = torch.stack([torch.as_tensor(x[codes == t].mean(0)) for t in range(3)])
    y = torch.arange(3).repeat_interleave(2000)
    u, eps = torch.rand(len(y)), torch.randn(len(y), 3)
    with torch.no_grad():
        z, library = module.mixture_from_noise(u, eps, y)
        mu = module.generative(z, y, library, None, one_type=False).mean
    got = torch.stack([mu[y == t].mean(0) for t in range(3)])
    high = mean > 5
    assert torch.allclose(got[high], mean[high], rtol=0.15)


def test_loop_checks_every_few_epochs_and_patience_counts_checks():
    """An expensive check (the fidelity selection) runs every ``evaluate_every`` epochs and at
    the last; ``patience`` counts checks, and the epochs between them log None (JSON null)."""
    # checks at epochs 2, 5, 8, 11: 5 (best), 4 (best), 6, 7 -> patience 2 runs out at epoch 11
    h = _toy_loop([5.0, 4.0, 6.0, 7.0, 1.0], evaluate_every=3, patience=2)
    assert (h["best_epoch"], h["epochs"]) == (5, 12)
    checked = [e for e, v in enumerate(h["val_loss"]) if v is not None]
    assert checked == [2, 5, 8, 11]
    # the last epoch is always checked, so a short budget still has a best epoch
    h = _toy_loop([3.0, 2.0], evaluate_every=3, max_epochs=4, patience=5)
    assert (h["best_epoch"], h["epochs"]) == (3, 4)
    assert [e for e, v in enumerate(h["val_loss"]) if v is not None] == [2, 3]


class _Replay:
    """A stand-in generator for :class:`FidelityCheck` whose "samples" are given real cells."""

    def __init__(self, genes, labels, pool, pool_codes):
        self.genes, self.labels, self.pool, self.pool_codes = genes, labels, pool, pool_codes
        self.refits = 0

    def _fit_sampler(self, rows, codes, seed, **_):
        self.refits += 1

    def _chunks(self, pairs, rng, latent):
        for label, _, n in pairs:
            idx = np.flatnonzero(self.pool_codes == self.labels.index(label))
            yield label, self.pool[rng.choice(idx, n, replace=False)]  # no duplicates


def test_fidelity_check_tells_real_cells_from_shuffled_genes():
    """The selection's check: generated cells from the validation cells' own distribution
    score about 0.5; the same cells with genes permuted within each cell score near 1."""
    from cellsynth.models._counts import Rows
    from cellsynth.models._select import FidelityCheck, check_every

    adata = simulated_counts(n_per_type=200)
    x = sp.csr_matrix(adata.X)
    codes = adata.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    rng = np.random.default_rng(0)
    part = np.minimum(rng.permutation(len(codes)) % 4, 2)  # training, validation, the pool
    genes, labels = list(adata.var_names), list(SIM_TYPES)
    train = Rows(x[part == 0], codes[part == 0], torch.device("cpu"))

    def auc(pool: sp.csr_matrix) -> float:
        model = _Replay(genes, labels, pool, codes[part == 2])
        check = FidelityCheck(model, train, codes[part == 0], x[part == 1], codes[part == 1], 0)
        assert sum(n for _, _, n in check.request) == int((part == 1).sum())
        value = check()
        assert model.refits == 1  # the sampler is refitted before every check
        return value

    same = auc(x[part == 2])
    shuffled = x[part == 2].toarray()
    shuffled = sp.csr_matrix(rng.permuted(shuffled, axis=1))
    assert same < 0.65
    assert auc(shuffled) > 0.9
    assert check_every(1400, 256, 40) == 17  # 6 steps an epoch: about 100 steps between checks
    assert check_every(1400, 256, 400) == 20  # ...but at most 20 checks in the budget
    assert check_every(500_000, 256, 5) == 1


@pytest.mark.parametrize("select", ["fidelity", "elbo"])
def test_cvae_keeps_the_epoch_its_selection_picks(select):
    """``cvae.select``: "fidelity" checks generated against validation cells every few epochs
    (an AUC in [0, 1]) and keeps the best checked epoch; "elbo" monitors the validation loss
    every epoch. Adding the setting keeps the hashes of results kept before it (as "elbo")."""
    from cellsynth.config import load
    from cellsynth.resume import hashed_settings

    adata = simulated_counts(n_per_type=100)
    config = tiny_config(select=select, max_epochs=8, min_steps=0, patience=50, batch_size=16)
    model = CVAE(adata, config=config)
    h = model.train(seed=0)
    assert h["select"] == select and h["epochs"] == 8
    values = np.array([np.nan if v is None else v for v in h["val_loss"]])
    checked = np.flatnonzero(np.isfinite(values))
    if select == "fidelity":  # 270 training cells at batch 16: 17 steps an epoch
        assert checked.tolist() == [5, 7]  # a check about every 100 steps, and at the last epoch
        assert ((values[checked] >= 0) & (values[checked] <= 1)).all()
    else:
        assert len(checked) == 8 and (values > 1).all()  # a loss per cell, not an AUC
    # the kept epoch: the lowest check, or a later one within the selection's tolerance of it
    # (the most trained of the checks it cannot tell apart; none for the ELBO)
    tolerance = config.select_tolerance if select == "fidelity" else 0.0
    lowest, kept = np.inf, None
    for epoch in checked:
        if values[epoch] < lowest:
            lowest, kept = values[epoch], epoch
        elif values[epoch] <= lowest + tolerance:
            kept = epoch
    assert h["best_epoch"] == kept
    assert model.sample({"beta": 5}, seed=0).n_obs == 5
    assert "select" not in hashed_settings(load(overrides=["cvae.select=elbo"]))["cvae"]
    assert hashed_settings(load())["cvae"]["select"] == "fidelity"


def test_long_training_logs_signs_of_life(monkeypatch, caplog):
    """Without a terminal (no progress bar) a long fit still logs where it is, at most every
    LOG_SECONDS: epoch, cells, loss, the last check, cells/s and the time left."""
    from cellsynth import options

    caplog.set_level(logging.INFO, logger="cellsynth")
    monkeypatch.setattr(options, "LOG_SECONDS", 0.0)  # every step is "long"
    _toy_loop([3.0, 2.0, 1.0], steps_per_epoch=3, max_epochs=3, patience=5)
    lines = [r.getMessage() for r in caplog.records if "cells/s" in r.getMessage()]
    assert len(lines) == 9  # one per step
    assert lines[0].startswith("test: epoch 1/3, 1 of 3 cells") and "left" in lines[0]
    assert "last check 3" in lines[3] and "last check" not in lines[0]
    monkeypatch.setattr(options, "LOG_SECONDS", 3600.0)
    caplog.clear()
    _toy_loop([3.0, 2.0, 1.0], steps_per_epoch=3, max_epochs=3, patience=5)
    assert not [r for r in caplog.records if "cells/s" in r.getMessage()]


def test_signs_of_life_rate_counts_the_checks(monkeypatch, caplog):
    """The logged rate and time left are over the run so far, checks included: a rate within
    one epoch reads thousands of cells a second at its first step and leaves the checks out."""
    import re
    import time

    from cellsynth import options

    def slow_checks():
        for v in (3.0, 2.0, 1.0):
            time.sleep(0.2)  # each check: 0.2 s; each step: next to nothing
            yield v

    caplog.set_level(logging.INFO, logger="cellsynth")
    monkeypatch.setattr(options, "LOG_SECONDS", 0.0)
    _toy_loop(slow_checks(), steps_per_epoch=3, max_epochs=3, patience=5)
    lines = [r.getMessage() for r in caplog.records if "cells/s" in r.getMessage()]
    assert lines[3].startswith("test: epoch 2/3, 1 of 3 cells")
    rate = float(re.search(r"([\d.]+) cells/s", lines[3]).group(1))
    assert rate <= 4 / 0.2  # 4 cells done in at least the first check's 0.2 s


def test_gene_scale_gives_generated_cells_the_training_means():
    """After a short fit the decoder's means are off; the sampler's gene scale brings each
    type's generated gene means to its training cells' (genes with many counts in the type:
    fully; the shrinkage towards one matters only for a count or two). Without it (scale one)
    the same model is further off; the training loss never sees the scale."""
    adata = simulated_counts(n_per_type=400, seed=4)
    adata.obs[K.SPLIT] = "train"
    model = CVAE(adata, config=tiny_config(max_epochs=2, select="elbo", min_steps=0))
    model.train(seed=0)
    module = model.module
    assert module.gene_scale.shape == (len(SIM_TYPES), adata.n_vars)
    assert not torch.allclose(module.gene_scale, torch.ones_like(module.gene_scale))
    x = adata.X.toarray()
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    request = dict.fromkeys(SIM_TYPES, 4000)

    def error() -> float:
        out = model.sample(request, seed=1)
        gen = out.X.toarray()
        errs = []
        for t, name in enumerate(SIM_TYPES):
            real = x[codes == t].mean(0)
            fake = gen[(out.obs["cell_type"] == name).to_numpy()].mean(0)
            ok = real > 5  # thousands of counts in the type: the moments are precise
            errs.append(np.abs(fake[ok] / real[ok] - 1))
        return float(np.median(np.concatenate(errs)))

    calibrated = error()
    scale = module.gene_scale.clone()
    module.gene_scale.fill_(1.0)
    raw = error()
    module.gene_scale.copy_(scale)
    assert calibrated < 0.05
    assert calibrated < raw / 2


def test_zero_inflation_gives_generated_cells_the_training_share_of_zeros():
    """Genes on in a random third of a type's cells (off in the others, whatever the cell's
    state) have more zeros than an NB around the decoded means gives; the sampler's zero
    inflation brings each type's share of zeros to the training cells', its means kept, and
    leaves genes without excess zeros alone (issue 21)."""
    adata = simulated_counts(150, seed=3)
    rng = np.random.default_rng(3)
    x = adata.X.toarray()
    bursty = np.arange(40, 50)  # in every type: on in a third of the cells, 3x when on
    on = rng.random((adata.n_obs, len(bursty))) < 1 / 3
    x[:, bursty] = np.where(on, rng.poisson(3 * x[:, bursty] + 3), 0)
    adata.X = sp.csr_matrix(x.astype(np.float32))
    model = CVAE(config=tiny_config(max_epochs=30, select="elbo"))
    model.fit(adata, "cell_type", seed=0)
    pi = model.module.zero_inflation
    assert pi[:, bursty].mean() > 0.2 and pi[:, :40].mean() < 0.05

    def shares(a):
        d = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
        return (d[:, bursty] == 0).mean(0), d[:, bursty].mean(0)

    syn = model.sample(dict.fromkeys(SIM_TYPES, 2000), seed=1)
    real_zero, real_mean = shares(adata)
    syn_zero, syn_mean = shares(syn)
    assert np.abs(syn_zero - real_zero).mean() < 0.05
    model.module.set_zero_inflation(torch.zeros(()))  # the NB alone: too few zeros
    nb_zero, nb_mean = shares(model.sample(dict.fromkeys(SIM_TYPES, 2000), seed=1))
    assert (real_zero - nb_zero).mean() > 0.1
    # the same means with and without the inflation (those the gene scale fitted; summed over
    # the genes, which are heavy-tailed: theta about 0.6)
    assert syn_mean.sum() == pytest.approx(nb_mean.sum(), rel=0.06)
    assert syn_mean.sum() == pytest.approx(real_mean.sum(), rel=0.1)


def test_zero_inflation_solve_matches_the_target_share_or_stops_at_its_largest_pi():
    """solve_zero_inflation against a fine bisection over every gene: means of every size,
    heavy and light tails, targets within reach and out of it (those stop at the largest pi)."""
    from cellsynth.models._moments import MAX_ZERO_INFLATION, solve_zero_inflation

    gen = torch.Generator().manual_seed(0)
    b, g = 300, 3000
    mu = torch.exp(torch.randn(b, g, generator=gen) * 1.5 - 2.0 + 3 * torch.rand(g, generator=gen))
    theta = torch.exp(2 * torch.randn(1, g, generator=gen))

    def share(pi):
        return pi + (1 - pi) * torch.exp(-theta * torch.log1p(mu / ((1 - pi) * theta))).mean(0)

    p0 = share(torch.zeros(g))
    target = p0 + (1 - p0) * torch.rand(g, generator=gen)  # many out of reach
    lo, hi = torch.zeros(g), torch.full((g,), MAX_ZERO_INFLATION)
    for _ in range(40):
        mid = (lo + hi) / 2
        few = share(mid) < target
        lo, hi = torch.where(few, mid, lo), torch.where(few, hi, mid)
    pi = solve_zero_inflation(mu, theta, target)
    reach = share(torch.full((g,), MAX_ZERO_INFLATION)) >= target
    assert 0.2 < reach.float().mean() < 0.9  # both kinds of gene are tried
    assert (pi[~reach] - MAX_ZERO_INFLATION).abs().max() < 1e-6
    assert (share(pi) - target)[reach].abs().max() < 2e-4
    assert (pi - lo)[reach].abs().max() < 2e-3  # pi is loose only where zeros hardly move


def test_an_untrained_model_refuses_to_generate_or_be_saved(small_kang, tmp_path):
    """Random weights give noise that reads as cells, and a saved file that reads as a model."""
    from cellsynth.errors import NotTrainedError

    model = CVAE(small_kang, config=tiny_config())
    with pytest.raises(NotTrainedError, match=r"has not been trained, so it cannot generate "
                                              r"cells: call model\.train\(\)"):
        model.sample({model.labels[0]: 5})
    with pytest.raises(NotTrainedError, match="cannot be saved"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("one_type", [True, False])
def test_generation_means_in_row_blocks_equal_the_unfused_means(one_type: bool) -> None:
    """Without a gradient, generation decodes the NB means in row blocks (_nb_rate, in place):
    the same means, dispersion and zero inflation as the path training takes, with the gene
    scale, a covariate level's scale and the zero inflation all set, over several blocks."""
    torch.manual_seed(0)
    module = CVAEModule(n_input=50, n_labels=3, n_hidden=[16], n_latent=4,
                        n_covariate_levels=[2])
    module.eval()
    module.set_gene_scale(torch.rand(3, 50) + 0.5)
    module.set_zero_inflation(torch.rand(3, 50) * 0.5)
    module.set_level_scale(torch.tensor([[0, 1], [0, 0], [2, 0]]), torch.cat(
        [torch.ones(1, 50), torch.rand(2, 50) + 0.5]))
    n = module.RATE_BLOCK_ROWS * 2 + 7
    z = torch.randn(n, 4)
    y = torch.full((n,), 2) if one_type else torch.randint(0, 3, (n,))
    c = torch.randint(0, 2, (n, 1))
    library = torch.exp(torch.randn(n) + 7)
    with torch.no_grad():
        fused = module.generative(z, y, library, c, one_type=one_type)
    with torch.enable_grad():
        plain = module.generative(z, y, library, c, one_type=one_type)
    assert fused.scale is None and plain.scale is not None  # the paths differ...
    torch.testing.assert_close(fused.mu, plain.mu.detach(), rtol=1e-5, atol=1e-6)  # ...not the NB
    torch.testing.assert_close(fused.theta, plain.theta.detach())
    torch.testing.assert_close(fused.zi_logits, plain.zi_logits.detach())


def test_mixture_draws_are_each_cells_component_mean_plus_its_factor_times_the_noise() -> None:
    """mixture_from_noise draws the cells of each (type, component) together; every cell gets
    its own component's mean plus that component's Cholesky factor times its noise, as a
    per-cell gather would (types mixed in one call, components of zero weight never drawn)."""
    torch.manual_seed(1)
    module = CVAEModule(n_input=10, n_labels=3, n_hidden=[8], n_latent=3)
    d, k = 4, 5
    weight = torch.rand(3, k)
    weight[1, 2] = 0.0
    weight = weight / weight.sum(1, keepdim=True)
    mean = torch.randn(3, k, d)
    chol = torch.tril(torch.randn(3, k, d, d))
    module.set_latent_mixture(weight, mean, chol)
    n = 500
    u, eps, y = torch.rand(n), torch.randn(n, d), torch.randint(0, 3, (n,))
    z, library = module.mixture_from_noise(u, eps, y)
    cdf = torch.cumsum(weight[y], 1)
    comp = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]).contiguous()).clamp_max(k - 1)[:, 0]
    expected = mean[y, comp] + (chol[y, comp] @ eps[:, :, None])[..., 0]
    torch.testing.assert_close(z, expected[:, :-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(library, torch.exp(expected[:, -1]), rtol=1e-5, atol=1e-5)
    assert not bool(((y == 1) & (comp == 2)).any())


def test_the_log_says_when_the_kept_epoch_is_checked(caplog):
    """A fit shorter than the check interval checks at its last epoch, and says so (it said
    "every 33 epochs" for a 2-epoch fit)."""
    import logging

    from cellsynth.data.simulate import simulate_atlas

    atlas = simulate_atlas(n_cells=600, n_genes=100, n_types=3, label_key="cell_type")
    model = CVAE(config=CVAEConfig(n_hidden=[32], n_latent=4, max_epochs=2, device="cpu"))
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        model.fit(atlas, "cell_type", seed=0)
    assert "two-sample AUC at the last of 2 epoch(s)" in caplog.text
