"""Coarse-group mappings misused: malformed files refused with one-line errors, mappings that
miss the data's types refused or warned about, resume keyed on the groups file's content, and
``dataset.groups`` a dependency of the stages that read it only."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cellsynth import config
from cellsynth.data.groups import check_groups, load_groups, merges_types
from cellsynth.errors import ConfigError, DataError, listed

TYPES = ["B cells", "CD4 T cells", "CD8 T cells", "CD14+ Monocytes", "FCGR3A+ Monocytes"]


def _file(tmp_path, name, content):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


# ---------------------------------------------------------------- reading a file (2, 4, 6)

def test_a_type_given_two_groups_is_refused_tsv_and_json(tmp_path):
    tsv = _file(tmp_path, "dup.tsv", "B cells\tLymphoid\nCD4 T cells\tLymphoid\nCD4 T cells\tMyeloid\n")
    with pytest.raises(DataError, match=r"'CD4 T cells' is given two coarse groups, 'Lymphoid' "
                                        r"\(line 2\) and 'Myeloid' \(line 3\)"):
        load_groups(tsv)
    js = _file(tmp_path, "dup.json", '{"CD4 T cells": "Lymphoid", "B cells": "Lymphoid", '
                                     '"CD4 T cells": "Myeloid"}')
    with pytest.raises(DataError, match=r"'CD4 T cells' is given two coarse groups, 'Lymphoid'.*'Myeloid'"):
        load_groups(js)
    # the same pair twice is harmless
    same = _file(tmp_path, "same.tsv", "B cells\tLymphoid\nB cells\tLymphoid\n")
    assert load_groups(same) == {"B cells": "Lymphoid"}


def test_not_utf8_is_one_error_and_a_bom_is_stripped(tmp_path):
    latin1 = _file(tmp_path, "latin1.tsv", b"B cells\tLymphoid\nCD4 T cells na\xefve\tLymphoid\n")
    with pytest.raises(DataError, match=r"latin1.tsv is not UTF-8 text \(byte 0xef.*save it as UTF-8"):
        load_groups(latin1)
    bom = _file(tmp_path, "bom.tsv", b"\xef\xbb\xbffine\tcoarse\r\nB cells\tLymphoid\r\n")
    assert load_groups(bom) == {"B cells": "Lymphoid"}  # header recognised: the BOM is gone
    bom_json = _file(tmp_path, "bom.json", b'\xef\xbb\xbf{"B cells": "Lymphoid"}')
    assert load_groups(bom_json) == {"B cells": "Lymphoid"}


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("blank.tsv", "fine\tcoarse\nB cells\tLymphoid\nCD4 T cells\t\n",
     "line 3 has a blank coarse group of 'CD4 T cells'"),
    ("blank.json", '{"B cells": " "}', "entry 1 has a blank coarse group of 'B cells'"),
    ("blankfine.tsv", "\tLymphoid\n", "line 1 has a blank cell type"),
    ("empty.tsv", "", "holds no mapping"),
    ("header.tsv", "fine\tcoarse\n\n", "holds no mapping"),
    ("empty.json", "{}", "holds no mapping"),
    ("comma.csv", "B cells,Lymphoid\n", "comma-separated"),
])
def test_degenerate_files_are_refused(tmp_path, name, content, fragment):
    with pytest.raises(DataError, match=fragment):
        load_groups(_file(tmp_path, name, content))


def test_a_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"looked for {tmp_path / 'nope.tsv'}"):
        load_groups("nope.tsv")


def test_a_coarse_first_header_is_read_as_such(tmp_path):
    path = _file(tmp_path, "swapped.tsv", "coarse\tfine\nLymphoid\tB cells\nMyeloid\tCD14+ Monocytes\n")
    assert load_groups(path) == {"B cells": "Lymphoid", "CD14+ Monocytes": "Myeloid"}


# ---------------------------------------------------------------- against the data's types (3, 6)

def test_a_mapping_naming_no_type_is_refused_showing_both_sides():
    with pytest.raises(DataError) as exc:
        check_groups({"NK cells": "Lymphoid", "Dendritic": "Myeloid"}, TYPES, "g.tsv")
    msg = str(exc.value)
    assert "names none of the data's cell types" in msg and "fine type<TAB>coarse group" in msg
    assert "'NK cells'" in msg and "'B cells'" in msg and "\n" not in msg


def test_swapped_columns_are_detected():
    with pytest.raises(DataError, match="columns look swapped"):
        check_groups({"Lymphoid": "B cells", "Myeloid": "CD14+ Monocytes"}, TYPES, "g.tsv")


def test_unused_entries_are_listed_with_near_misses(caplog):
    groups = {"b cells": "Lymphoid", "CD8 T cells": "Lymphoid", "FCGR3A+  Monocytes": "Myeloid",
              "NK cells": "Lymphoid"}
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        used = check_groups(groups, TYPES, "g.tsv")
    assert used == {"CD8 T cells": "Lymphoid"}
    assert "3 of 4 entries name no cell type" in caplog.text
    assert "'b cells' (did you mean 'B cells'?)" in caplog.text
    assert "'FCGR3A+  Monocytes' (did you mean 'FCGR3A+ Monocytes'?)" in caplog.text
    assert "'NK cells'," not in caplog.text and "'NK cells'" in caplog.text  # no suggestion


def test_a_single_group_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        check_groups(dict.fromkeys(TYPES, "All"), TYPES, "one.tsv")
    assert "into the one group 'All'" in caplog.text and "say nothing" in caplog.text


def test_one_rule_for_whether_the_coarse_level_differs(tmp_path):
    from cellsynth.report import html, results

    assert not merges_types({"B cells": "B cells", "CD4 T cells": "CD4 T cells"})
    assert not merges_types({}) and merges_types({"a": "X", "b": "X"})
    assert not hasattr(html, "_has_groups")  # the report's own copy is gone
    row = {"precision_macro": 1.0, "recall_macro": 1.0, "f1_macro": 1.0, "precision_micro": 1.0,
           "recall_micro": 1.0, "f1_micro": 1.0, "accuracy": 1.0, "n": 10}
    res = {k: {"fine": row, "coarse": row} for k in "abc"}
    report = SimpleNamespace(cells_per_type_after={"a": 5, "b": 5}, dropped_types=[])
    identity = {"a": "a", "b": "b"}  # a mapping, but one that merges nothing
    path = results.write_results(tmp_path, res, report, config.load(), {}, groups=identity)
    text = path.read_text()
    assert "counts as correct" not in text and "merges any types" in text
    text = results.write_results(tmp_path, res, report, config.load(), {},
                                 groups={"a": "X", "b": "X"}).read_text()
    assert "counts as correct" in text


# ---------------------------------------------------------------- config file folder (5)

def test_a_relative_groups_file_is_looked_for_beside_the_config(tmp_path, monkeypatch):
    from cellsynth.config_sources import resolve

    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "g.tsv").write_text("B cells\tLymphoid\n")
    (folder / "run.toml").write_text('[dataset]\ngroups = "g.tsv"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg, _ = resolve(data="x.h5ad", config_path=folder / "run.toml")
    assert cfg.dataset.groups == str(folder / "g.tsv")
    (folder / "run.toml").write_text('[dataset]\ngroups = "gone.tsv"\n')
    with pytest.raises(ConfigError, match=f"nor beside the config file \\({folder / 'gone.tsv'}\\)"):
        resolve(data="x.h5ad", config_path=folder / "run.toml")
    (folder / "run.toml").write_text('[dataset]\ngroups = "auto"\n')  # not a file: kept
    assert resolve(data="x.h5ad", config_path=folder / "run.toml")[0].dataset.groups == "auto"


# ---------------------------------------------------------------- truncated lists (7)

def test_shortened_lists_say_how_many_were_left_out():
    assert listed(["a", "b"]) == "a, b"
    assert listed([f"t{i}" for i in range(8)], 3) == "t0, t1, t2 and 5 more"


def test_single_cell_types_error_counts_them():
    from cellsynth.data.qc import filter_cells

    labels = [f"rare{i}" for i in range(7)] + ["common"] * 20
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))])
    cfg = config.load()
    with pytest.raises(DataError, match=r"7 cell type\(s\) have a single cell \('rare0', .* and 2 more\)"):
        filter_cells(obs, pd.Index(["g1", "g2"]), cfg.dataset, cfg.qc, cfg.split, groups=None,
                     seed=0, n_genes_cell=np.full(len(labels), 500), mito=lambda: np.zeros(len(labels)),
                     detected=lambda rows: np.full(2, len(rows)))


# ---------------------------------------------------------------- resume (1)

def _plan(tmp_path, groups, inputs=None):
    from cellsynth.resume import ResumePlan
    from cellsynth.runtime import Manifest

    cfg = config.load(overrides=[f"dataset.groups={json.dumps(groups)}"])
    return ResumePlan(Manifest(tmp_path / "manifest.json"), cfg, set(), inputs=inputs).hashes


def test_groups_are_a_dependency_of_the_classifier_stage_on_only(tmp_path):
    none, packaged = _plan(tmp_path, ""), _plan(tmp_path, "e-annd-5")
    for stage in ("data", "features", "generator"):  # QC, PCA and generator training kept
        assert none[stage] == packaged[stage], stage
    for stage in ("classifier", "experiments", "explain", "evaluation"):
        assert none[stage] != packaged[stage], stage


def test_the_groups_files_content_is_among_the_run_inputs(tmp_path):
    from cellsynth.pipeline.context import RunContext

    g = tmp_path / "g.tsv"
    g.write_text("B cells\tLymphoid\n")
    cfg = config.load(overrides=[f"dataset.groups={json.dumps(str(g))}"])

    def hashes():
        ctx = RunContext(cfg, tmp_path / "run")
        try:
            return ctx.plan.inputs["classifier"]["sha256"], ctx.plan.hashes
        finally:
            ctx.close()

    before, h1 = hashes()
    g.write_text("B cells\tMyeloid\n")  # edited in place: same path
    after, h2 = hashes()
    assert before != after
    assert h1["classifier"] != h2["classifier"] and h1["data"] == h2["data"]


TINY_GROUPS = "".join(f"type_0{i}\t{'AB'[i % 2]}\n" for i in range(8))


@pytest.mark.slow
def test_an_edited_groups_file_reruns_the_scoring_not_the_data_or_generator(tmp_path, caplog):
    from cellsynth.cli import main
    from test_resume import _args, _stages

    g, out = tmp_path / "g.tsv", tmp_path / "run"
    g.write_text(TINY_GROUPS)
    assert main(_args(out, f"dataset.groups={json.dumps(str(g))}")) == 0
    first = _stages(out)
    g.write_text(TINY_GROUPS.replace("\tB\n", "\tA\n", 1))  # one type moves group, in place
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert main(_args(out, f"dataset.groups={json.dumps(str(g))}")) == 0
    now = _stages(out)
    for stage in ("data", "features", "generator"):
        assert now[stage] == first[stage], stage
    assert now["classifier"]["input"]["sha256"] != first["classifier"]["input"]["sha256"]
    assert "stage classifier: the input file changed" in caplog.text
    assert json.loads((out / "data" / "groups.json").read_text())["type_00"] == "A"
    # the data's own mapping (the demo atlas's uns), named as the source
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert main(_args(out, "dataset.groups=''")) == 0
    assert 'coarse groups from the data\'s uns["celltype_groups"]' in caplog.text
    assert _stages(out)["generator"] == first["generator"]


def test_other_shortened_lists_count_what_they_leave_out(tmp_path):
    from cellsynth.errors import CellsynthError
    from cellsynth.outputs import check_out

    for i in range(7):
        (tmp_path / f"f{i}.txt").write_text("")
    with pytest.raises(CellsynthError, match=r"holds f0.txt, .* and 2 more\)"):
        check_out(tmp_path, config.load())
