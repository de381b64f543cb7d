"""Faults found in session 47's own review (each test fails without its fix)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from cellsynth import config


def test_a_settings_file_is_never_left_half_written(tmp_path, monkeypatch):
    """config.save wrote config.toml in place: a full disk or a kill mid-write left half of the
    settings where the whole had been (and a rerun read them)."""
    path = tmp_path / "config.toml"
    config.save(config.RunConfig(), path)
    before = path.read_text()
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    cfg = config.RunConfig(cvae={"max_epochs": 7})
    with pytest.raises(Exception):  # noqa: B017 - the disk-full error, whatever its type
        config.save(cfg, path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary left


def test_a_benchmark_stopped_while_scoring_reuses_the_fit_it_saved(tmp_path, monkeypatch):
    """A benchmark stopped after a generator's fit was saved (while its privacy audit or TSTR
    ran) fitted that generator again from scratch when rerun; it reads the saved fit back, and
    the page is the one an uninterrupted run writes."""
    from cellsynth import benchmark, evaluation
    from cellsynth.data.simulate import simulate_atlas

    data = tmp_path / "tiny.h5ad"
    simulate_atlas(300, 120, 3, seed=3).write_h5ad(data)
    sets = ["qc.min_genes_per_cell=10", "qc.min_cells_per_type=10"]
    evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "whole", overrides=sets,
                             command="t", reuse=True)
    real_tstr = benchmark.tstr

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "tstr", stopped)
    out = tmp_path / "bench"
    with pytest.raises(KeyboardInterrupt):
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="t",
                                 reuse=True)
    assert (out / "tiny" / "models" / "nb.fit.json").is_file()
    monkeypatch.setattr(benchmark, "tstr", real_tstr)

    def fail(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(benchmark, "make_generator", fail)
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=sets, command="t", reuse=True)

    def row(where):
        kept = json.loads((where / "tiny" / "results" / "nb.json").read_text())["row"]
        timed = {"fit_seconds", "generate_cells_per_second"}  # two fits' clocks
        return {k: v for k, v in kept.items() if k not in timed}

    assert row(out) == row(tmp_path / "whole")
    # other settings: the saved fit is not theirs
    with pytest.raises(AssertionError, match="fitted again"):
        evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "bench", command="t",
                                 overrides=[*sets, "seed=5"], reuse=True)
