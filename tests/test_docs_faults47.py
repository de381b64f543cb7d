"""The documentation as a new user reads it (sweep 47): README.md, docs/*.md, the tutorial,
examples/*.toml and every ``--help``; each test is a fault the docs had."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the pages a user reads (the results pages are written by their scripts, not checked here)
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md",
         *(ROOT / "docs" / f"{name}.md" for name in ("index", "getting-started", "usage", "api",
                                                    "cli", "scale", "gpu", "report",
                                                    "development", "architecture")),
         ROOT / "docs" / "tutorial.ipynb"]


def _text(page: Path) -> str:
    """A page's Markdown (a notebook's markdown cells)."""
    text = page.read_text(encoding="utf-8")
    if page.suffix == ".ipynb":
        cells = json.loads(text)["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return text


def _anchors(page: Path) -> set[str]:
    """The heading anchors of a page (and of the pages it includes), as MyST
    (``myst_heading_anchors``) and GitHub make them: lower case, spaces to hyphens, every other
    character but letters, digits, ``_`` and ``-`` dropped (``metrics/fidelity.json`` ->
    ``metricsfidelityjson``)."""
    text = _text(page)
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?)\s*$", text, flags=re.M):
        heading = re.sub(r"[`*]", "", heading).strip().lower().replace(" ", "-")
        out.add(re.sub(r"[^\w\- ]", "", heading))
    for included in re.findall(r"^```\{include\} +(\S+)", text, flags=re.M):
        out |= _anchors((page.parent / included).resolve())
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(page):
    """getting-started.md linked ``report.md#metrics-fidelity-json``, a heading anchor no
    page has (the heading `metrics/fidelity.json` is ``#metricsfidelityjson``): the link
    went to the top of the page on GitHub, and ``make docs`` (warnings as errors) failed on
    MyST's "local id not found"."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading; {sorted(_anchors(linked))})")
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize(("cli_args", "api_kwargs", "name"), [
    (["--set", "dataset.path='data/atlas.h5ad'"], {"overrides": ["dataset.path='data/atlas.h5ad'"]},
     "atlas"),
    (["data/atlas.h5ad", "--config", "kang.toml"],
     {"data": "data/atlas.h5ad", "config": "kang.toml"}, "atlas"),
    (["--config", "kang.toml"], {"config": "kang.toml"}, "kang"),
])
def test_cs_run_names_its_run_directory_as_cellsynth_run_does(tmp_path, monkeypatch, cli_args,
                                                              api_kwargs, name):
    """usage.md: "In Python, cs.run(data, config=..., overrides=[...]) does the same" as
    `cellsynth run`; but cs.run(overrides=["dataset.path=atlas.h5ad"]) (or a RunConfig naming
    the file) ran the atlas in runs/demo, the demo's folder, and cs.run(DATA, config=FILE)
    in runs/<config's name> where `cellsynth run DATA --config FILE` uses runs/<DATA's name>:
    the second never resumed the first. One rule now names both (and the help says it)."""
    import sys
    import types

    import cellsynth as cs
    from cellsynth import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "kang.toml").write_text("[cvae]\nmax_epochs = 2\n")
    used = []
    fake = types.SimpleNamespace(run=lambda cfg, out, **kw: used.append(Path(out))
                                 or Path(out) / "results.md")  # the pipeline, not imported
    monkeypatch.setitem(sys.modules, "cellsynth.pipeline", fake)
    monkeypatch.setattr(cs, "pipeline", fake, raising=False)
    assert cli.main(["run", *cli_args]) == 0
    cs.run(**api_kwargs)
    assert used == [Path("runs") / name] * 2
    if "overrides" in api_kwargs:
        cs.run(config=cs.RunConfig(dataset={"path": "data/atlas.h5ad"}))
        assert used[-1] == Path("runs") / name


def test_the_run_help_names_every_default_run_directory():
    from cellsynth.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["run"]
    out = next(a for a in sub._actions if "--out" in a.option_strings)
    assert "dataset.path" in out.help and "runs/demo" in out.help


def test_a_reference_runs_generator_is_refused_with_where_its_points_are(tmp_path, capsys):
    """generate's help said it "writes counts (or PCA points for the reference model)" from "a
    run's generator/ directory", and cs.load_model's docstring read RUN/generator of any kind;
    but the generator/ of a run of generator.model = "reference" (every dataset preset's) is
    the run's PCA-space CVAE: `cellsynth generate RUN/generator` said only "names the model
    'SeedCVAE', which is not a generator", cs.ReferenceGenerator.load sent the user to
    cs.load_model, which refused it so, and `cellsynth info` called its 100 PCs genes."""
    import numpy as np

    import cellsynth as cs
    from cellsynth.cli import main
    from cellsynth.config import SeedVAEConfig
    from cellsynth.errors import ModelFileError
    from cellsynth.models import SeedCVAE

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 6)).astype(np.float32), np.array(["a", "b"] * 30, dtype=object)
    model = SeedCVAE(6, ["a", "b"], SeedVAEConfig(n_embed=2, n_hidden=[8], n_latent=2,
                                                  max_epochs=1, device="cpu"))
    model.fit(x, y, x[:20], y[:20], seed=0)
    gen = tmp_path / "run" / "generator"
    model.save(gen)
    said = r"reference CVAE that a cellsynth run fitted on its PCA.*run[/\\]synthetic.*--model reference"
    for load in (cs.load_model, cs.ReferenceGenerator.load, cs.CVAE.load):
        with pytest.raises(ModelFileError, match=said):
            load(gen)
    assert main(["generate", str(gen), "--n-per-type", "5", "--out",
                 str(tmp_path / "cells.h5ad")]) == 2
    assert re.search(said, capsys.readouterr().err)
    assert main(["info", str(gen)]) == 0
    shown = capsys.readouterr().out
    assert "n_components: 6" in shown and "n_genes" not in shown


@pytest.mark.parametrize("argv", [
    ["--set", "dataset.path='other.h5ad'"],
    ["--label-key", "cell_type", "--set", "dataset.label_key='condition'"],
])
def test_benchmark_refuses_a_data_setting_that_data_or_label_key_overrides(tmp_path, capsys,
                                                                          argv):
    """benchmark --help's --set example is dataset.path='a.h5ad'; with --data a.h5ad that
    setting (and a --set dataset.label_key beside --label-key) was dropped without a word and
    the benchmark ran on the other file or column, where `cellsynth fit` refuses the same."""
    from cellsynth.cli import main

    (tmp_path / "kang.h5ad").write_bytes(b"")
    assert main(["benchmark", "--data", str(tmp_path / "kang.h5ad"), "--models", "nb",
                 "--out", str(tmp_path / "bench"), *argv]) == 2
    assert re.search(r"drop the --set", capsys.readouterr().err)
    assert not (tmp_path / "bench").exists()


def test_a_missing_download_says_to_download_it(tmp_path):
    """scale.md runs examples/e-annd-5-laptop.toml after `cellsynth download E-ANND-5`; run
    without it (or after a download stopped part-way), the file the preset names was only
    "does not exist; give the path of an .h5ad file", never the command that fetches it."""
    from cellsynth.data.io import check_file
    from cellsynth.errors import DataError

    path = tmp_path / "E-ANND-5.project.h5ad"
    with pytest.raises(DataError, match=r"`cellsynth download E-ANND-5 --cache-dir .*` writes: "
                                        r"download it first, or give the path"):
        check_file(path)
    (tmp_path / "E-ANND-5.project.h5ad.part").write_bytes(b"\x89HDF")
    with pytest.raises(DataError, match="stopped part-way: that command resumes it"):
        check_file(path)
    with pytest.raises(DataError, match=r"does not exist; give the path of an \.h5ad file"):
        check_file(tmp_path / "atlas.h5ad")


def test_the_readme_python_example_runs_on_a_file_read_backed(tmp_path, monkeypatch):
    """README's example took `adata[~test].copy()` of cs.read's AnnData: for a file over 2 GB
    cs.read leaves X on disk (backed), and anndata refuses to copy a subset of that
    (ValueError: pass a filename). The example runs as written now, backed or not (its file,
    type and training length aside)."""
    import matplotlib

    import cellsynth as cs
    from cellsynth.data import io

    matplotlib.use("Agg")
    code = re.search(r"In Python:\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(),
                     flags=re.S).group(1)
    code = code.replace("model.train(seed=0)", "model.train(seed=0, max_epochs=1, "
                        "select='elbo', n_hidden=[16], n_latent=2)")
    code = code.replace('"B cells": 500', '"type_00": 40')
    monkeypatch.chdir(tmp_path)
    cs.simulate(240, 60, 2, seed=0).write_h5ad("data.h5ad")
    monkeypatch.setattr(io, "BACKED_BYTES", 0)  # read as an atlas over 2 GB is: backed
    assert cs.read("data.h5ad").isbacked
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "synthetic.h5ad").is_file() and (tmp_path / "models" / "cvae").is_dir()


def test_fit_of_a_model_without_epochs_prints_none(tmp_path, capsys):
    """`cellsynth fit ... --model nb` (usage.md) ended with "model: models/nb (5 types, 1267
    genes, - epochs)": a negative binomial is fitted, not trained in epochs."""
    import cellsynth as cs
    from cellsynth.cli import main

    cs.simulate(200, 40, 2, seed=0).write_h5ad(tmp_path / "a.h5ad")
    assert main(["fit", str(tmp_path / "a.h5ad"), "--label-key", "cell_type", "--model", "nb",
                 "--out", str(tmp_path / "nb"), "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"model: .*nb \(\d+ types, \d+ genes\)", line), line


def test_group_entries_of_types_qc_dropped_are_not_called_unknown(caplog):
    """examples/mouse_pancreas_baron2016.toml warned on every run that "6 of 13 entries name no
    cell type of the data" of its own groups file: they name the data's rarest types, which QC
    had just dropped (with a warning of its own). They are logged as dropped now; an entry
    naming no type at all still warns."""
    from cellsynth.data.groups import check_groups

    groups = {"beta": "endocrine", "alpha": "endocrine", "ductal": "exocrine", "betta": "x"}
    with caplog.at_level("INFO", logger="cellsynth"):
        used = check_groups(groups, ["beta", "ductal"], "g.tsv", dropped=["alpha", "schwann"])
    assert used == {"beta": "endocrine", "ductal": "exocrine"}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "'betta' (did you mean 'beta'?)" in warned[0], warned
    assert "alpha" not in warned[0]
    assert any("name types QC dropped, not scored: alpha" in r.getMessage()
               for r in caplog.records if r.levelname == "INFO")
