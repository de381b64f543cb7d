"""`cellsynth benchmark` / `make bench-fidelity`: the page, and reuse of finished datasets."""

from __future__ import annotations

import json

import pytest

from cellsynth import benchmark, evaluation
from cellsynth.data.simulate import simulate_atlas
from cellsynth.metrics.verdict import COPIES


@pytest.mark.slow
def test_benchmark_page_and_reuse(tmp_path, monkeypatch):
    data = tmp_path / "tiny.h5ad"
    simulate_atlas(600, 200, 3, seed=3).write_h5ad(data)
    sets = ["qc.min_genes_per_cell=10", "qc.min_cells_per_type=10"]
    out = tmp_path / "bench"
    page = evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="test",
                                  reuse=True)
    text = page.read_text()
    assert "## tiny" in text and "| nb |" in text and "| real vs real |" in text
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["shape"]["n_types"] == 3
    kept = json.loads((out / "tiny" / "results" / "nb.json").read_text())
    assert kept["key"] and kept["row"]["tstr_macro_f1"] > 0
    # gene level beside its floor, and the privacy audit: nb draws no training cell
    assert 0.3 < kept["row"]["gene_auc"] <= 1 and kept["details"]["gene_floor"]["gene_auc"] < 0.7
    assert kept["row"]["privacy_flagged"] == "no" and kept["row"]["exact_copies"] == 0
    assert set(kept["details"]["privacy"]["attacks"]) == {"distance", "density", "redraw"}

    def fail(*args, **kwargs):
        raise AssertionError("a finished generator was run again")

    monkeypatch.setattr(benchmark, "make_generator", fail)
    with monkeypatch.context() as m:  # the floor and the evaluation space are kept too
        for name in ("real_floor", "fit_space"):
            m.setattr(benchmark, name, fail)
        again = evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets,
                                         command="test", reuse=True)
    assert again.read_text() == text
    # --kept-only: fits nothing, says what is missing
    kept_page = evaluation.run_benchmark([str(data)], ["nb", "cvae"], out, overrides=sets,
                                       command="test", kept_only=True).read_text()
    assert "| nb |" in kept_page and "| cvae |" not in kept_page
    assert "**Not run** (no results kept for these settings): cvae." in kept_page
    # an earlier version's kept results (another key) are shown by --kept-only, and said so
    path = out / "tiny" / "results" / "nb.json"
    fresh = path.read_text()
    path.write_text(json.dumps({**json.loads(fresh), "key": "an-earlier-version"}))
    stale_page = evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets,
                                          command="test", kept_only=True).read_text()
    assert "| nb |" in stale_page and "**Kept from an earlier version**" in stale_page
    path.write_text(fresh)
    # settings of another generator do not matter to nb; the shared ones do
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=[*sets, "cvae.n_latent=3"],
                           command="test", reuse=True)
    with pytest.raises(AssertionError, match="run again"):
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=[*sets, "seed=5"],
                               command="test", reuse=True)
    with pytest.raises(AssertionError, match="run again"):
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="test")
    # results kept apart from the run directory (benchmarks/results): read from there, and a
    # fresh --out (nothing fitted there) still gives the same page
    kept_dir = tmp_path / "kept"
    (kept_dir / "tiny").mkdir(parents=True)
    for name in ("nb.json", "floor.json"):
        (kept_dir / "tiny" / name).write_text((out / "tiny" / "results" / name).read_text())
    elsewhere = evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "fresh", overrides=sets,
                                       command="test", reuse=True, kept=kept_dir)
    assert elsewhere.read_text() == text
    # several fits: the first with a single fit's seeds, the row their mean, the spread given
    monkeypatch.undo()
    two = evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "two", overrides=sets,
                                   command="test", fits=2).read_text()
    both = json.loads((tmp_path / "two" / "tiny" / "results" / "nb.json").read_text())
    first, second = both["details"]["fits"]
    timed = {"fit_seconds", "generate_cells_per_second"}

    def untimed(row):
        return {k: v for k, v in row.items() if k not in timed}

    assert untimed(first) == untimed(kept["row"]) and second["c2st_auc"] != first["c2st_auc"]
    assert both["row"]["fits"] == 2 and both["key"] != kept["key"]
    assert both["row"]["c2st_auc"] == pytest.approx((first["c2st_auc"] + second["c2st_auc"]) / 2)
    sd = abs(first["c2st_auc"] - second["c2st_auc"]) / 2 ** 0.5
    assert both["details"]["spread"]["c2st_auc"] == pytest.approx(sd)
    assert f"nb, 2 fits: 2-sample AUC {sd:.3f}" in two
    monkeypatch.setattr(benchmark, "make_generator", fail)  # kept over more fits: reused
    assert evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "two", overrides=sets,
                                    command="test", reuse=True).read_text() == two
    with pytest.raises(evaluation.DataError, match="fits must be"):
        evaluation.run_benchmark([str(data)], ["nb"], out, fits=0)


def test_privacy_target_reads_every_attack():
    """The page's membership target takes the worst of every attack that ran (the re-draw
    attack included), and says by how much it is missed; a control not flagged says how far
    its attacks fall short of their thresholds."""
    from cellsynth.evaluation.page import _privacy_targets

    rows = {"cvae": {"privacy_distance_auc": 0.52, "privacy_density_auc": 0.53,
                     "privacy_redraw_auc": 0.57},
            "copy": {"privacy_flagged": "no"}}
    details = {"models": {"copy": {"privacy": {"attacks": {
        "distance": {"auc": 0.56, "threshold": 0.58}}}}}}
    cvae, copy = _privacy_targets(rows, details)
    assert "missed by 0.020" in cvae and "redraw 0.570" in cvae, cvae
    assert "missed" in copy and "0.020 below its flag threshold 0.580" in copy, copy
    rows["cvae"]["privacy_redraw_auc"] = None  # an audit without counts: two attacks
    assert "met" in _privacy_targets(rows, None)[0]


@pytest.mark.slow
def test_benchmark_verdict_names_copies(tmp_path):
    """The copy control returns training cells: its metrics sit at the floor, and the
    benchmark's verdict says what they are, as cs.evaluate's does (memorisation decides)."""
    data = tmp_path / "tiny.h5ad"
    simulate_atlas(600, 200, 3, seed=3).write_h5ad(data)
    sets = ["qc.min_genes_per_cell=10", "qc.min_cells_per_type=10"]
    evaluation.run_benchmark([str(data)], ["copy"], tmp_path / "bench", overrides=sets,
                             command="test")
    kept = json.loads((tmp_path / "bench" / "tiny" / "results" / "copy.json").read_text())
    assert kept["details"]["memorisation"]["flagged"]
    assert kept["row"]["verdict"] == COPIES
    assert kept["details"]["verdict"]["overall"]["decided_by"] == ["memorisation"]
