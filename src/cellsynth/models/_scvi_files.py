"""scvi-tools' model as :class:`~cellsynth.models.scvi.ScviGenerator` saves and rebuilds it:
the package imported with the install hint, the saved module's files read and checked, and
``scvi.module.VAE`` rebuilt from them (the generator and the ``scvi-pp`` control)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ScviConfig
from ..config_rules import from_dict
from ..errors import CellsynthError, ConfigError, ModelFileError
from ._count_files import read_tensors
from ._design import Design


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
    design = Design.from_json(meta.get("design"))
    inputs = list(kwargs.get("n_cats_per_cov") or [])  # the decoder's levels per covariate
    if design.keys != list(config.covariates) or inputs != design.n_levels:
        raise ModelFileError(f"{directory / 'config.json'}: the covariate design, "
                             "config.covariates and module_kwargs.n_cats_per_cov disagree; the "
                             "files come from different models")
    return design


def read_module_files(
    directory: Path, meta: dict[str, Any], genes: list[str]
) -> tuple[ScviConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """The config, module arguments and weights :meth:`ScviGenerator.save` wrote (checked)."""
    try:
        config = from_dict(ScviConfig, meta["config"])
        kwargs = dict(meta["module_kwargs"])
        if kwargs["n_input"] != len(genes) or kwargs["gene_likelihood"] != config.gene_likelihood:
            raise ValueError("module_kwargs disagree with genes.json or the config")
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{directory / 'config.json'} is invalid: {exc}") from None
    state = {
        k: torch.from_numpy(v) for k, v in read_tensors(directory / "module.safetensors").items()
    }
    return config, kwargs, state


def build_module(
    scvi: Any, kwargs: dict[str, Any], state: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """``scvi.module.VAE`` as ``scvi.model.SCVI`` builds it, ``state`` loaded, CPU, eval mode."""
    module = scvi.module.VAE(**kwargs, use_observed_lib_size=True)
    module.load_state_dict(state, strict=True)
    return module.cpu().eval()
