"""`cellsynth evaluate` / `cs.evaluate` misused as users do (session 47's sweep): labels
missing as text beside held-out cells that are training cells, ..."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.errors import DataError


def _sim(n: int = 300, seed: int = 0, genes: int = 120, types: int = 3):
    from cellsynth.data.simulate import simulate_atlas

    a = simulate_atlas(n, genes, types, seed=seed, doublet_rate=0.0, uninformative_rate=0.0)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    return a


def test_training_cells_in_heldout_are_found_when_some_labels_are_missing_as_text():
    """Real cells labelled "" (missing written as text) shifted the positions the name check
    read: held-out cells that were training cells crashed it (IndexError), or were compared
    with other cells."""
    import anndata as ad

    from cellsynth.evaluation.inputs import _check_disjoint

    a = _sim(300)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    real, test = a[:200].copy(), a[200:].copy()
    labels = real.obs["cell_type"].copy()
    labels.iloc[:20] = ""
    real.obs["cell_type"] = labels
    heldout = ad.concat([test, real[-60:]])  # the last training cells, under their names
    with pytest.raises(DataError, match=r"share about 60 of their 160 cells"):
        _check_disjoint(real, heldout, "cell_type", 0)


def test_the_command_in_fidelity_md_gives_the_same_evaluation(tmp_path):
    """fidelity.md's command left out --donor-key, --seed, --max-cells and --gene-repeats:
    copied, it scored other cells (the defaults) and ran no donor-level audit."""
    import shlex

    from cellsynth.cli import main

    a = _sim(600, seed=3)
    a.obs["donor"] = np.where(np.arange(a.n_obs) % 2, "d1", "d2")
    real, test, syn = (tmp_path / f"{n}.h5ad" for n in ("real", "test", "syn"))
    a[:300].write_h5ad(real)
    a[300:].write_h5ad(test)
    _sim(300, seed=4).write_h5ad(syn)
    args = ["--real", str(real), "--synthetic", str(syn), "--label-key", "cell_type",
            "--heldout", str(test), "--donor-key", "donor", "--seed", "5", "--max-cells",
            "150", "--gene-repeats", "1"]
    assert main(["evaluate", *args, "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    text = (tmp_path / "ev" / "fidelity.md").read_text()
    command = text.split("`cellsynth evaluate ", 1)[1].split("`", 1)[0]
    assert shlex.split(command) == args
