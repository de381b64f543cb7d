"""scvi-tools' model as :class:`~cellsynth.models.scvi.ScviGenerator` saves and rebuilds it:
the package imported with the install hint, the saved module's files read and checked, and
``scvi.module.VAE`` rebuilt from them (the generator and the ``scvi-pp`` control)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ScviConfig
from ..config_rules import from_dict
from ..errors import CellsynthError, ModelFileError
from ._count_files import read_tensors
from ._design import Design
from ._model_dir import misfit_weights, read_design, saved_settings, setting


def import_scvi() -> Any:
    """The ``scvi`` package, or a :class:`CellsynthError` saying how to install it."""
    try:
        import scvi
    except ImportError as exc:
        raise CellsynthError(
            f"the scvi generator needs scvi-tools ({exc}); install the extra: "
            "pip install 'cellsynth[scvi]'"
        ) from None
    return scvi


def load_design(directory: Path, meta: dict[str, Any], config: ScviConfig,
                 kwargs: dict[str, Any]) -> Design:  # fmt: skip
    """The saved design, checked against the config's covariates and the decoder's inputs."""
    design = read_design(directory, meta)
    inputs = list(kwargs.get("n_cats_per_cov") or [])  # the decoder's levels per covariate
    if design.keys != list(config.covariates) or inputs != design.n_levels:
        raise ModelFileError(f"{directory / 'config.json'}: the covariate design, "
                             "config.covariates and module_kwargs.n_cats_per_cov disagree; the "
                             "files come from different models")
    return design


#: scvi's module arguments a save writes, each a whole number at least this (``n_cats_per_cov``
#: too, where the model has covariates: a list of them, each at least 1)
MODULE_SIZES = {"n_input": 1, "n_batch": 0, "n_labels": 0, "n_hidden": 1, "n_latent": 1,
                "n_layers": 1}


def read_module_files(
    directory: Path, meta: dict[str, Any], genes: list[str]
) -> tuple[ScviConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The config, module arguments and weights :meth:`ScviGenerator.save` wrote (checked)."""
    with saved_settings(directory):
        config = from_dict(ScviConfig, setting(meta, "config"), "config.")
        kwargs = dict(setting(meta, "module_kwargs"))
        for key, least in MODULE_SIZES.items():
            if setting(meta, f"module_kwargs.{key}", int) < least:
                raise ValueError(f"'module_kwargs.{key}' must be at least {least}, got "
                                 f"{kwargs[key]}")
        sizes = kwargs.get("n_cats_per_cov", [])
        if not isinstance(sizes, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise ValueError(f"'module_kwargs.n_cats_per_cov' must be a list of whole numbers "
                             f"of at least 1, got {sizes!r}")
        unknown = sorted(set(kwargs) - {*MODULE_SIZES, "gene_likelihood", "n_cats_per_cov"})
        if unknown:
            raise ValueError(f"'module_kwargs' holds {unknown}, which no save writes")
        if kwargs["n_input"] != len(genes) or setting(
                meta, "module_kwargs.gene_likelihood", str) != config.gene_likelihood:
            raise ValueError("module_kwargs disagree with genes.json or the config")
    state = {
        k: torch.from_numpy(v) for k, v in read_tensors(directory / "module.safetensors").items()
    }
    return config, kwargs, state


def load_module(scvi: Any, kwargs: dict[str, Any], state: dict[str, torch.Tensor],
                directory: Path) -> torch.nn.Module:  # fmt: skip
    """:func:`build_module` for a saved model: its module's shapes checked against the weights
    first, built without memory (torch's ``meta`` device), so that sizes edited in
    ``config.json`` are one line, not a network of those sizes allocated (gigabytes for a
    hidden layer of 10^9) or torch's error of a line per weight."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in
                      scvi.module.VAE(**kwargs, use_observed_lib_size=True).state_dict().items()}
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelFileError(misfit_weights(directory, exc)) from None
    saved = {k: tuple(v.shape) for k, v in state.items()}
    wrong = ([f"size mismatch for {k}: the weights hold {saved[k]}, the config makes {v}"
              for k, v in shapes.items() if k in saved and saved[k] != v]
             + [f"missing weight {k}" for k in shapes if k not in saved]
             + [f"unexpected weight {k}" for k in saved if k not in shapes])  # fmt: skip
    if wrong:
        raise ModelFileError(misfit_weights(directory, RuntimeError("\n".join(wrong))))
    try:
        return build_module(scvi, kwargs, state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelFileError(misfit_weights(directory, exc)) from None


def build_module(
    scvi: Any, kwargs: dict[str, Any], state: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """``scvi.module.VAE`` as ``scvi.model.SCVI`` builds it, ``state`` loaded, CPU, eval mode."""
    module = scvi.module.VAE(**kwargs, use_observed_lib_size=True)
    module.load_state_dict(state, strict=True)
    return module.cpu().eval()
