"""Whether generated cells keep the design: fidelity per combination and condition effects.

:func:`combination_fidelity` scores each (type x covariate levels) combination with enough cells
on both sides as :func:`~cellsynth.metrics.fidelity.fidelity_report` scores a type, beside the
same between two halves of the real cells; :func:`condition_effects` follows.

For each type and a pair of levels of a covariate (Kang: ``stim`` against ``ctrl``), the
per-gene log fold change of mean log-normalised expression between the levels in generated
cells is compared with the same in real cells: Pearson r over all genes and the slope of
generated on real over the genes the real cells change most (attenuated effects: a slope
well below 1). The floor is the same comparison between two random halves of the real cells:
what r a perfect generator could reach on this many real cells.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.labels import missing_labels
from ..data.levels import level_text
from ..errors import listed
from ..seeds import derive_seed
from .fidelity import FidelityConfig, fidelity_report, real_floor
from .space import EvalSpace

logger = logging.getLogger(__name__)

TOP_GENES = 100  # the slope is fitted on the genes the real cells change most
MIN_CELLS = 10  # cells of each level a type needs on both sides
#: cells a combination needs on each side (and in each half of the real cells, for its floor)
MIN_COMBINATION_CELLS = 20
#: covariates with more levels than this get no condition effects (donors: one per pair is noise)
MAX_EFFECT_LEVELS = 6


def combination(obs: pd.DataFrame, label_key: str, keys: list[str]) -> np.ndarray:
    """Each cell's combination as one string: ``"B cells | condition=stim | donor=D7"``."""
    return _named(obs, label_key, keys)[0]


def _named(obs: pd.DataFrame, label_key: str,
           keys: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """:func:`combination`'s names, and the level text of each column they are made of (the
    type as ``astype(str)`` writes it, each covariate by ``level_text``)."""
    text = {label_key: obs[label_key].astype(str).to_numpy()}
    text.update({k: level_text(obs[k]) for k in keys})
    out = text[label_key].astype(object)
    for k in keys:
        out = out + f" | {k}=" + text[k].astype(object)
    return out.astype(str), text


def _levels(names: np.ndarray, text: dict[str, np.ndarray]) -> dict[str, dict[str, str]]:
    """Each combination's name -> ``{column: level}`` (``text``: :func:`_named`'s): the name
    alone is ambiguous where a level holds " | " or "=", the dict is not."""
    _, first = np.unique(names, return_index=True)
    return {str(names[i]): {c: str(v[i]) for c, v in text.items()} for i in first}


def combination_fidelity(space: EvalSpace, real_counts: Any, real_obs: pd.DataFrame,
                         syn_counts: Any, syn_obs: pd.DataFrame, *, label_key: str,
                         keys: list[str], seed: int,
                         min_cells: int = MIN_COMBINATION_CELLS) -> dict[str, Any]:  # fmt: skip
    """Fidelity per (type x levels of ``keys``) combination, beside the real-vs-real floor.

    Returns
    -------
    ``per_combination``: combination -> ``c2st_auc``, ``floor_c2st_auc`` (two halves of the
    combination's real cells; None when a half has fewer than ``min_cells``), ``levels``
    (``{column: level}``, the type's column first: the name is ambiguous where a level holds
    " | " or "="), the other
    per-type metrics of :func:`~cellsynth.metrics.fidelity.fidelity_report`, ``n_real`` and
    ``n_synth``; ``mean_c2st_auc`` and ``mean_floor_c2st_auc`` over combinations with both;
    ``max_c2st_auc``; ``skipped``: combination -> why; ``keys``; ``min_cells``.
    """
    cfg = FidelityConfig(min_cells=min_cells)
    (rc, rtext), (sc, stext) = _named(real_obs, label_key, keys), _named(syn_obs, label_key, keys)
    rep = fidelity_report(space, real_counts, rc, syn_counts, sc, seed=seed, cfg=cfg)
    floor = real_floor(space, real_counts, rc, seed=derive_seed(seed, "floor"), cfg=cfg)
    levels = {**_levels(rc, rtext), **_levels(sc, stext)}
    per = {}
    for c, row in rep["per_type"].items():
        f = floor["per_type"].get(c, {})
        per[c] = {**row, "floor_c2st_auc": f.get("c2st_auc"), "levels": levels.get(c)}
    both = [r for r in per.values() if r["floor_c2st_auc"] is not None]
    return {
        "per_combination": per,
        "mean_c2st_auc": float(np.mean([r["c2st_auc"] for r in both])) if both else None,
        "mean_floor_c2st_auc": (float(np.mean([r["floor_c2st_auc"] for r in both]))
                                if both else None),
        "max_c2st_auc": max((r["c2st_auc"] for r in per.values()), default=None),
        "skipped": rep["skipped"], "keys": list(keys), "min_cells": min_cells,
    }


#: level names read as the reference of an effect ("stim vs ctrl"), lower case
CONTROL_NAMES = frozenset({"ctrl", "control", "controls", "untreated", "unstimulated",
                           "unstim", "baseline", "healthy", "normal", "wt", "wildtype",
                           "wild-type", "wild_type", "vehicle", "mock", "dmso", "pbs"})


def reference_level(counts: pd.Series) -> str:
    """The level effects are measured against, the same whatever the split: the one named as a
    control (:data:`CONTROL_NAMES`: "ctrl", "untreated", "healthy"...), else the most common
    (``counts``: cells per level), ties by name."""
    names = [str(n) for n in counts.index]
    controls = sorted(n for n in names if n.strip().lower() in CONTROL_NAMES)
    if controls:
        return controls[0]
    return min(names, key=lambda n: (-int(counts[n]), n))


def design_report(space: EvalSpace, real_counts: Any, real_obs: pd.DataFrame, syn_counts: Any,
                  syn_obs: pd.DataFrame, *, label_key: str, keys: list[str],
                  seed: int) -> dict[str, Any]:  # fmt: skip
    """:func:`combination_fidelity` over all ``keys``, and for each covariate with at most
    ``MAX_EFFECT_LEVELS`` levels the :func:`condition_effects` of every level against the
    reference (:func:`reference_level`), among the levels both sides have: a level of real
    cells only (a held-out donor, whose cells are all test cells) cannot be generated, and is
    listed in ``levels_not_generated`` (a WARNING) instead of skipping every effect against it.
    Real cells without a level of a covariate (missing: NaN, "", "nan") are left out, with a
    WARNING: they are no level, and no generated cell has one."""
    real_counts, real_obs = _without_missing(real_counts, real_obs, keys)
    out: dict[str, Any] = {"combinations": combination_fidelity(
        space, real_counts, real_obs, syn_counts, syn_obs, label_key=label_key, keys=keys,
        seed=derive_seed(seed, "combinations")), "effects": {}, "levels_not_generated": {}}
    for k in keys:
        counts = pd.Series(level_text(real_obs[k])).value_counts()
        generated = set(level_text(syn_obs[k]))
        only_real = sorted(str(lv) for lv in counts.index if str(lv) not in generated)
        if only_real:
            out["levels_not_generated"][k] = only_real
            logger.warning("covariate %s: %d level(s) of the real test cells were not generated "
                           "(%s): no training cell had them (held-out donors?); their cells are "
                           "left out of the effects and of the combinations scored", k,
                           len(only_real), listed(only_real, 10))  # fmt: skip
        levels = counts[[str(lv) not in only_real for lv in counts.index]]
        if len(levels) > MAX_EFFECT_LEVELS:
            out["effects"][k] = {"skipped": f"{len(levels)} levels: more than "
                                            f"{MAX_EFFECT_LEVELS}"}
            continue
        if len(levels) < 2:
            out["effects"][k] = {"skipped": f"{len(levels)} level(s) in both the real and the "
                                            "generated cells: no pair to compare"}
            continue
        reference = reference_level(levels)
        out["effects"][k] = {
            f"{lv} vs {reference}": condition_effects(
                real_counts, real_obs, syn_counts, syn_obs, label_key=label_key, covariate=k,
                level=str(lv), reference=reference, seed=derive_seed(seed, f"effect:{k}:{lv}"))
            for lv in levels.index if str(lv) != reference}  # fmt: skip
    return out


def _without_missing(counts: Any, obs: pd.DataFrame,
                     keys: list[str]) -> tuple[Any, pd.DataFrame]:  # fmt: skip
    """The real cells with a level of every covariate in ``keys`` (a WARNING per covariate
    for the others: their "nan" read as a level no training cell had)."""
    gone = np.zeros(len(obs), dtype=bool)
    for k in keys:
        miss = missing_labels(obs[k])
        if miss.any():
            logger.warning("covariate %s: %d of the %d real test cells have no level (missing: "
                           "NaN, '', 'nan'): left out of the effects and of the combinations "
                           "scored", k, int(miss.sum()), len(obs))
            gone |= miss
    if not gone.any():
        return counts, obs
    return counts[np.flatnonzero(~gone)], obs[~gone].reset_index(drop=True)


def _lognorm_mean(x: Any) -> np.ndarray:
    x = sp.csr_matrix(x, dtype=np.float64)
    total = np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)
    x = sp.csr_matrix(sp.diags(1e4 / total) @ x)
    x.data = np.log1p(x.data)
    return np.asarray(x.mean(axis=0)).ravel()


def _fit(real: np.ndarray, other: np.ndarray) -> dict[str, float]:
    top = np.argsort(-np.abs(real), kind="stable")[:TOP_GENES]
    r = float(np.corrcoef(real, other)[0, 1]) if real.std() > 0 and other.std() > 0 else 0.0
    slope = float(np.polyfit(real[top], other[top], 1)[0]) if real[top].std() > 0 else 0.0
    return {"r": r, "slope": slope}


def condition_effects(real_counts: Any, real_obs: pd.DataFrame, syn_counts: Any,
                      syn_obs: pd.DataFrame, *, label_key: str, covariate: str, level: str,
                      reference: str, seed: int = 0) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per type: the ``level`` against ``reference`` effect in generated vs real cells.

    Parameters
    ----------
    real_counts, real_obs
        Real (held-out) cells: raw counts and ``obs`` with ``label_key`` and ``covariate``.
    syn_counts, syn_obs
        Generated cells, the same columns.
    label_key, covariate
        The type and covariate columns.
    level, reference
        The two levels compared (``log fold change = level - reference``).
    seed
        Seeds the split of the real cells into halves for the floor.

    Returns
    -------
    ``{type: {"r", "slope", "floor_r", "floor_slope", "n_real", "n_synthetic"}}`` for types
    with at least ``MIN_CELLS`` cells of each level in both; ``{"skipped": reason}`` for others.
    """
    rng = np.random.default_rng(derive_seed(seed, "effect-halves"))
    real_counts, syn_counts = sp.csr_matrix(real_counts), sp.csr_matrix(syn_counts)
    out: dict[str, dict[str, Any]] = {}
    r_type = real_obs[label_key].astype(str).to_numpy()
    s_type = syn_obs[label_key].astype(str).to_numpy()
    r_cov, s_cov = level_text(real_obs[covariate]), level_text(syn_obs[covariate])
    for t in sorted(set(r_type) | set(s_type)):
        rows = {(side, lv): np.flatnonzero((ty == t) & (cv == lv))
                for side, ty, cv in (("real", r_type, r_cov), ("syn", s_type, s_cov))
                for lv in (level, reference)}  # fmt: skip
        small = [f"{side} {lv}: {len(r)}" for (side, lv), r in rows.items() if len(r) < MIN_CELLS]
        if small:
            out[t] = {"skipped": f"fewer than {MIN_CELLS} cells ({', '.join(small)})"}
            continue
        real_lfc = (_lognorm_mean(real_counts[rows["real", level]])
                    - _lognorm_mean(real_counts[rows["real", reference]]))  # fmt: skip
        syn_lfc = (_lognorm_mean(syn_counts[rows["syn", level]])
                   - _lognorm_mean(syn_counts[rows["syn", reference]]))  # fmt: skip
        halves = []
        for lv in (level, reference):
            idx = rng.permutation(rows["real", lv])
            halves.append((idx[: len(idx) // 2], idx[len(idx) // 2:]))
        h1 = _lognorm_mean(real_counts[halves[0][0]]) - _lognorm_mean(real_counts[halves[1][0]])
        h2 = _lognorm_mean(real_counts[halves[0][1]]) - _lognorm_mean(real_counts[halves[1][1]])
        fit, floor = _fit(real_lfc, syn_lfc), _fit(h1, h2)
        out[t] = {**fit, "floor_r": floor["r"], "floor_slope": floor["slope"],
                  "n_real": int(len(rows["real", level]) + len(rows["real", reference])),
                  "n_synthetic": int(len(rows["syn", level]) + len(rows["syn", reference]))}
    return out
