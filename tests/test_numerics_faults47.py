"""Training and generation numerics on odd but legal data (session 47's sweep): tiny types,
few genes, large counts, extreme settings (``cvae.lr``, ``batch_size``, ``max_epochs``).
Each test fails without its fix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.errors import CellsynthError


def atlas(sizes: tuple[int, ...] = (20, 20), n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Poisson counts, one block of raised genes per type, ``sizes[k]`` cells of type ``k``."""
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(len(sizes)), sizes)
    rate = np.full((len(types), n_genes), 2.0)
    for k in range(len(sizes)):
        rate[types == k, 3 * k : 3 * k + 3] = 20.0
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"t{k}" for k in types])},
                       index=[f"c{i}" for i in range(len(types))])  # fmt: skip
    return ad.AnnData(sp.csr_matrix(rng.poisson(rate).astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))  # fmt: skip


def cvae(**settings):
    import cellsynth as cs
    from cellsynth.config import CVAEConfig

    return cs.CVAE(config=CVAEConfig(**{"max_epochs": 20, "n_hidden": [16], "device": "cpu",
                                        **settings}))  # fmt: skip


@pytest.mark.parametrize("settings", [
    {"lr": 10.0},
    {"lr": 10.0, "likelihood": "zinb", "dispersion_fit": "learned"},
    {"lr": 10.0, "likelihood": "gaussian", "dispersion_fit": "learned"},
])  # fmt: skip
def test_a_diverged_cvae_fit_is_refused_not_kept_to_generate_empty_cells(settings,
                                                                         one_torch_thread):
    """cvae.lr = 10 (or 1) trained to finite weights whose latent positions overflow: the fit
    kept them, the gene scale came out 0 and every generated cell was empty (nb, zinb), or
    the cells held inf and NaN counts (gaussian), all without a word. The fit now stops with
    what diverged and the setting to lower."""
    with pytest.raises(CellsynthError, match=r"training diverged.*lower cvae\.lr"):
        cvae(**settings).fit(atlas(), "cell_type")


def test_a_cvae_fit_at_a_workable_lr_still_generates_cells(one_torch_thread):
    """The check refuses overflow only: a fit at a usual learning rate generates as before."""
    model = cvae(lr=0.1)
    model.fit(atlas(), "cell_type")
    cells = model.sample({"t0": 5, "t1": 5}, seed=0)
    assert (np.asarray(cells.X.sum(axis=1)).ravel() > 0).all()


def test_a_model_that_decodes_non_finite_means_is_refused_at_generation(one_torch_thread):
    """A model saved before fits were checked (a gene scale of inf or NaN) was sampled into
    empty cells; generating from it now says it diverged and how to fit it again."""
    import torch

    model = cvae(lr=0.01, max_epochs=2)
    model.fit(atlas(), "cell_type")
    model.module.set_gene_scale(torch.full_like(model.module.gene_scale, float("inf")))
    with pytest.raises(CellsynthError, match=r"training diverged.*lower cvae\.lr"):
        model.sample({"t0": 5}, seed=0)


def reference(**settings):
    from cellsynth.config import SeedVAEConfig
    from cellsynth.models.registry import get_generator

    return get_generator("reference")(config=SeedVAEConfig(**{"max_epochs": 3, **settings}))


def test_a_diverged_reference_fit_is_refused_not_kept_to_crash_at_generation(one_torch_thread):
    """seed_vae.lr = 10 fitted and saved a reference model whose decoded expression overflows;
    sampling it raised numpy's ValueError 'lam value too large'. The fit now stops with what
    diverged and the setting to lower."""
    with pytest.raises(CellsynthError, match=r"training diverged.*lower seed_vae\.lr"):
        reference(lr=10.0).fit(atlas(), "cell_type")


def test_a_reference_model_that_decodes_overflowing_expression_is_refused_at_generation(
        one_torch_thread, monkeypatch):  # fmt: skip
    """A reference model saved before fits were checked: one line, not numpy's ValueError."""
    model = reference()
    model.fit(atlas(), "cell_type")
    assert (np.asarray(model.sample({"t0": 5}).X.sum(axis=1)) > 0).all()
    monkeypatch.setattr(model.pca, "inverse_transform",
                        lambda z: np.full((len(z), len(model.genes)), 1e6))  # fmt: skip
    with pytest.raises(CellsynthError, match=r"training diverged.*lower seed_vae\.lr"):
        model.sample({"t0": 5}, seed=0)


def scvi(**settings):
    pytest.importorskip("scvi")
    from cellsynth.config import ScviConfig
    from cellsynth.models.registry import get_generator

    return get_generator("scvi")(config=ScviConfig(**{"max_epochs": 1, "n_hidden": 16,
                                                      **settings}))  # fmt: skip


def test_scvi_trains_when_its_training_cells_leave_a_last_batch_of_one(one_torch_thread):
    """129 training cells at the default scvi.batch_size = 128 (or 36 at 35) stopped the fit
    with torch's 'ValueError: Expected more than 1 value per channel when training': scvi-tools'
    batch normalisation cannot train on a batch of one cell. That last cell is now left out of
    each epoch, and the fit ends."""
    a = atlas((70, 69))
    a.obs["cellsynth_split"] = ["val" if i % 14 == 0 else "train" for i in range(a.n_obs)]
    assert (a.obs["cellsynth_split"] == "train").sum() == 129
    model = scvi(batch_size=128)
    model.fit(a, "cell_type")
    assert np.isfinite(model.sample({"t0": 5}, seed=0).X.toarray()).all()


def test_scvi_batch_size_1_is_refused_with_the_setting_to_change():
    """scvi.batch_size = 1 (a legal setting) ended in torch's ValueError traceback."""
    from cellsynth.errors import ConfigError

    with pytest.raises(ConfigError, match=r"scvi\.batch_size = 1.*2 or more"):
        scvi(batch_size=1).fit(atlas(), "cell_type")


@pytest.mark.parametrize(("model", "setting"), [("cvae", "cvae.lr"), ("reference", "seed_vae.lr")])
def test_a_save_of_non_finite_weights_names_the_setting_of_its_model_not_a_temporary_folder(
        model, setting, tmp_path, one_torch_thread):  # fmt: skip
    """Saving weights that hold NaN said 'nothing was saved to .../.model.PID@HOST.partial'
    (the save's own temporary folder, not the directory given) and told a reference model's
    user to lower cvae.lr, a setting that model does not read."""
    import torch

    from cellsynth.errors import ModelFileError

    fitted = cvae(lr=0.01, max_epochs=2) if model == "cvae" else reference()
    fitted.fit(atlas(), "cell_type")
    module = fitted.module if model == "cvae" else fitted.vae.module
    weight = next(p for p in module.parameters() if p.is_floating_point())
    with torch.no_grad():
        weight.fill_(float("nan"))
    with pytest.raises(ModelFileError) as err:
        fitted.save(tmp_path / "model")
    assert f"lower {setting} " in str(err.value) and ".partial" not in str(err.value)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("model", ["cvae", "reference"])
def test_weights_made_nan_during_training_end_in_the_fits_message_not_torchs(model,
                                                                            one_torch_thread):
    """weight_decay = 1e6 (legal: [0, inf)) turned the weights NaN within an epoch, and the
    next encoder pass raised torch's 'ValueError: Expected parameter loc ... to satisfy the
    constraint Real()' from deep in the loop. The NaN loss now reaches the training loop and
    the sampler checks: one line naming the settings to lower."""
    fit = cvae(weight_decay=1e6) if model == "cvae" else reference(weight_decay=1e6)
    setting = "cvae" if model == "cvae" else "seed_vae"
    with pytest.raises(CellsynthError, match=rf"lower {setting}\.lr.*{setting}\.weight_decay"):
        fit.fit(atlas((30, 30)), "cell_type")
