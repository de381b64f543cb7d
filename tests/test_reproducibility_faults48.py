"""Reproducibility under misuse (session 48's sweep): the same seed gives the same output, another
seed another, and the seed that made an output is recorded beside it. Each test names the fault
found: what the user did and what happened."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cellsynth as cs
from cellsynth.cli import main
from cellsynth.config import FeaturesConfig, SeedVAEConfig
from cellsynth.models.controls import CopyGenerator
from cellsynth.models.nb import NegBinBaseline

FAST_CVAE = {"max_epochs": 2, "n_hidden": [16], "n_latent": 3, "select": "elbo"}


@pytest.fixture(scope="module")
def atlas():
    return cs.simulate(300, 40, 3, seed=0)


def _saved_history(directory: Path) -> dict:
    if (directory / "history.json").is_file():
        return json.loads((directory / "history.json").read_text())
    return json.loads((directory / "config.json").read_text())["history"]


@pytest.mark.parametrize("seed", [5, np.int64(7)])
def test_a_cvae_fitted_in_python_and_saved_records_its_seed(atlas, tmp_path, seed) -> None:
    """cs.CVAE(adata).train(seed=5); model.save(dir): the model directory kept no trace of the
    fit's seed (only `cellsynth fit` wrote run_config.toml), so a saved model could not be
    refitted the same; now history.json (and model.history) hold it, a plain int."""
    model = cs.CVAE(atlas, "cell_type")
    history = model.train(seed=seed, **FAST_CVAE)
    assert history["seed"] == int(seed) and type(history["seed"]) is int
    model.save(tmp_path / "m")
    assert _saved_history(tmp_path / "m")["seed"] == int(seed)
    assert cs.load_model(tmp_path / "m").history["seed"] == int(seed)


@pytest.mark.parametrize("cls", [NegBinBaseline, CopyGenerator])
def test_count_generators_fitted_in_python_record_their_seed(atlas, tmp_path, cls) -> None:
    """NegBinBaseline().fit(adata, key, seed=3) (whose validation cut, hence fit, follows the
    seed) saved no seed either; now each generator's history does."""
    gen = cls()
    assert gen.fit(atlas, "cell_type", seed=np.int64(3))["seed"] == 3
    if cls is NegBinBaseline:
        gen.save(tmp_path / "nb")
        assert _saved_history(tmp_path / "nb")["seed"] == 3


def test_the_reference_generator_records_its_seed(atlas) -> None:
    """The reference generator (`--model reference`) kept its fit's seed nowhere either."""
    from cellsynth.models.seed_counts import SeedGenerator

    gen = SeedGenerator(SeedVAEConfig(max_epochs=2, n_hidden=[16], n_latent=3),
                        FeaturesConfig(n_components=5))
    assert gen.fit(atlas, "cell_type", seed=4)["seed"] == 4


def test_cellsynth_fit_records_the_seed_in_the_model_as_well(atlas, tmp_path) -> None:
    """`cellsynth fit --seed 9` recorded the seed in run_config.toml only; the model's own
    history now says it too, as a Python fit's does."""
    data = tmp_path / "a.h5ad"
    atlas.write_h5ad(data)
    argv = ["fit", str(data), "--label-key", "cell_type", "--model", "nb", "--seed", "9",
            "--out", str(tmp_path / "m"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert _saved_history(tmp_path / "m")["seed"] == 9


def test_cellsynth_info_shows_a_models_fit_seed(atlas, tmp_path, capsys) -> None:
    """`cellsynth info MODEL_DIR` said nothing of the seed a model was fitted with; it now
    shows the one its history records (history.json, or config.json's for the count models)."""
    model = cs.CVAE(atlas, "cell_type")
    model.train(seed=6, **FAST_CVAE)
    model.save(tmp_path / "cvae")
    nb = NegBinBaseline()
    nb.fit(atlas, "cell_type", seed=8)
    nb.save(tmp_path / "nb")
    for name, seed in (("cvae", 6), ("nb", 8)):
        capsys.readouterr()
        assert main(["info", str(tmp_path / name), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["seed"] == seed


def test_a_benchmark_records_the_seed_a_config_file_gave(atlas, tmp_path, capsys) -> None:
    """`cellsynth benchmark --config cfg.toml` with `seed = 11` in the file: nothing in the
    benchmark directory said the seed (RESULTS.md names the file only, which may change; the
    kept results hold derived seeds), so its numbers could not be reproduced; each data set's
    summary.json now records it, and `cellsynth info` shows it."""
    data = tmp_path / "a.h5ad"
    atlas.write_h5ad(data)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("seed = 11\n[dataset]\nlabel_key = 'cell_type'\n[qc]\nmin_genes_per_cell = 5\n"
                   "[features]\nn_components = 5\n[classifier]\nn_estimators = 10\n")
    out = tmp_path / "bm"
    argv = ["benchmark", "--data", str(data), "--models", "nb", "--config", str(cfg),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "a" / "summary.json").read_text())["seed"] == 11
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["datasets"]["a"]["seed"] == 11


def test_the_reports_umap_draws_its_cells_from_the_runs_seed(tmp_path, monkeypatch) -> None:
    """`cellsynth report` of runs with seed 7 and seed 8: the UMAP figure drew its equal
    numbers of real and generated cells per type (and their drawing order) with seed 0
    whatever the run's seed, the one draw of a run not derived from it; now derived from it."""
    import pandas as pd

    import cellsynth.pl as pl
    from cellsynth.report import html
    from cellsynth.report._markup import _Run
    from cellsynth.seeds import derive_seed

    seeds = []
    monkeypatch.setattr(pl, "umap", lambda *a, seed=0, **k: seeds.append(seed))
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"origin": ["real", "synthetic"] * 10, "label": ["a"] * 20,
                          "x": rng.random(20), "y": rng.random(20)})  # fmt: skip
    for seed in (7, 8):
        run = tmp_path / str(seed)
        (run / "features").mkdir(parents=True)
        table.to_csv(run / "features" / "umap.csv", index=False)
        (run / "config.toml").write_text(f"seed = {seed}\n")
        html._sec_umap(_Run(run))
    assert seeds == [derive_seed(7, "report-umap"), derive_seed(8, "report-umap")]
