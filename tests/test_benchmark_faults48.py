"""`cellsynth benchmark` under misuse (session 48's sweep): a data set too small for one of the
tests, a generator that fails part way, a generator whose package is missing, the old name of
a generator, and what a rerun reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellsynth import benchmark, evaluation
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


class _Diverges:
    """A generator whose fit fails as a bug or a diverged fit would (not a CellsynthError)."""

    def fit(self, *args, **kwargs):
        raise RuntimeError("the loss is NaN\nat epoch 3")


def test_a_generator_that_fails_is_named_and_the_others_are_reported(tmp_path: Path,
                                                                    monkeypatch, capsys):  # fmt: skip
    """`benchmark --models copy,nb` where copy's fit failed: the benchmark stopped with copy's
    error and wrote no page, so nb's results (fitted after it, or before it: hours) were
    reported nowhere. The failure is named on the page and in the command's one-line error
    (exit 2), the others are benchmarked and reported, and a rerun reads them back."""
    from cellsynth.cli import main

    data = _few_cells(tmp_path / "few.h5ad")
    real = benchmark.make_generator
    monkeypatch.setattr(benchmark, "make_generator",
                        lambda name, cfg: _Diverges() if name == "copy" else real(name, cfg))
    out = tmp_path / "out"
    sets = [a for s in SMALL for a in ("--set", s)]
    assert main(["benchmark", "--data", str(data), "--models", "copy,nb", "--out", str(out),
                 *sets, "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("cellsynth: error: "), err
    assert "copy on few: RuntimeError: the loss is NaN at epoch 3" in last
    assert "leave the failed generator out of --models" in last
    page = (out / "RESULTS.md").read_text()
    assert "| nb |" in page and "| copy |" not in page
    assert "**Failed** (no row: rerun once the cause is mended): copy (RuntimeError" in page
    assert json.loads((out / "few" / "summary.json").read_text())["failed"] == {
        "copy": "RuntimeError: the loss is NaN at epoch 3"}
    from cellsynth.info import describe  # and `cellsynth info` names it too

    assert describe(out)["datasets"]["few"]["failed"] == {
        "copy": "RuntimeError: the loss is NaN at epoch 3"}
    monkeypatch.setattr(benchmark, "make_generator", lambda *a: pytest.fail("fitted again"))
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t", reuse=True)


def test_a_full_disk_in_a_generator_s_fit_still_stops_the_benchmark(tmp_path: Path, monkeypatch):
    """An error of the disk or files is not one generator's: every generator after it would
    meet it too, so it stops the benchmark as before, not fitting the others."""
    import errno

    class Full:
        def fit(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", "ckpt")

    data = _few_cells(tmp_path / "few.h5ad")
    monkeypatch.setattr(benchmark, "make_generator",
                        lambda name, cfg: Full() if name == "copy" else pytest.fail("went on"))
    with pytest.raises(OSError, match="No space left"):
        evaluation.run_benchmark([str(data)], ["copy", "nb"], tmp_path / "out", overrides=SMALL,
                                 command="t")  # fmt: skip


def test_a_generator_that_fails_on_the_held_out_combination_is_named(tmp_path: Path,
                                                                      monkeypatch):  # fmt: skip
    """`--holdout`: a generator whose fit failed on the held-out training cells stopped the
    benchmark before its page, losing every generator's results; it is named (the section's
    line and ``failed``), the others scored."""
    from cellsynth import config, holdout
    from cellsynth.benchmark import prepare
    from test_covariates import _design_atlas

    path = tmp_path / "design.h5ad"
    _design_atlas().write_h5ad(path)
    cfg = config.load(None, ["qc.min_genes_per_cell=5", "qc.min_cells_per_type=10",
                             f"dataset.path='{path}'"])  # fmt: skip
    real = holdout.make_generator
    monkeypatch.setattr(holdout, "make_generator",
                        lambda name, c: _Diverges() if name == "copy" else real(name, c))
    result = holdout.benchmark_holdout(prepare(path, cfg), ["copy", "nb"], cfg, tmp_path / "h",
                                       {"cell_type": "type_00", "condition": "stim"})  # fmt: skip
    assert "nb" in result["rows"] and "copy" not in result["rows"]
    assert result["failed"] == {"copy": "RuntimeError: the loss is NaN at epoch 3"}
    assert "- copy failed (no row): RuntimeError: the loss is NaN at epoch 3" in \
        holdout.holdout_section(result)


def test_scvi_without_scvi_tools_is_refused_before_any_fit(tmp_path: Path, monkeypatch, capsys):
    """`benchmark --models cvae,scvi` without scvi-tools fitted and scored cvae (hours), then
    scvi's fit said to install the extra. It is said before any fit, with the other way out;
    a page rebuilt from kept results (nothing fitted) does not need it."""
    import sys

    from cellsynth.cli import main

    data = _few_cells(tmp_path / "few.h5ad")
    monkeypatch.setitem(sys.modules, "scvi", None)  # `import scvi` fails as when not installed

    def reached(*args, **kwargs):
        raise RuntimeError("benchmarked")

    monkeypatch.setattr(evaluation.runner, "benchmark_dataset", reached)
    sets = [a for s in SMALL for a in ("--set", s)]
    assert main(["benchmark", "--data", str(data), "--models", "nb,SCVI", "--out",
                 str(tmp_path / "out"), *sets, "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "the scvi generator needs scvi-tools" in err and "pip install 'cellsynth[scvi]'" in err
    assert err.strip().endswith("or leave scvi out of --models"), err
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError, match="benchmarked"):
        evaluation.run_benchmark([str(data)], ["nb", "scvi"], tmp_path / "out", overrides=SMALL,
                                 command="t", kept_only=True)  # fmt: skip


def test_the_old_name_of_a_generator_is_benchmarked_under_its_name(tmp_path: Path, monkeypatch):
    """`benchmark --models seed` (the reference generator's old name, accepted with a warning)
    wrote a row and kept results named seed, so a rerun with --models reference fitted the same
    generator again; it is benchmarked, kept and reused as reference."""
    seen = []

    def record(pre, models, *args, **kwargs):
        seen.append(models)
        raise RuntimeError("benchmarked")

    data = _few_cells(tmp_path / "few.h5ad")
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset", record)
    with pytest.raises(RuntimeError, match="benchmarked"):
        evaluation.run_benchmark([str(data)], ["nb", "Seed"], tmp_path / "out", overrides=SMALL,
                                 command="t")  # fmt: skip
    assert seen == [["nb", "reference"]]


def test_kept_results_that_do_not_read_are_run_again_not_a_traceback(tmp_path: Path, caplog):
    """A generator's kept results (`DATASET/results/NAME.json`, small files meant for version
    control) cut short, left with a merge's conflict markers or edited into another shape made
    every rerun end in json's or Python's traceback. They are said not to read and not used:
    the generator is run again (its file rewritten), or left out of a page of kept results."""
    import logging

    data = _few_cells(tmp_path / "few.h5ad")
    out = tmp_path / "out"
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t")
    kept = out / "few" / "results" / "nb.json"
    good = kept.read_text()
    for bad in (good[:40], "<<<<<<< HEAD\n" + good, json.dumps({"row": [], "key": 1}),
                json.dumps({**json.loads(good), "row": {"fits": "two"}})):
        kept.write_text(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            page = evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL,
                                            command="t", kept_only=True).read_text()  # fmt: skip
        assert "**Not run** (no results kept for these settings): nb." in page
        assert f"the kept results in {kept} do not read" in caplog.text
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t",
                                 reuse=True)  # fmt: skip
        assert json.loads(kept.read_text())["row"]["tstr_macro_f1"] is not None


def test_a_later_data_set_s_labels_are_checked_before_any_fit(tmp_path: Path, monkeypatch):
    """`--data a.h5ad,b.h5ad` where b has no label column (or no donor column), or one type: a
    was benchmarked first (every generator fitted: hours), then b's preprocessing refused it
    in words that did not say which data set. Each is refused before any fit, naming the data
    set; a refusal of QC names it too."""
    from cellsynth.errors import DataError

    good = _few_cells(tmp_path / "good.h5ad")
    a = simulate_atlas(300, 120, 3, seed=3)
    a.obs = a.obs.rename(columns={"cell_type": "celltype"})
    a.write_h5ad(tmp_path / "nolabel.h5ad")
    one = simulate_atlas(300, 120, 3, seed=3)
    one[one.obs["cell_type"] == "type_00"].copy().write_h5ad(tmp_path / "one.h5ad")
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("benchmarked"))  # fmt: skip
    donor = simulate_atlas(300, 120, 3, seed=3)
    donor.obs["donor"] = "d1"
    donor.write_h5ad(tmp_path / "donor.h5ad")
    with pytest.raises(DataError, match=r"good \(.*good.h5ad\): donor column 'donor'"):
        evaluation.run_benchmark([str(tmp_path / "donor.h5ad"), str(good)], ["nb"],
                                 tmp_path / "out", overrides=[*SMALL, "dataset.donor_key='donor'"],
                                 command="t")  # fmt: skip
    for bad, match in (("nolabel", r"nolabel \(.*nolabel.h5ad\): label column 'cell_type' not "
                                   "in obs"),
                       ("one", r"one \(.*one.h5ad\): obs\['cell_type'\] holds 1 cell type\(s\) "
                               r"\('type_00'\).*leave this one out of --data")):  # fmt: skip
        with pytest.raises(DataError, match=match):
            evaluation.run_benchmark([str(good), str(tmp_path / f"{bad}.h5ad")], ["nb"],
                                     tmp_path / "out", overrides=SMALL, command="t")
        assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match=r"^good \(.*good.h5ad\): no cells left after the QC"):
        evaluation.run_benchmark([str(good)], ["nb"], tmp_path / "out", command="t")


@pytest.mark.parametrize("datasets, models, message", [
    ("DATA", "nb,NB", "names nb twice"),  # one string: one file; the models as --models reads
    (Path("DATA"), ["nb"], "reached"),
    ([Path("DATA")], ("nb",), "reached"),
    (["DATA", ""], ["nb"], "reached"),
    (["DATA"], [None], r"models takes a list of names, e.g. \['cvae', 'nb'\], not NoneType"),
    (["DATA"], None, "models takes a list of names"),
    ([3], ["nb"], r"datasets takes a list of paths, e.g. .*, not int 3"),
])  # fmt: skip
def test_run_benchmark_reads_one_string_or_path_as_one_item(tmp_path: Path, monkeypatch,
                                                            datasets, models, message):  # fmt: skip
    """The Python counterpart took a string for its list: datasets='kang.h5ad' was read letter
    by letter ('h is given twice'), models='nb' too ("unknown generator(s) ['n', 'b']"); a
    Path, or a list of Paths, ended in a TypeError or an AttributeError, as did a None."""
    from cellsynth.errors import DataError

    data = _few_cells(tmp_path / "few.h5ad")

    def reached(*args, **kwargs):
        raise DataError("reached")

    monkeypatch.setattr(evaluation.runner, "_check_inputs", reached)

    def given(item):
        return {"DATA": str(data)}.get(item, item) if isinstance(item, str) else (
            data if isinstance(item, Path) else item)

    datasets = given(datasets) if not isinstance(datasets, list) else [given(d) for d in datasets]
    with pytest.raises(DataError, match=message):
        evaluation.run_benchmark(datasets, models, tmp_path / "out", command="t")


def test_run_benchmark_reads_its_other_arguments_given_as_strings(tmp_path: Path, monkeypatch):
    """overrides='seed=3' was read letter by letter ("--set expects section.key=value, got
    's'"), holdout='cell_type=...,condition=stim' too ("no column 'c'"), and doc= or kept= as
    a string ended in an AttributeError or TypeError: each is read as its one value."""
    from cellsynth import config

    seen = {}

    def record(pre, models, cfg, out, **kwargs):
        seen.update(min_genes=cfg.qc.min_genes_per_cell, kept=kwargs["kept_dir"])
        return {"rows": {}, "models": {}}

    data = _few_cells(tmp_path / "few.h5ad")
    small, real = config.load(None, SMALL), evaluation.runner.prepare
    monkeypatch.setattr(evaluation.runner, "prepare", lambda path, cfg: real(path, small))
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset", record)
    page = evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out",
                                    overrides="qc.min_genes_per_cell=10", command="t",
                                    doc=str(tmp_path / "page.md"), kept=str(tmp_path / "kept"))
    assert page == tmp_path / "page.md" and page.is_file()
    assert seen == {"min_genes": 10, "kept": tmp_path / "kept" / "few"}
    from cellsynth.errors import DataError

    with pytest.raises(DataError, match=r"--holdout: no column 'condition'"):
        evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out", command="t",
                                 holdout="condition=stim")  # fmt: skip


def test_a_results_md_of_the_user_s_own_in_out_is_not_overwritten(tmp_path: Path, monkeypatch):
    """`benchmark --out .` in a project folder replaced the user's own RESULTS.md with the
    benchmark page, without a word. A RESULTS.md that is not a benchmark page is refused
    before any work; an earlier page is replaced."""
    from cellsynth.errors import CellsynthError

    data = _few_cells(tmp_path / "few.h5ad")
    out = tmp_path / "project"
    out.mkdir()
    (out / "RESULTS.md").write_text("# My results\n\nweeks of notes\n")
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("benchmarked"))  # fmt: skip
    with pytest.raises(CellsynthError, match=r"RESULTS.md exists and is not a benchmark page "
                                             "that cellsynth wrote"):  # fmt: skip
        evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t")
    assert (out / "RESULTS.md").read_text() == "# My results\n\nweeks of notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.md"]
    from cellsynth.evaluation.page import results_page

    (out / "RESULTS.md").write_text(results_page([], "t", ["nb"]))  # an earlier page
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: {"rows": {}, "models": {}})  # fmt: skip
    assert evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL,
                                    command="t") == out / "RESULTS.md"  # fmt: skip


@pytest.mark.parametrize("option, values", [("--data", ("a.h5ad", "b.h5ad")),
                                            ("--models", ("nb", "cvae")),
                                            ("--out", ("one", "two")), ("--fits", ("1", "2")),
                                            ("--label-key", ("cell_type", "celltype")),
                                            ("--config", ("a.toml", "b.toml"))])  # fmt: skip
def test_a_benchmark_option_given_twice_is_refused(tmp_path: Path, monkeypatch, capsys, option,
                                                  values):  # fmt: skip
    """`benchmark --data a.h5ad --data b.h5ad` benchmarked b alone (argparse keeps the last),
    `--models nb --models cvae` cvae alone, without a word, where --holdout twice is refused."""
    from cellsynth.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(evaluation, "run_benchmark", lambda *a, **k: pytest.fail("benchmarked"))
    given = {"--data": "a.h5ad", "--out": "out"}
    args = [a for k, v in given.items() if k != option for a in (k, v)]
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", *args, option, values[0], option, values[1], "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    said = err.splitlines()[-1]
    assert f"argument {option}: given twice (" in said and all(v in said for v in values), err


def test_a_preset_toml_of_upper_case_suffix_is_read_as_a_preset(tmp_path: Path, monkeypatch):
    """`--data PRESET.TOML` was read as an h5ad ("a text file (a CSV or TSV table?), not an
    h5ad"); the suffix is read whatever its case, as the file systems that ignore case do."""
    data = _few_cells(tmp_path / "few.h5ad")
    preset = tmp_path / "FEW.TOML"
    preset.write_text(f'[dataset]\npath = "{data}"\n[qc]\nmin_genes_per_cell = 10\n'
                      "min_cells_per_gene = 1\nmin_cells_per_type = 2\n")
    seen = []
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda pre, models, cfg, *a, **k: seen.append(cfg.dataset.path) or
                        {"rows": {}, "models": {}})  # fmt: skip
    evaluation.run_benchmark([str(preset)], ["nb"], tmp_path / "out", command="t")
    assert seen == [str(data)]


def test_kept_results_of_another_data_file_are_said_to_be_so(tmp_path: Path):
    """A page of kept results (kept_only) after the data file was replaced under its name
    showed the old file's rows as 'Kept from an earlier version (other settings or metrics
    ...; no gene-level or privacy numbers)', none of which was so: it says they were made from
    another version of the data file."""
    data = _few_cells(tmp_path / "few.h5ad")
    out = tmp_path / "out"
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t")
    a = simulate_atlas(300, 120, 3, seed=4)  # the same name, other cells
    a[a.obs["cell_type"].astype(str).str.startswith("type_").to_numpy()][:40].copy() \
        .write_h5ad(data)
    page = evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t",
                                    kept_only=True).read_text()  # fmt: skip
    assert "| nb |" in page and "Kept from an earlier version" not in page
    assert "**Made from another version of the data file** (rerun to refresh): nb." in page


def test_a_missing_preset_in_data_is_said_to_be_in_data(tmp_path: Path, capsys):
    """`--data kang.h5ad,baron.toml` with no baron.toml said "config file baron.toml does not
    exist; give an existing --config file": the command had no --config. It names --data."""
    from cellsynth.cli import main

    data = _few_cells(tmp_path / "few.h5ad")
    (tmp_path / "folder.toml").mkdir()
    for preset, said in (("missing.toml", "does not exist"), ("folder.toml", "is a directory")):
        assert main(["benchmark", "--data", f"{data},{tmp_path / preset}", "--models", "nb",
                     "--out", str(tmp_path / "out"), "--quiet"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert f"the preset {tmp_path / preset} in --data {said}" in err and "--config" not in err


def test_a_test_split_too_small_for_the_floor_names_the_benchmark_s_setting(tmp_path: Path):
    """`--set split.test=0.01` left a test cell or two a type: the floor's refusal said to give
    `evaluate` a larger --max-cells or a run a larger report.max_cells, neither of which the
    benchmark has. It names split.test, before any fit."""
    from cellsynth.errors import DataError

    data = _few_cells(tmp_path / "few.h5ad", per_type=40)
    with pytest.raises(DataError, match=r"the benchmark's test split is too small: .*no type has "
                                        r"2 real cells.*raise split.test \(now 0.01"):
        evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out", command="t",
                                 overrides=[*SMALL, "split.test=0.01", "split.train=0.89"])


def test_a_preset_without_a_data_file_is_named(tmp_path: Path):
    """A preset TOML in --data with no dataset.path was refused as '. is a directory; give the
    path of an .h5ad file', and one whose file is missing without naming the preset (with
    several data sets: which?). Both name the preset."""
    from cellsynth.errors import CellsynthError

    data = _few_cells(tmp_path / "few.h5ad")
    (tmp_path / "nopath.toml").write_text("seed = 3\n")
    (tmp_path / "gone.toml").write_text(f'[dataset]\npath = "{tmp_path / "gone-file.h5ad"}"\n')
    for preset, match in (("nopath", r"the preset .*nopath.toml in --data names no data file: "
                                     r"add \[dataset\] path"),
                          ("gone", r"^gone \(a preset in --data\): .*gone-file.h5ad does not "
                                   "exist")):  # fmt: skip
        with pytest.raises(CellsynthError, match=match):
            evaluation.run_benchmark([str(data), str(tmp_path / f"{preset}.toml")], ["nb"],
                                     tmp_path / "out", command="t")  # fmt: skip


def test_the_page_names_the_call_that_wrote_it(tmp_path: Path, monkeypatch, capsys):
    """From Python the page said it was 'Written by `cellsynth -f .../kernel-1.json`' (the
    notebook's sys.argv, as if a command); it names the call. The command line's page names
    the command as typed (quoted where a path holds a space)."""
    import sys

    from cellsynth.cli import main

    data = _few_cells(tmp_path / "few data.h5ad")
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: {"rows": {}, "models": {}})  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel-1.json"])
    page = evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out", overrides=SMALL)
    text = page.read_text()
    assert "kernel-1.json" not in text and f"Written by `run_benchmark(['{data}'], ['nb']" in text
    args = ["benchmark", "--data", str(data), "--models", "nb", "--out", str(tmp_path / "cli"),
            *[a for s in SMALL for a in ("--set", s)], "--quiet"]
    assert main(args) == 0
    assert f"Written by `cellsynth benchmark --data '{data}' --models nb" in \
        (tmp_path / "cli" / "RESULTS.md").read_text()


def test_scvi_results_read_back_need_no_scvi_tools(tmp_path: Path, monkeypatch):
    """The check of scvi-tools before any fit is for the generators to fit: a rerun that reads
    scvi's kept results back (its page rebuilt on a laptop without scvi-tools) is not refused,
    and --holdout, which fits every generator again, is."""
    import sys

    from cellsynth import config
    from cellsynth.errors import CellsynthError

    data = _few_cells(tmp_path / "few.h5ad")
    out = tmp_path / "out"
    evaluation.run_benchmark([str(data)], ["nb"], out, overrides=SMALL, command="t")
    kept = json.loads((out / "few" / "results" / "nb.json").read_text())
    cfg = config.load(None, [*SMALL, f"dataset.path={json.dumps(str(data))}"])
    kept["key"] = benchmark.model_key(cfg, "scvi")  # as if scvi had been benchmarked here
    (out / "few" / "results" / "scvi.json").write_text(json.dumps(kept))
    monkeypatch.setitem(sys.modules, "scvi", None)
    page = evaluation.run_benchmark([str(data)], ["nb", "scvi"], out, overrides=SMALL,
                                    command="t", reuse=True).read_text()  # fmt: skip
    assert "| scvi |" in page
    monkeypatch.setattr(evaluation.runner, "_check_inputs", lambda *a: None)  # any holdout
    with pytest.raises(CellsynthError, match="the scvi generator needs scvi-tools"):
        evaluation.run_benchmark([str(data)], ["nb", "scvi"], out, overrides=SMALL, command="t",
                                 reuse=True, holdout={"cell_type": "type_00", "x": "y"})


def test_run_benchmark_refuses_an_override_that_is_not_text(tmp_path: Path):
    """overrides=[3] (or [None]) ended in "TypeError: argument of type 'int' is not iterable"."""
    from cellsynth.errors import DataError

    data = _few_cells(tmp_path / "few.h5ad")
    for bad in (3, None):
        with pytest.raises(DataError, match=r"overrides takes a list of settings, e\.g\. .*, not "):
            evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out", command="t",
                                     overrides=["seed=3", bad])  # fmt: skip


def test_a_file_where_a_data_set_s_folder_goes_is_refused_before_any_fit(tmp_path: Path,
                                                                         monkeypatch):  # fmt: skip
    """`--data a.h5ad,b.h5ad --out B` where B/b is a file: a was benchmarked first, then
    writing b's results said 'B/b/results: Not a directory'. Refused before any work."""
    from cellsynth.errors import DataError

    data = _few_cells(tmp_path / "few.h5ad")
    other = _few_cells(tmp_path / "other.h5ad")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other").write_text("notes\n")
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: pytest.fail("benchmarked"))  # fmt: skip
    with pytest.raises(DataError, match=r"other is a file, where the benchmark writes the folder "
                                        "of data set 'other'"):  # fmt: skip
        evaluation.run_benchmark([str(data), str(other)], ["nb"], out, overrides=SMALL,
                                 command="t")  # fmt: skip
    assert (out / "other").read_text() == "notes\n"


def test_a_second_data_set_into_one_out_says_the_page_drops_the_first(tmp_path: Path,
                                                                      monkeypatch, caplog):  # fmt: skip
    """`benchmark --data a.h5ad --out B`, then `--data b.h5ad --out B`: the second page
    replaced the first without a word, a's section gone though its results are kept. Said,
    with how to have both."""
    import logging

    first, second = _few_cells(tmp_path / "first.h5ad"), _few_cells(tmp_path / "second.h5ad")
    monkeypatch.setattr(evaluation.runner, "benchmark_dataset",
                        lambda *a, **k: {"rows": {}, "models": {}})  # fmt: skip
    out = tmp_path / "out"
    evaluation.run_benchmark([str(first)], ["nb"], out, overrides=SMALL, command="t")
    with caplog.at_level(logging.WARNING):
        page = evaluation.run_benchmark([str(second)], ["nb"], out, overrides=SMALL, command="t")
    assert "## first" not in page.read_text()
    assert "held the data set(s) first of an earlier command, which this page replaces" in \
        caplog.text and "give them in --data too" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # both: nothing to say
        evaluation.run_benchmark([str(first), str(second)], ["nb"], out, overrides=SMALL,
                                 command="t")  # fmt: skip
    assert "of an earlier command" not in caplog.text


def test_kept_only_with_a_holdout_is_refused(tmp_path: Path, monkeypatch):
    """run_benchmark(kept_only=True, holdout=...) is to fit nothing, but fitted every generator
    again for the held-out combination (hours). The two are refused together."""
    from cellsynth import holdout
    from cellsynth.errors import ConfigError

    data = _few_cells(tmp_path / "few.h5ad")
    monkeypatch.setattr(holdout, "benchmark_holdout", lambda *a, **k: pytest.fail("fitted"))
    with pytest.raises(ConfigError, match="kept_only writes the page from kept results, fitting "
                                          "nothing, but holdout fits"):  # fmt: skip
        evaluation.run_benchmark([str(data)], ["nb"], tmp_path / "out", overrides=SMALL,
                                 command="t", kept_only=True,
                                 holdout={"cell_type": "type_00", "x": "y"})
