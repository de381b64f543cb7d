"""`cellsynth benchmark`, `info`, `download` and `simulate` under misuse (session 45's sweep): a
rerun benchmark reads back the generators it finished (its help says so) unless the data file
changed, empty or wrong arguments are one line before any work, `info` describes a benchmark
directory and any h5ad's provenance, a malformed base URL and a reserved label column are
refused in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cellsynth import benchmark, evaluation
from cellsynth.cli import main
from cellsynth.data.simulate import simulate_atlas
from cellsynth.errors import ConfigError, DataError

SETS = ["qc.min_genes_per_cell=10", "qc.min_cells_per_type=10"]


def test_the_command_line_benchmark_reuses_what_it_finished(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:  # fmt: skip
    """And it prints the verdicts of its own data sets, not those an earlier command left."""
    seen = {}
    for name in ("a", "earlier"):
        (tmp_path / "b" / name).mkdir(parents=True)
        (tmp_path / "b" / name / "summary.json").write_text(
            json.dumps({"verdicts": [f"nb: verdict of {name}"]}))  # fmt: skip

    def fake(datasets, models, out, **kw):
        seen.update(kw)
        return Path(out) / "RESULTS.md"

    monkeypatch.setattr(evaluation, "run_benchmark", fake)
    assert main(["benchmark", "--data", "a.h5ad", "--models", "nb", "--out",
                 str(tmp_path / "b"), "--quiet"]) == 0  # fmt: skip
    assert seen["reuse"] is True
    out = capsys.readouterr().out
    assert "a: nb: verdict of a" in out and "earlier" not in out


def test_kept_results_of_another_version_of_the_data_file_are_fitted_again(tmp_path: Path,
                                                                           monkeypatch) -> None:  # fmt: skip
    data = tmp_path / "tiny.h5ad"
    simulate_atlas(300, 120, 3, seed=3).write_h5ad(data)
    out = tmp_path / "bench"
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SETS, command="t", reuse=True)
    kept = json.loads((out / "tiny" / "results" / "nb.json").read_text())
    assert kept["data"] and json.loads((out / "tiny" / "results" / "floor.json").read_text())["data"]

    def fail(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(benchmark, "make_generator", fail)
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SETS, command="t", reuse=True)
    simulate_atlas(300, 120, 3, seed=4).write_h5ad(data)  # the same name and settings
    with pytest.raises(AssertionError, match="fitted again"):
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SETS, command="t",
                                 reuse=True)  # fmt: skip


@pytest.mark.parametrize("args, message", [
    (["--data", "", "--models", "nb", "--out", "OUT"], "no data set given"),
    (["--data", " , ", "--models", "nb", "--out", "OUT"], "no data set given"),
    (["--data", "DATA", "--models", "nb", "--out", ""], "--out is empty"),
    (["--data", "DATA", "--models", "nb", "--out", "DATA"], "is an existing file, not a directory"),
    (["--data", "DATA", "--models", "nb,NB", "--out", "OUT"], "names nb twice"),
    (["--data", "DATA", "--models", "seed,reference", "--out", "OUT"],
     r"names reference twice \(seed and reference\)"),
    (["--data", "DATA", "--models", "nb", "--out", "OUT", "--holdout", ","], "names no combination"),
    (["--data", "DATA", "--models", "nb", "--out", "OUT", "--holdout", ""], "names no combination"),
])  # fmt: skip
def test_benchmark_arguments_that_name_nothing_or_twice_are_one_line(
        tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:  # fmt: skip
    import re

    data = tmp_path / "a.h5ad"
    data.write_bytes(b"\x89HDF\r\n\x1a\n")  # refused before it is read
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(benchmark, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("benchmarked"))  # fmt: skip
    args = [{"DATA": str(data), "OUT": "out"}.get(a, a) for a in args]
    assert main(["benchmark", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5ad"]  # nothing written


def test_config_beside_a_preset_toml_is_said_not_to_apply(tmp_path: Path, caplog) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text(f'[dataset]\npath = "{tmp_path / "missing.h5ad"}"\n')
    mine = tmp_path / "mine.toml"
    mine.write_text("seed = 3\n")
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="does not exist"):
        evaluation.run_benchmark([str(preset)], ["nb"], tmp_path / "out", config_path=str(mine))
    assert f"--config {mine} is not applied to {preset}" in caplog.text


def test_info_describes_a_benchmark_directory(tmp_path: Path, capsys) -> None:
    from cellsynth.info import describe

    folder = tmp_path / "bench" / "kang"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "rows": {"real vs real": {}, "nb": {}}, "shape": {"n_obs": 5, "n_vars": 3, "n_types": 2},
        "verdicts": ["nb: distinguishable"]}))  # fmt: skip
    (tmp_path / "bench" / "RESULTS.md").write_text("# page\n")
    info = describe(tmp_path / "bench")
    assert info["kind"] == "benchmark" and info["results"].endswith("RESULTS.md")
    assert info["datasets"]["kang"]["generators"] == "nb"
    assert info["datasets"]["kang"]["verdicts"] == ["nb: distinguishable"]
    assert describe(folder)["kind"] == "benchmark data set"


def test_info_reads_any_provenance_of_an_h5ad(tmp_path: Path, kang_path: Path, capsys) -> None:
    a = ad.read_h5ad(kang_path)[:60].copy()
    a.uns["cellsynth"] = {"model": "cvae", "unseen_combinations": {
        "cell_type": np.array(["B cells"], dtype=object), "condition": np.array(["stim"], dtype=object)}}
    generated = tmp_path / "g.h5ad"
    a.write_h5ad(generated)  # read back: numpy arrays, which json cannot write as they are
    assert main(["info", str(generated), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)["cellsynth"]
    assert made["unseen_combinations"] == {"cell_type": ["B cells"], "condition": ["stim"]}
    a.uns["cellsynth"] = "written by another program"
    other = tmp_path / "o.h5ad"
    a.write_h5ad(other)
    assert main(["info", str(other)]) == 0
    assert "not cellsynth's provenance: 'written by another program'" in capsys.readouterr().out


@pytest.mark.parametrize("base", ["http://[::1", "http://a b/", "http://127.0.0.1:abc/"])
def test_a_malformed_base_url_is_one_line(tmp_path: Path, base: str) -> None:
    from cellsynth.data.download import download

    with pytest.raises(ConfigError, match=r"is not a valid address .*--base-url"):
        download("E-TEST-1", tmp_path, base_url=base)
    assert not list(tmp_path.glob("*.h5ad*"))


def test_simulate_refuses_the_reserved_label_column_before_writing(tmp_path: Path) -> None:
    from cellsynth.data.simulate import write_atlas

    with pytest.raises(ConfigError, match=r"'_index'.*choose another --label-key"):
        write_atlas(tmp_path / "a.h5ad", 50, 30, 2, label_key="_index")
    assert not list(tmp_path.iterdir())


def test_types_without_a_labelled_cell_are_counted_as_missing(caplog) -> None:
    """A type whose only cell is labelled low quality has no cell of its name in the atlas."""
    with caplog.at_level(logging.WARNING):
        a = simulate_atlas(300, 23, 400, seed=3)
    labels = a.obs["cell_type"].astype(str)
    missing = 400 - labels[labels.str.startswith("type_")].nunique()
    assert f"{missing} of the 400 cell types got no cell" in caplog.text


def test_a_benchmark_of_normalised_values_is_refused_before_any_work(tmp_path: Path,
                                                                    kang_path: Path) -> None:  # fmt: skip
    import scipy.sparse as sp

    a = ad.read_h5ad(kang_path)[:200].copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()).astype(np.float32))  # no counts anywhere
    first, second = tmp_path / "first.h5ad", tmp_path / "logged.h5ad"
    ad.read_h5ad(kang_path)[:200].copy().write_h5ad(first)
    a.write_h5ad(second)
    with pytest.raises(DataError, match=r"logged \(.*\): the benchmark fits generators on raw "
                                        "counts"):  # fmt: skip
        evaluation.run_benchmark([str(first), str(second)], ["nb"], tmp_path / "out",
                                 label_key="cell_type")  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["download", "E-TEST-1", "--cache-dir", ""], "--cache-dir is empty"),
    (["simulate", "--cells", "50", "--genes", "30", "--types", "2", "--out", " "], "--out is empty"),
])  # fmt: skip
def test_an_empty_folder_or_file_is_refused_not_read_as_the_current_folder(
        tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
