"""QC columns a user gives in obs (sweep 41a, faults 1, 2 and 4): missing values never remove a
type, text is refused before any work with the column and the fix named, doublet calls are read
in their common spellings and anything else is refused; no type leaves QC unsaid."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import config
from cellsynth import keys as K
from cellsynth.cli import main
from cellsynth.data.chunked import preprocess_backed
from cellsynth.data.qc import preprocess
from cellsynth.errors import DataError

QC = "cellsynth.data"
N_PER_TYPE = (60, 40, 30)


def _cfg(*overrides: str) -> config.RunConfig:
    return config.load(None, ["qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5",
                              *overrides])


def _atlas(seed: int = 0) -> ad.AnnData:
    """Three types of Poisson counts, MT- genes among them, and a user's numeric mito column."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for t, n in enumerate(N_PER_TYPE):
        mu = rng.gamma(1.0, 2.0, 120)
        mu[t * 10 : t * 10 + 10] += 20
        blocks.append(rng.poisson(mu, (n, 120)))
        labels += [f"type{t}"] * n
    x = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)},
                       index=[f"c{i}" for i in range(x.shape[0])])
    obs["mito"] = rng.uniform(0.01, 0.05, x.shape[0])
    var = pd.DataFrame(index=[f"MT-{i}" if i < 3 else f"G{i}" for i in range(120)])
    return ad.AnnData(x, obs=obs, var=var)


def _run(a: ad.AnnData, *overrides: str) -> tuple[ad.AnnData, dict[str, int], list[str]]:
    cfg = _cfg(*overrides)
    out, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    return out, {s["step"]: s["cells_removed"] for s in rep.steps}, rep.dropped_types


# fault 1: missing values in a QC column


@pytest.mark.parametrize("key", ["mito", "n_genes"])
def test_missing_qc_values_never_remove_a_type(key, caplog):
    a = _atlas()
    if key == "n_genes":
        a.obs["n_genes"] = np.diff(a.X.indptr).astype(float)
    gaps = a.obs_names[:10]  # ten cells of type0: training cells among them
    a.obs.loc[gaps, key] = np.nan
    with caplog.at_level(logging.WARNING, logger=QC):
        out, _, dropped = _run(a)
    kept = out.obs["cell_type"].value_counts()
    assert kept["type0"] >= 50 and set(kept.index) == {"type0", "type1", "type2"}
    assert set(gaps) <= set(out.obs_names)  # cells with a missing value are kept, unjudged
    assert dropped == []
    assert f"obs['{key}'] (dataset.{key}_key) is missing for 10 of 130 cells" in caplog.text


def test_an_empty_qc_column_is_computed_from_the_counts(caplog):
    plain = _atlas()
    del plain.obs["mito"]
    expected, steps, _ = _run(plain)
    a = _atlas()
    a.obs["mito"] = np.nan
    with caplog.at_level(logging.WARNING, logger=QC):
        out, steps_nan, _ = _run(a)
    assert list(out.obs_names) == list(expected.obs_names) and steps_nan == steps
    assert np.allclose(out.obs[K.MITO], expected.obs[K.MITO])
    assert "obs['mito'] (dataset.mito_key) has no values (all 130 missing): computed from the " \
        "counts instead" in caplog.text


def test_out_of_core_reads_missing_qc_values_as_in_memory(tmp_path):
    cfg = _cfg()
    for fill in ("one", "all"):
        a = _atlas()
        a.obs.loc[a.obs_names[:1] if fill == "one" else a.obs_names, "mito"] = np.nan
        _, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
        a.write_h5ad(tmp_path / f"{fill}.h5ad")
        _, rep_b = preprocess_backed(tmp_path / f"{fill}.h5ad", cfg.dataset, cfg.qc, cfg.split,
                                     seed=0, out_path=tmp_path / f"{fill}_pre.h5ad")
        assert rep_b.steps == rep.steps and rep_b.dropped_types == rep.dropped_types == []
        assert set(rep_b.cells_per_type_after) == {"type0", "type1", "type2"}


def test_a_type_removed_whole_by_qc_is_warned_and_reported(caplog):
    a = _atlas()
    a.obs["predicted_doublets"] = (a.obs["cell_type"] == "type2").to_numpy()  # all of type2
    with caplog.at_level(logging.WARNING, logger=QC):
        out, steps, dropped = _run(a)
    assert "type2" not in set(out.obs["cell_type"]) and steps["predicted doublets"] == 30
    assert "QC step 'predicted doublets' removed every cell of 1 type(s): 'type2'; if that is " \
        "not meant, check dataset.doublet_key" in caplog.text
    assert dropped == ["type2"]


# fault 2: a QC column that holds text


@pytest.mark.parametrize(("key", "overrides", "value", "found"), [
    ("n_genes", (), "x", "holds text in 130 of 130 cells ('x')"),
    ("mito", (), pd.Categorical(["high"] * 130), "holds text in 130 of 130 cells ('high')"),
    ("ngenes_scanpy", ("dataset.n_genes_key=ngenes_scanpy",), "12 genes", "holds text"),
    ("mito", (), True, "holds True/False values"),
    ("mito", (), 250.0, "values up to 250, neither a fraction (0 to 1) nor a percentage"),
    ("n_genes", (), -3, "holds 130 negative value(s)"),
])
def test_a_qc_column_that_is_not_numbers_is_refused_first(key, overrides, value, found):
    a = _atlas()
    a.obs[key] = value
    a.X = a.X * 0.5  # fractional "counts": the column's error must come before the counts'
    setting = "dataset.mito_key" if key == "mito" else "dataset.n_genes_key"
    with pytest.raises(DataError) as err:
        _run(a, *overrides)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"obs['{key}'] ({setting}) is read as ")
    assert found in message
    assert f"set {setting} = \"\" (or rename the column) to compute it from the counts" in message


def test_the_offered_fix_for_a_text_qc_column_works_and_numbers_as_text_are_read():
    a = _atlas()
    a.obs["n_genes"] = "x"
    out, _, _ = _run(a, 'dataset.n_genes_key=""')
    assert (out.obs[K.N_GENES] > 0).all()
    a = _atlas()
    a.obs["mito"] = a.obs["mito"].map(str)  # numbers written as text are numbers
    out, _, _ = _run(a)
    assert out.obs[K.MITO].dtype == np.float32 and out.n_obs > 100


def test_cli_says_a_text_qc_column_in_one_line(tmp_path, capsys):
    a = _atlas()
    a.obs["n_genes"] = "x"
    a.write_h5ad(tmp_path / "a.h5ad")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "a.h5ad"), "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "qc.min_genes_per_cell=10", "--set", "qc.min_cells_per_gene=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("cellsynth: error: obs['n_genes'] (dataset.n_genes_key)")


# fault 4: doublet calls in other spellings


DOUBLET_EVERY = 10  # cells 0, 10, 20, ... are called doublets: 13 of 130


@pytest.mark.parametrize(("doublet", "singlet"), [
    ("Doublet", "Singlet"), ("doublet", "singlet"), ("DOUBLET ", "SINGLET"), ("TRUE", "FALSE"),
    ("yes", "no"), ("1", "0"), (True, False), (1, 0), (1.0, 0.0),
])
def test_doublet_calls_are_read_in_common_spellings(doublet, singlet):
    a = _atlas()
    calls = np.where(np.arange(a.n_obs) % DOUBLET_EVERY == 0, doublet, singlet)
    if isinstance(doublet, bool | int | float):
        calls = calls.astype(type(doublet))
    a.obs["predicted_doublets"] = pd.Categorical(calls) if doublet == "Doublet" else calls
    out, steps, _ = _run(a)
    assert steps["predicted doublets"] == 13
    assert not set(a.obs_names[::DOUBLET_EVERY]) & set(out.obs_names)


@pytest.mark.parametrize(("calls", "found"), [
    (np.linspace(0.01, 0.9, 130), "130 distinct numbers from 0.01 to 0.9"),
    (np.arange(130) % 3, "3 distinct numbers from 0 to 2"),
    (np.where(np.arange(130) % 2, "Doublet", "maybe"), "65 cells hold other values ('maybe')"),
])
def test_doublet_values_that_are_no_calls_are_refused(calls, found):
    a = _atlas()
    a.obs["predicted_doublets"] = calls
    with pytest.raises(DataError) as err:
        _run(a)
    message = str(err.value)
    assert message.startswith("obs['predicted_doublets'] (dataset.doublet_key) is read as "
                              "doublet calls") and "\n" not in message
    assert found in message
    assert "dataset.doublet_key to the obs column of calls, or to \"\" to skip" in message


def test_cells_without_a_doublet_call_are_kept_and_counted(caplog):
    a = _atlas()
    a.obs["predicted_doublets"] = pd.Series(
        np.where(np.arange(a.n_obs) % DOUBLET_EVERY == 1, "Doublet", "Singlet"),
        index=a.obs_names).where(np.arange(a.n_obs) % 2 == 1)  # even cells: no call
    with caplog.at_level(logging.WARNING, logger=QC):
        _, steps, _ = _run(a)
    assert steps["predicted doublets"] == 13  # cells 1, 11, ..., 121
    assert "obs['predicted_doublets'] (dataset.doublet_key) has no call for 65 of 130 cells: " \
        "they are kept as singlets" in caplog.text
