"""The Python API as a scanpy user drives it in a notebook (session 45's sweep): a trained CVAE
refuses a setting that would leave its weights and settings apart, ``RunConfig`` takes a section
as a dict, ``cs.read`` and the plots name a wrong argument in one line, and ``cs.pl.per_type``
draws every metric the per-type table holds."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib
import pytest

from conftest import kang_small_cells

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import cellsynth as cs
from cellsynth.errors import CellsynthError, ConfigError, DataError


@pytest.fixture(scope="module")
def small(kang_path: Path) -> ad.AnnData:
    return kang_small_cells(kang_path)


@pytest.fixture(scope="module")
def result(small: ad.AnnData):
    return cs.evaluate(small[::2].copy(), small[1::2].copy(), label_key="cell_type",
                       max_cells=150, gene_repeats=1)  # fmt: skip


def test_a_trained_cvae_refuses_a_setting_that_shapes_its_network(small, tmp_path,
                                                                   one_torch_thread) -> None:
    model = cs.CVAE(small, label_key="cell_type")
    model.configure(max_epochs=1, min_steps=0, n_hidden=(16,), n_latent=4)  # before: any
    model.train(seed=0)
    with pytest.raises(ConfigError, match=r"n_hidden, n_latent shape the trained network.*"
                                          r"model\.train\(n_hidden=\.\.\.\)"):
        model.configure(n_hidden=[8], n_latent=2)
    assert model.config.n_hidden == [16] and model.config.n_latent == 4  # left as trained
    model.configure(n_hidden=[16], max_epochs=2, device="cpu")  # unchanged or not shaping
    model.save(tmp_path / "m")
    assert cs.load_model(tmp_path / "m").sample({"B cells": 2}, seed=0).n_obs == 2
    model.train(n_hidden=[8], seed=0)  # a new fit takes it
    assert model.config.n_hidden == [8] and model.is_trained


def test_an_untrained_cvae_shows_the_covariates_its_fit_will_use(small) -> None:
    model = cs.CVAE(small, label_key="cell_type").configure(covariates=["condition"])
    assert "covariates=['condition']" in repr(model)


def test_run_config_takes_a_section_as_a_dict_checked() -> None:
    cfg = cs.RunConfig(cvae={"max_epochs": 2}, report={"umap": False})
    assert cfg.cvae.max_epochs == 2 and cfg.cvae.n_latent == 32 and not cfg.report.umap
    assert cfg.validate() is cfg
    with pytest.raises(ConfigError, match=r"unknown config key 'cvae\.max_epoch'"):
        cs.RunConfig(cvae={"max_epoch": 2})
    with pytest.raises(ConfigError, match=r"cvae\.max_epochs must be at least 1"):
        cs.RunConfig(cvae={"max_epochs": 0})
    with pytest.raises(ConfigError, match=r"RunConfig\(cvae=\.\.\.\) takes a CVAEConfig"):
        cs.RunConfig(cvae=3)


def test_read_names_an_anndata_or_a_non_path_in_one_line(small) -> None:
    with pytest.raises(DataError, match="not an AnnData: this one is read already") as err:
        cs.read(small)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"read takes the path of an \.h5ad file, not NoneType"):
        cs.read(None)


def test_umap_checks_n_per_type_before_any_work(small) -> None:
    with pytest.raises(DataError, match="n_per_type must be a whole number"):
        cs.pl.umap(small, small, label_key="cell_type", n_per_type=2.5)


def test_per_type_draws_genes_at_depth_and_refuses_a_list(result) -> None:
    for source in (result, result.per_type):
        ax = cs.pl.per_type(source, "genes_at_depth")
        assert ax.get_xlabel() == "genes_at_depth"
        plt.close(ax.figure)
    with pytest.raises(CellsynthError, match="one per-type metric's name"):
        cs.pl.per_type(result, ["c2st_auc", "knn_recall"])


def test_predict_types_names_what_it_was_given_instead_of_a_run(small, tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        cs.predict_types(small, tmp_path / "nope")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(DataError, match="saved generator's directory, not a run"):
        cs.predict_types(small, model)
    with pytest.raises(DataError, match="the cells come first"):
        cs.predict_types(str(tmp_path), small)  # type: ignore[arg-type]


def test_run_checks_an_anndatas_label_column_before_copying_it(small, tmp_path) -> None:
    with pytest.raises(DataError, match="label column 'celltype' not in obs"):
        cs.run(small, label_key="celltype", out=tmp_path / "run")
    assert not (tmp_path / "run" / "input.h5ad").exists()
    with pytest.raises(ConfigError, match=r"cs\.RunConfig\(\*\*settings\)"):
        cs.run(small, label_key="cell_type", config={"cvae": {"max_epochs": 2}},
               out=tmp_path / "run2")  # fmt: skip


@pytest.mark.parametrize("bad", [-1, 0, float("nan"), float("inf"), "x"])
def test_nb_refuses_a_max_theta_that_would_hang_its_sampling(bad) -> None:
    with pytest.raises(ConfigError, match="max_theta must be a finite number of at least"):
        cs.NegBinBaseline(max_theta=bad)


def test_two_evaluations_of_the_same_cells_are_equal_and_genes_is_a_copy(small) -> None:
    real, synth = small[::2].copy(), small[1::2].copy()
    synth = synth[synth.obs["cell_type"].isin(["B cells", "CD14+ Monocytes"])].copy()

    def evaluate():
        return cs.evaluate(real, synth, label_key="cell_type", max_cells=150, gene_repeats=1)

    first, again = evaluate(), evaluate()
    assert first.per_type["c2st_auc"].isna().any()  # types without synthetic cells: NaN
    assert first == again and first == again.to_dict() and not first != again
    genes = first.genes
    assert genes is not None and "overall" in genes
    genes["overall"]["auc"] = -1.0
    assert first.genes["overall"]["auc"] != -1.0  # as every other property: a copy


def test_a_setting_cellsynth_lacks_says_what_it_has_and_how_to_quiet_it() -> None:
    with pytest.raises(AttributeError, match=r"its one setting is progress.*logging"):
        cs.settings.verbosity = 0  # type: ignore[attr-defined]  # scanpy's habit
    with cs.settings.override(progress=False):
        assert cs.settings.progress is False


def test_scvi_before_a_fit_is_not_trained_as_every_generator_and_its_curve_is_drawn(
        tmp_path) -> None:  # fmt: skip
    from cellsynth.errors import NotTrainedError

    model = cs.ScviGenerator()
    with pytest.raises(NotTrainedError, match="has not been fitted, so it cannot generate"):
        model.sample({"B cells": 3}, seed=0)
    with pytest.raises(NotTrainedError, match="cannot be saved"):
        model.save(tmp_path / "m")
    model.history = {"elbo_train": [900.0, 850.0, 840.0], "elbo_validation": [910.0, 870.0, 865.0],
                     "epochs": 3}  # fmt: skip  # what a fit keeps
    ax = cs.pl.history(model)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "training ELBO", "validation ELBO (early stopping)"]
    plt.close(ax.figure)


def test_fidelity_and_per_type_take_either_name_of_a_metric(result) -> None:
    """cs.pl.fidelity named MMD 'mmd' and cs.pl.per_type 'mmd_rbf' (energy and the library
    distance alike): each refused the other's name."""
    for one, other in (("mmd", "mmd_rbf"), ("energy", "energy_distance"),
                       ("library_distance", "library_size_distance")):  # fmt: skip
        a = cs.pl.fidelity(result, metrics=[one], show=False)
        b = cs.pl.fidelity(result, metrics=[other], show=False)
        assert [t.get_text() for t in a.get_yticklabels()] == \
            [t.get_text() for t in b.get_yticklabels()]
        plt.close("all")
        c = cs.pl.per_type(result.to_dict(), other, show=False)
        d = cs.pl.per_type(result.to_dict(), one, show=False)
        assert len(c.patches) == len(d.patches) > 0
        plt.close("all")


def test_configure_device_moves_a_trained_network_with_it(small, monkeypatch) -> None:
    """configure(device=...) on a trained model changed where its inputs were made but left
    the network where it was (on a GPU, sampling would mix devices)."""
    import torch

    from cellsynth.models import _training as tr

    model = cs.CVAE(small, label_key="cell_type").configure(max_epochs=1, min_steps=0,
                                                           n_hidden=[16], n_latent=4)
    model.train()
    moved = []
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(tr, "resolve_device", lambda device: torch.device("cpu"))
    model.configure(device="cpu")
    assert moved and str(moved[-1]) == "cpu"
    assert model.sample({"B cells": 3}, seed=0).n_obs == 3
