"""`cellsynth benchmark` under misuse (session 48's sweep): a data set too small for one of the
tests, a generator that fails part way, a generator whose package is missing, the old name of
a generator, and what a rerun reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cellsynth import evaluation
from cellsynth.data.simulate import simulate_atlas

#: QC for a few dozen simulated cells
SMALL = ["qc.min_genes_per_cell=10", "qc.min_cells_per_gene=1", "qc.min_cells_per_type=2"]


def _few_cells(path: Path, per_type: int = 12) -> Path:
    """``per_type`` simulated cells of each of 3 types (a test split of a few cells)."""
    a = simulate_atlas(300, 120, 3, seed=3)
    types = [t for t in a.obs["cell_type"].unique() if str(t).startswith("type_")]
    rows = np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:per_type] for t in types])
    a[np.sort(rows)].copy().write_h5ad(path)
    return path


def test_a_data_set_too_small_for_the_gene_level_test_is_still_benchmarked(tmp_path: Path):
    """A data set of 12 cells a type left 5 test cells: the gene-level test refused them after
    each generator's fit and the benchmark stopped with no page, where `cellsynth run` and
    `cellsynth evaluate` skip that test. It is skipped (said in the log), the rest scored."""
    data = _few_cells(tmp_path / "few.h5ad")
    page = evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out", overrides=SMALL,
                                    command="t").read_text()  # fmt: skip
    assert "| nb |" in page
    kept = json.loads((tmp_path / "out" / "few" / "results" / "nb.json").read_text())
    assert kept["row"].get("gene_auc") is None and kept["row"]["tstr_macro_f1"] is not None
    assert "needs at least" in kept["details"]["genes"]["skipped"]
