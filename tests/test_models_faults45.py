"""Saved models and generation under misuse (session 45's sweep): the reference generator reads
a request, a seed and where= as the other generators do."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellsynth.errors import DataError
from conftest import kang_small_cells


@pytest.fixture(scope="module")
def small(kang_path: Path) -> ad.AnnData:
    return kang_small_cells(kang_path)


@pytest.fixture(scope="module")
def reference(small: ad.AnnData):
    from cellsynth.config import FeaturesConfig, SeedVAEConfig
    from cellsynth.models.seed_counts import SeedGenerator

    model = SeedGenerator(SeedVAEConfig(max_epochs=1), FeaturesConfig(n_components=10))
    model.fit(small, "cell_type", seed=0)
    return model


@pytest.mark.parametrize("bad", [["B cells"], 5, None])
def test_reference_refuses_a_request_that_is_no_dict_in_one_line(reference, bad) -> None:
    with pytest.raises(DataError, match=r"a request is a \{type: n\} dict"):
        reference.sample(bad, seed=1)


def test_reference_reads_a_request_table_as_the_others_do(reference) -> None:
    table = pd.DataFrame({"cell_type": pd.Categorical(["B cells", "CD8 T cells"]), "n": [2, 3]})
    cells = reference.sample(table, seed=1)
    assert cells.obs["cell_type"].value_counts().to_dict() == {"CD8 T cells": 3, "B cells": 2}
    with pytest.raises(DataError, match="no covariate 'condition'"):
        reference.sample(table.assign(condition="stim"), seed=1)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", None, 2**70])
def test_reference_refuses_a_bad_seed_as_the_others_do(reference, seed) -> None:
    with pytest.raises(DataError, match="seed must be a whole number"):
        reference.sample({"B cells": 2}, seed=seed)


def test_reference_refuses_where_with_what_to_do(reference) -> None:
    with pytest.raises(DataError, match=r"conditions on the cell type alone.*cvae, nb or scvi"):
        reference.sample({"B cells": 2}, where={"condition": "stim"}, seed=1)
    assert reference.sample({"B cells": 2}, where={}, seed=1).n_obs == 2  # nothing asked: fine


def test_a_type_only_request_that_is_no_dict_is_one_line_for_every_generator() -> None:
    from cellsynth.models._training import check_counts

    for bad in (["B cells"], 5, pd.DataFrame({"cell_type": ["B cells"], "n": [1]})):
        with pytest.raises(DataError, match=r"a request is a \{type: n\} dict"):
            check_counts(bad, ["B cells"])


@pytest.mark.parametrize("argv", [
    ["generate", "m", "--types", "B cells=2", "--types", "NK=2", "--out", "g.h5ad"],
    ["generate", "m", "--n-per-type", "2", "--where", "condition=stim", "--where",
     "condition=ctrl", "--out", "g.h5ad"],
    ["generate", "m", "--n-per-type", "2", "--seed", "1", "--seed", "2", "--out", "g.h5ad"],
    ["generate", "m", "--n-per-type", "2", "--out", "a.h5ad", "--out", "b.h5ad"],
    ["fit", "d.h5ad", "--label-key", "cell_type", "--model", "nb", "--model", "cvae", "--out", "m"],
    ["fit", "d.h5ad", "--label-key", "cell_type", "--covariates", "a", "--covariates", "b",
     "--out", "m"],
])  # fmt: skip
def test_an_option_of_one_value_given_twice_is_refused_not_overwritten(argv, capsys) -> None:
    from cellsynth.cli_parser import build_parser

    with pytest.raises(SystemExit) as stop:  # argparse kept the last value, without a word
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert "given twice" in capsys.readouterr().err


def test_options_given_once_parse_as_before() -> None:
    from cellsynth.cli_parser import build_parser

    args = build_parser().parse_args(["generate", "m", "--types", "B cells=2", "--where",
                                      "condition=stim", "--seed", "3", "--out", "g.h5ad"])
    assert (args.types, args.where, args.seed, args.out) == ("B cells=2", "condition=stim", 3,
                                                             "g.h5ad")  # fmt: skip
    assert build_parser().parse_args(["generate", "m", "--n-per-type", "2", "--out",
                                      "g.h5ad"]).seed == 0  # the default still applies


def test_an_h5ad_given_as_request_file_says_to_give_it_as_like(kang_path: Path,
                                                               tmp_path: Path) -> None:  # fmt: skip
    from cellsynth.pipeline.generate import read_request

    with pytest.raises(DataError, match=r"HDF5 file .*--like"):  # was: "UTF-16, ...?"
        read_request(kang_path, "cell_type")
    utf16 = tmp_path / "r.tsv"
    utf16.write_text("cell_type\tn\nB cells\t3\n", encoding="utf-16")
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_request(utf16, "cell_type")


def test_fit_refuses_an_out_named_like_an_h5ad_file(tmp_path: Path) -> None:
    from cellsynth.pipeline.fit import check_model_out

    with pytest.raises(DataError, match=r"names an \.h5ad file.*give a folder such as"):
        check_model_out(tmp_path / "model.h5ad")  # was: a folder called model.h5ad
    assert not (tmp_path / "model.h5ad").exists()
    check_model_out(tmp_path / "model")  # a folder's name: fine


def test_loading_a_model_directory_that_does_not_exist_says_so(tmp_path: Path) -> None:
    import cellsynth as cs
    from cellsynth.errors import ModelFileError
    from cellsynth.models.seed_counts import SeedGenerator

    gone = tmp_path / "typo"  # was: "typo/config.json is missing; typo is not a complete save"
    for load in (cs.load_model, cs.CVAE.load, cs.NegBinBaseline.load, SeedGenerator.load):
        with pytest.raises(ModelFileError, match="typo does not exist"):
            load(gone)
    gone.mkdir()  # there, but empty: still not a saved model
    with pytest.raises(ModelFileError, match=r"config\.json is missing"):
        cs.load_model(gone)


def test_weights_of_another_model_are_refused_in_one_line(reference, small, tmp_path: Path
                                                          ) -> None:  # fmt: skip
    import dataclasses
    import shutil

    from cellsynth.config import FeaturesConfig
    from cellsynth.errors import ModelFileError
    from cellsynth.models.seed_counts import SeedGenerator

    other = SeedGenerator(dataclasses.replace(reference.config, n_hidden=[24]),
                          FeaturesConfig(n_components=10))  # fmt: skip
    other.fit(small, "cell_type", seed=0)
    reference.save(tmp_path / "a")
    other.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "vae" / "weights.safetensors", tmp_path / "a" / "vae")
    for sums in (tmp_path / "a" / "checksums.json", tmp_path / "a" / "vae" / "checksums.json"):
        sums.unlink()  # no checksums to say the file changed: the shapes must
    with pytest.raises(ModelFileError) as info:
        SeedGenerator.load(tmp_path / "a")
    message = str(info.value)
    assert "\n" not in message and "do not fit the saved config" in message  # was: 20 lines
    assert "more); the weights come from another model" in message


def test_a_reference_save_without_its_pca_names_the_save_not_a_run_stage(reference,
                                                                        tmp_path: Path) -> None:
    from cellsynth.errors import ModelFileError
    from cellsynth.models.seed_counts import SeedGenerator

    reference.save(tmp_path / "m")
    (tmp_path / "m" / "pca" / "genes.json").unlink()
    with pytest.raises(ModelFileError, match="not a complete reference save") as info:
        SeedGenerator.load(tmp_path / "m")
    assert "features stage" not in str(info.value)  # fit wrote it: there is no run to re-run
    (tmp_path / "m" / "pca" / "genes.json").write_text("[")
    with pytest.raises(ModelFileError, match="or fit the model again"):
        SeedGenerator.load(tmp_path / "m")


@pytest.mark.parametrize("key", ["condition", "", 123])
def test_a_saved_label_column_that_is_a_covariate_or_blank_is_refused(small, tmp_path: Path,
                                                                       key) -> None:  # fmt: skip
    import json

    import cellsynth as cs
    from cellsynth.errors import ModelFileError

    model = cs.NegBinBaseline(covariate_keys=["condition"])
    model.fit(small, "cell_type", seed=0)
    model.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["label_key"] = key  # an edited file in a save without checksums (an older one)
    config.write_text(json.dumps(meta))
    (tmp_path / "m" / "checksums.json").unlink()
    # was: the types overwritten by the condition in obs without a word, or a traceback writing
    with pytest.raises(ModelFileError, match=r"names the label column .*fit the model again"):
        cs.load_model(tmp_path / "m")


def test_a_count_beyond_floats_is_echoed_as_written() -> None:
    from cellsynth.pipeline.generate import parse_count

    assert parse_count("99999999999999999999999") == 10**23 - 1  # was 99,999...991,611,392
    assert parse_count("5.0") == 5 and parse_count("1e3") == 1000
    with pytest.raises(ValueError):
        parse_count("5.5")


def test_a_request_file_to_the_reference_model_says_what_to_give_instead(reference) -> None:
    from cellsynth.pipeline.generate import _request

    # was: "--where and --request need a cvae, nb or scvi fitted with --covariates", but a
    # type-only cvae or nb reads a request file
    with pytest.raises(DataError, match=r"takes no --request table: give .*--types"):
        _request(reference, None, None, None, "request.tsv", None)
    with pytest.raises(DataError, match="--where needs a cvae, nb or scvi"):
        _request(reference, None, {"B cells": 2}, "condition=stim", None, None)


def test_a_misspelt_covariate_in_where_gets_a_did_you_mean() -> None:
    import pandas as pd

    from cellsynth.errors import DataError
    from cellsynth.models._design import Design

    obs = pd.DataFrame({"cell_type": ["B", "T"] * 10, "condition": ["ctrl"] * 10 + ["stim"] * 10})
    rows = np.arange(len(obs))
    design, _ = Design.fit(obs, ["condition"], "cell_type", obs["cell_type"].to_numpy(), rows,
                           rows)  # fmt: skip
    with pytest.raises(DataError, match=r"no covariate 'condition ' \(did you mean 'condition'"):
        design.plan({"B": 5}, {"condition ": "stim"}, ["B", "T"], "cell_type")


def test_nb_takes_its_data_as_the_other_generators_do(small, tmp_path):
    """NegBinBaseline(adata, label_key) raised Python's TypeError (keyword-only settings), where
    cs.CVAE(adata, label_key) and cs.ScviGenerator(adata, label_key) take the data first."""
    import cellsynth as cs

    adata = small
    model = cs.NegBinBaseline(adata, "cell_type")
    history = model.train(seed=0)
    assert history["n_cells"] > 0 and set(model.labels) <= set(adata.obs["cell_type"].astype(str))
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    assert cs.NegBinBaseline(str(path), "cell_type").train(seed=0)["n_cells"] == history["n_cells"]
    with pytest.raises(DataError, match="without data"):
        cs.NegBinBaseline().train()
    with pytest.raises(DataError, match="no_such"):
        cs.NegBinBaseline(adata, "no_such")
    with pytest.raises(DataError, match="AnnData or the path"):
        cs.NegBinBaseline({"max_theta": 10.0})
