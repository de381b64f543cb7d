"""Generators of synthetic cells: user-facing models on top of the pure torch modules."""

from ._design import check_columns as check_covariate_columns
from ._design import training_levels
from ._training import resolve_device as torch_device
from .cvae import CVAE
from .nb import NegBinBaseline
from .registry import GENERATORS, get_generator, load_generator, make_generator
from .scvi import ScviGenerator
from .seed import SeedCVAE
from .seed_counts import SeedGenerator

__all__ = [
    "CVAE",
    "GENERATORS",
    "NegBinBaseline",
    "ScviGenerator",
    "SeedCVAE",
    "SeedGenerator",
    "check_covariate_columns",
    "get_generator",
    "load_generator",
    "make_generator",
    "torch_device",
    "training_levels",
]
