"""Pure torch modules: tensors in, tensors (or distributions) out; no files, no AnnData."""

from .seed_vae import LossOutput, SeedVAEModule

__all__ = ["LossOutput", "SeedVAEModule"]
