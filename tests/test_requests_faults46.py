"""Generation requests misused (session 46's sweep): levels that hold commas on the command
line, request tables written with an index column or spaced headers, and a request table given
as ``--like``."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from cellsynth.cli import main
from cellsynth.errors import DataError
from test_covariates import _design_atlas

STIM = "IFN-b, 10=ng"  # a level holding ',' and '='


@pytest.fixture(scope="module")
def comma_model(tmp_path_factory):
    """An nb model (fast: fitted by moments) on a condition whose stim level holds ',' and
    '=', saved; and its atlas's path."""
    from cellsynth.models import NegBinBaseline

    a = _design_atlas(seed=2)
    a.obs["condition"] = pd.Categorical(a.obs["condition"].astype(str).replace({"stim": STIM}))
    folder = tmp_path_factory.mktemp("requests46")
    a.write_h5ad(folder / "atlas.h5ad")
    model = NegBinBaseline(covariate_keys=["condition", "donor"])
    model.fit(a, "cell_type")
    model.save(folder / "model")
    return folder / "model", folder / "atlas.h5ad"


def _generated(path) -> pd.DataFrame:
    import anndata as ad

    return ad.read_h5ad(path).obs


def test_where_reads_a_level_holding_a_comma_whole(comma_model, tmp_path, capsys):
    """``--where 'condition=IFN-b, 10=ng'`` was split at the comma: 'IFN-b' was called unknown
    beside a list of levels that read "IFN-b, 10=ng, ctrl"."""
    from cellsynth.pipeline.generate import parse_where

    model, _ = comma_model
    levels = {"condition": [STIM, "ctrl"], "donor": ["d1", "d2"]}
    assert parse_where(f"condition={STIM},donor=d1", levels) == {"condition": STIM,
                                                                 "donor": "d1"}
    assert parse_where("condition=ctrl, donor=d2", levels) == {"condition": "ctrl",
                                                               "donor": "d2"}
    out = tmp_path / "stim.h5ad"
    assert main(["generate", str(model), "--types", "type_01=6", "--where",
                 f"condition={STIM}", "--out", str(out), "--quiet"]) == 0
    assert (_generated(out)["condition"] == STIM).all()
    assert main(["generate", str(model), "--types", "type_01=6", "--where", "condition=IFN-b",
                 "--out", str(out), "--quiet"]) == 2
    assert f"seen: {STIM}; ctrl" in capsys.readouterr().err  # where one level ends


def test_a_request_written_with_its_index_or_spaced_headers(comma_model, tmp_path):
    """A table saved by ``to_csv`` with its index (a first column without a name) was read as
    asking for a covariate '' ("refit with --covariates ;"), read back by pandas as one named
    'Unnamed: 0'; a header "n " was not the column n."""
    from cellsynth.models.registry import load_generator
    from cellsynth.pipeline.generate import read_request

    model, _ = comma_model
    table = pd.DataFrame({"cell_type": ["type_01", "type_02"], "condition": ["ctrl", STIM],
                          "n": [5, 3]})
    for name, sep in (("idx.csv", ","), ("idx.tsv", "\t")):
        table.to_csv(tmp_path / name, sep=sep)
        with pytest.raises(DataError, match=r"column 1 of the header \(line 1\) has no name.*"
                                            r"to_csv\(\.\.\., index=False\)"):
            read_request(tmp_path / name, "cell_type")
    (tmp_path / "tail.tsv").write_text("cell_type\tn\t\ntype_01\t5\t\n")
    with pytest.raises(DataError, match="column 3 of the header"):
        read_request(tmp_path / "tail.tsv", "cell_type")
    (tmp_path / "spaced.tsv").write_text("cell_type \tcondition\t n\ntype_01\tctrl\t5\n")
    assert list(read_request(tmp_path / "spaced.tsv", "cell_type").columns) == [
        "cell_type", "condition", "n"]
    gen = load_generator(model)
    with pytest.raises(DataError, match=r"column without a name \('Unnamed: 0'\).*index_col=0"):
        gen.plan(pd.read_csv(tmp_path / "idx.csv"))
    with pytest.raises(DataError, match=r"its index is 'cell_type': request.reset_index\(\)"):
        gen.plan(table.set_index("cell_type"))
    plan, _ = gen.plan(pd.read_csv(tmp_path / "idx.csv", index_col=0))
    assert sum(n for _, _, n in plan) == 8


def test_like_given_a_request_table_or_a_file_without_cells(comma_model, tmp_path, capsys):
    """A request table given as ``--like`` was to be converted to an h5ad with
    ``sc.read_10x_mtx`` (its BOM hid that it is text); an h5ad without cells was "not data of
    the same design"."""
    import anndata as ad

    model, atlas = comma_model
    out = tmp_path / "twin.h5ad"
    table = tmp_path / "request.tsv"
    table.write_bytes(b"\xef\xbb\xbfcell_type\tcondition\tn\r\ntype_01\tctrl\t5\r\n")
    empty = tmp_path / "empty.h5ad"
    ad.read_h5ad(atlas)[:0].copy().write_h5ad(empty)
    text = tmp_path / "table.csv"
    text.write_bytes(b"\xef\xbb\xbfgene,c1\nA,1\n")
    for given, said in ((table, f"is a request table .* give it as --request {table}"),
                        (empty, "has no cells: --like asks for"),
                        (text, r"is a text file \(a CSV or TSV table\?\)")):
        assert main(["generate", str(model), "--like", str(given), "--out", str(out),
                     "--quiet"]) == 2
        assert re.search(said, capsys.readouterr().err), given
    assert main(["generate", str(model), "--request", str(table), "--out", str(out),
                 "--quiet"]) == 0


@pytest.fixture(scope="module")
def tiny_cvae(one_torch_thread):
    """A CVAE with covariates trained for one epoch (fast: its cells are not judged here)."""
    from cellsynth.models import CVAE

    a = _design_atlas(seed=3)[:500].copy()
    model = CVAE(a, label_key="cell_type", covariate_keys=["condition", "donor"])
    model.train(max_epochs=1, batch_size=128, n_hidden=[16], n_latent=4, select="elbo",
                min_steps=0, device="cpu", seed=0)
    return model


def test_sample_chunks_checks_its_request_when_called(tiny_cvae):
    """``sample_chunks`` was a generator function: a level never seen, a bad seed or latent
    raised only when the first chunk was asked for (after the caller had opened its file)."""
    for kwargs in ({"where": {"condition": "stimm"}}, {"seed": -1}, {"latent": "gauss"}):
        with pytest.raises(DataError):
            tiny_cvae.sample_chunks({"type_01": 3}, **kwargs)  # not iterated
    chunks = list(tiny_cvae.sample_chunks({"type_01": 3}, where={"condition": "stim"}, seed=4))
    held = tiny_cvae.sample({"type_01": 3}, where={"condition": "stim"}, seed=4)
    assert {label for label, _ in chunks} == {"type_01"}
    streamed = np.vstack([x.toarray() for _, x in chunks])
    assert (streamed == held.X.toarray()).all()  # the same cells, held or streamed


def test_a_spreadsheet_s_empty_rows_are_blank_lines(tmp_path):
    """Blank lines were skipped, but not a line of spaces ("1 fields where the header has 3")
    nor a spreadsheet's empty row of separators ("n must be a whole number, got ''")."""
    from cellsynth.pipeline.generate import read_request

    for name, text in (("spaces.tsv", "cell_type\tcondition\tn\ntype_01\tstim\t3\n   \n"),
                       ("tabs.tsv", "\t\t\ncell_type\tcondition\tn\r\n\t\t\r\ntype_01\tstim\t3\r\n"
                                    "\t\t\r\n"),
                       ("commas.csv", "cell_type,condition,n\n,,\ntype_01,stim,3\n , ,\n")):
        (tmp_path / name).write_text(text, newline="")
        table = read_request(tmp_path / name, "cell_type")
        assert table.to_dict("list") == {"cell_type": ["type_01"], "condition": ["stim"],
                                         "n": [3]}, name
    (tmp_path / "blank.tsv").write_text("\t\t\n  \n")
    with pytest.raises(DataError, match="is empty"):
        read_request(tmp_path / "blank.tsv", "cell_type")


def test_a_request_the_disk_cannot_hold_does_not_say_it_replaces_the_file(tiny_cvae, tmp_path,
                                                                          caplog):
    """``generate`` logged "replacing OUT, an h5ad of cells written earlier" and then refused
    the request for the disk space, leaving OUT as it was."""
    import logging

    model = tmp_path / "m"
    tiny_cvae.save(model)
    out = tmp_path / "cells.h5ad"
    assert main(["generate", str(model), "--types", "type_01=5", "--out", str(out),
                 "--quiet"]) == 0
    before = out.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert main(["generate", str(model), "--types", f"type_01={10**12}", "--out",
                     str(out)]) == 2
    assert out.read_bytes() == before
    assert "replacing" not in caplog.text


def test_a_label_column_called_n_is_refused_with_covariates(tmp_path):
    """A model with covariates fitted on a label column called 'n' took no request table (its
    types and counts share the column 'n'), and ``--like`` ended in pandas' traceback "cannot
    insert n, already exists"."""
    from cellsynth.models import NegBinBaseline
    from cellsynth.pipeline.generate import like_request

    a = _design_atlas(seed=4)[:300].copy()
    a.obs["n"] = a.obs["cell_type"]
    with pytest.raises(DataError, match=r"label column cannot be called 'n'.*--label-key"):
        NegBinBaseline(covariate_keys=["condition"]).fit(a, "n")
    NegBinBaseline().fit(a, "n")  # without covariates a request is {type: n}: allowed
    a.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(DataError, match="label column is called 'n'"):
        like_request(tmp_path / "a.h5ad", "n", ["condition"])  # a model saved before


def test_a_twin_sums_the_cells_whose_names_read_alike(comma_model, tmp_path):
    """``--like`` a file whose types or levels are written two ways ('type_01 ' and 'type_01',
    16 and '16.0') was refused as "request rows 1 and 11 both ask for ...; give each combination
    once", a table the user never wrote: its cells are counted under the model's names."""
    import anndata as ad

    model, atlas = comma_model
    a = ad.read_h5ad(atlas)[:200].copy()
    want = a.obs[["cell_type", "condition", "donor"]].astype(str).value_counts()
    spaced = a.obs["cell_type"].astype(str).to_numpy(dtype=object)
    spaced[::3] = [f"{t} " for t in spaced[::3]]
    a.obs["cell_type"] = spaced
    donor = a.obs["donor"].astype(str).to_numpy(dtype=object)
    donor[::4] = [f" {d}" for d in donor[::4]]
    a.obs["donor"] = donor
    a.write_h5ad(tmp_path / "spaced.h5ad")
    out = tmp_path / "twin.h5ad"
    assert main(["generate", str(model), "--like", str(tmp_path / "spaced.h5ad"), "--out",
                 str(out), "--quiet"]) == 0
    got = _generated(out)[["cell_type", "condition", "donor"]].astype(str).value_counts()
    assert got.sort_index().equals(want.sort_index())


def test_a_table_row_as_a_dict_and_counts_as_text_are_named(tiny_cvae):
    """``sample({"cell_type": "type_01", "n": 2})`` was "unknown cell type 'cell_type'", and a
    count read as text ("2") was refused as "n must be a positive integer, got '2'"."""
    with pytest.raises(DataError, match=r"reads as one row of a request table.*"
                                        r"pd\.DataFrame\(\[row\]\).*\{'type_01': 2\}"):
        tiny_cvae.sample({"cell_type": "type_01", "condition": "stim", "n": 2})
    table = pd.DataFrame({"cell_type": ["type_01"], "n": ["2"]})  # read with dtype=str
    with pytest.raises(DataError, match=r"got '2', text: counts are numbers \(request\['n'\] = "
                                        r"pd\.to_numeric\(request\['n'\]\)\)"):
        tiny_cvae.sample(table)
    with pytest.raises(DataError, match=r"got '2', text: counts are numbers"):
        tiny_cvae.sample({"type_01": "2"})
    assert tiny_cvae.sample(table.assign(n=pd.to_numeric(table["n"]))).n_obs == 2


def test_a_run_s_cells_per_type_are_checked_with_the_config():
    """``generator.n_per_type_eval = 1e13`` passed the config's check ("[1, inf)") and was
    refused by the request's only after the data, classifier and generator stages had run."""
    from cellsynth import config
    from cellsynth.errors import ConfigError

    for key in ("n_per_type_eval", "n_per_type_train", "n_per_type_val"):
        with pytest.raises(ConfigError, match=rf"generator\.{key} must be in \[1, 1000000000000\]"):
            config.load(None, [f"generator.{key}={10**13}"])
        assert getattr(config.load(None, [f"generator.{key}={10**12}"]).generator, key) == 10**12


def test_a_run_refuses_missing_covariate_levels_before_the_classifier(tmp_path, capsys):
    """A run conditioning on a covariate with missing values trained the classifier first and
    was refused by the generator stage (the data's fix then reruns every stage)."""
    import json

    import numpy as np

    a = _design_atlas(seed=5)[:600].copy()
    cond = a.obs["condition"].astype(object)
    cond.iloc[::40] = np.nan
    a.obs["condition"] = cond
    a.write_h5ad(tmp_path / "a.h5ad")
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "a.h5ad"), "--label-key", "cell_type", "--out", str(run),
                 "--quiet", "--set", "generator.model=nb", "--set", "nb.covariates=['condition']",
                 "--set", "qc.min_genes_per_cell=5"]) == 2
    assert "covariate 'condition' is missing for" in capsys.readouterr().err
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert set(stages) == {"data"} and not (run / "classifier").exists()


def test_a_request_of_thousands_of_combinations_is_planned_in_seconds():
    """A twin (``--like``) of an atlas with 100 donors, 3 conditions and 15 types is a table of
    4,500 rows; each row rebuilt the list of every training combination, so planning grew with
    the square of the rows (3,000 rows: 28 s; an atlas of 13,500: minutes)."""
    import time

    import numpy as np

    from cellsynth.models._design import Design

    rng = np.random.default_rng(0)
    n, types = 60_000, [f"t{i}" for i in range(15)]
    obs = pd.DataFrame({"cell_type": rng.choice(types, n),
                        "donor": rng.choice([f"d{i}" for i in range(100)], n),
                        "condition": rng.choice(["a", "b", "c"], n)})
    design, _ = Design.fit(obs, ["donor", "condition"], "cell_type",
                           obs["cell_type"].to_numpy(), np.arange(n), np.arange(n))
    table = obs.value_counts().reset_index(name="n")
    table.loc[0, "donor"] = "*"  # a row left to the composition
    start = time.perf_counter()
    plan, unseen = design.plan(table, None, types, "cell_type")
    assert time.perf_counter() - start < 10  # 4,500 rows; was 45 s
    assert sum(k for _, _, k in plan) == n and unseen == []


def test_where_takes_a_level_as_numpy_writes_one(tiny_cvae):
    """``where={"condition": np.array("stim")}`` (``np.asarray`` of one value) ended in
    ``TypeError: len() of unsized object``; a list of one level said it "was given 1"."""
    import numpy as np

    syn = tiny_cvae.sample({"type_01": 2}, where={"condition": np.array("stim")})
    assert list(syn.obs["condition"]) == ["stim", "stim"]
    for one in (["stim"], np.array(["stim"]), {"stim"}):
        with pytest.raises(DataError, match=r"one level per covariate, itself: 'condition' was "
                                            r"given a \w+ of it; give where=\{'condition': "
                                            r"'stim'\}"):
            tiny_cvae.sample({"type_01": 2}, where={"condition": one})


def test_a_table_cell_holding_several_levels_is_named_as_a_table_s(tiny_cvae):
    """A request table's cell holding a list of levels was refused as where=: "where= takes one
    level per covariate", of a request that had no where=."""
    table = pd.DataFrame({"cell_type": ["type_01"], "condition": [["stim", "ctrl"]], "n": [2]})
    with pytest.raises(DataError, match=r"request row 1 \(type_01\): one level a cell, but "
                                        r"'condition' holds \['stim', 'ctrl'\]; give one row"):
        tiny_cvae.sample(table)
