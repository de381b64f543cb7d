"""`cellsynth simulate` and `cs.simulate` under misuse (session 48's sweep): each fault found,
what the user did, and that it now ends in a one-line error that says how to fix it."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest

import cellsynth as cs
import cellsynth.data.simulate as sim
from cellsynth.cli import main
from cellsynth.errors import ConfigError, DataError

MiB = 2.0**20


class _Drew(Exception):
    """Raised in place of drawing counts: the checks before it let the call through."""


def _no_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    def drew(*args, **kwargs):
        raise _Drew

    monkeypatch.setattr(sim, "_chunks", drew)


def _one_line(err: pytest.ExceptionInfo, *said: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for s in said:
        assert s in text, text


# -- the counts held in memory: refused up front with the estimate, not an OOM hours in --------


def test_an_atlas_in_memory_larger_than_memory_is_refused_before_drawing(monkeypatch) -> None:
    """cs.simulate(500_000, 2000, 8) with 300 MiB free: the check counted the cells' plan only
    (128 MB), so counts of about 2 GB were drawn into memory (OOM at an atlas's size)."""
    monkeypatch.setattr(sim, "available_memory", lambda: 300 * MiB)
    _no_drawing(monkeypatch)
    with pytest.raises(ConfigError) as err:
        cs.simulate(500_000, 2000, 8)
    _one_line(err, "500,000 simulated cells hold about", "GiB of memory", "0.3 GiB are available",
              "fewer cells (n_cells=)", "write_atlas", "cellsynth simulate --out")
    with pytest.raises(_Drew):  # what fits is let through
        cs.simulate(20_000, 2000, 8)


def test_a_chunk_larger_than_memory_is_refused_with_the_chunk_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`cellsynth simulate --cells 500000 --chunk-size 500000` with 300 MiB free: a chunk of
    every cell was held in memory; now refused, naming the chunk size that fits."""
    monkeypatch.setattr(sim, "available_memory", lambda: 300 * MiB)
    _no_drawing(monkeypatch)
    out = tmp_path / "a.h5ad"
    with pytest.raises(ConfigError) as err:
        sim.write_atlas(out, 500_000, 2000, 8, chunk_size=500_000)
    _one_line(err, "a chunk of 500,000 simulated cells", "chunk_size (--chunk-size) of at most")
    fits = int(str(err.value).rsplit("at most ", 1)[1].replace(",", ""))
    assert 10_000 < fits < 500_000
    with pytest.raises(_Drew):  # the size it names passes
        sim.write_atlas(out, 500_000, 2000, 8, chunk_size=fits)
    argv = ["simulate", "--cells", "500000", "--genes", "2000", "--types", "8",
            "--chunk-size", "500000", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "--chunk-size) of at most" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_atlas_larger_than_the_free_disk_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_atlas onto a disk without room: HDF5 wrote until the disk was full (an atlas's
    size: half an hour of work lost, and a file HDF5 could not close); now refused first."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10**9, 10**9, 4 * 2**20))
    out = tmp_path / "a.h5ad"
    with pytest.raises(DataError) as err:
        sim.write_atlas(out, 3000, 2000, 3)
    _one_line(err, "the simulated atlas", "free disk space or choose another output")
    assert not list(tmp_path.iterdir())
    sim.write_atlas(out, 300, 40, 2)  # a file that fits is written
    assert out.is_file()


def test_the_nonzero_estimate_is_close_above_the_drawn_counts() -> None:
    """The estimate the checks rest on: above the drawn non-zeros, and not far above."""
    from cellsynth.data._sim_checks import nonzeros_per_cell

    for n_genes, n_types, lib in ((2000, 8, None), (500, 3, None), (2000, 4, 20_000.0)):
        a = sim.simulate_atlas(2000, n_genes, n_types, seed=0, library_size=lib)
        m = sim._make_model(n_genes, n_types, 13, 0)
        auto = 600.0 * (n_genes / 2000) ** 0.43 if lib is None else lib
        est = nonzeros_per_cell(m.q, m.theta, m.type_size, m.proportions, auto, 13, 0.02)
        assert a.X.nnz / 2000 < est < 1.3 * a.X.nnz / 2000



# -- absurd values of the Python-only options ---------------------------------------------------


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"library_size": 1e300}, "library_size (a cell's median nuclear counts) must be from 1 to"),
    ({"library_size": 1e7}, "no longer a whole number in float32"),
    ({"library_size": 1e-9}, "under one count most cells are empty"),
    ({"qc_columns": "no"}, "qc_columns must be True or False, got 'no'"),
    ({"qc_columns": None}, "qc_columns must be True or False"),
    ({"doublet_rate": -0.1}, "doublet_rate must be from 0 to under 0.5"),
])
def test_absurd_option_values_are_refused_in_one_line(kwargs, said, tmp_path: Path) -> None:
    """simulate_atlas(library_size=1e300) was numpy's ValueError from inside the draw (p >= 1);
    1e-9 an atlas of empty cells, 1e7 counts past float32's whole numbers; qc_columns="no"
    added the QC columns (any text is true)."""
    for call in (lambda: sim.simulate_atlas(100, 40, 2, **kwargs),
                 lambda: sim.write_atlas(tmp_path / "a.h5ad", 100, 40, 2, **kwargs)):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            call()
        _one_line(err, said)
    assert not list(tmp_path.iterdir())
    sim.simulate_atlas(100, 40, 2, library_size=1.0, qc_columns=True)  # the ends are taken
    sim.simulate_atlas(20, 40, 2, library_size=1e6)


def test_a_wrong_argument_does_not_say_the_file_is_being_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """`cellsynth simulate --genes 1 --out a.h5ad` over an atlas written before logged
    "replacing a.h5ad, a simulated atlas written earlier" before its error: the user read that
    the file was gone. The arguments are now checked before the output path."""
    out = tmp_path / "a.h5ad"
    sim.write_atlas(out, 60, 40, 2)
    before = out.read_bytes()
    caplog.set_level("INFO")
    for bad in ({"--genes": "1"}, {"--donors": "-1"}, {"--types": "0"}):
        caplog.clear()
        given = {"--cells": "60", "--genes": "40", "--types": "2", **bad, "--out": str(out)}
        argv = ["simulate", *(word for item in given.items() for word in item)]  # each once
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "replacing" not in caplog.text + err and "cellsynth: error: need" in err
    assert out.read_bytes() == before


def test_a_demo_atlas_refused_names_the_run_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`cellsynth run --set dataset.demo_genes=5` said "need at least 23 genes (n_genes= or
    --genes)": options run does not have; now the demo's settings are named, and for a demo
    too large for memory, dataset.backed (written to disk chunk by chunk)."""
    assert main(["run", "--set", "dataset.demo_genes=5", "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "demo_genes = 5" in err and "--set dataset.demo_cells=N" in err
    assert "dataset.backed" not in err
    monkeypatch.setattr(sim, "available_memory", lambda: 300 * MiB)
    _no_drawing(monkeypatch)
    argv = ["run", "--set", "dataset.demo_cells=500000", "--out", str(tmp_path / "r2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "dataset.demo_cells = 500000" in err and "--set dataset.backed=true" in err


def test_a_label_column_cellsynth_reads_as_its_own_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`cellsynth simulate --label-key cellsynth_split` wrote an atlas that `cellsynth fit
    --label-key cellsynth_split` then refused (the types read as the split marker): the
    simulated file was no valid input. Names starting with 'cellsynth_' are refused first."""
    out = tmp_path / "a.h5ad"
    argv = ["simulate", "--cells", "60", "--genes", "40", "--types", "2",
            "--label-key", "cellsynth_split", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "names starting with 'cellsynth_'" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError) as err:
        cs.simulate(60, 40, 2, label_key="cellsynth_group")
    _one_line(err, "choose another --label-key")


@pytest.mark.parametrize("label", [".", "a\x00b", "\udcff"])
def test_a_label_column_no_h5ad_can_hold_is_refused_before_writing(label, tmp_path) -> None:
    """write_atlas(label_key=".") ended in a TypeError from anndata's writer after the counts
    were written, "a\\x00b" in h5py's ValueError, and `--label-key $'\\xff'` (bytes that are
    not UTF-8, a lone surrogate in Python) in a UnicodeEncodeError."""
    with pytest.raises(ConfigError) as err:
        sim.write_atlas(tmp_path / "a.h5ad", 60, 40, 2, label_key=label)
    _one_line(err, "a non-empty name an h5ad file can hold")
    assert not list(tmp_path.iterdir())


def test_the_stated_design_says_how_conditions_change_a_cells_total() -> None:
    """uns['simulation'] stated each program's fold change "at a fixed library size", and the
    docstring "at the same library size", but a program changes a cell's total counts by up
    to some 20% (its shares are not renormalised): fold changes of counts normalised per cell,
    as DE is done, differed from the stated ones by that much, unsaid. The ratio is now stated
    per condition and type (total_ratio), and it is what the cells show."""
    import numpy as np

    a = sim.simulate_atlas(6000, 200, 2, seed=1, n_conditions=3, doublet_rate=0.0,
                           uninformative_rate=0.0, n_mito=0)  # fmt: skip
    truth = a.uns["simulation"]
    assert "total counts change too" in truth["effects"]
    totals = np.asarray(a.X.sum(axis=1)).ravel()
    for c in ("stim", "stim2"):
        for k, t in enumerate(("type_00", "type_01")):
            of = (a.obs["cell_type"] == t).to_numpy()
            ratio = (totals[of & (a.obs["condition"] == c).to_numpy()].mean()
                     / totals[of & (a.obs["condition"] == "ctrl").to_numpy()].mean())  # fmt: skip
            assert abs(np.log(ratio / truth["total_ratio"][c][k])) < 0.05, (c, t, ratio)
    assert max(abs(np.log(r)) for v in truth["total_ratio"].values() for r in v) > 0.1
