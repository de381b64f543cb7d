"""The Python API under a scanpy user's misuse (session 46's sweep): ``cs.pl.library_sizes``
compares the two sides over the genes both hold, as ``cs.evaluate`` does; the reference
generator refuses the data or a dict where its settings go; ``cs.run(adata)`` leaves the
AnnData (or view) it copies as it was; a plot checks ``save=`` and ``ax=`` before any work;
``cs.predict_types`` refuses a backed view, whose obs cannot take its predictions, first; every
reader of a model directory or a config file expands ``~`` as the writers do."""

from __future__ import annotations

import logging

import anndata as ad
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import cellsynth as cs
from cellsynth.config import FeaturesConfig, SeedVAEConfig
from cellsynth.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def atlas() -> ad.AnnData:
    return cs.simulate(240, 60, 3, seed=0)


def _lines(ax) -> list[np.ndarray]:
    out = [np.asarray(line.get_ydata(), dtype=float) for line in ax.lines]
    plt.close(ax.figure)
    return out


def test_library_sizes_of_a_synthetic_gene_subset_are_over_the_shared_genes(atlas, caplog):
    real, fake = atlas[::2].copy(), atlas[1::2].copy()
    hvgs = fake[:, 10:40].copy()  # a generator of some genes beside the whole atlas
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        drawn = _lines(cs.pl.library_sizes(real, hvgs, label_key="cell_type", show=False))
    assert "over the 30 genes both sides hold (real 60, synthetic 30)" in caplog.text
    alike = _lines(cs.pl.library_sizes(real[:, 10:40].copy(), hvgs, label_key="cell_type",
                                       show=False))  # fmt: skip
    assert len(drawn) == len(alike) and all(map(np.array_equal, drawn, alike))
    renamed = fake.copy()
    renamed.var["symbol"] = renamed.var_names
    renamed.var_names = [f"ENSG{i:05d}" for i in range(renamed.n_vars)]
    with pytest.raises(DataError, match=r"share no gene name, but the synthetic data's "
                                        r"var\['symbol'\] holds 60"):
        cs.pl.library_sizes(real, renamed)


def test_the_reference_generator_refuses_data_or_a_dict_as_its_settings(atlas):
    with pytest.raises(DataError, match=r"takes its settings, not the data \(got AnnData\): "
                                        r"fit it with cs\.ReferenceGenerator\(\)\.fit\(adata"):
        cs.ReferenceGenerator(atlas)  # as cs.CVAE(adata) takes it: was kept as its config
    with pytest.raises(ConfigError, match=r"config is a dict; give a cellsynth\.config\."
                                          r"SeedVAEConfig or None \(a dict of settings"):
        cs.ReferenceGenerator({"max_epochs": 2})
    with pytest.raises(ConfigError, match=r"features is a dict"):
        cs.ReferenceGenerator(features={"n_components": 5})
    with pytest.raises(ConfigError, match=r"seed_vae\.max_epochs must be at least 1"):
        cs.ReferenceGenerator(SeedVAEConfig(max_epochs=0))
    with pytest.raises(ConfigError, match=r"target_sum must be a positive number"):
        cs.ReferenceGenerator(target_sum=0)
    model = cs.ReferenceGenerator(SeedVAEConfig(max_epochs=1), FeaturesConfig(n_components=5))
    assert model.config.max_epochs == 1 and model.features.n_components == 5


def test_run_leaves_the_callers_anndata_and_view_as_they_were(tmp_path):
    adata = cs.simulate(200, 50, 3, seed=0)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)  # text, as a user's often is
    adata.obs["note"] = np.array(["x", "y"] * 100, dtype=object)
    adata.var["symbol"] = [f"g{i % 7}" for i in range(adata.n_vars)]
    adata.raw = adata.copy()
    before = adata.copy()
    view = before[:150]
    for i, data in enumerate((adata, view)):  # the QC refuses every cell: after the copy
        with pytest.raises(DataError, match="no cells left after the QC step"):
            cs.run(data, label_key="cell_type", out=tmp_path / f"run{i}",
                   overrides=["qc.min_genes_per_cell=100000"])  # fmt: skip
        written = ad.read_h5ad(tmp_path / f"run{i}" / "input.h5ad")
        assert written.obs["note"].dtype == "category"  # written as anndata writes it
        assert written.n_obs == data.n_obs and written.raw.var["symbol"].dtype == "category"
    assert view.is_view and view.obs["note"].dtype == object  # anndata made it an AnnData
    for table in ("obs", "var"):  # anndata's write turned text columns into categoricals
        assert getattr(adata, table).equals(getattr(before, table))
        assert list(getattr(adata, table).dtypes) == list(getattr(before, table).dtypes)
    assert adata.raw.var["symbol"].dtype == object


def test_a_plot_refuses_its_save_path_and_axes_before_any_work(atlas, tmp_path, monkeypatch):
    import cellsynth.pl._umap as umap_module

    def no_umap(*args, **kwargs):
        raise AssertionError("the UMAP was computed before the arguments were checked")

    monkeypatch.setattr(umap_module, "_embed", no_umap)
    mine = tmp_path / "figure.png"
    mine.write_bytes(b"a figure of the user's own")
    open_before = plt.get_fignums()
    real, fake = atlas[::2].copy(), atlas[1::2].copy()
    with pytest.raises(DataError, match="exists and is not a figure that cellsynth wrote"):
        cs.pl.umap(real, fake, label_key="cell_type", save=mine)
    with pytest.raises(DataError, match=r"save= .*umap\.pngg: a figure is saved as one of"):
        cs.pl.umap(real, fake, label_key="cell_type", save=tmp_path / "umap.pngg")
    fig, grid = plt.subplots(2, 2)
    with pytest.raises(DataError, match=r"ax= takes 2 axes \(one per color\), got 4"):
        cs.pl.umap(real, fake, label_key="cell_type", color=["origin", "label"], ax=grid)
    plt.close(fig)
    with pytest.raises(DataError, match="exists and is not a figure"):
        cs.pl.library_sizes(real, fake, save=mine)
    assert plt.get_fignums() == open_before  # no figure left open by a refusal
    assert mine.read_bytes() == b"a figure of the user's own"


def test_library_sizes_names_the_side_whose_values_are_not_counts(atlas):
    real, fake = atlas[::2].copy(), atlas[1::2].copy()
    fake.X = fake.X * 1.37  # a generator's means, not counts
    with pytest.raises(DataError, match=r"^the synthetic data: X holds normalised values"):
        cs.pl.library_sizes(real, fake)


def test_predict_types_refuses_a_backed_view_before_any_work(atlas, tmp_path):
    from cellsynth.classify.predict import MODEL_FILE

    run = tmp_path / "run"  # a run's files, never read: the cells are refused first
    for part in ("manifest.json", "features/pca.safetensors", f"classifier/{MODEL_FILE}"):
        (run / part).parent.mkdir(parents=True, exist_ok=True)
        (run / part).write_text("{}")
    atlas.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    try:  # the predictions were made, then anndata's ValueError on writing them to obs
        with pytest.raises(DataError, match=r"a view\) of a file opened backed.*"
                                            r"adata\.to_memory\(\)"):
            cs.predict_types(backed[:50], run)
    finally:
        backed.file.close()


def test_every_reader_of_a_model_or_config_expands_the_home_folder(atlas, tmp_path, monkeypatch,
                                                                   one_torch_thread):
    from cellsynth import config

    monkeypatch.setenv("HOME", str(tmp_path))
    model = cs.CVAE(atlas, label_key="cell_type").configure(max_epochs=1, min_steps=0,
                                                             n_hidden=[8], n_latent=2)
    model.train(seed=0)
    model.save("~/models/cvae")  # the writers expand ~ (session 44)
    nb = cs.NegBinBaseline()
    nb.fit(atlas, "cell_type", seed=0)
    nb.save("~/models/nb")
    (tmp_path / "atlas.toml").write_text("[cvae]\nmax_epochs = 2\n")
    # each was "~/models/cvae does not exist", a folder named ~ looked for in the current one
    assert cs.load_model("~/models/cvae").labels == model.labels
    assert cs.CVAE.load("~/models/cvae").is_trained
    assert cs.NegBinBaseline.load("~/models/nb").labels == nb.labels
    ax = cs.pl.history("~/models/cvae")
    plt.close(ax.figure)
    assert config.load("~/atlas.toml").cvae.max_epochs == 2
