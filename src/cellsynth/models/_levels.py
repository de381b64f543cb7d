"""The gene scale of each covariate level within a type: generated means per level calibrated.

The type's gene scale (:func:`~cellsynth.models._moments.gene_scale_by_moments`) makes a type's
generated gene means equal its training cells' over all of them; a model conditioned on
covariates (donor, condition...) must keep the differences between their levels too, and a
decoder attenuates them (every published generator does: issue 18's condition effect, slope
below 1). So, after the type's scale, each covariate level the type's training cells had gets a
factor per gene: the level's training counts over the counts its cells are expected to have
under the calibrated decoder, shrunk towards one by ``LEVEL_PRIOR_COUNTS`` pseudo-counts (as the
type's scale is), the covariates fitted in turn (backfitting, ``BACKFIT_STEPS`` rounds) so that a
donor's factor is not also a condition's. A generated cell's mean is the decoded mean times its
type's scale times the factors of its levels.

A level with fewer than ``LEVEL_MIN_CELLS`` training cells of the type, or a covariate with one
level in the type, has no factor (one): the decoder's effect alone.

A level that a type's training cells lacked (a combination no training cell had, issue 18) gets
its effect from the other types (:func:`transferred_effects`): in every type that has the level
and some of this type's levels, the log ratio of its mean counts at the level over those levels
(from the training counts alone, backfitted as above); their mean over those types, weighted by
each one's likeness to the type and, per gene, by how consistent the effect is across them
(``mean^2 / (mean^2 + variance)``, or the mean's standard error in place of the variance), the
rule chosen per level by how well it predicts each of those types from the others. A response
the types share (an interferon program) carries over; one of a type's own (genes the other
types change each their own way) mostly does not, and with fewer than ``TRANSFER_MIN_TYPES``
such types nothing does. The level's factor for the type is then what makes the means of cells
decoded at that level the type's training means times that effect (:func:`fit_level_scale`):
the decoder's own carry-over, whatever it is, counted once. Effects are estimated and applied on
one scale, ratios of ``log(counts + library / 10,000)`` (log1p of normalised expression,
:func:`effect_shift`, :func:`carried_target`): a gene the level induces from no counts (an
interferon gene) is raised towards the level the other types reach, where a product with its
mean of about zero had left it there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)

LEVEL_PRIOR_COUNTS = 5.0  # pseudo-counts at the expected count each level's factor is shrunk with
LEVEL_MIN_CELLS = 10  # training cells of a type a level needs for a factor of its own
MAX_LEVEL_SCALE = 1e3  # factors kept in [1 / MAX_LEVEL_SCALE, MAX_LEVEL_SCALE]
MAX_COMBINATIONS = 512  # combinations of levels per type summed at most (beyond: no factors)
BACKFIT_STEPS = 5  # rounds over the covariates when there are several
TRANSFER_MIN_TYPES = 2  # types that have a level, at least, for its effect to carry to others
TRANSFER_DRAWS = 256  # cells decoded per (type, level) pair an effect is carried to
#: how a level's effect is carried to a type that lacks it (:func:`_carry`): (sharpness of the
#: weights by likeness, inf: all types alike; how an effect must be consistent across the types
#: to count), chosen per level by how well each rule predicts the types that have it
TRANSFER_RULES: tuple[tuple[float, str], ...] = tuple(
    (sharp, consistency) for sharp in (0.02, 0.05, 0.1, 0.2, math.inf)
    for consistency in ("spread", "error", "none"))
PROFILE_PSEUDO = 0.01  # counts a cell added to a type's mean counts before the log (likeness)
MAX_TRANSFER_PAIRS = 1024  # (type, level) pairs given a carried effect at most (beyond: none)
MAX_RULE_TYPES = 12  # types a level's carrying rule is chosen on at most (those with most cells)
#: a carried effect is a ratio of log(counts + library / EFFECT_SCALE): log1p of expression
#: normalised to this many counts a cell (:func:`effect_shift`)
EFFECT_SCALE = 1e4


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


def _table(comb: Combinations) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """``comb``'s combination codes ``(m, k)``, sums ``(m, n_genes)``, cells ``(m,)`` and keys."""
    keys = list(comb.index)
    codes = np.array(keys, dtype=np.int64).reshape(len(keys), -1)
    obs = np.stack([comb.sums[comb.index[key]] for key in keys])
    cells = np.array([comb.cells[comb.index[key]] for key in keys], dtype=np.float64)
    return codes, obs, cells, keys


class LevelRows:
    """One covariate's factors ``(n_genes,)`` for the levels given one, every other level one:
    ``rows[levels]`` reads them as a ``(levels, n_genes)`` table would. Held for those levels
    only (a type has a few of a covariate's hundreds of donors; a full table per type was
    types x levels x genes, 14 GB for 200 types of 300 donors and 29,000 genes)."""

    def __init__(self, n_levels: int, levels: np.ndarray, n_genes: int) -> None:
        self.table = np.ones((len(levels) + 1, n_genes))  # the last row: a level without one
        self.row = np.full(n_levels, len(levels))
        self.row[levels] = np.arange(len(levels))

    def __getitem__(self, levels: int | list[int] | np.ndarray) -> np.ndarray:
        return self.table[self.row[levels]]

    def __setitem__(self, level: int, factor: np.ndarray) -> None:
        if self.row[level] == len(self.table) - 1:
            raise KeyError(f"level {level} was not given a factor")
        self.table[self.row[level]] = factor

    def log(self) -> LevelRows:
        """The natural log of every factor (the same levels)."""
        out = object.__new__(LevelRows)
        out.table, out.row = np.log(self.table), self.row
        return out


def _backfit(codes: np.ndarray, obs: np.ndarray, cells: np.ndarray, expected: np.ndarray,
             n_levels: list[int], shift: float = 0.0,
             ) -> tuple[dict[int, LevelRows], dict[int, np.ndarray]]:  # fmt: skip
    """Each covariate's factors (:class:`LevelRows`, ``(levels, n_genes)``) that take
    ``expected`` counts per combination to ``obs`` (backfitted, shrunk by
    ``LEVEL_PRIOR_COUNTS``, plus ``shift`` counts per cell of the level: the scale the factors
    are ratios on), and the codes of the levels given one (covariates with two levels or more
    in the rows, levels with ``LEVEL_MIN_CELLS`` cells or more)."""
    fitted: dict[int, np.ndarray] = {}  # covariate -> codes of the levels given a factor
    for j, n in enumerate(n_levels):
        per_level = np.bincount(codes[:, j], weights=cells, minlength=n)
        if np.count_nonzero(per_level) < 2:  # one level in the type: the type's scale is it
            continue
        fitted[j] = np.flatnonzero(per_level >= LEVEL_MIN_CELLS)
    empty = np.zeros(0, dtype=np.int64)
    factors = {j: LevelRows(n, fitted.get(j, empty), obs.shape[1])
               for j, n in enumerate(n_levels)}  # fmt: skip
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
                pseudo = a + shift * cells[rows].sum()
                ratio = (obs[rows].sum(0) + pseudo) / (excl[rows].sum(0) + pseudo)
                factors[j][lv] = np.clip(ratio, 1 / MAX_LEVEL_SCALE, MAX_LEVEL_SCALE)
    return factors, fitted


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
    codes, obs, cells, keys = _table(observed)
    overall = np.sum(decoded.sums, axis=0) / max(sum(decoded.cells), 1)
    # per combination the decoded mean; one no draw had (a rare one): the type's
    mean = np.stack([decoded.sums[decoded.index[key]] / decoded.cells[decoded.index[key]]
                     if key in decoded.index else overall for key in keys])  # fmt: skip
    expected = mean * cells[:, None] * type_scale[None, :]  # (m, n_genes) under the type scale
    factors, fitted = _backfit(codes, obs, cells, expected, n_levels)
    offsets = _offsets(n_levels)
    return {int(offsets[j] + lv): factors[j][lv] for j, levels in fitted.items() for lv in levels}


def _offsets(n_levels: list[int]) -> np.ndarray:
    """Each covariate's first column in ``level_rows``."""
    return np.concatenate([[0], np.cumsum(n_levels)[:-1]]).astype(int)


def _carry(e: np.ndarray, likeness: np.ndarray, rule: tuple[float, str]) -> np.ndarray:
    """The effect carried from the effects ``e`` ``(S, n_genes)`` of ``S`` types whose likeness
    to the receiving type is ``likeness`` ``(S,)``: their mean weighted by
    ``exp(likeness / sharpness)``, gene by gene times ``mean^2 / (mean^2 + v)`` over the types,
    ``v`` their variance (``"spread"``: an effect the types agree on) or its share of the mean's
    (``"error"``: an effect clear of its standard error), or as it is (``"none"``);
    ``rule = (sharpness, consistency)``."""
    sharpness, consistency = rule
    w = np.exp((likeness - likeness.max()) / sharpness) if math.isfinite(sharpness) else \
        np.ones(len(e))
    out = (w / w.sum()) @ e
    if consistency != "none" and len(e) > 1:
        mean, var = e.mean(0), e.var(0, ddof=1)
        if consistency == "error":
            var = var / len(e)
        out = out * mean**2 / np.maximum(mean**2 + var, 1e-12)
    return out


def _choose_rule(e: np.ndarray, likeness: np.ndarray) -> tuple[float, str]:
    """The :data:`TRANSFER_RULES` rule that best predicts each type's own effect ``e[s]`` from
    the others' (least squares over genes and types; ``likeness`` ``(S, S)``); with fewer than
    three types, the most cautious one (all alike, consistent genes only)."""
    if len(e) < 3:
        return math.inf, "spread"
    rest = [np.flatnonzero(np.arange(len(e)) != s) for s in range(len(e))]
    errors = [sum(float(np.sum((e[s] - _carry(e[r], likeness[s, r], rule)) ** 2))
                  for s, r in enumerate(rest)) for rule in TRANSFER_RULES]  # fmt: skip
    return TRANSFER_RULES[int(np.argmin(errors))]


def _contrast(logf: LevelRows, level: int, ref: list[int], cells: np.ndarray) -> np.ndarray:
    """``log factor(level)`` minus the mean of ``log factor(ref)`` weighted by ``cells`` (cells
    per level, of the type whose levels ``ref`` stand for)."""
    weights = cells[ref]
    return logf[level] - (weights / weights.sum()) @ logf[ref]


def transferred_effects(observed: list[Combinations | None], n_levels: list[int]
                        ) -> dict[tuple[int, int, int], np.ndarray]:  # fmt: skip
    """The log effect on each gene of every covariate level a type's training cells lacked,
    carried over from the types that have it (see the module's docstring).

    Each type's effects come from its training counts alone (:func:`_backfit` with every
    combination expected at the type's mean). For a level, the types that have it give its
    effect relative to the receiving type's own levels; they are weighted by their likeness to
    it (the correlation of log mean counts) and, gene by gene, by how consistent the effect is
    across them, by whichever of :data:`TRANSFER_RULES` best predicted each of them from the
    others (an interferon response: the likeliest type's; programs of each type's own: only
    what they share).

    Parameters
    ----------
    observed
        Per type, its training counts per combination of covariate levels (None: no cells).
    n_levels
        Levels of each covariate.

    Returns
    -------
    ``{(type, covariate, level): (n_genes,) natural-log effects}`` relative to the type's own
    levels of the covariate (weighted by its cells); pairs with fewer than
    ``TRANSFER_MIN_TYPES`` types to carry from are left out, and with more than
    ``MAX_TRANSFER_PAIRS`` pairs none is returned (a warning says so). A level's rule is chosen
    on its ``MAX_RULE_TYPES`` types with the most cells there.
    """
    logf: list[dict[int, LevelRows] | None] = []  # per type, covariate: (levels, n_genes)
    fits: list[dict[int, set[int]]] = []
    per_level: list[list[np.ndarray] | None] = []  # per type, covariate: cells per level
    profiles: dict[int, np.ndarray] = {}  # per type, log mean counts (likeness)
    for t, comb in enumerate(observed):
        if comb is None or comb.overflow or not comb.sums:
            logf.append(None), fits.append({}), per_level.append(None)
            continue
        codes, obs, cells, _ = _table(comb)
        mean = obs.sum(0) / cells.sum()
        profiles[t] = np.log(mean + PROFILE_PSEUDO)
        factors, fitted = _backfit(codes, obs, cells, cells[:, None] * mean[None, :], n_levels,
                                   shift=effect_shift(mean))  # fmt: skip
        logf.append({j: factors[j].log() for j in fitted})
        fits.append({j: set(levels.tolist()) for j, levels in fitted.items()})
        per_level.append([np.bincount(codes[:, j], weights=cells, minlength=n)
                          for j, n in enumerate(n_levels)])  # fmt: skip
    if not profiles:
        return {}
    # per covariate, each level's types with a factor there (ascending), the levels two or more
    # types have: a type's candidates are read from here, not from every type at every level
    # it lacks (types x types x levels: minutes for 300 types of 1,000 donors)
    holders: list[dict[int, list[int]]] = [{} for _ in n_levels]
    for s, fit in enumerate(fits):
        for j, levels in fit.items():
            for lv in levels:
                holders[j].setdefault(lv, []).append(s)
    shared = [sorted(lv for lv, types in held.items() if len(types) >= TRANSFER_MIN_TYPES)
              for held in holders]  # fmt: skip
    pairs = []  # (type, covariate, level, the types to carry from)
    for t, counts in enumerate(per_level):
        if counts is None:
            continue
        for j in range(len(n_levels)):
            own = np.flatnonzero(counts[j] > 0)
            for lv in (lv for lv in shared[j] if counts[j][lv] == 0):
                sources = [s for s in holders[j][lv] if s != t and logf[s] is not None
                           and any(r in fits[s][j] for r in own)]
                if len(sources) >= TRANSFER_MIN_TYPES:
                    pairs.append((t, j, int(lv), sources))
    if len(pairs) > MAX_TRANSFER_PAIRS:
        logger.warning("%d (type, level) pairs no training cell had: more than %d, so none gets "
                       "the level's effect in other types (the decoder's effect alone)",
                       len(pairs), MAX_TRANSFER_PAIRS)  # fmt: skip
        return {}
    have = sorted(profiles)
    likeness = np.zeros((len(observed), len(observed)))
    with np.errstate(invalid="ignore", divide="ignore"):  # a type of constant counts: no likeness
        likeness[np.ix_(have, have)] = np.nan_to_num(
            np.corrcoef(np.stack([profiles[t] for t in have])), nan=0.0)
    out: dict[tuple[int, int, int], np.ndarray] = {}
    rules: dict[tuple[int, int], tuple[float, str]] = {}
    for t, j, lv, sources in pairs:
        if (j, lv) not in rules:  # each source's effect against its own other levels
            most = sorted(sources, key=lambda s: -per_level[s][j][lv])[:MAX_RULE_TYPES]
            mine = np.stack([_contrast(logf[s][j], lv, [r for r in fits[s][j] if r != lv],
                                       per_level[s][j]) for s in most])  # fmt: skip
            rules[(j, lv)] = _choose_rule(mine, likeness[np.ix_(most, most)])
        own = list(np.flatnonzero(per_level[t][j] > 0))
        e = np.stack([_contrast(logf[s][j], lv, [r for r in own if r in fits[s][j]],
                                per_level[t][j]) for s in sources])  # fmt: skip
        out[(t, j, lv)] = _carry(e, likeness[t, sources], rules[(j, lv)])
    return out


def effect_shift(mean: np.ndarray) -> float:
    """The counts per cell a carried effect's log ratio is shifted by: one count per
    ``EFFECT_SCALE`` of the type's mean library (``mean``: its mean counts per gene), so that
    effects are ratios of ``log1p`` of normalised expression, the scale single-cell analyses
    read them on, and carry alike between types of other depths."""
    return float(np.sum(mean)) / EFFECT_SCALE


def carried_target(base: np.ndarray, effect: np.ndarray, shift: float) -> np.ndarray:
    """A type's counts ``base`` at its own levels moved by a carried log ``effect`` on the
    scale it was estimated on, ``log(counts + shift)`` (:func:`effect_shift`, times the type's
    cells): ``(base + shift) exp(effect) - shift``, at least 0. A gene the level induces from
    no counts is raised towards the level the other types reach (a product with its mean of
    about zero left it there: Kang's CD14+ Monocytes x stim, a third of the carried effect lost)."""
    return np.maximum((np.asarray(base, dtype=np.float64) + shift) * np.exp(effect) - shift, 0.0)


def fit_level_scale(module: torch.nn.Module, observed: list[Combinations | None],
                    decoded: list[Combinations | None], type_scale: torch.Tensor,
                    decode: Callable[[int, int, int], np.ndarray] | None = None,
                    ) -> torch.Tensor | None:  # fmt: skip
    """Fit every type's level factors (:func:`level_factors`) and set them on ``module``
    (``set_level_scale``); returns the table (None: the module has no covariates).

    With ``decode``, also the levels a type lacked (:func:`transferred_effects`):
    ``decode(type, covariate, level)`` returns the ``(n_genes,)`` mean of cells of the type
    drawn from its mixture and decoded at that level (their other levels a random training
    cell's), calibrated: the type's scale and the levels' factors fitted so far applied. The
    factor makes that mean the type's training mean times the carried effect, shrunk by
    ``LEVEL_PRIOR_COUNTS`` as the others are.
    """
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
    carried = transferred_effects(observed, n_levels) if decode is not None else {}
    if carried:
        module.set_level_scale(rows, torch.tensor(np.stack(table), dtype=torch.float32))
        offsets, a = _offsets(n_levels), LEVEL_PRIOR_COUNTS
        found = []  # every pair decoded under the seen levels' factors only
        for (t, j, lv), effect in carried.items():
            n = float(sum(observed[t].cells))
            base = np.sum(observed[t].sums, axis=0)
            target = carried_target(base, effect, effect_shift(base / n) * n)  # (n_genes,)
            ratio = (target + a) / (n * decode(t, j, lv) + a)
            found.append((t, int(offsets[j] + lv), np.clip(ratio, 1 / MAX_LEVEL_SCALE,
                                                           MAX_LEVEL_SCALE)))
        for t, col, factor in found:
            rows[t, col] = len(table)
            table.append(factor)
        logger.debug("covariate levels: %d (type, level) pairs no training cell had carry the "
                     "level's effect in other types", len(found))  # fmt: skip
    out = torch.tensor(np.stack(table), dtype=torch.float32)
    module.set_level_scale(rows, out)
    return out
