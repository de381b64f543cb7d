"""`cellsynth benchmark` / `make bench-fidelity`: the page, and reuse of finished datasets."""

from __future__ import annotations

import json

import pytest

from cellsynth import evaluate
from cellsynth.data.simulate import simulate_atlas


@pytest.mark.slow
def test_benchmark_page_and_reuse(tmp_path, monkeypatch):
    data = tmp_path / "tiny.h5ad"
    simulate_atlas(600, 200, 3, seed=3).write_h5ad(data)
    sets = ["qc.min_genes_per_cell=10", "qc.min_cells_per_type=10"]
    out = tmp_path / "bench"
    page = evaluate.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="test",
                                  reuse=True)
    text = page.read_text()
    assert "## tiny" in text and "| nb |" in text and "| real vs real |" in text
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["shape"]["n_types"] == 3 and summary["key"]

    def fail(*args, **kwargs):
        raise AssertionError("a finished dataset was run again")

    monkeypatch.setattr(evaluate, "benchmark_dataset", fail)
    again = evaluate.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="test",
                                   reuse=True)
    assert again.read_text() == text
    # another config is another run
    with pytest.raises(AssertionError, match="run again"):
        evaluate.run_benchmark([str(data)], ["nb"], out, overrides=[*sets, "seed=5"],
                               command="test", reuse=True)
