"""The count-space generators by name: build one from the run config, or load a saved one.

Classes are imported only when asked for, so ``scvi`` costs nothing unless it is used.
"""

from __future__ import annotations

import json
import logging
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import keys as K
from ..config import MODEL_ALIASES, MODEL_SECTIONS, RunConfig, canonical_model, covariates_of
from ..errors import ConfigError, ModelFileError
from ..paths import expand_user
from ._design import training_levels
from ._model_dir import refuse_pca_space
from ._training import resolve_device
from .base import Generator

logger = logging.getLogger(__name__)

#: generator name -> ``"module:Class"`` (old names: ``config.MODEL_ALIASES``)
GENERATORS: dict[str, str] = {
    "cvae": "cellsynth.models.cvae:CVAE",
    "copy": "cellsynth.models.controls:CopyGenerator",  # a control for benchmarks only
    "nb": "cellsynth.models.nb:NegBinBaseline",
    "reference": "cellsynth.models.seed_counts:SeedGenerator",
    "scvi": "cellsynth.models.scvi:ScviGenerator",
    "scvi-pp": "cellsynth.models.controls:ScviPosteriorGenerator",  # a control, likewise
}


def get_generator(name: str) -> type:
    """The generator class registered as ``name`` (an old name is accepted with a warning)."""
    name = canonical_model(name)
    if name not in GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
    module, cls = GENERATORS[name].split(":")
    return getattr(import_module(module), cls)


def make_generator(name: str, run_config: RunConfig) -> Generator:
    """A new, unfitted generator ``name`` built from its section(s) of ``run_config``."""
    name = canonical_model(name)
    cls = get_generator(name)
    if name == "cvae":
        return cls(config=run_config.cvae)
    if name == "reference":
        return cls(run_config.seed_vae, run_config.features, target_sum=run_config.qc.target_sum)
    if name in ("scvi", "scvi-pp"):
        return cls(config=run_config.scvi)
    if name == "nb":
        return cls(covariate_keys=run_config.nb.covariates, min_cells=run_config.nb.min_cells)
    return cls()


def _name_of(model: Any) -> str | None:
    """The registry name for a ``config.json`` ``model`` value (a registry name, an old name such
    as ``"seed"`` written by earlier versions, or a class name)."""
    model = MODEL_ALIASES.get(model, model) if isinstance(model, str) else model
    for name, target in GENERATORS.items():
        if model in (name, target.split(":")[1]):
            return name
    return None


def load_generator(directory: str | Path) -> Generator:
    """Load a saved generator of any registered kind, dispatching on ``config.json``'s ``model``."""
    directory = expand_user(directory, "the model directory")  # ~/models/cvae, as a writer
    path = directory / "config.json"
    if directory.is_file():
        raise ModelFileError(f"{directory} is a file, not a model directory: give the directory "
                             "cellsynth fit (or a run's generator/) wrote")
    if not path.is_file():
        run = directory
        if (run / "manifest.json").is_file():  # a run directory: its generator is inside
            inside = [d for d in ("generator", "generator_ddp") if (run / d / "config.json").is_file()]
            where = (f"give {run / inside[0]}, the generator it saved" if inside else
                     "it has no saved generator yet (its generator stage has not finished)")
            raise ModelFileError(f"{directory} is a run directory, not a saved generator: {where}")
        if not run.exists():  # not a damaged save: nothing is there
            raise ModelFileError(f"{directory} does not exist; give the model directory that "
                                 "cellsynth fit (or a run's generator/) wrote")
        raise ModelFileError(f"{path} is missing; {directory} is not a saved generator: give the "
                             "directory that cellsynth fit (or a run's generator/) wrote, or "
                             "copy the whole directory again")
    try:
        model = json.loads(path.read_text()).get("model")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelFileError(f"{path} is corrupt ({exc}): restore it from the same save, or fit "
                             "the model again") from None
    name = _name_of(model)
    if name is None:
        refuse_pca_space(directory, model)
        raise ModelFileError(
            f"{path} names the model {model!r}, which is not a generator cellsynth saves "
            f"(known: {', '.join(GENERATORS)}): give a directory that cellsynth fit or a save "
            "wrote, or, if this is one and its config.json was edited, restore the file from "
            "the same save"
        )
    _warn_earlier_run(directory)
    return get_generator(name).load(directory)


def _warn_earlier_run(directory: Path) -> None:
    """Warn when ``directory`` is a run's ``generator/`` that its run no longer calls done: a
    rerun with other settings or data stopped before it trained its own, so the model there
    is an earlier run's, not the one the run's ``config.toml`` describes."""
    manifest = directory.parent / "manifest.json"
    if directory.name not in ("generator", "generator_ddp") or not manifest.is_file():
        return
    try:
        entry = json.loads(manifest.read_text())["stages"]["generator"]
        status = entry["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a run's record, or one without a generator stage
    if status != "done":
        logger.warning("%s was saved by an earlier run of %s: that run's generator stage is "
                       "%s since (a rerun with other settings or data did not finish it), so "
                       "this model is not the one its config.toml describes; run the same "
                       "cellsynth run again to train that one", directory, directory.parent,
                       status)


def check_design(cfg: RunConfig, model: str, obs: pd.DataFrame, label_key: str) -> None:
    """The covariates generator ``model`` conditions on, checked in the prepared cells ``obs``
    (their split column) as its fit reads them, before any model is trained: levels of the
    training cells (not too many, none differing by spaces), none missing among the cells it
    reads (nb its training cells; cvae and scvi their validation cells too, for early
    stopping)."""
    keys = covariates_of(cfg, model)
    if not keys:
        return
    split = obs[K.SPLIT].astype(str).to_numpy()
    reads = ["train"] if canonical_model(model) == "nb" else ["train", "val"]
    training_levels(obs, keys, label_key, np.flatnonzero(split == "train"),
                    np.flatnonzero(np.isin(split, reads)))


#: the generators that need a package beyond cellsynth's own requirements (an extra)
NEEDS_SCVI = ("scvi", "scvi-pp")


def check_generator_package(name: str) -> None:
    """The package generator ``name`` needs beyond cellsynth's own (scvi-tools for ``scvi``
    and ``scvi-pp``) imported, said before any fit: its fit imported it, after the fits and
    data sets before it (a CellsynthError with the extra to install)."""
    if MODEL_ALIASES.get(name, name) in NEEDS_SCVI:
        from ._scvi_files import import_scvi

        import_scvi()


def check_generator_device(cfg: RunConfig) -> None:
    """The generator's device, said before any stage as the classifier's is: found by the
    generator stage, it would mark a generator trained before failed and the stages after it
    stale, so going back to the earlier settings would train it again."""
    section = MODEL_SECTIONS.get(cfg.generator.model)
    if section is None or not hasattr(getattr(cfg, section), "device"):  # nb, scvi: none
        return
    device = getattr(cfg, section).device
    try:
        resolve_device(device)
    except ConfigError:
        raise ConfigError(f"{section}.device = '{device}', but torch sees no CUDA device here: "
                          f"set {section}.device = 'auto' or 'cpu'") from None
