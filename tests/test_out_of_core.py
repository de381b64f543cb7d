"""`cellsynth run` out of core (dataset.backed = true): the chunked path end to end."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellsynth import config
from cellsynth.cli import main
from cellsynth.data.simulate import write_atlas
from cellsynth.errors import CellsynthError
from cellsynth.pipeline import out_of_core, run

FAST = [
    "features.n_components=8",
    "classifier.n_estimators=15",
    "classifier.max_depth=3",
    "cvae.n_hidden=[32]",
    "cvae.n_latent=4",
    "cvae.max_epochs=2",
    "generator.n_per_type_eval=20",
    "generator.n_per_type_train=40",
    "generator.n_per_type_val=10",
    "explain.max_cells=50",
    "report.umap=false",
    "report.gene_repeats=1",  # one halving of the gene-level test: quick, not steady
    "qc.min_genes_per_cell=20",
    "qc.min_cells_per_gene=20",
    "qc.chunk_size=97",  # several chunks per pass
    "dataset.label_key=celltype_annotation",
]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "atlas.h5ad"
    return write_atlas(path, 700, 250, 5, seed=3, chunk_size=200)


def _run(out, atlas, *extra: str) -> int:
    args = ["run", "--out", str(out), "--quiet", "--set", f"dataset.path={atlas}"]
    for s in [*FAST, *extra]:
        args += ["--set", s]
    return main(args)


@pytest.mark.slow  # two runs and a resume: about a minute on two loaded cores
def test_out_of_core_run_matches_in_memory_qc_and_resumes(atlas, tmp_path, caplog):
    mem, ooc = tmp_path / "mem", tmp_path / "ooc"
    assert _run(mem, atlas, "dataset.backed=false", "report.fidelity=false") == 0
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert _run(ooc, atlas, "dataset.backed=true", "report.fidelity=true") == 0
    assert "out of core" in caplog.text
    # the same kinds of outputs
    for f in ("results.md", "report.html", "data/qc.json", "data/qc_steps.csv", "data/cells.csv",
              "data/groups.json", "data/preprocessed.h5ad", "features/pca.safetensors",
              "features/pca.json", "classifier/model.ubj", "generator/weights.safetensors",
              "generator/history.json", "synthetic/eval.h5ad", "synthetic/train.h5ad",
              "classifier_synthetic/model.ubj", "metrics/summary.json", "explain/shap_genes.csv"):
        assert (mem / f).is_file(), f
        assert (ooc / f).is_file(), f
    for s in ("train", "val", "test"):  # each split's features in its own memmap
        assert np.load(ooc / "features" / f"{s}.npy", mmap_mode="r").shape[1] == 8
    # QC: the same cells, genes, types and steps
    qm, qo = (json.loads((d / "data" / "qc.json").read_text()) for d in (mem, ooc))
    for key in ("steps", "dropped_types", "cells_per_type_before", "cells_per_type_after",
                "n_cells", "n_genes", "has_counts"):
        assert qo[key] == qm[key], key
    pd.testing.assert_frame_equal(pd.read_csv(ooc / "data" / "cells.csv"),
                                  pd.read_csv(mem / "data" / "cells.csv"))
    assert (json.loads((ooc / "features" / "genes.json").read_text())
            == json.loads((mem / "features" / "genes.json").read_text()))
    # the generated cells: integer counts over the kept genes, every type
    syn = ad.read_h5ad(ooc / "synthetic" / "eval.h5ad")
    assert syn.n_obs == 20 * syn.obs["celltype_annotation"].nunique()
    assert list(syn.var_names) == json.loads((ooc / "features" / "genes.json").read_text())
    assert (syn.X.data == syn.X.data.round()).all()
    assert syn.uns["cellsynth"]["model"] == "cvae"
    summary = json.loads((ooc / "metrics" / "summary.json").read_text())
    assert set(summary) == {"a", "b", "c"}
    assert all(0 <= e["fine"]["f1_macro"] <= 1 for e in summary.values())
    fidelity = json.loads((ooc / "metrics" / "fidelity.json").read_text())
    assert {"real_vs_real", "synthetic_vs_real", "memorisation", "privacy", "verdict"} <= set(fidelity)
    verdict = fidelity["verdict"]["overall"]["verdict"]
    assert verdict in ("indistinguishable", "close", "distinguishable")
    assert f"verdict: {verdict}" in (ooc / "results.md").read_text()
    assert (ooc / "metrics" / "per_type.csv").is_file()
    manifest = json.loads((ooc / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert manifest["stages"]["data"]["out_of_core"] is True

    # a second run skips every stage and reads the store and the memmaps back
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert _run(ooc, atlas, "dataset.backed=true", "report.fidelity=true") == 0
    assert caplog.text.count("done before with the same settings, skipped") == len(
        manifest["stages"])
    assert json.loads((ooc / "metrics" / "summary.json").read_text()) == summary


def test_generators_that_need_memory_are_refused(atlas, tmp_path):
    cfg = config.load(None, [f"dataset.path={atlas}", "dataset.backed=true",
                             "dataset.label_key=celltype_annotation", "generator.model=nb"])
    assert out_of_core(cfg)
    with pytest.raises(CellsynthError, match=r"generator\.model = nb needs the data in memory"):
        run(cfg, tmp_path)
    assert not (tmp_path / "data" / "preprocessed.h5ad").exists()  # refused before any work
    assert not out_of_core(config.load(None, [f"dataset.path={atlas}"]))  # small file on auto
