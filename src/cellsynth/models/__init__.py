"""Generators of synthetic cells: user-facing models on top of the pure torch modules."""

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
    "get_generator",
    "load_generator",
    "make_generator",
]
