"""Coarse groups and labels misused (sweep 49): a group named as a type the mapping puts in
another group, the data's own mapping as an h5ad reads it back (a '/' in a type, other forms),
True/False label columns in every form, types with surrounding spaces mapped by a file, types
that read like numbers in the report's tables, and groups files of three columns."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from cellsynth.data.groups import check_groups, load_groups
from cellsynth.errors import DataError
from cellsynth.metrics.classification import coarse_report, to_coarse

TYPES = ["B cells", "CD4 T cells", "CD8 T cells", "Monocytes"]


# ------------------------------------------------- a group named as another group's type

def test_a_group_named_as_a_type_of_another_group_is_refused(tmp_path):
    chained = {"CD8 T cells": "CD4 T cells", "CD4 T cells": "Lymphoid"}  # read as a chain
    path = tmp_path / "chain.tsv"
    path.write_text("".join(f"{k}\t{v}\n" for k, v in chained.items()))
    fragment = (r"the coarse group 'CD4 T cells' of 'CD8 T cells' is also a cell type, which "
                r"it puts in the group 'Lymphoid'.*map 'CD8 T cells' to 'Lymphoid'")
    with pytest.raises(DataError, match=fragment):
        load_groups(str(path))
    with pytest.raises(DataError, match=fragment):  # the data's own uns mapping
        check_groups(chained, TYPES, "the data's uns")
    with pytest.raises(DataError, match=fragment):  # the Python metrics
        to_coarse(TYPES, chained)
    with pytest.raises(DataError, match=fragment):
        coarse_report(TYPES, TYPES, chained)


def test_a_type_named_as_a_group_joins_it_and_is_said_to(caplog):
    groups = {"CD4 T cells": "B cells", "CD8 T cells": "CD8 T cells"}  # a type as its own group
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        assert check_groups(groups, TYPES, "g.tsv") == groups
    assert to_coarse(TYPES, groups).tolist() == ["B cells", "B cells", "CD8 T cells", "Monocytes"]
    assert "'B cells' (with 'CD4 T cells')" in caplog.text
    assert "stand as their own: Monocytes" in caplog.text  # B cells does not stand alone


# ------------------------------------------------- the data's own mapping, as an h5ad holds it

def test_the_datas_own_mapping_keeps_a_type_with_a_slash(tmp_path, caplog):
    import anndata as ad

    from cellsynth.pipeline.data import data_groups

    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["celltype_groups"] = {"B/plasma": "Lymphoid", "T: CD4": "Lymphoid",
                                    "Mono": "Myeloid"}
    path = tmp_path / "slash.h5ad"
    with warnings.catch_warnings():  # anndata: '/' in an h5 key, an untyped group read
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
    assert back.uns["celltype_groups"]["B"] == {"plasma": "Lymphoid"}  # how h5py reads it
    assert data_groups(back) == {"B/plasma": "Lymphoid", "T: CD4": "Lymphoid",
                                 "Mono": "Myeloid"}


@pytest.mark.parametrize("value", [{"Lymphoid": ["B cells", "CD4 T cells"]}, {"B cells": None},
                                   pd.DataFrame({"fine": ["B cells"], "coarse": ["Lymphoid"]})])
def test_the_datas_own_mapping_of_another_form_is_said_not_used(value, caplog):
    import anndata as ad

    from cellsynth.pipeline.data import data_groups

    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["celltype_groups"] = value
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert data_groups(adata) == {}
    assert 'uns["celltype_groups"]' in caplog.text and "is not used" in caplog.text
    assert "dataset.groups to a TSV file" in caplog.text
    adata.uns["celltype_groups"] = {"B cells": np.int64(3), "Mono": "Myeloid"}  # numbered
    assert data_groups(adata) == {"B cells": "3", "Mono": "Myeloid"}


# ------------------------------------------------- a label column of True/False in any form

@pytest.mark.parametrize("values", [
    pd.Categorical([True, False] * 3),  # written so by obs[...].astype("category")
    pd.Categorical([True, False, None] * 2),
    pd.array([True, False, None] * 2, dtype="boolean"),
    np.array([True, False, None] * 2, dtype=object),  # a bool column with missing values
])
def test_a_label_column_of_true_and_false_is_refused_in_every_form(values):
    import anndata as ad

    from cellsynth.data.labels import check_label

    adata = ad.AnnData(np.ones((6, 2), dtype=np.float32))
    adata.obs["flag"] = values
    with pytest.raises(DataError, match=r"label column 'flag' is True/False.*map them to names"):
        check_label(adata, "flag")
    adata.obs["flag"] = pd.Categorical(["True", "False"] * 3)  # names: the user's choice
    check_label(adata, "flag")


# ------------------------------------------------- a type named with surrounding spaces

def test_a_type_with_surrounding_spaces_is_mapped_by_a_file(tmp_path, caplog):
    types = ["B cells ", " CD4 T cells", "Monocytes"]  # as some annotations write them
    path = tmp_path / "g.tsv"
    path.write_text("B cells \tLymphoid\n CD4 T cells\tLymphoid\nMonocytes\tMyeloid\n")
    groups = load_groups(str(path))  # a file's names are read stripped
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        used = check_groups(groups, types, str(path))
    assert used == {"B cells ": "Lymphoid", " CD4 T cells": "Lymphoid", "Monocytes": "Myeloid"}
    assert "name no cell type" not in caplog.text and "stand as their own" not in caplog.text
    assert to_coarse(types, used).tolist() == ["Lymphoid", "Lymphoid", "Myeloid"]


# ------------------------------------------------- types that read like numbers, read back

def test_the_report_reads_types_that_look_like_numbers_as_written(tmp_path):
    from cellsynth.pl._umap import _table
    from cellsynth.report._markup import _Run
    from cellsynth.report.html import _split_counts

    types = ["01", "02", "1.10", "NA"]  # zero-padded clusters; "NA" a type kept (warned)
    (tmp_path / "data").mkdir()
    pd.DataFrame({"cell_type": types, "cellsynth_split": ["train", "train", "val", "test"]},
                 index=pd.Index(["c1", "c2", "c3", "c4"], name="cell")).to_csv(
        tmp_path / "data" / "cells.csv")
    split = _split_counts(_Run(tmp_path))  # was 0 cells in every split of every type
    assert {t for t, _ in split.index} == set(types)
    (tmp_path / "metrics").mkdir()
    pd.DataFrame(np.eye(4), index=types, columns=types).to_csv(
        tmp_path / "metrics" / "a_real_real_fine_confusion.csv")
    conf = _Run(tmp_path).csv("metrics/a_real_real_fine_confusion.csv", text=(0,), index_col=0)
    assert conf.index.tolist() == types and conf.index.name is None
    per_type = tmp_path / "metrics" / "per_type.csv"
    pd.DataFrame({"type": types, "n_real": [1, 2, 3, 4]}).to_csv(per_type, index=False)
    table = _Run(tmp_path).csv("metrics/per_type.csv", text=("type",))
    assert table["type"].tolist() == types and table["n_real"].tolist() == [1, 2, 3, 4]
    umap = tmp_path / "umap.csv"
    pd.DataFrame({"origin": ["real"] * 4, "label": types, "x": 0.0, "y": 0.0}).to_csv(
        umap, index=False)
    assert _table(str(umap), None)["label"].tolist() == types  # was 1, 2, 1.1, NaN


def test_info_does_not_offer_a_true_false_column_as_labels(tmp_path):
    import anndata as ad

    from cellsynth.info import describe

    adata = ad.AnnData(np.ones((6, 2), dtype=np.float32))
    adata.obs["cell_type"] = pd.Categorical(["B", "T"] * 3)
    adata.obs["flag"] = pd.Categorical([True, False] * 3)  # refused by check_label
    adata.write_h5ad(tmp_path / "a.h5ad")
    assert set(describe(tmp_path / "a.h5ad")["label_columns"]) == {"cell_type"}


def test_a_groups_file_of_three_columns_is_warned_about(tmp_path, caplog):
    path = tmp_path / "levels.tsv"  # fine, mid, coarse: the middle column is read
    path.write_text("fine\tcoarse\tlevel1\nCD4 T cells\tT cells\tLymphoid\n"
                    "CD8 T cells\tT cells\tLymphoid\nB cells\tB cells\tLymphoid\n")
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        assert load_groups(str(path))["CD4 T cells"] == "T cells"
    assert "3 line(s) have more than two columns (line 2 first)" in caplog.text
    caplog.clear()
    two = tmp_path / "two.tsv"
    two.write_text("CD4 T cells\tT cells\t\n")  # an empty trailing cell: two columns
    with caplog.at_level(logging.WARNING, logger="cellsynth"):
        load_groups(str(two))
    assert "more than two columns" not in caplog.text
