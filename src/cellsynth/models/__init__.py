"""Generators of synthetic cells: user-facing models on top of the pure torch modules."""

from .seed import SeedCVAE

__all__ = ["SeedCVAE"]
