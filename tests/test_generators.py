"""The count-space generators ``nb``, ``reference`` and ``scvi`` and the registry that names them.

Each model is fitted once (one quick epoch) on 400 real PBMC cells x 300 genes, then sampled,
saved, reloaded and tampered with. ``scvi`` tests skip when scvi-tools is not installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellsynth import keys as K
from cellsynth.config import FeaturesConfig, RunConfig, ScviConfig, SeedVAEConfig
from cellsynth.errors import CellsynthError, ConfigError, DataError, ModelFileError
from cellsynth.models.base import Generator, check_genes
from cellsynth.models.nb import MAX_THETA, NegBinBaseline, nb_moments
from cellsynth.models.registry import GENERATORS, get_generator, load_generator, make_generator
from cellsynth.models.seed_counts import SeedGenerator

LABEL = "cell_type"


@pytest.fixture(scope="module")
def small(kang_path: Path) -> ad.AnnData:
    """400 cells x the 300 most detected genes, split 70/15/15 into train/val/test."""
    full = ad.read_h5ad(kang_path)
    rng = np.random.default_rng(0)
    a = full[np.sort(rng.choice(full.n_obs, 400, replace=False))]
    detected = np.asarray((a.X > 0).sum(axis=0)).ravel()
    a = a[:, np.sort(np.argsort(-detected)[:300])].copy()
    a.obs[K.SPLIT] = rng.choice(["train", "val", "test"], size=a.n_obs, p=[0.7, 0.15, 0.15])
    return a


def _build(name: str):
    if name == "nb":
        return NegBinBaseline()
    if name == "reference":
        tiny = SeedVAEConfig(
            n_embed=4, n_hidden=[32], n_latent=4, max_epochs=1, batch_size=64, device="cpu"
        )
        return SeedGenerator(tiny, FeaturesConfig(n_components=10))
    pytest.importorskip("scvi")
    from cellsynth.models.scvi import ScviGenerator

    return ScviGenerator(ScviConfig(n_hidden=16, n_latent=4, max_epochs=1, batch_size=128))


@pytest.fixture(scope="module", params=["nb", "reference", "scvi"])
def fitted(request, small):
    model = _build(request.param)
    history = model.fit(small, LABEL, seed=0)
    assert isinstance(history, dict)
    return model


@pytest.fixture
def saved(fitted, tmp_path) -> Path:
    fitted.save(tmp_path / "model")
    return tmp_path / "model"


def _types(model) -> dict[str, int]:
    return {model.labels[1]: 7, model.labels[0]: 3}


# ---------------------------------------------------------------------------------------------
# every generator


def test_fits_train_rows_only(fitted, small):
    assert isinstance(fitted, Generator)
    train = small.obs[K.SPLIT] == "train"
    assert fitted.labels == sorted(set(small.obs.loc[train, LABEL].astype(str)))
    assert fitted.genes == list(small.var_names)
    assert [len(v) for v in fitted.libraries] == [
        int((small.obs.loc[train, LABEL] == t).sum()) for t in fitted.labels
    ]


def test_sample_counts_per_type(fitted):
    request = _types(fitted)
    out = fitted.sample(request, seed=3)
    assert out.shape == (10, len(fitted.genes))
    assert sp.isspmatrix_csr(out.X) or isinstance(out.X, sp.csr_array)
    assert out.X.dtype == np.float32
    values = out.X.data
    assert (values >= 0).all() and np.array_equal(values, np.round(values))
    assert out.X.sum() > 0
    assert list(out.obs[LABEL]) == [fitted.labels[1]] * 7 + [fitted.labels[0]] * 3
    assert list(out.var_names) == fitted.genes
    uns = out.uns[K.UNS]
    assert uns["model"] == fitted.name and uns["seed"] == 3 and uns["label_key"] == LABEL


def test_same_seed_same_cells(fitted):
    a = fitted.sample(_types(fitted), seed=5).X
    b = fitted.sample(_types(fitted), seed=5).X
    c = fitted.sample(_types(fitted), seed=6).X
    assert (a != b).nnz == 0
    assert (a != c).nnz > 0
    both = ad.concat([fitted.sample(_types(fitted), seed=s) for s in (5, 6)])
    assert both.obs_names.is_unique  # draws with other seeds concatenate without clashes


def test_bad_requests(fitted):
    t = fitted.labels[0]
    for bad in ({"no such type": 3}, {t: 0}, {t: -2}, {t: 1.5}, {}):
        with pytest.raises(DataError):
            fitted.sample(bad, seed=0)


def test_a_request_larger_than_memory_is_refused_before_drawing(fitted, monkeypatch):
    """Every generator checks a request's counts against the memory available before drawing
    (a typo'd count would otherwise run until the allocator or the kernel stops it)."""
    from cellsynth import runtime

    t = fitted.labels[0]
    with pytest.raises(DataError, match=r"1,000,000,000,000 cells would take up to .* GB in "
                                        r"memory, but .* is available: ask for fewer cells"):
        fitted.sample({t: 10**12}, seed=0)
    monkeypatch.setattr(runtime, "available_memory", lambda: 1e3)  # 1 kB
    with pytest.raises(DataError, match="1,000 cells would take"):
        fitted.sample({t: 1_000}, seed=0)
    monkeypatch.setattr(runtime, "available_memory", lambda: None)  # unknown: no check
    assert fitted.sample({t: 3}, seed=0).n_obs == 3


def test_save_load_round_trip(fitted, saved):
    for loaded in (type(fitted).load(saved), load_generator(saved)):
        assert type(loaded) is type(fitted)
        assert loaded.labels == fitted.labels and loaded.genes == fitted.genes
        a = fitted.sample(_types(fitted), seed=11)
        b = loaded.sample(_types(fitted), seed=11)
        assert (a.X != b.X).nnz == 0


def test_save_never_mixes_with_other_files(fitted, saved, tmp_path):
    """A save refuses a folder of other files (nothing written there), replaces a model saved
    before whole (no file of another model kind stays), and a failed save leaves it as it was."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}')
    with pytest.raises(ModelFileError, match="not a saved model"):
        fitted.save(mine)
    assert [p.name for p in mine.iterdir()] == ["config.json"]
    assert (mine / "config.json").read_text() == '{"mine": 1}'
    other = tmp_path / "other"  # another kind's model: replaced whole
    other.mkdir()
    (other / "config.json").write_text('{"model": "Other", "format_version": 1}')
    (other / "leftover.safetensors").write_text("x")
    fitted.save(other)
    assert not (other / "leftover.safetensors").exists()
    assert sorted(p.name for p in other.iterdir()) == sorted(p.name for p in saved.iterdir())
    before = {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()}
    with pytest.MonkeyPatch.context() as mp:  # a save failing half way: labels JSON cannot hold
        mp.setattr(fitted, "labels", [object()])
        with pytest.raises(TypeError):
            fitted.save(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir() if p.is_file()} == before
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "damage",
    [
        "missing_genes",
        "missing_libraries",
        "corrupt_config",
        "wrong_model",
        "fewer_labels",
        "more_genes",
        "format",
    ],
)
def test_tampered_files(fitted, saved, damage):
    cls = type(fitted)
    config = json.loads((saved / "config.json").read_text())
    lib_file = next(
        p
        for p in saved.glob("*.safetensors")
        if p.name in ("libraries.safetensors", "latent.safetensors")
    )
    if damage == "missing_genes":
        (saved / "genes.json").unlink()
    elif damage == "missing_libraries":
        lib_file.unlink()
    elif damage == "corrupt_config":
        (saved / "config.json").write_text("{not json")
    elif damage == "wrong_model":
        (saved / "config.json").write_text(json.dumps({**config, "model": "other"}))
    elif damage == "format":
        (saved / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    elif damage == "fewer_labels":
        (saved / "labels.json").write_text(json.dumps(fitted.labels[:-1]))
    elif damage == "more_genes":
        (saved / "genes.json").write_text(json.dumps([*fitted.genes, "EXTRA"]))
    with pytest.raises(ModelFileError):
        cls.load(saved)


def test_corrupt_weights(fitted, saved):
    for path in saved.rglob("*.safetensors"):
        path.write_bytes(b"garbage")
    with pytest.raises(ModelFileError):
        type(fitted).load(saved)


# ---------------------------------------------------------------------------------------------
# model specifics


def test_genes_mismatch(fitted, small):
    check_genes(fitted.genes, small)
    with pytest.raises(DataError, match="in another order"):
        check_genes(fitted.genes, small[:, ::-1])
    with pytest.raises(DataError, match="genes differ"):
        check_genes(fitted.genes, small[:, 1:])


def test_nb_moments_recover_known_parameters():
    rng = np.random.default_rng(1)
    n, g = 4000, 30
    mu = rng.uniform(2.0, 30.0, g)
    theta = rng.uniform(0.5, 5.0, g)
    size = rng.lognormal(0.0, 0.3, n)  # cells differ in depth
    mean = size[:, None] * mu[None, :]
    x = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)
    p, th, lib = nb_moments(sp.csr_matrix(x))
    np.testing.assert_allclose(p * lib.mean(), mu * size.mean(), rtol=0.05)
    assert np.median(np.abs(th / theta - 1)) < 0.1
    # Poisson data and absent genes sit at the Poisson limit
    _, th_poisson, _ = nb_moments(sp.csr_matrix(rng.poisson(5.0, (2000, 5)).astype(np.float32)))
    assert np.median(th_poisson) > 50
    p0, th0, _ = nb_moments(sp.csr_matrix((10, 3), dtype=np.float32))
    assert (p0 == 0).all() and (th0 == MAX_THETA).all()


def test_nb_sample_matches_fitted_means(small):
    model = NegBinBaseline()
    model.fit(small, LABEL, seed=0)
    t = model.labels[0]
    out = model.sample({t: 3000}, seed=0)
    k = model.labels.index(t)
    got = np.asarray(out.X.mean(axis=0)).ravel()
    expected = model.mu[k] * model.libraries[k].mean() / model.libraries[k].mean()
    top = np.argsort(-expected)[:20]
    np.testing.assert_allclose(got[top], expected[top], rtol=0.25)


def test_sampling_in_row_chunks(small, monkeypatch):
    from cellsynth.models import _count_files as nb

    model = NegBinBaseline()
    model.fit(small, LABEL)
    request = {model.labels[0]: 10, model.labels[2]: 4}
    assert nb.row_chunks(10, 300) == [10]
    monkeypatch.setattr(nb, "CHUNK_VALUES", 3 * 300)
    assert nb.row_chunks(10, 300) == [3, 3, 3, 1]
    out = model.sample(request, seed=2)
    assert out.shape == (14, 300) and (out.X != model.sample(request, seed=2).X).nnz == 0


def test_seed_needs_validation_rows(small):
    a = small.copy()
    a.obs[K.SPLIT] = "train"
    with pytest.raises(DataError, match="validation"):
        _build("reference").fit(a, LABEL, seed=0)


def test_fit_rejects_normalised_data(small):
    a = small.copy()
    a.X = a.X * 0.5
    with pytest.raises(DataError, match="raw counts"):
        NegBinBaseline().fit(a, LABEL)


def test_scvi_missing_says_how_to_install(monkeypatch):
    from cellsynth.models import scvi as scvi_model

    monkeypatch.setitem(sys.modules, "scvi", None)  # import scvi -> ImportError
    with pytest.raises(CellsynthError, match=r"cellsynth\[scvi\]"):
        scvi_model.import_scvi()


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_names_and_classes():
    assert set(GENERATORS) == {"cvae", "nb", "reference", "scvi", "copy", "scvi-pp"}
    assert get_generator("nb") is NegBinBaseline
    assert get_generator("reference") is SeedGenerator
    assert get_generator("seed") is SeedGenerator  # the old name, with a warning
    with pytest.raises(ConfigError, match="nb"):
        get_generator("gan")


def test_make_generator_uses_config_sections():
    cfg = RunConfig()
    cfg.seed_vae.n_latent = 7
    cfg.features.n_components = 13
    cfg.scvi.n_latent = 3
    cfg.cvae.n_latent = 5
    seed = make_generator("reference", cfg)
    assert seed.config.n_latent == 7 and seed.features.n_components == 13
    assert isinstance(make_generator("nb", cfg), NegBinBaseline)
    assert make_generator("scvi", cfg).config.n_latent == 3
    assert make_generator("cvae", cfg).config.n_latent == 5
    with pytest.raises(ConfigError):
        make_generator("gan", cfg)


def test_load_generator_refuses_unknown(tmp_path, small):
    with pytest.raises(ModelFileError, match="missing"):
        load_generator(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": "SeedCVAE"}))
    with pytest.raises(ModelFileError, match="not a generator"):
        load_generator(tmp_path)
    model = NegBinBaseline()
    model.fit(small, LABEL)
    model.save(tmp_path / "nb")
    shutil.copytree(tmp_path / "nb", tmp_path / "copy")
    assert isinstance(load_generator(tmp_path / "copy"), NegBinBaseline)
