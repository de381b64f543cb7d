"""The documentation as a new user reads it (sweep 49): every command, option, setting and
Python call the user pages show is checked against the CLI parser, the config and the API, so a
renamed option, setting or keyword fails here before a reader's copy-paste does."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import shlex
from pathlib import Path

import pytest

import cellsynth as cs
from cellsynth.cli import main
from cellsynth.cli_parser import build_parser
from cellsynth.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
#: the pages a new user reads (the results pages are written by their scripts)
PAGES = [ROOT / "README.md",
         *(ROOT / "docs" / f"{name}.md" for name in ("index", "getting-started", "usage", "api",
                                                    "scale", "gpu", "report"))]
_IDS = {"ids": lambda p: p.name}


def _commands(page: Path) -> list[str]:
    """The ``cellsynth ...`` lines of a page's shell code blocks (continuations joined, comments
    dropped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line)[0].strip()
            if line.startswith("cellsynth "):
                out.append(line)
    return out


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("page", PAGES, **_IDS)
def test_every_command_in_a_code_block_parses(page, capsys):
    """A command copied from a page is one the CLI accepts: its command, options and choices."""
    for line in _commands(page):
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{page.name}: `{line}` does not parse: {capsys.readouterr().err}")


@pytest.mark.parametrize("page", PAGES, **_IDS)
def test_every_option_named_beside_a_command_is_one_of_its_options(page):
    """``cellsynth fit ... --covariates a,b`` in the prose names an option ``fit`` has."""
    commands = _subparsers()
    for match in re.finditer(r"`cellsynth (\w+)([^`]*)`", page.read_text()):
        name, rest = match.groups()
        if name == "COMMAND":
            continue
        assert name in commands, f"{page.name}: `{match.group(0)}` names no command"
        options = {o for a in commands[name]._actions for o in a.option_strings}
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            assert option in options, f"{page.name}: {match.group(0)}: {option} is not an option"


def _settings() -> dict[str, set[str]]:
    config = RunConfig()
    return {f.name: {g.name for g in dataclasses.fields(getattr(config, f.name))}
            for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name))}


@pytest.mark.parametrize("page", PAGES, **_IDS)
def test_every_setting_a_page_names_is_a_setting(page):
    """``cvae.select``, ``nb.min_cells``, ``--set features.n_components=50``: each is a field
    of its section (a file name such as ``report.html`` is not a setting)."""
    settings = _settings()
    text = page.read_text()
    for match in re.finditer(r"(?<![\w./-])([a-z_]+)\.([a-z_]+)(?![\w(/])", text):
        section, key = match.groups()
        if section in settings and key not in {"html", "md", "json", "csv", "py", "toml"}:
            assert key in settings[section], (
                f"{page.name}: `{section}.{key}` is not a setting of [{section}] "
                f"(its settings: {sorted(settings[section])})")


@pytest.mark.parametrize("page", PAGES, **_IDS)
def test_the_settings_of_every_run_command_resolve(page, monkeypatch, capsys, tmp_path):
    """The ``--config``/``--set`` of a page's ``cellsynth run`` resolve (types and ranges), as
    ``cellsynth config show`` with the same arguments checks them (the presets' paths are from
    the repository root, as the pages say; a user's own config, ``mine.toml``, is empty)."""
    monkeypatch.chdir(ROOT)
    (tmp_path / "mine.toml").write_text("")
    for line in _commands(page):
        argv = shlex.split(line)[1:]
        if argv[0] != "run":
            continue
        args, skip = [], False
        for word in argv[1:]:  # config show takes run's settings arguments, not --out/--force
            if skip:
                skip = False
            elif word in ("--out", "--force"):
                skip = True
            elif word != "--quiet":
                args.append(word if word != "mine.toml" else str(tmp_path / word))
        assert main(["config", "show", *args]) == 0, (
            f"{page.name}: `{line}`: {capsys.readouterr().err}")


def _call_keywords(text: str):
    """``(name, keywords)`` of every ``cs.NAME(...)`` call written on a page."""
    for match in re.finditer(r"\bcs\.((?:\w+\.)*\w+)\(([^()`]*)\)", text):
        yield match.group(0), match.group(1), re.findall(r"(?<![=\w])(\w+)\s*=(?!=)",
                                                         match.group(2))


@pytest.mark.parametrize("page", PAGES, **_IDS)
def test_every_python_name_and_keyword_a_page_calls_exists(page):
    """``cs.evaluate(..., heldout=, donor_key=)``, ``cs.CVAE.load(..., device=)``: the name is
    in the API and takes those keywords."""
    for call, name, keywords in _call_keywords(page.read_text()):
        obj = cs
        for part in name.split("."):
            obj = getattr(obj, part)
        params = inspect.signature(obj).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        for keyword in keywords:
            assert keyword in params, f"{page.name}: `{call}`: {name} takes no {keyword}="


def test_the_validation_share_of_fit_is_the_one_the_docs_and_help_state(tmp_path, capsys):
    """usage.md said ``cellsynth fit`` learns from every cell it is given, and ``fit --help``
    that it fits on every labelled cell: each generator holds a random 10% of each type out as
    validation cells (``nb`` then fits on the other 90% alone). Both now say so, with the share
    the code uses."""
    import anndata as ad
    import numpy as np

    from cellsynth.models.base import split_masks

    share = inspect.signature(split_masks).parameters["val_fraction"].default
    said = f"{round(share * 100)}% of\neach type are its validation cells"
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert said in usage and f"{round((1 - share) * 100)}% alone" in usage
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert f"a random {round(share * 100)}%\nof each type" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, (100, 30)).astype(np.float32))
    adata.obs["cell_type"] = np.repeat(["a", "b"], 50)
    history = cs.NegBinBaseline().fit(adata, "cell_type", seed=0)
    assert history["n_cells"] == round(100 * (1 - share))


def _resolve(path: str):
    """The object a dotted ``cellsynth....`` path names (module, then attributes)."""
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    for part in parts[i:]:
        obj = getattr(obj, part)
    return obj


def test_every_api_page_entry_names_a_documented_object():
    """api.md's ``autofunction``/``autoclass`` entries (and their ``:members:``) are generated
    from the code when the site is built: a renamed function or method would leave a hole in
    the page with only a Sphinx warning. Each must exist with a docstring, and every plot of
    ``cs.pl.__all__`` is on the page."""
    text = (ROOT / "docs" / "api.md").read_text()
    entries = re.findall(r"\.\. auto\w+:: (\S+)((?:\n   :\S+:.*)*)", text)
    assert entries
    for path, options in entries:
        obj = _resolve(path)
        assert obj.__doc__, f"api.md: {path} has no docstring"
        members = re.search(r":members: (.*)", options)
        for name in (members.group(1).split(",") if members else []):
            member = getattr(obj, name.strip(), None)
            assert member is not None and member.__doc__, f"api.md: {path}.{name.strip()}"
    documented = {path for path, _ in entries}
    assert {f"cellsynth.pl.{name}" for name in cs.pl.__all__} <= documented


def test_the_package_docstring_evaluates_against_cells_the_model_never_saw(monkeypatch):
    """``help(cellsynth)``'s example trained the CVAE on the whole atlas and then evaluated its
    cells against that same atlas: the training cells, where a generator that copies them
    looks perfect (and in memory ``evaluate`` cannot tell). It now holds cells out, as the
    README does, and evaluates against those; run here with small sizes."""
    example = re.search(r"Example::\n\n(.*?)\n\n", cs.__doc__, flags=re.S).group(1)
    code = (inspect.cleandoc(example).replace("3000, 2000, 8", "300, 100, 3")
            .replace("model.train(seed=0)",
                     "model.train(seed=0, max_epochs=1, n_hidden=[16], select='elbo')")
            .replace("500", "20").replace("200}", "20}"))
    seen = {}
    trained = cs.CVAE.train

    def train(self, *args, **kwargs):
        seen["trained"] = set(self.adata.obs_names)
        return trained(self, *args, **kwargs)

    monkeypatch.setattr(cs.CVAE, "train", train)
    monkeypatch.setattr(cs, "evaluate", lambda real, *a, **k: seen.setdefault("real", real))
    monkeypatch.setattr(cs.pl, "fidelity", lambda result: None)
    exec(code, {})  # the documented example itself
    real = set(seen["real"].obs_names)
    assert real and seen["trained"] and not real & seen["trained"]


def test_a_model_saved_in_python_under_an_h5ad_name_is_refused_as_fit_refuses_it(tmp_path):
    """``cellsynth fit --out cells.h5ad`` is refused (a model is a folder), but
    ``model.save("cells.h5ad")`` made a folder of that name, which ``cs.read`` and every tool
    then took for a damaged h5ad file; ``save`` now refuses it the same way, before writing."""
    import anndata as ad
    import numpy as np

    from cellsynth.errors import ModelFileError

    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, (60, 20)).astype(np.float32))
    adata.obs["cell_type"] = np.repeat(["a", "b"], 30)
    model = cs.NegBinBaseline()
    model.fit(adata, "cell_type", seed=0)
    with pytest.raises(ModelFileError, match=r"named like an \.h5ad file.*give one such as"):
        model.save(tmp_path / "cells.H5AD")
    assert not (tmp_path / "cells.H5AD").exists()
    model.save(tmp_path / "cells")  # a folder's name: saved as before
    assert cs.load_model(tmp_path / "cells").labels == ["a", "b"]


def test_the_pages_name_every_file_evaluate_writes():
    """report.md said ``cellsynth evaluate --out DIR`` writes ``fidelity.json`` and
    ``fidelity.md``, leaving out ``per_type.csv``, the table a reader opens in a spreadsheet;
    each page that lists what ``evaluate`` writes now names every file it writes."""
    from cellsynth.evaluation import EVALUATION_FILES

    for name, folder in (("report", "DIR/"), ("getting-started", "eval/"), ("api", "")):
        text = (ROOT / "docs" / f"{name}.md").read_text()
        named = [f for f in EVALUATION_FILES if f"`{folder}{f}`" in text]
        assert named == list(EVALUATION_FILES), f"{name}.md names {named} of {EVALUATION_FILES}"
