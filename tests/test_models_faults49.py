"""Saved models under misuse (session 49's sweep of models): generating from saved models of
every kind, huge requests and files of a model directory; each is one line that names the fix,
never a traceback, a crash or silently wrong cells."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import cellsynth as cs
from cellsynth.cli import main
from conftest import kang_small_cells


@pytest.fixture(scope="module")
def small(kang_path: Path) -> ad.AnnData:
    return kang_small_cells(kang_path)


@pytest.fixture(scope="module")
def nb_dir(small: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved nb model with a covariate (some combinations drawn from their type's fit)."""
    out = tmp_path_factory.mktemp("models") / "nb"
    model = cs.NegBinBaseline(covariate_keys=["condition"], min_cells=30)
    model.fit(small, "cell_type", seed=0)
    model.save(out)
    return out


def as_text(value: object) -> str:
    """``value`` (a dict of lists, arrays and numbers, as an h5ad reads it back or not) as
    sorted JSON text."""
    return json.dumps(value, sort_keys=True, default=lambda v: np.asarray(v).tolist())


# ---------------------------------------------------------------------------------------------
# huge requests: cellsynth generate streams an nb model's cells to the file


def test_generate_streams_an_nb_models_cells_to_disk_not_memory(nb_dir, tmp_path, monkeypatch,
                                                                 capsys) -> None:  # fmt: skip
    """`cellsynth generate` drew an nb model's cells all in memory (the blocks, then their
    stacked copy: twice the estimate its memory check allowed), so a request the check let
    through could be killed for memory, and one larger than memory was refused though the
    file had room; its cells stream to the file now, as a CVAE's do."""
    monkeypatch.setattr("cellsynth.runtime.available_memory", lambda: 200_000)  # 0.2 MB free
    out = tmp_path / "g.h5ad"
    assert main(["generate", str(nb_dir), "--n-per-type", "300", "--seed", "3", "--out",
                 str(out), "--quiet"]) == 0, capsys.readouterr().err  # fmt: skip
    assert ad.read_h5ad(out).n_obs == 1500
    with pytest.raises(cs.errors.DataError, match="stream them to a file chunk by chunk"):
        cs.load_model(nb_dir).sample({"B cells": 300})  # in memory: still refused, with how


def test_streamed_nb_cells_equal_the_cells_sample_returns(nb_dir, tmp_path) -> None:
    """The file `cellsynth generate` writes holds the cells, obs and provenance (fallbacks
    included) that NegBinBaseline.sample gives for the same seed."""
    model = cs.load_model(nb_dir)
    request = {"B cells": 40, "CD4 T cells": 25}
    held = model.sample(request, where={"condition": "stim"}, seed=11)
    out = tmp_path / "s.h5ad"
    assert main(["generate", str(nb_dir), "--types", "B cells=40,CD4 T cells=25", "--where",
                 "condition=stim", "--seed", "11", "--out", str(out), "--quiet"]) == 0
    written = ad.read_h5ad(out)
    assert (written.X != held.X).nnz == 0
    assert written.obs.equals(held.obs)
    mine = {k: v for k, v in written.uns["cellsynth"].items() if not k.startswith("model_")}
    assert as_text(mine) == as_text(held.uns["cellsynth"])
    assert as_text(mine["fallback_combinations"]) == as_text(
        {"cell_type": ["B cells", "CD4 T cells"], "condition": ["stim", "stim"]})
    chunks = [x for _, x in model.sample_chunks(request, where={"condition": "stim"}, seed=11)]
    assert sum(x.shape[0] for x in chunks) == 65
    assert np.array_equal(np.vstack([x.toarray() for x in chunks]), held.X.toarray())


# ---------------------------------------------------------------------------------------------
# cellsynth info given a file of a model directory


@pytest.mark.parametrize("part", ["params.safetensors", "config.json", "genes.json"])
def test_info_of_a_models_file_names_the_directory_to_describe(nb_dir, part, capsys) -> None:
    """`cellsynth info MODEL/params.safetensors` said to convert the file with scanpy (and a
    config.json or genes.json was called a CSV or TSV table): it names the model's directory."""
    assert main(["info", str(nb_dir / part)]) == 2
    err = capsys.readouterr().err
    assert f"is a file of the saved model in {nb_dir}, not an h5ad" in err, err
    assert f"cellsynth info {nb_dir}" in err and "scanpy" not in err


def test_info_of_a_text_file_elsewhere_still_says_what_it_is(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')  # a folder that holds no saved model
    assert main(["info", str(tmp_path / "config.json")]) == 2
    assert "is a text file" in capsys.readouterr().err
