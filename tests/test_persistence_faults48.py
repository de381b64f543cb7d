"""Saved models under misuse (session 48's sweep of persistence): model directories edited by
hand, damaged, of another version or kind, and loads given what is no device; each is one line
that names the file and the fix, never a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import pytest

import cellsynth as cs
from cellsynth.errors import ModelFileError
from conftest import kang_small_cells


@pytest.fixture(scope="module")
def small(kang_path: Path) -> ad.AnnData:
    return kang_small_cells(kang_path)


@pytest.fixture(scope="module")
def saved(small: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The directory of a tiny fitted model of each kind, fitted and saved once when first asked
    for (``saved("nb")``)."""
    from cellsynth.config import CVAEConfig, FeaturesConfig, ScviConfig, SeedVAEConfig
    from cellsynth.models.seed_counts import SeedGenerator

    root = tmp_path_factory.mktemp("saved")

    def build(kind: str):
        if kind == "nb":
            return cs.NegBinBaseline()
        if kind == "nb-condition":
            return cs.NegBinBaseline(covariate_keys=["condition"])
        if kind == "reference":
            return SeedGenerator(SeedVAEConfig(n_embed=4, n_hidden=[16], n_latent=4,
                                               max_epochs=1, device="cpu"),
                                 FeaturesConfig(n_components=8))  # fmt: skip
        if kind == "cvae":
            return cs.CVAE(config=CVAEConfig(n_hidden=[16], n_latent=4, max_epochs=1,
                                             device="cpu"))  # fmt: skip
        pytest.importorskip("scvi")
        from cellsynth.models.scvi import ScviGenerator

        return ScviGenerator(ScviConfig(n_hidden=16, n_latent=4, max_epochs=1, batch_size=128))

    def get(kind: str) -> Path:
        out = root / kind
        if not out.is_dir():
            model = build(kind)
            model.fit(small, "cell_type", seed=0)
            model.save(out)
        return out

    return get


def edited(src: Path, tmp_path: Path, change: Callable[[dict], None],
           name: str = "config.json") -> Path:  # fmt: skip
    """A copy of the saved model ``src`` whose JSON file ``name`` is changed by ``change`` (in
    place) and whose checksums are deleted, so that the load's own checks must see it."""
    out = tmp_path / f"edited_{src.name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    for sums in out.rglob("checksums.json"):
        sums.unlink()
    meta = json.loads((out / name).read_text())
    change(meta)
    (out / name).write_text(json.dumps(meta))
    return out


def one_line(load: Callable[[], object], *said: str) -> str:
    """The message of the ModelFileError ``load()`` raises: one line, holding each of ``said``."""
    with pytest.raises(ModelFileError) as info:
        load()
    message = str(info.value)
    assert "\n" not in message, message
    for text in said:
        assert text in message, message
    return message


# ---------------------------------------------------------------------------------------------
# a hand-edited config.json: settings of the wrong type, missing or not a table


def _put(path: str, value: object) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]  # list items by index
        for key in keys[:-1]:
            meta = meta[key]
        if value is KeyError:
            del meta[keys[-1]]
        else:
            meta[keys[-1]] = value
    return change


@pytest.mark.parametrize(("kind", "path", "value", "said"), [
    ("nb", "config", "x", "'config' must be a table of settings, got \"x\""),  # AttributeError
    ("nb", "config", [1], "'config' must be a table of settings"),  # AttributeError
    ("nb", "config.max_theta", True, "max_theta must be a finite number"),  # loaded as 1.0
    ("nb", "config.max_theta", "x", "max_theta must be a finite number"),  # float()'s words
    ("reference", "config.seed_vae", 3, "'config.seed_vae' must be a table of settings, got 3"),
    ("reference", "config", None, "'config' must be a table of settings, got null"),
    ("reference", "config.target_sum", KeyError, "'config.target_sum' is missing"),  # 'target_sum'
    ("reference", "config.target_sum", [1], "'config.target_sum' must be a number, got [1]"),
    ("cvae", "config.n_latent", "x", "config.n_latent must be int"),  # said: --set n_latent=...
    ("cvae", "config", KeyError, "'config' is missing"),
])
def test_a_hand_edited_setting_is_one_line_that_says_to_restore_the_file(
        saved, tmp_path, kind, path, value, said) -> None:  # fmt: skip
    bad = edited(saved(kind), tmp_path, _put(path, value))
    message = one_line(lambda: cs.load_model(bad), "config.json is invalid", said,
                       "the file was edited: restore it from the same save, or fit the model "
                       "again")  # fmt: skip
    assert "--set" not in message  # no command line sets a saved model's file


def test_the_settings_of_a_model_saved_unchanged_still_load(saved) -> None:
    for kind in ("nb", "reference", "cvae"):
        model = cs.load_model(saved(kind))
        assert model.sample({model.labels[0]: 2}, seed=0).n_obs == 2


# ---------------------------------------------------------------------------------------------
# scvi's module arguments in config.json


@pytest.mark.parametrize(("path", "value", "said"), [
    ("module_kwargs.n_latent", KeyError, "'module_kwargs.n_latent' is missing"),  # a KeyError
    ("module_kwargs.n_hidden", "x", "'module_kwargs.n_hidden' must be a whole number, got \"x\""),
    ("module_kwargs.n_layers", 0, "'module_kwargs.n_layers' must be at least 1, got 0"),
    ("module_kwargs", 3, "'module_kwargs' must be a table of settings, got 3"),  # not iterable
    ("module_kwargs.n_input", KeyError, "'module_kwargs.n_input' is missing"),  # 'n_input'
])
def test_scvi_module_arguments_edited_by_hand_are_one_line(saved, tmp_path, path, value,
                                                          said) -> None:  # fmt: skip
    bad = edited(saved("scvi"), tmp_path, _put(path, value))
    one_line(lambda: cs.load_model(bad), "config.json is invalid", said, "restore it")


def test_scvi_sizes_that_do_not_fit_the_weights_are_one_line_and_allocate_nothing(
        saved, tmp_path, monkeypatch) -> None:  # fmt: skip
    """A hidden layer of 10^9 in config.json was built before the weights were compared: torch
    tried to allocate 800 GB (a machine with that much memory spent it), and smaller edits gave
    torch's error of a line per weight."""
    import scvi

    built = []
    real = scvi.module.VAE

    def counting(*args, **kwargs):
        module = real(*args, **kwargs)
        built.append(next(module.parameters()).device.type)
        return module

    monkeypatch.setattr(scvi.module, "VAE", counting)
    huge = edited(saved("scvi"), tmp_path, _put("module_kwargs.n_hidden", 10**9))
    one_line(lambda: cs.load_model(huge), "do not fit the saved config",
             "the weights hold (16, ", "the config makes (1000000000, ", "more)")
    assert built == ["meta"]  # compared on the meta device: nothing allocated
    deeper = edited(saved("scvi"), tmp_path, _put("module_kwargs.n_layers", 3))
    one_line(lambda: cs.load_model(deeper), "do not fit the saved config", "missing weight")
    built.clear()
    model = cs.load_model(saved("scvi"))  # an unchanged save: compared, then built for real
    assert built == ["meta", "cpu"] and model.sample({model.labels[0]: 2}, seed=0).n_obs == 2


# ---------------------------------------------------------------------------------------------
# a save of another format version


@pytest.mark.parametrize("kind", ["nb", "cvae"])
def test_a_save_of_another_format_version_says_how_to_load_it(saved, tmp_path, kind) -> None:
    """The message said only "has format version 3; this cellsynth reads version 1 (saved by
    cellsynth 0.1.0)", not what to do; a version of true was read as version 1."""
    ours = json.loads((saved(kind) / "config.json").read_text())["format_version"]

    def version(value):
        return edited(saved(kind), tmp_path, _put("format_version", value))

    one_line(lambda: cs.load_model(version(ours + 1)), f"has format version {ours + 1}",
             "newer than this one", "upgrade cellsynth (pip install -U cellsynth)")
    one_line(lambda: cs.load_model(version(0)), "has format version 0",
             "saved by cellsynth", "older than this one", "load it with that version, or fit")
    for value in (True, "1", None):
        one_line(lambda v=value: cs.load_model(version(v)), f"has format version {value!r}",
                 "no format version", "the file was edited")


# ---------------------------------------------------------------------------------------------
# the device a load is given


@pytest.mark.parametrize("kind", ["cvae", "reference"])
def test_a_load_takes_a_torch_device_and_refuses_what_is_no_device_in_one_line(
        saved, kind) -> None:  # fmt: skip
    """load(..., device=torch.device("cpu")) and device=0 raised torch's AttributeError
    ('torch.device' object has no attribute 'startswith')."""
    import torch

    from cellsynth.errors import ConfigError
    from cellsynth.models.seed_counts import SeedGenerator

    cls = cs.CVAE if kind == "cvae" else SeedGenerator
    model = cls.load(saved(kind), device=torch.device("cpu"))
    assert model.sample({model.labels[0]: 2}, seed=0).n_obs == 2
    for bad in (0, ["cpu"]):
        with pytest.raises(ConfigError, match=r"device must be 'auto', 'cpu' or 'cuda'.*got "):
            cls.load(saved(kind), device=bad)


# ---------------------------------------------------------------------------------------------
# the covariate design in config.json


@pytest.mark.parametrize(("path", "value", "said"), [
    ("design", 3, "'design' must be a table of settings, got 3"),  # AttributeError: 'get'
    ("design.keys", None, "'design.keys' must be a list, got null"),  # not iterable
    ("design.levels.condition", ["a", "a"], "a list of unique level names"),  # pandas' error
    ("design.composition.B cells", [[0]], "'design.composition' of 'B cells' must list"),
    ("design.composition.B cells.0.0", ["x"], "each code below its covariate's number"),
    ("design.composition.B cells.0.0", [5], "each code below its covariate's number"),
    ("design.composition.B cells.0.1", "12", "cells at least 1"),  # 'int' + 'str'
])
def test_an_edited_covariate_design_is_one_line_at_load_not_an_error_at_generation(
        saved, tmp_path, path, value, said) -> None:  # fmt: skip
    bad = edited(saved("nb-condition"), tmp_path, _put(path, value))
    one_line(lambda: cs.load_model(bad), "config.json is invalid", said, "restore it")


def test_a_model_with_covariates_saved_unchanged_still_loads_and_generates(saved) -> None:
    model = cs.load_model(saved("nb-condition"))
    cells = model.sample({"B cells": 6}, seed=0, where={"condition": "stim"})
    assert list(cells.obs["condition"].unique()) == ["stim"]


# ---------------------------------------------------------------------------------------------
# the reference model's PCA


@pytest.mark.parametrize("damage", ["genes_not_a_list", "loadings_of_one_axis", "no_loadings"])
def test_a_damaged_pca_of_a_reference_save_is_one_line(saved, tmp_path, damage) -> None:
    """A pca/genes.json holding a number raised TypeError (object of type 'int' has no len()),
    loadings of one axis IndexError: tracebacks from `cellsynth generate`."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from cellsynth.models.seed_counts import SeedGenerator

    bad = edited(saved("reference"), tmp_path, lambda meta: None)
    if damage == "genes_not_a_list":
        (bad / "pca" / "genes.json").write_text("3")
    else:
        tensors = dict(load_file(str(bad / "pca" / "pca.safetensors")))
        if damage == "no_loadings":
            del tensors["components"]
        else:
            tensors["components"] = np.ascontiguousarray(tensors["components"][0])
        save_file(tensors, str(bad / "pca" / "pca.safetensors"))
    for load in (cs.load_model, SeedGenerator.load):
        one_line(lambda load=load: load(bad), "pca holds no readable PCA",
                 "copy the whole directory from the same save, or fit the model again")


# ---------------------------------------------------------------------------------------------
# a file of a save missing, cut short or replaced by another model's


def test_a_config_json_of_another_model_is_named_not_the_file_that_kind_lacks(saved,
                                                                             tmp_path) -> None:
    """An nb save given a cvae's config.json said 'weights.safetensors is missing; ... not a
    complete CVAE save', an nb save given a reference's 'vae does not exist; give the folder
    that fit or save wrote': the file that differs is config.json."""
    for other in ("cvae", "reference"):
        mixed = tmp_path / f"nb_with_{other}_config"
        shutil.copytree(saved("nb"), mixed)
        shutil.copy(saved(other) / "config.json", mixed / "config.json")
        one_line(lambda m=mixed: cs.load_model(m), "config.json changed after the model was saved")


def test_a_part_of_a_save_that_is_missing_or_cut_short_says_to_copy_it_again(saved,
                                                                            tmp_path) -> None:
    """Without checksums to name the file: 'params.safetensors cannot be read: Error while
    deserializing header: header too small', 'vae does not exist; give the folder that fit or
    save wrote' (a part of the save, not a folder given), no fix."""
    cut = edited(saved("nb"), tmp_path, lambda meta: None)
    (cut / "params.safetensors").write_bytes((cut / "params.safetensors").read_bytes()[:40])
    one_line(lambda: cs.load_model(cut), "params.safetensors cannot be read",
             "the file is damaged or cut short; copy it again from the same save, or fit")
    no_vae = edited(saved("reference"), tmp_path, lambda meta: None)
    shutil.rmtree(no_vae / "vae")
    one_line(lambda: cs.load_model(no_vae), "vae is missing", "not a complete reference save: "
             "copy the whole directory from the same save, or fit the model again")
    (no_vae / "config.json").write_text("{")
    one_line(lambda: cs.load_model(no_vae), "config.json is corrupt",
             "restore it from the same save, or fit the model again")


# ---------------------------------------------------------------------------------------------
# means no count can have


def test_generating_from_means_beyond_any_count_stops_with_one_line_not_a_hang(saved,
                                                                              tmp_path) -> None:
    """An nb save whose params.safetensors held means of 1e30 (damaged, or edited, checksums
    gone) loaded, and `cellsynth generate` then never ended: the sampler's Poisson steps loop
    for such means. Run apart, so that the hang this guards against fails the test in time."""
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import load_file, save_file

    bad = edited(saved("nb"), tmp_path, lambda meta: None)
    params = dict(load_file(str(bad / "params.safetensors")))
    params["mu"] = np.full_like(params["mu"], 1e30)
    save_file(params, str(bad / "params.safetensors"))
    done = subprocess.run([sys.executable, "-m", "cellsynth", "generate", str(bad),
                           "--n-per-type", "2", "--out", str(tmp_path / "x.h5ad"), "--quiet"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "mean counts reach" in done.stderr and "fit it again" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.h5ad").exists()


@pytest.mark.parametrize(("kind", "file", "key", "said"), [
    ("reference", "libraries.safetensors", "libraries", "library sizes that are no cell's"),
    ("scvi", "latent.safetensors", "cov", "latent covariance of 'B cells' that is no covariance"),
])
def test_damaged_arrays_of_a_save_are_refused_at_load_not_a_traceback_at_generation(
        saved, tmp_path, kind, file, key, said) -> None:  # fmt: skip
    """Library sizes of 1e30 loaded, and generation raised numpy's ValueError ('lam value too
    large'); a latent covariance of 1e30 everywhere, numpy's LinAlgError (not positive
    definite)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    bad = edited(saved(kind), tmp_path, lambda meta: None)
    tensors = dict(load_file(str(bad / file)))
    tensors[key] = np.full_like(tensors[key], 1e30)
    save_file(tensors, str(bad / file))
    one_line(lambda: cs.load_model(bad), said, "restore it from the same save, or fit the "
             "model again")


def test_invalid_nb_parameters_say_what_is_wrong_and_how_to_mend_it(saved, tmp_path) -> None:
    """The message was only 'params.safetensors holds invalid values'."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    bad = edited(saved("nb"), tmp_path, lambda meta: None)
    params = dict(load_file(str(bad / "params.safetensors")))
    params["theta"] = np.zeros_like(params["theta"])
    save_file(params, str(bad / "params.safetensors"))
    one_line(lambda: cs.load_model(bad), "dispersions not above 0",
             "restore it from the same save, or fit the model again")
