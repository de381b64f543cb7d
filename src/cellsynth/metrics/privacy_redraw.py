"""The re-draw attack of the privacy audit: is a generated cell a fresh count draw of a training cell?

A posterior-predictive generator (scvi-tools' ``posterior_predictive_sample``, or any model that
decodes a training cell's own latent state and library size) returns, for a training cell, its
denoised state plus fresh count noise. Such a cell is no copy, and in the evaluation space its
distance to its source is swamped by the noise of both cells in the coordinates that carry
little biology; the plain distance attack of :mod:`cellsynth.metrics.privacy` weighs every PC
alike and drops the library size, which such a generator keeps.

The re-draw attack measures distances where a cell's own state, not its count noise, lives:

- **features**: the evaluation space's PCs and the log library size (a re-draw keeps its source's
  depth; a generator that draws depths independently of states does not);
- **weights from data thinning** (Neufeld, Dharamshi, Gao and Witten 2024, JMLR, "Data thinning
  for convolution-closed distributions"; count splitting, Neufeld et al. 2022): the counts of
  reference cells (real training cells that are not candidates) are split binomially into two
  halves with the same expected profile and independent Poisson noise; per coordinate, the
  correlation of the two halves within a type (Spearman-Brown corrected to full depth) is its
  reliability ``r``, the share of its within-type variance ``v`` that is the cell's state. Each
  squared coordinate difference is weighted by ``r / ((1 - r) v)``: for Gaussian states and
  noise that is the log likelihood ratio of "two draws of one cell" against "two cells of one
  type", so coordinates that are mostly noise count for little;
- **calibration** (GAN-Leaks' calibrated attack, Chen et al. 2020; the DCR ratio of
  synthetic-data audits): a candidate's weighted distance to its closest generated cell is
  divided by its distance to its ``k``-th closest reference cell, so that a cell in a dense
  region, close to everything, is not taken for a member.

Members and non-members are scored alike against the same generated and reference cells, so
without a leak the scores of both come from one distribution and the AUC's null is the
Mann-Whitney one used for every attack (:func:`~cellsynth.metrics.privacy.auc_threshold`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from ..errors import DataError
from .space import EvalSpace, as_csr

logger = logging.getLogger(__name__)

#: the reference neighbour a candidate's closest-generated distance is divided by
REF_K = 10
#: reliabilities are capped here, so that no coordinate's weight is unbounded (``1 / (1 - r)``)
MAX_RELIABILITY = 0.99
#: reference cells whose counts are thinned to estimate the weights (a random subset beyond it)
MAX_THIN_CELLS = 5_000


def features(space: EvalSpace, counts: Any) -> np.ndarray:
    """Cells as ``(n, n_pcs + 1)`` float64: the evaluation space's PCs and ``log1p`` of the
    library size (total counts over every gene)."""
    x = as_csr(counts, len(space.genes))
    lib = np.log1p(np.asarray(x.sum(axis=1), dtype=np.float64).ravel())
    return np.c_[space.embed(x).astype(np.float64), lib]


def _centred(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``z`` minus the mean of its type (the within-type variation)."""
    out = z.copy()
    for t in np.unique(labels):
        out[labels == t] -= out[labels == t].mean(axis=0)
    return out


def thinning_weights(space: EvalSpace, counts: Any, labels: Any, *, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-feature weights of the re-draw distance, from binomial thinning of real counts.

    Parameters
    ----------
    space
        The evaluation space the features are in.
    counts
        Raw (whole-number) counts of real cells that are not candidates of the attack.
    labels
        Their cell types: reliabilities are measured within types (a type's mean is shared
        by every cell of it and tells no cell apart).
    seed
        Seeds the thinning (and the subset above ``MAX_THIN_CELLS``).

    Returns
    -------
    weights, reliability
        ``(n_pcs + 1,)`` each: ``r / ((1 - r) v)`` and ``r``, with ``v`` the within-type
        variance of the feature and ``r`` its reliability (capped at ``MAX_RELIABILITY``).
    """
    x = as_csr(counts, len(space.genes))
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    if x.shape[0] > MAX_THIN_CELLS:
        keep = np.sort(rng.choice(x.shape[0], MAX_THIN_CELLS, replace=False))
        x, labels = x[keep], labels[keep]
    whole = np.rint(x.data).astype(np.int64)
    if whole.size and (whole < 0).any():
        raise DataError("the re-draw attack thins raw counts; give non-negative counts")
    half = x.copy()
    half.data = rng.binomial(whole, 0.5).astype(np.float32)
    rest = sp.csr_matrix((whole - half.data, x.indices, x.indptr), shape=x.shape,
                         dtype=np.float32)  # fmt: skip
    a = _centred(features(space, half), labels)
    b = _centred(features(space, rest), labels)
    v = _centred(features(space, x), labels).var(axis=0)
    denom = np.sqrt((a * a).mean(axis=0) * (b * b).mean(axis=0))
    r_half = np.where(denom > 0, (a * b).mean(axis=0) / np.where(denom > 0, denom, 1.0), 0.0)
    r_half = np.clip(r_half, 0.0, None)
    rel = np.minimum(2.0 * r_half / (1.0 + r_half), MAX_RELIABILITY)  # Spearman-Brown
    weights = np.where(v > 0, rel / ((1.0 - rel) * np.where(v > 0, v, 1.0)), 0.0)
    return weights, rel


@dataclass
class RedrawSpace:
    """What the re-draw attack needs besides the candidates: the evaluation space, the
    per-feature weights (:func:`thinning_weights`) and the reference cells' weighted features."""

    space: EvalSpace
    weights: np.ndarray  # (n_pcs + 1,) per-feature weights of squared differences
    reliability: np.ndarray  # (n_pcs + 1,) each feature's reliability
    reference: np.ndarray  # (n_ref, n_pcs + 1) weighted features of the reference cells
    ref_k: int = REF_K

    def embed(self, counts: Any) -> np.ndarray:
        """Weighted features (``features * sqrt(weights)``): Euclidean distances between them
        are the re-draw distance."""
        return features(self.space, counts) * np.sqrt(self.weights)

    def summary(self) -> dict[str, Any]:
        """JSON-ready settings: the reference size, ``ref_k`` and the reliabilities."""
        return {"reference_cells": len(self.reference), "ref_k": self.ref_k,
                "library_reliability": float(self.reliability[-1]),
                "pc_reliability_median": float(np.median(self.reliability[:-1]))}


def fit_redraw_space(space: EvalSpace, reference_counts: Any, reference_labels: Any = None, *,
                     seed: int, ref_k: int = REF_K) -> RedrawSpace:  # fmt: skip
    """The re-draw attack's weights and reference, from real cells that are not candidates
    (in :func:`~cellsynth.metrics.privacy_counts.audit_counts`: the training cells the space was
    fitted on)."""
    x = as_csr(reference_counts, len(space.genes))
    labels = (np.zeros(x.shape[0], dtype=str) if reference_labels is None
              else np.asarray(reference_labels).astype(str))  # fmt: skip
    if len(labels) != x.shape[0]:
        raise DataError(f"{len(labels)} reference labels for {x.shape[0]} reference cells")
    if x.shape[0] <= ref_k:
        raise DataError(f"the re-draw attack needs more than ref_k={ref_k} reference cells, got "
                        f"{x.shape[0]}")
    weights, rel = thinning_weights(space, x, labels, seed=seed)
    out = RedrawSpace(space, weights, rel, np.empty((0, len(weights))), ref_k)
    out.reference = out.embed(x)
    logger.info("privacy: re-draw attack weights from %d reference cells (library reliability "
                "%.2f, median PC reliability %.2f)", x.shape[0], rel[-1], np.median(rel[:-1]))
    return out


def redraw_scores(rs: RedrawSpace, candidates: Any, synthetic: Any) -> np.ndarray:
    """Each candidate's score (higher: more likely a member): minus its re-draw distance to the
    closest generated cell over its distance to its ``ref_k``-th closest reference cell.

    Parameters
    ----------
    rs
        :func:`fit_redraw_space`'s result.
    candidates, synthetic
        Raw counts (cells x the space's genes) of the cells scored and of the generated cells.
    """
    c, s = rs.embed(candidates), rs.embed(synthetic)
    d_syn = NearestNeighbors(n_neighbors=1).fit(s).kneighbors(c)[0][:, 0]
    d_ref = NearestNeighbors(n_neighbors=rs.ref_k).fit(rs.reference).kneighbors(c)[0][:, -1]
    scale = float(np.median(d_ref[d_ref > 0])) if (d_ref > 0).any() else 1.0
    return -d_syn / np.maximum(d_ref, 1e-9 * scale)
