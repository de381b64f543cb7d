"""End to end: `cellsynth run` through the CLI, on the embedded demo and on real data."""

from __future__ import annotations

import json

import anndata as ad
import pytest

from cellsynth.cli import main

FAST = [
    "features.n_components=10",
    "classifier.n_estimators=20",
    "classifier.max_depth=3",
    "seed_vae.n_hidden=[32, 16]",
    "seed_vae.n_latent=4",
    "seed_vae.max_epochs=2",
    "cvae.n_hidden=[32]",
    "cvae.n_latent=4",
    "cvae.max_epochs=2",
    "generator.n_per_type_eval=20",
    "generator.n_per_type_train=40",
    "generator.n_per_type_val=10",
    "explain.max_cells=50",
    "report.umap=false",
    "report.gene_repeats=1",  # one halving of the gene-level test: quick, not steady
]


def _run(tmp_path, *extra: str, config: str | None = None) -> int:
    args = ["run", "--out", str(tmp_path), "--quiet"]
    if config:
        args += ["--config", config]
    for s in [*FAST, *extra]:
        args += ["--set", s]
    return main(args)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    assert _run(tmp_path, "dataset.demo_cells=800", "dataset.demo_genes=300", "qc.min_genes_per_cell=20") == 0
    assert f"results: {tmp_path / 'results.md'}" in capsys.readouterr().out
    text = (tmp_path / "results.md").read_text()
    assert "## Fine cell types" in text and "## Coarse groups" in text
    assert text.count("| (a) |") == 2 and text.count("| (c) |") == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert {"data", "features", "classifier", "generator", "experiments", "explain"} <= set(
        manifest["stages"])
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert set(summary) == {"a", "b", "c"}
    for exp in summary.values():
        assert 0 <= exp["fine"]["f1_macro"] <= 1
        assert exp["coarse"]["f1_micro"] >= exp["fine"]["f1_micro"] - 1e-9
    syn = ad.read_h5ad(tmp_path / "synthetic" / "eval.h5ad")
    assert syn.n_obs == 20 * syn.obs["cell_type"].nunique()
    assert syn.uns["cellsynth"]["model"] == "cvae"  # the default generator: counts over genes
    assert (syn.X.data == syn.X.data.round()).all()
    assert list(syn.var_names) == json.loads((tmp_path / "features" / "genes.json").read_text())
    for f in ("config.toml", "run.log", "classifier/model.ubj", "generator/weights.safetensors",
              "features/pca.safetensors", "explain/shap_genes.csv", "data/qc.json"):
        assert (tmp_path / f).is_file(), f
    assert "stage generator: done" in (tmp_path / "run.log").read_text()


@pytest.mark.slow
def test_same_seed_same_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):  # the fidelity metrics are seeded alike: test_gene_fidelity.py
        assert _run(d, "dataset.demo_cells=600", "dataset.demo_genes=200",
                    "qc.min_genes_per_cell=20", "report.fidelity=false") == 0
    sa = json.loads((a / "metrics" / "summary.json").read_text())
    sb = json.loads((b / "metrics" / "summary.json").read_text())
    assert sa == sb
    xa = ad.read_h5ad(a / "synthetic" / "train.h5ad").X
    xb = ad.read_h5ad(b / "synthetic" / "train.h5ad").X
    for part in ("data", "indices", "indptr"):  # byte-identical generated counts
        assert getattr(xa, part).tobytes() == getattr(xb, part).tobytes()


def test_real_data_preset(tmp_path, kang_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # presets name ../shared/data
    assert _run(tmp_path, config="examples/pbmc_kang2018.toml") == 0
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert summary["a"]["fine"]["f1_macro"] > 0.8  # five PBMC types are easy to tell apart
    syn = ad.read_h5ad(tmp_path / "synthetic" / "eval.h5ad")
    assert syn.uns["cellsynth"]["model"] == "reference"  # the preset runs the reference CVAE
    groups = json.loads((tmp_path / "data" / "groups.json").read_text())
    assert groups["CD4 T cells"] == "T cells"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "dataset.label_key=celltype"], "label column 'celltype' not in obs"),
        (["--set", "vae.n_latent=3"], "unknown config key 'vae'"),
        (["--set", "features.n_components=many"], "must be int"),
        (["--set", "dataset.path=/nonexistent.h5ad"], "does not exist"),
        (["--config", "/nonexistent.toml"], "does not exist"),
        (["--set", "explain.cell_type=NOPE"], "explain.cell_type 'NOPE'"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, kang_path, args, fragment):
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet",
                 "--set", f"dataset.path='{kang_path}'", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("cellsynth: error:")]
    assert len(errors) == 1  # one line, no traceback
    assert fragment in errors[0]


def test_not_h5ad(tmp_path, capsys):
    bad = tmp_path / "x.h5ad"
    bad.write_text("not hdf5")
    assert main(["run", "--out", str(tmp_path / "o"), "--quiet", "--set", f"dataset.path='{bad}'"]) == 2
    assert "not an h5ad" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_on_dask_and_torchrun(tmp_path):
    pytest.importorskip("distributed")
    assert _run(tmp_path, "dataset.demo_cells=600", "dataset.demo_genes=200",
                "qc.min_genes_per_cell=20", "classifier.backend='dask'", "generator.model='cvae'",
                "cvae.distributed=true", "cvae.max_epochs=2", "cvae.n_hidden=[32]",
                "cvae.n_latent=4", "report.fidelity=false") == 0  # fidelity: tested elsewhere
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["generator"]["status"] == "done"
    assert (tmp_path / "generator_ddp" / "model" / "weights.safetensors").is_file()
    syn = ad.read_h5ad(tmp_path / "synthetic" / "eval.h5ad")
    assert syn.uns["cellsynth"]["model"] == "cvae"
