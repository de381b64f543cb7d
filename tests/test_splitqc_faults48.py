"""QC per cell type and the train/validation/test split (sweep 48): what the QC report says was
removed, the settings a direct call of the data stage is given, and a split column given in
the data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth import config
from cellsynth.config import DatasetConfig, QCConfig, SplitConfig
from cellsynth.data.chunked import preprocess_backed
from cellsynth.data.qc import preprocess
from cellsynth.errors import ConfigError

SETS = ["qc.min_genes_per_cell=10", "qc.min_cells_per_gene=5"]


def _atlas(seed: int = 0) -> ad.AnnData:
    """Three types of Poisson counts (60, 40 and 30 cells), MT- genes among them."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for t, n in enumerate((60, 40, 30)):
        mu = rng.gamma(1.0, 2.0, 120)
        mu[t * 10 : t * 10 + 10] += 20
        blocks.append(rng.poisson(mu, (n, 120)))
        labels += [f"type{t}"] * n
    x = sp.csr_matrix(np.vstack(blocks).astype(np.float32))
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(x.shape[0])])
    var = pd.DataFrame(index=[f"MT-{i}" if i < 3 else f"G{i}" for i in range(120)])
    return ad.AnnData(x, obs=obs, var=var)


# fault 1: the report's cells per type "before QC" were counted after the first steps


def test_the_cells_per_type_before_qc_are_the_inputs_and_add_up_with_the_steps():
    """A type whose every cell a first step removed (doublets, cells without a count) was in
    the report's dropped types but had no row in the "before QC" table of the report, and the
    other types' "before QC" and "removed" left out their doublets: the counts were taken
    after those steps. They are now the input's labelled cells."""
    a = _atlas()
    labels = a.obs["cell_type"].to_numpy().copy()
    labels[100:110] = "empty"  # ten cells of type2 become a type without a count
    a.obs["cell_type"] = labels
    x = a.X.tolil()
    x[100:110] = 0
    a.X = x.tocsr()
    a.obs["predicted_doublets"] = np.arange(a.n_obs) % 10 == 3  # 13 doublets
    cfg = config.load(None, SETS)
    _, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert rep.dropped_types == ["empty"]
    assert rep.cells_per_type_before == {"type0": 60, "type1": 40, "type2": 20, "empty": 10}
    removed = sum(step["cells_removed"] for step in rep.steps)
    assert removed >= 10 + 13
    assert sum(rep.cells_per_type_before.values()) - sum(rep.cells_per_type_after.values()) \
        == removed


# fault 2: the sections a direct call of the data stage is given were not checked


@pytest.mark.parametrize(("sections", "said"), [
    ({"split": SplitConfig(train=0.9, val=0.3, test=-0.2)},  # gave no test cell, unsaid
     "split.test must be in (0, 1), got -0.2; give another value: SplitConfig(test=...)"),
    ({"split": SplitConfig(train=0.7, val=0.0, test=0.3)},  # gave no validation cell
     "split.val must be in (0, 1), got 0.0"),
    ({"split": SplitConfig(train=0.5, val=0.5, test=0.5)},  # "no genes left after ..."
     "split fractions must be positive and sum to 1, got train=0.5, val=0.5, test=0.5 (sum "
     "1.5; the defaults are 0.7, 0.1 and 0.2); give another value: SplitConfig(train=...)"),
    ({"split": SplitConfig(train="0.7")}, 'split.train must be float, got "0.7" (str)'),
    ({"split": SplitConfig(heldout_donors=2)},  # "the data have 1 donor(s)", a donor 'None'
     "dataset.donor_key names no donor column: set dataset.donor_key to the obs column of "
     "each cell's donor, or split.heldout_donors to 0; give another value: "
     "DatasetConfig(donor_key=...)"),
    ({"qc": QCConfig(min_genes_per_cell="10")},  # numpy's TypeError in the comparison
     'qc.min_genes_per_cell must be int, got "10" (str); give another value: '
     "QCConfig(min_genes_per_cell=...)"),
    ({"qc": QCConfig(on_single_cell_type="Drop")}, "qc.on_single_cell_type must be one of"),
    ({"qc": {"min_genes_per_cell": 10}}, "qc is a dict; give a cellsynth.config.QCConfig"),
    ({"dataset": DatasetConfig(is_normalised="yes")}, "dataset.is_normalised must be one of"),
])
@pytest.mark.parametrize("backed", [False, True])
def test_sections_made_in_python_are_checked_as_a_config_files_are(tmp_path, sections, said,
                                                                   backed):
    """``preprocess(adata, dataset, qc, split)`` (and ``preprocess_backed``) took sections
    built in Python unchecked: a negative test fraction gave a split without test cells, no
    word said; fractions summing to 1.5 failed as "no genes left"; a number written as text
    failed in numpy. They are now checked before any data is read, each fix said as the
    keyword of its section's class."""
    args = {"dataset": DatasetConfig(), "qc": QCConfig(min_genes_per_cell=10),
            "split": SplitConfig(), **sections}
    a = _atlas()
    with pytest.raises(ConfigError) as err:
        if backed:
            a.write_h5ad(tmp_path / "a.h5ad")
            preprocess_backed(tmp_path / "a.h5ad", args["dataset"], args["qc"], args["split"],
                              out_path=tmp_path / "pre.h5ad")
        else:
            preprocess(a, args["dataset"], args["qc"], args["split"])
    assert said in str(err.value)
    assert not (tmp_path / "pre.h5ad").exists()


def test_the_checked_sections_give_the_same_cells():
    """A whole float for a whole-number setting is read as the number it is (as a config file
    reads it), and the checked sections change nothing in what QC keeps."""
    a = _atlas()
    cfg = config.load(None, SETS)
    expected, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    out, _ = preprocess(a, cfg.dataset, QCConfig(min_genes_per_cell=10.0, min_cells_per_gene=5),
                        cfg.split, seed=0)
    assert list(out.obs_names) == list(expected.obs_names)
    assert (out.obs["cellsynth_split"] == expected.obs["cellsynth_split"]).all()


# fault 3: a split column of the user's with other values than train / val / test


@pytest.mark.parametrize("values", [("Train", "Val", "Test"), ("train", "validation", "test"),
                                    ("train ", "val", "test")])
@pytest.mark.parametrize("covariates", [None, ["condition"]])
def test_a_fit_refuses_split_values_it_would_leave_out(values, covariates):
    """``cs.NegBinBaseline().fit(adata)`` on cells whose obs['cellsynth_split'] said "Train",
    "Val", "Test" failed with "has no 'train' rows" without naming what the column holds, and
    one saying "validation" was fitted with those cells left out unsaid (``cellsynth fit`` and
    ``CVAE(adata)`` refused them, naming them). Every fit now reads the column the same way."""
    import cellsynth as cs
    from cellsynth.errors import DataError

    a = _atlas()
    a.obs["condition"] = np.where(np.arange(a.n_obs) % 2, "ctrl", "stim")
    a.obs["cellsynth_split"] = np.array(values)[np.arange(a.n_obs) % 3]
    with pytest.raises(DataError) as err:
        cs.NegBinBaseline(covariate_keys=covariates).fit(a, "cell_type")
    odd = ", ".join(repr(v) for v in sorted(set(values) - {"train", "val", "test"}))
    assert str(err.value).startswith(f"obs['cellsynth_split'] holds {odd}; its values are "
                                     "'train', 'val' (fitted on) and 'test' (left out)")


def test_a_fit_reads_a_split_column_of_train_val_test_and_missing_values():
    import cellsynth as cs

    a = _atlas()
    a.obs["cellsynth_split"] = np.array(["train", "val", "test"])[np.arange(a.n_obs) % 3]
    a.obs.loc[a.obs_names[:5], "cellsynth_split"] = np.nan  # a missing value: in no split
    model = cs.NegBinBaseline()
    model.fit(a, "cell_type")
    assert model.sample({"type0": 3}, seed=0).n_obs == 3


# fault 4: a fence of zero width removed every cell with a mitochondrial read, unsaid


def _nuclei(share: float = 0.2) -> ad.AnnData:
    """Two types whose MT- genes hold no count but in a ``share`` of the cells, one count
    there (few mitochondrial reads, as in single-nucleus data)."""
    rng = np.random.default_rng(0)
    blocks, labels = [], []
    for t, n in enumerate((200, 150)):
        mu = rng.gamma(1.0, 2.0, 120)
        mu[t * 10 : t * 10 + 10] += 20
        mu[:3] = 0.0
        b = rng.poisson(mu, (n, 120)).astype(np.float32)
        b[rng.random(n) < share, 0] = 1
        blocks.append(b)
        labels += [f"type{t}"] * n
    x = sp.csr_matrix(np.vstack(blocks))
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(x.shape[0])])
    var = pd.DataFrame(index=[f"MT-{i}" if i < 3 else f"G{i}" for i in range(120)])
    return ad.AnnData(x, obs=obs, var=var)


def test_a_fence_of_zero_width_says_what_it_removed_and_how_to_leave_it_out(caplog):
    """Where three quarters of a type's training cells hold no mitochondrial count, its upper
    fence is 0 (an IQR of 0), and every cell with one such count was removed as an outlier:
    a fifth of the cells here, no word said (under the warning for a step that removes half).
    It is now a warning naming the types, their cells and the way to leave the fence out."""
    import logging

    a = _nuclei()
    mt = a.X[:, 0].toarray().ravel() > 0
    cfg = config.load(None, SETS)
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert not set(a.obs_names[mt]) & set(out.obs_names)  # the rule is unchanged
    said = [r.getMessage() for r in caplog.records if "zero width" in r.getMessage()]
    assert len(said) == 1 and "mitochondrial share is above the one value" in said[0]
    assert "in 2 type(s): type0: 36, type1: 27 cells" in said[0]
    assert "an obs column (dataset.mito_key) of one value for every cell, such as 0" in said[0]
    a.obs["mito"] = 0.0  # the fix it offers
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert set(a.obs_names[mt]) <= set(out.obs_names) and "zero width" not in caplog.text


def test_a_fence_of_zero_width_that_removes_nothing_is_not_warned_about(caplog):
    import logging

    a = _nuclei(0.0)  # no mitochondrial count anywhere: the fence is 0, every cell inside it
    cfg = config.load(None, SETS)
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert "zero width" not in caplog.text


# fault 5: a type dropped for its training cells, with no word of where its cells went


def test_a_type_dropped_for_its_training_cells_says_how_many_it_has_and_why(caplog):
    """With split.heldout_donors, a type of 30 cells all from a held-out donor was dropped as
    "fewer than 10 training cells: type2", which read as a type of a few cells (lowering
    qc.min_cells_per_type keeps none of its 0 training cells). The warning now gives each
    dropped type's training cells of all its cells, and says that held-out donors' cells are
    test cells."""
    import logging

    a = _atlas()
    donors = np.where(np.arange(a.n_obs) % 2, "d0", "d1")
    a.obs["donor"] = np.where(a.obs["cell_type"] == "type2", "dX", donors)
    cfg = config.load(None, [*SETS, "dataset.donor_key='donor'", "split.heldout_donors=1"])
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        out, rep = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=2)
    assert rep.dropped_types == ["type2"] and "type2" not in set(out.obs["cell_type"])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping")]
    assert said == ["dropping 1 type(s) with fewer than 10 training cells "
                    "(qc.min_cells_per_type): type2 (0 of its 30 cells); every cell of a "
                    "held-out donor is a test cell (split.heldout_donors)"]


# fault 6: a label or donor column that the data stage writes over or reads as another


@pytest.mark.parametrize(("sets", "said"), [
    (["dataset.label_key='cellsynth_split'"],  # a run's file: its types became the splits
     "dataset.label_key = 'cellsynth_split' names a column the data stage writes"),
    (["dataset.label_key='n_genes'"], "dataset.label_key = 'n_genes' is also "
     "dataset.n_genes_key: the column would be read as both"),
    (["dataset.donor_key='cell_type'", "split.heldout_donors=1"],  # a type held out whole
     "dataset.donor_key = 'cell_type' is the label column (dataset.label_key)"),
])
def test_a_label_or_donor_column_the_data_stage_uses_otherwise_is_refused(tmp_path, capsys,
                                                                         sets, said):
    """``cellsynth run pre.h5ad --label-key cellsynth_split`` had its types replaced by the
    run's split and failed as "fewer than 2 cell types have 10 or more training cells"; a
    donor column that is the label column held whole types out as donors (dropped for want of
    training cells). Both are now refused, in one line, naming the setting to change."""
    from cellsynth.cli import main

    a = _atlas()
    for s in sets:
        if s.startswith("dataset.label_key="):  # the types, in the column named
            a.obs[s.split("=")[1].strip("'")] = a.obs["cell_type"].to_numpy()
    a.write_h5ad(tmp_path / "a.h5ad")
    capsys.readouterr()
    args = ["run", str(tmp_path / "a.h5ad"), "--out", str(tmp_path / "run"), "--quiet"]
    for s in [*SETS, *sets]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"cellsynth: error: {said}"), err
    assert "set dataset." in err


# fault 7: mitochondrial genes in another spelling were said to be absent, no more


@pytest.mark.parametrize(("names", "shown"), [
    (["MT.ND1", "MT.CO1", "MT.ATP6"], "3 gene name(s) look mitochondrial in another spelling "
     "('MT.ND1', 'MT.CO1', 'MT.ATP6')"),  # R's make.names
    (["mt.Nd1", "mt.Co1", "mt.Atp6"], "('mt.Nd1', 'mt.Co1', 'mt.Atp6')"),
    (["GRCh38_MT-ND1", "GRCh38_MT-CO1", "GRCh38_MT-CYB"], "'GRCh38_MT-ND1'"),  # two genomes
    (["MT_ND1", "MT_CO1", "MT_ND4"], "'MT_ND1'"),
])
@pytest.mark.parametrize("backed", [False, True])
def test_mitochondrial_genes_in_another_spelling_are_named(tmp_path, caplog, names, shown,
                                                          backed):
    """Genes named MT.ND1 (R's make.names of MT-ND1), GRCh38_MT-ND1 or MT_ND1 are not read as
    mitochondrial, and the warning said "no mitochondrial genes (MT-/mt- prefix)", leaving
    the user to guess why an atlas that holds them has none: the mito fraction is 0 and its
    fence removes no damaged cell. The warning now names the genes and the renaming."""
    import logging

    a = _atlas()
    a.var_names = [*names, *a.var_names[3:]]
    cfg = config.load(None, SETS)
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        if backed:
            a.write_h5ad(tmp_path / "a.h5ad")
            preprocess_backed(tmp_path / "a.h5ad", cfg.dataset, cfg.qc, cfg.split,
                              out_path=tmp_path / "pre.h5ad")
        else:
            preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    said = [r.getMessage() for r in caplog.records if "no mitochondrial genes" in r.getMessage()]
    assert len(said) == 1 and shown in said[0]
    assert "rename them with the MT- prefix (as MT-ND1, mt-Nd1 in mouse) in adata.var_names" \
        in said[0]


def test_names_that_only_start_with_mt_get_no_spelling_hint(caplog):
    import logging

    a = _atlas()
    a.var_names = ["MT1A", "MT2A", "MTND1P23", "MTHFR", "Mt1", *a.var_names[5:]]
    cfg = config.load(None, SETS)
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        preprocess(a, cfg.dataset, cfg.qc, cfg.split)
    said = [r.getMessage() for r in caplog.records if "no mitochondrial genes" in r.getMessage()]
    assert said == ["no mitochondrial genes (MT-/mt- prefix): the mito fraction is 0 for every "
                    "cell"]


# fault 8: "unknown" kept as a cell type beside the default prefix UNKNOWN, unsaid


def test_types_named_with_an_uninformative_prefix_in_another_case_are_warned(caplog,
                                                                            monkeypatch):
    """The labels QC removes as uninformative are matched as written (the reference's
    E-ANND-5 spellings: UNKNOWN, DOUBLET, ...), so CELLxGENE's "unknown" or a "Doublets"
    type were learned and generated as cell types, no word said. The rule is unchanged; a
    warning names them and the setting that leaves them out."""
    import logging

    from cellsynth.data import labels as data_labels

    monkeypatch.setattr(data_labels, "_UNANNOTATED_WARNED", set())  # said once a process
    a = _atlas()
    labels = a.obs["cell_type"].to_numpy().copy()
    labels[:25], labels[60:85], labels[100:103] = "unknown", "Doublets", "UNKNOWN_x"
    a.obs["cell_type"] = labels
    cfg = config.load(None, SETS)
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert {"unknown", "Doublets"} <= set(out.obs["cell_type"])  # kept, as before
    assert "UNKNOWN_x" not in set(out.obs["cell_type"])
    said = [r.getMessage() for r in caplog.records if "another case" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(
        "1 type(s) kept start with an uninformative prefix in another case: 'Doublets' (25 "
        "cells) (dataset.uninformative_prefixes, matched as written: 'DOUBLET', 'LOW_Q'")
    assert "add them to dataset.uninformative_prefixes to leave them out" in said[0]
    # "unknown" is said once, by the warning of cells without a type (data.labels)
    assert sum("labelled as having no type" in r.getMessage() and "unknown" in r.getMessage()
               for r in caplog.records) == 1
    cfg = config.load(None, [*SETS, "dataset.uninformative_prefixes=['unknown', 'Doublet', 'UNKNOWN']"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellsynth.data"):
        out, _ = preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=0)
    assert not {"unknown", "Doublets"} & set(out.obs["cell_type"])
    assert "another case" not in caplog.text


# fault 9: the split's seed of a direct call, unchecked


@pytest.mark.parametrize("seed", [None, -1, 1.5, "0"])
@pytest.mark.parametrize("backed", [False, True])
def test_the_seed_of_a_direct_call_is_checked(tmp_path, seed, backed):
    """``preprocess(..., seed=None)`` drew another split at every call, no word said (the
    split of the same data and the same call differed), and seed=-1 or 1.5 failed in numpy
    (ValueError, TypeError). A seed is now a whole number from 0 to 2**63 - 1, or refused."""
    from cellsynth.errors import DataError

    a = _atlas()
    cfg = config.load(None, SETS)
    with pytest.raises(DataError, match=r"seed must be a whole number from 0 to 2\*\*63 - 1"):
        if backed:
            a.write_h5ad(tmp_path / "a.h5ad")
            preprocess_backed(tmp_path / "a.h5ad", cfg.dataset, cfg.qc, cfg.split, seed=seed,
                              out_path=tmp_path / "pre.h5ad")
        else:
            preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=seed)


def test_the_split_is_the_seeds():
    a = _atlas()
    cfg = config.load(None, SETS)

    def split(seed):
        return preprocess(a, cfg.dataset, cfg.qc, cfg.split, seed=seed)[0].obs["cellsynth_split"]

    assert (split(3) == split(3)).all()
    assert not (split(3) == split(4)).all()
