"""PCA fitted on a class-balanced training subsample, applied chunk by chunk.

The sparse matrix is never densified: centring (and optional scaling) is implicit. Small gene
panels use the exact covariance eigendecomposition; wide ones a randomized SVD whose products
with the centred matrix are computed as ``X @ Q - 1 (mu @ Q)``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from ..config import FeaturesConfig
from ..data.split import balanced_subsample
from ..errors import ModelFileError

logger = logging.getLogger(__name__)

#: gene panels up to this size use the exact covariance eigendecomposition
EXACT_MAX_GENES = 6000


@dataclass
class PCAModel:
    """Loadings and the centring/scaling they apply to."""

    components: np.ndarray  # (n_components, n_genes) float32, rows are PCs
    mean: np.ndarray  # (n_genes,)
    scale: np.ndarray | None  # (n_genes,) standard deviations when scaling, else None
    explained_variance: np.ndarray  # (n_components,)
    explained_variance_ratio: np.ndarray  # (n_components,)
    genes: list[str]

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def transform(self, x, *, chunk_size: int = 10_000) -> np.ndarray:
        """Project cells (sparse or dense, genes as fitted) to PCA space, chunk by chunk."""
        if x.shape[1] != len(self.genes):
            raise ValueError(f"PCA was fitted on {len(self.genes)} genes, data has {x.shape[1]}")
        w = self.components.T.astype(np.float32)  # (G, k)
        mu = self.mean
        if self.scale is not None:
            w = w / self.scale[:, None].astype(np.float32)
        offset = (mu @ w).astype(np.float32)  # (k,)
        out = np.empty((x.shape[0], self.n_components), dtype=np.float32)
        for start in range(0, x.shape[0], chunk_size):
            block = x[start : start + chunk_size]
            prod = block @ w
            out[start : start + chunk_size] = np.asarray(prod) - offset
        return out

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Carry PCA points back to (normalised) gene space: ``z @ W + mu``."""
        x = z @ self.components
        if self.scale is not None:
            x = x * self.scale
        return (x + self.mean).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "components": np.ascontiguousarray(self.components, dtype=np.float32),
            "mean": self.mean.astype(np.float32),
            "explained_variance": self.explained_variance.astype(np.float32),
            "explained_variance_ratio": self.explained_variance_ratio.astype(np.float32),
        }
        if self.scale is not None:
            tensors["scale"] = self.scale.astype(np.float32)
        save_file(tensors, str(directory / "pca.safetensors"))
        (directory / "genes.json").write_text(json.dumps(self.genes))

    @classmethod
    def load(cls, directory: str | Path) -> PCAModel:
        directory = Path(directory)
        for name in ("pca.safetensors", "genes.json"):
            if not (directory / name).is_file():
                raise ModelFileError(f"{directory / name} is missing; re-run the features stage")
        t = load_file(str(directory / "pca.safetensors"))
        genes = json.loads((directory / "genes.json").read_text())
        if t["components"].shape[1] != len(genes):
            raise ModelFileError(f"{directory}: genes.json does not match the PCA loadings")
        return cls(t["components"], t["mean"], t.get("scale"), t["explained_variance"],
                   t["explained_variance_ratio"], genes)


def _mean_var(x) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    mean = np.asarray(x.sum(axis=0)).ravel() / n
    sq = x.multiply(x) if sp.issparse(x) else x * x
    var = np.asarray(sq.sum(axis=0)).ravel() / n - mean**2
    return mean, np.maximum(var, 0)


def _exact(x, mean: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, g = x.shape
    gram = np.zeros((g, g))
    for start in range(0, n, 4096):  # dense BLAS on one block of rows at a time
        block = x[start : start + 4096]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        gram += block.T @ block
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    if k < g // 2:  # only the top k eigenpairs
        evals, evecs = scipy.linalg.eigh(cov, subset_by_index=[g - k, g - 1], driver="evr")
    else:
        evals, evecs = scipy.linalg.eigh(cov, driver="evd")
    order = np.argsort(evals)[::-1][:k]
    return evecs[:, order].T, np.maximum(evals[order], 0)


def _randomized(x, mean: np.ndarray, k: int, rng: np.random.Generator,
                n_iter: int = 4, oversample: int = 10) -> tuple[np.ndarray, np.ndarray]:
    n, g = x.shape
    ell = min(k + oversample, min(n, g))

    def mat(q):  # (X - 1 mu^T) @ q
        return np.asarray(x @ q) - np.outer(np.ones(n), mean @ q)

    def rmat(p):  # (X - 1 mu^T)^T @ p
        return np.asarray(x.T @ p) - np.outer(mean, p.sum(axis=0))

    q = rng.standard_normal((g, ell))
    y = mat(q)
    for _ in range(n_iter):
        y, _ = np.linalg.qr(y)
        y, _ = np.linalg.qr(rmat(y))
        y = mat(y)
    qy, _ = np.linalg.qr(y)
    b = rmat(qy).T  # (ell, g)
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    return vt[:k], (s[:k] ** 2) / max(n - 1, 1)


def fit_pca(x, labels: np.ndarray, genes: list[str], cfg: FeaturesConfig, *, seed: int) -> PCAModel:
    """Fit PCA on at most ``cfg.max_cells_per_class`` training cells of each class.

    The number of components is clamped to what the subsample allows, with a warning.
    """
    idx = balanced_subsample(labels, cfg.max_cells_per_class, seed=seed)
    xs = x[idx]
    if sp.issparse(xs):
        xs = sp.csr_matrix(xs, dtype=np.float64)
    else:
        xs = np.asarray(xs, dtype=np.float64)
    n, g = xs.shape
    k = cfg.n_components
    limit = min(n - 1, g)
    if k > limit:
        logger.warning("features.n_components=%d is more than the data allow (%d cells, %d genes): "
                       "using %d", k, n, g, limit)
        k = limit
    mean, var = _mean_var(xs)
    scale = None
    if cfg.scale:
        scale = np.sqrt(var)
        scale[scale == 0] = 1.0
        xs = sp.csr_matrix(xs.multiply(1.0 / scale[None, :])) if sp.issparse(xs) else xs / scale
        mean = mean / scale
        var = var / scale**2
    total_var = var.sum() * n / max(n - 1, 1)
    if g <= EXACT_MAX_GENES:
        comps, ev = _exact(xs, mean, k)
        method = "exact covariance"
    else:
        comps, ev = _randomized(xs, mean, k, np.random.default_rng(seed))
        method = "randomized SVD"
    # a deterministic sign: the largest loading of each component is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    ratio = ev / total_var if total_var > 0 else np.zeros_like(ev)
    logger.info("PCA (%s) on %d cells x %d genes: %d components explain %.1f%% of variance",
                method, n, g, k, 100 * ratio.sum())
    mean = mean * scale if scale is not None else mean
    return PCAModel(comps.astype(np.float32), mean.astype(np.float32),
                    None if scale is None else scale.astype(np.float32),
                    ev.astype(np.float32), ratio.astype(np.float32), list(genes))
