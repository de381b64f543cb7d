"""The gene scale of each covariate level within a type: generated means per level calibrated.

The type's gene scale (:func:`~cellsynth.models._counts.gene_scale_by_moments`) makes a type's
generated gene means equal its training cells' over all of them; a model conditioned on
covariates (donor, condition...) must keep the differences between their levels too, and a
decoder attenuates them (every published generator does: issue 18's condition effect, slope
below 1). So, after the type's scale, each covariate level the type's training cells had gets a
factor per gene: the level's training counts over the counts its cells are expected to have
under the calibrated decoder, shrunk towards one by ``LEVEL_PRIOR_COUNTS`` pseudo-counts (as the
type's scale is), the covariates fitted in turn (backfitting, ``BACKFIT_STEPS`` rounds) so that a
donor's factor is not also a condition's. A generated cell's mean is the decoded mean times its
type's scale times the factors of its levels.

A level that a type's training cells lacked has no factor (one): its effect on that type, a
combination no training cell had, comes from the decoder alone; so does a level with fewer than
``LEVEL_MIN_CELLS`` training cells of the type, or a covariate with one level in the type.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

LEVEL_PRIOR_COUNTS = 5.0  # pseudo-counts at the expected count each level's factor is shrunk with
LEVEL_MIN_CELLS = 10  # training cells of a type a level needs for a factor of its own
MAX_LEVEL_SCALE = 1e3  # factors kept in [1 / MAX_LEVEL_SCALE, MAX_LEVEL_SCALE]
MAX_COMBINATIONS = 512  # combinations of levels per type summed at most (beyond: no factors)
BACKFIT_STEPS = 5  # rounds over the covariates when there are several


class Combinations:
    """One type's rows (counts or decoded means) summed per combination of covariate levels."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, ...], int] = {}
        self.sums: list[np.ndarray] = []
        self.cells: list[int] = []
        self.overflow = False  # more than MAX_COMBINATIONS combinations: the type gets none

    def add(self, x: torch.Tensor, c: torch.Tensor) -> None:
        """Add rows ``x`` ``(B, n_genes)`` with covariate codes ``c`` ``(B, k)``."""
        codes = c.cpu().numpy()
        uniq, inv = np.unique(codes, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        for i, row in enumerate(uniq):
            key = tuple(int(v) for v in row)
            j = self.index.get(key)
            if j is None:
                if len(self.index) >= MAX_COMBINATIONS:
                    self.overflow = True
                    continue
                j = self.index[key] = len(self.sums)
                self.sums.append(np.zeros(x.shape[1]))
                self.cells.append(0)
            sel = torch.from_numpy(np.flatnonzero(inv == i)).to(x.device)
            self.sums[j] += x[sel].sum(0, dtype=torch.float64).cpu().numpy()
            self.cells[j] += len(sel)


def level_factors(observed: Combinations, decoded: Combinations, type_scale: np.ndarray,
                  n_levels: list[int]) -> dict[int, np.ndarray]:  # fmt: skip
    """One type's factor per covariate level and gene (see the module's docstring).

    Parameters
    ----------
    observed
        The type's training counts per combination (those the sampler's fit used).
    decoded
        Decoded means (the type's scale not applied) of cells drawn from the type's mixture,
        each with the levels of a random training cell of the type, per combination.
    type_scale
        ``(n_genes,)`` the type's gene scale.
    n_levels
        Levels of each covariate.

    Returns
    -------
    ``{column: (n_genes,) factors}``, the column a level's in ``level_rows`` (the covariate's
    offset plus the level's code); levels without a factor are left out.
    """
    if observed.overflow or not observed.sums or not decoded.sums:
        return {}
    keys = list(observed.index)
    codes = np.array(keys, dtype=np.int64).reshape(len(keys), -1)  # (m, k)
    obs = np.stack([observed.sums[observed.index[key]] for key in keys])  # (m, n_genes)
    cells = np.array([observed.cells[observed.index[key]] for key in keys], dtype=np.float64)
    overall = np.sum(decoded.sums, axis=0) / max(sum(decoded.cells), 1)
    # per combination the decoded mean; one no draw had (a rare one): the type's
    mean = np.stack([decoded.sums[decoded.index[key]] / decoded.cells[decoded.index[key]]
                     if key in decoded.index else overall for key in keys])  # fmt: skip
    expected = mean * cells[:, None] * type_scale[None, :]  # (m, n_genes) under the type scale
    fitted: dict[int, np.ndarray] = {}  # covariate -> codes of the levels given a factor
    for j, n in enumerate(n_levels):
        per_level = np.bincount(codes[:, j], weights=cells, minlength=n)
        if np.count_nonzero(per_level) < 2:  # one level in the type: the type's scale is it
            continue
        fitted[j] = np.flatnonzero(per_level >= LEVEL_MIN_CELLS)
    factors = {j: np.ones((n, obs.shape[1])) for j, n in enumerate(n_levels)}
    a = LEVEL_PRIOR_COUNTS
    for _ in range(BACKFIT_STEPS if len(fitted) > 1 else 1):
        for j, levels in fitted.items():
            other = np.ones_like(expected)
            for i in fitted:
                if i != j:
                    other *= factors[i][codes[:, i]]
            excl = expected * other  # expected counts with every factor but covariate j's
            for lv in levels:
                rows = codes[:, j] == lv
                ratio = (obs[rows].sum(0) + a) / (excl[rows].sum(0) + a)
                factors[j][lv] = np.clip(ratio, 1 / MAX_LEVEL_SCALE, MAX_LEVEL_SCALE)
    offsets = np.concatenate([[0], np.cumsum(n_levels)[:-1]]).astype(int)
    return {int(offsets[j] + lv): factors[j][lv] for j, levels in fitted.items() for lv in levels}


def fit_level_scale(module: torch.nn.Module, observed: list[Combinations | None],
                    decoded: list[Combinations | None],
                    type_scale: torch.Tensor) -> torch.Tensor | None:  # fmt: skip
    """Fit every type's level factors (:func:`level_factors`) and set them on ``module``
    (``set_level_scale``); returns the table (None: the module has no covariates)."""
    n_levels = list(module.n_covariate_levels)
    if not n_levels:
        return None
    rows = torch.zeros_like(module.level_rows, device="cpu")
    table = [np.ones(module.n_input)]
    scale = type_scale.double().cpu().numpy()
    skipped = 0
    for t in range(module.n_labels):
        if observed[t] is None or decoded[t] is None:
            continue
        skipped += observed[t].overflow
        for col, factor in level_factors(observed[t], decoded[t], scale[t], n_levels).items():
            rows[t, col] = len(table)
            table.append(factor)
    if skipped:
        logger.warning("%d type(s) have more than %d combinations of covariate levels: their "
                       "levels get no gene scale of their own (the decoder's effects alone)",
                       skipped, MAX_COMBINATIONS)  # fmt: skip
    out = torch.tensor(np.stack(table), dtype=torch.float32)
    module.set_level_scale(rows, out)
    return out
