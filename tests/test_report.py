"""``report.html``: one self-contained page from a run directory, robust to missing files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellsynth.cli import main
from cellsynth.errors import CellsynthError
from cellsynth.report.html import SECTIONS, render_report, write_report

TINY = [
    "dataset.demo_cells=600",
    "dataset.demo_genes=200",
    "dataset.demo_types=5",
    "qc.min_genes_per_cell=20",
    "features.n_components=8",
    "classifier.n_estimators=10",
    "classifier.max_depth=2",
    "seed_vae.n_hidden=[16, 8]",
    "seed_vae.n_embed=8",
    "seed_vae.n_latent=4",
    "seed_vae.max_epochs=2",
    "generator.n_per_type_eval=10",
    "generator.n_per_type_train=20",
    "generator.n_per_type_val=5",
    "explain.max_cells=30",
    "explain.n_top_genes=5",
    # a small CVAE, briefly: the report reads its files, not how good its cells are
    "cvae.n_hidden=[64, 32]",
    "cvae.n_latent=8",
    "cvae.max_epochs=20",
    "report.gene_repeats=1",
]
CHROMIUM = Path("/usr/bin/chromium")
NOTE = "Not available in this run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny pipeline run, shared by the tests of this module (copy before changing it)."""
    out = tmp_path_factory.mktemp("report") / "run"
    args = ["run", "--out", str(out), "--quiet"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def full_report(run_dir, tmp_path_factory) -> Path:
    """The report of a copy of the run with the optional files (UMAP, fidelity) added."""
    run = _copy(run_dir, tmp_path_factory.mktemp("full") / "run")
    _add_optional_files(run)
    return write_report(run)


def _copy(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("*.h5ad", "report*")))


def _imgs(page: str) -> list[str]:
    return re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', page)


def _add_optional_files(run: Path) -> None:
    """``features/umap.csv`` and ``metrics/fidelity.json`` (for runs that lack them)."""
    rng = np.random.default_rng(0)
    n = 60
    pd.DataFrame({
        "cell": [f"c{i}" for i in range(n)],
        "origin": ["real", "synthetic"] * (n // 2),
        "label": [f"type_{i % 3}" for i in range(n)],
        "x": rng.normal(size=n), "y": rng.normal(size=n),
    }).to_csv(run / "features" / "umap.csv", index=False)

    def report(c2st: float) -> dict:
        return {"overall": {"c2st_auc": c2st, "mmd_rbf": 0.01, "energy_distance": 0.02,
                            "knn_precision": 0.9, "knn_recall": 0.8,
                            "gene_stats": {"mean": 0.97, "variance": 0.9, "zero_fraction": 0.95},
                            "library_size_distance": 0.05, "correlation_distance": 0.1,
                            "marker_overlap": {"mean": 0.7}},
                "per_type": {f"type_{i}": {"c2st_auc": c2st, "n_real": 20, "n_synth": 20}
                             for i in range(3)}}

    attack = {"auc": 0.52, "threshold": 0.6, "n_members": 60, "flagged": False}
    privacy = {"flagged": False, "reasons": [], "attacks": {"distance": attack, "density": attack},
               "donor_attacks": None,
               "dcr": {"median_synthetic": 2.4, "median_heldout": 2.5, "median_ratio": 0.96,
                       "quantile": 0.05, "share_below_quantile": 0.06, "exact_duplicates": 0,
                       "exact_share": 0.0}}
    (run / "metrics" / "fidelity.json").write_text(json.dumps(
        {"real_vs_real": report(0.512), "synthetic_vs_real": report(0.734), "privacy": privacy}))


@pytest.mark.slow
def test_complete_run_is_self_contained(full_report):
    path, run = full_report, full_report.parent
    assert path == run / "report.html" and path.is_file()
    page = path.read_text()
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in page, title
    assert 'src="http' not in page and "<link" not in page and "url(" not in page
    srcs = _imgs(page)
    # QC, cells per type, PCA, F1, 2 confusion (fine, coarse), UMAP, fidelity, per type,
    # privacy, losses, SHAP, stages
    assert len(srcs) == 13
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert re.findall(r'href="([^"]*)"', page) == [f"#{sid}" for sid, _ in SECTIONS]
    assert "0.734" in page and "0.512" in page  # the fidelity table beside its control
    assert "Could not render" not in page and NOTE not in page
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert f"{summary['a']['fine']['f1_macro']:.3f}" in page


def test_default_run_notes_missing_umap_and_fidelity(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "sub" / "r.html")  # ``out`` elsewhere
    page = out.read_text()
    if not (run_dir / "features" / "umap.csv").is_file():
        assert f"{NOTE}: features/umap.csv not found." in page
    if not (run_dir / "metrics" / "fidelity.json").is_file():
        assert f"{NOTE}: metrics/fidelity.json not found." in page
    assert "Could not render" not in page


def test_missing_files_give_notes(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "run")
    for rel in ("metrics/summary.json", "features/pca.json", "data/qc.json", "generator",
                "explain", "metrics/c_synthetic_real_fine_per_class.csv",
                "metrics/a_real_real_coarse_confusion.csv", "classifier_synthetic"):
        p = run / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    page = write_report(run).read_text()
    for _, title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    for rel in ("metrics/summary.json", "features/pca.json", "explain/shap_genes.csv",
                "metrics/c_synthetic_real_fine_per_class.csv"):
        assert rel in page, rel
    assert "QC steps" in page  # qc.json gone: qc_steps.csv still gives the step table
    assert "Could not render" not in page
    assert all(s.startswith("data:image/png;base64,") for s in _imgs(page))


def test_empty_and_malformed(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = render_report(empty)
    # every section notes its missing file but the run header and the covariates section
    # (no covariates.json is a run without covariates: left out, said why)
    assert page.count(NOTE) >= len(SECTIONS) - 2 and not _imgs(page)
    with pytest.raises(CellsynthError, match="not a directory"):
        write_report(tmp_path / "nope")
    (empty / "metrics").mkdir()
    (empty / "metrics" / "summary.json").write_text('{"a": 1}')  # valid JSON, wrong layout
    (empty / "features").mkdir()
    (empty / "features" / "pca.json").write_text("{not json")
    page = render_report(empty)
    assert "Could not render this section" in page  # one section, not the page
    assert f"{NOTE}: features/pca.json not found." in page


def test_text_is_escaped(tmp_path):
    (tmp_path / "data").mkdir()
    evil = '<script>alert("x")</script>&'
    (tmp_path / "data" / "qc.json").write_text(json.dumps({
        "steps": [{"step": evil, "cells_removed": 1, "genes_removed": 0, "cells_left": 9,
                   "genes_left": 5}],
        "cells_per_type_before": {evil: 10, "B": 5}, "cells_per_type_after": {evil: 9, "B": 5},
    }))
    page = render_report(tmp_path)
    assert evil not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_chromium_loads_every_figure(full_report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    path = full_report
    n = len(_imgs(path.read_text()))
    dom = _chromium(["--dump-dom", path.resolve().as_uri()], tmp_path)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert f'data-images-total="{n}"' in body.group(0), body.group(0)
    assert f'data-images-ok="{n}"' in body.group(0), body.group(0)


def test_cli_report(run_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    try:
        rc = main(["report", str(run_dir), "--out", str(out)])
    except SystemExit:  # argparse: no such subcommand yet
        pytest.skip("`cellsynth report` is not wired into cli.py yet")
    assert rc == 0 and out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_fidelity_section_says_memorisation_and_privacy(run_dir, tmp_path):
    """A memorisation flag sits above the fidelity table; the privacy audit follows it, flagged
    or not, and a skipped audit says why."""
    run = _copy(run_dir, tmp_path / "run")
    _add_optional_files(run)
    fid = json.loads((run / "metrics" / "fidelity.json").read_text())
    attack = {"auc": 0.97, "threshold": 0.55, "n_members": 150, "flagged": True}
    fid["memorisation"] = {"flagged": True, "reasons": ["40 synthetic cells (20.0%) are exact "
                                                        "copies of real cells"]}
    fid["privacy"] = {"flagged": True, "reasons": ["cell-level distance attack AUC 0.970"],
                      "attacks": {"distance": attack, "density": {**attack, "auc": 0.91}},
                      "donor_attacks": None,
                      "dcr": {"median_synthetic": 0.0, "median_heldout": 2.5,
                              "share_below_quantile": 0.8, "exact_duplicates": 40}}
    (run / "metrics" / "fidelity.json").write_text(json.dumps(fid))
    page = write_report(run).read_text()
    assert "Memorisation: 40 synthetic cells (20.0%) are exact copies" in page
    assert "Privacy audit" in page and "Flagged: cell-level distance attack AUC 0.970" in page
    assert "0.970" in page and "0.910" in page
    fid["privacy"] = {"skipped": "the privacy audit needs at least 40 training cells"}
    (run / "metrics" / "fidelity.json").write_text(json.dumps(fid))
    assert "Not run: the privacy audit needs at least 40" in write_report(run).read_text()


def test_every_experiment_scored_alike_and_class_sizes_given(full_report):
    """(b) has per-class scores and a confusion matrix as (a) and (c) do; the UMAP shows equal
    numbers of real and generated cells per type, and says so."""
    page = full_report.read_text()
    per_class = page[page.index('<section id="per-class">'):page.index('<section id="confusion">')]
    confusion = page[page.index('<section id="confusion">'):page.index('<section id="umap">')]
    for section in (per_class, confusion):
        for name in ("(a) real-trained, on real test cells", "(b) real-trained, on generated cells",
                     "(c) synthetic-trained, on real test cells"):
            assert name in section
    assert "Beside each type, its real test cells" in per_class
    assert "as many generated as real cells" in page


def test_pipeline_umap_has_no_more_generated_than_real_cells_per_type(run_dir):
    path = run_dir / "features" / "umap.csv"
    if not path.is_file():
        pytest.skip("this run wrote no UMAP (report.umap = false or umap-learn missing)")
    n = pd.read_csv(path).groupby(["label", "origin"]).size().unstack(fill_value=0)
    assert (n.get("synthetic", 0) <= n["real"]).all(), n


@pytest.mark.slow
def test_panels_with_nothing_to_show_are_left_out_with_why(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "run")
    _add_optional_files(run)
    qc = json.loads((run / "data" / "qc.json").read_text())
    for step in qc["steps"]:
        step["genes_removed"] = 0
    (run / "data" / "qc.json").write_text(json.dumps(qc))
    types = json.loads((run / "data" / "groups.json").read_text())
    (run / "data" / "groups.json").write_text(json.dumps({t: t for t in types}))  # no merging
    fid = json.loads((run / "metrics" / "fidelity.json").read_text())
    for side in ("real_vs_real", "synthetic_vs_real"):
        fid[side].pop("per_type")
    fid["real_vs_real"]["overall"]["mmd_rbf"] = -0.003  # an unbiased estimate below zero
    fid["privacy"] = {"skipped": "the privacy audit needs at least 40 training cells"}
    (run / "metrics" / "fidelity.json").write_text(json.dumps(fid))
    page = write_report(run).read_text()
    assert "Left out: the panel of genes removed (no QC step removed genes)." in page
    assert page.count("Left out: the coarse level: no fine-to-coarse mapping") == 2  # table, matrix
    assert "Left out: the per-type figure: no type had enough cells" in page
    assert "MMD² (RBF) below zero" in page and "at the noise floor" in page
    assert "Not run: the privacy audit needs at least 40" in page
    # QC (cells only), cells per type, PCA, F1, fine confusion, UMAP, fidelity, losses, SHAP,
    # stages
    assert len(_imgs(page)) == 10
    assert "Could not render" not in page


def test_the_verdict_is_the_first_screen(run_dir, tmp_path):
    """The first section says whether the generated cells are realistic, overall and per type
    (metrics/per_type.csv), or why it cannot."""
    run = _copy(run_dir, tmp_path / "run")
    _add_optional_files(run)
    page = write_report(run).read_text()
    first = re.search(r'<section id="([^"]+)"', page).group(1)
    assert first == "verdict" and "the verdict: fidelity.json holds none" in page
    fid = json.loads((run / "metrics" / "fidelity.json").read_text())
    fid["verdict"] = {
        "overall": {"verdict": "distinguishable", "reason": "two-sample AUC 0.734 vs floor 0.512"},
        "per_type": {"type_1": {"verdict": "distinguishable", "reason": "AUC 0.9 vs floor 0.5"}},
        "too_few": {"type_2": "5 real cells"}, "absent": [], "extra": [], "warning": None,
        "n_types": {"indistinguishable": 0, "close": 0, "distinguishable": 1}}
    (run / "metrics" / "fidelity.json").write_text(json.dumps(fid))
    pd.DataFrame({"type": ["type_1", "type_2"], "n_real": [40, 5], "n_synthetic": [40, 40],
                  "verdict": ["distinguishable", "too few cells"], "c2st_auc": [0.9, None],
                  "c2st_auc_floor": [0.5, None]}).to_csv(run / "metrics" / "per_type.csv",
                                                          index=False)
    page = write_report(run).read_text()
    assert '<p class="verdict verdict-distinguishable"><b>Distinguishable</b>' in page
    assert "type_1: distinguishable (AUC 0.9 vs floor 0.5)" in page
    assert "<td>too few cells</td>" in page and "type_2" in page
