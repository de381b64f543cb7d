"""The simulated atlas's design with a known answer: donors and conditions, and what each does
to the gene means (:func:`.simulate.simulate_atlas` with ``n_donors`` or ``n_conditions``).

Every cell gets a donor (``D0``, ``D1``...) and a condition (``ctrl``, ``stim``, ``stim2``...). A
donor multiplies the mean of a random subset of genes by ``exp(lfc)``; a condition other than
``ctrl`` multiplies, per type, a program of genes (a core shared by the types, scaled by the
type's response, and genes of the type's own) by ``exp(lfc)``. The effects come from random
streams of their own (:func:`stream` keys ``(3, ...)``), so without them the atlas is the same bit
for bit, and :func:`truth` states them in ``uns["simulation"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .simulate import _Model

DONOR_KEY, CONDITION_KEY, REFERENCE = "donor", "condition", "ctrl"


def stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def type_names(n_types: int) -> list[str]:
    return [f"type_{t:0{max(2, len(str(n_types - 1)))}d}" for t in range(n_types)]


@dataclass(frozen=True)
class Effects:
    """Donors and conditions: who is what, and what it does to the gene means."""

    n_donors: int  # 0: no donor column
    n_conditions: int  # 0: no condition column
    donor: np.ndarray  # (n_cells,) donor code (0 without donors)
    condition: np.ndarray  # (n_cells,) condition code, 0 = ctrl
    donor_genes: np.ndarray  # (k,) nuclear genes every donor shifts
    donor_lfc: np.ndarray  # (n_donors, k) natural-log fold change of each donor
    #: per type, per condition after ``ctrl``: (nuclear genes, their natural-log fold changes)
    programs: list[list[tuple[np.ndarray, np.ndarray]]]

    def component(self, types: np.ndarray, cells: np.ndarray, n_types: int) -> np.ndarray:
        """Code of (type, donor, condition) of components of cells ``cells``."""
        return types + n_types * (self.donor[cells] + max(self.n_donors, 1) * self.condition[cells])

    def shares(self, model: _Model, code: int) -> np.ndarray:
        """The gene shares of component ``code``: the type's, times the covariates' effects."""
        n_types = len(model.proportions)
        t, rest = code % n_types, code // n_types
        d, c = rest % max(self.n_donors, 1), rest // max(self.n_donors, 1)
        q = model.q[t].copy()
        if self.n_donors:
            q[self.donor_genes] *= np.exp(self.donor_lfc[d])
        if c:
            genes, lfc = self.programs[t][c - 1]
            q[genes] *= np.exp(lfc)
        return q


def level_names(n_donors: int, n_conditions: int) -> tuple[list[str], list[str]]:
    conditions = [REFERENCE, "stim", *(f"stim{c}" for c in range(2, n_conditions))]
    return [f"D{d}" for d in range(n_donors)], conditions[:n_conditions]


def make_effects(model: _Model, n_cells: int, n_donors: int, n_conditions: int,
                  seed: int) -> Effects:  # fmt: skip
    """Covariates of every cell and their effects, from random streams of their own."""
    n_types, n_nuc = model.q.shape
    log_q = np.log(model.q)
    visible = np.flatnonzero(log_q.mean(axis=0) > np.median(log_q.mean(axis=0)))
    rng = stream(seed, 3, 0)  # donors: about equal shares, uneven
    donor, genes, lfc = np.zeros(n_cells, np.int64), np.zeros(0, np.int64), np.zeros((0, 0))
    if n_donors:
        donor = rng.choice(n_donors, n_cells, p=rng.dirichlet(np.full(n_donors, 5.0)))
        size = min(int(np.clip(n_nuc // 20, 5, 500)), len(visible))
        genes = np.sort(rng.choice(visible, size, replace=False))
        lfc = rng.normal(0.0, 0.4, (n_donors, len(genes)))
    rng = stream(seed, 3, 1)  # conditions: equal shares, a program per type
    condition = rng.integers(n_conditions, size=n_cells) if n_conditions else np.zeros_like(donor)
    k = min(int(np.clip(n_nuc // 60, 5, 100)), len(visible) // 2)
    programs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_types)]
    for _ in range(1, n_conditions):
        core = rng.choice(visible, k, replace=False)
        core_lfc = rng.normal(1.5, 0.3, k) * np.where(rng.random(k) < 0.75, 1, -1)
        for t in range(n_types):
            own = np.setdiff1d(np.flatnonzero(log_q[t] > np.median(log_q[t])), core)
            own = rng.choice(own, min(k, len(own)), replace=False)
            own_lfc = rng.normal(1.2, 0.3, len(own)) * np.where(rng.random(len(own)) < 0.75, 1, -1)
            order = np.argsort(np.concatenate([core, own]))
            both = np.concatenate([core_lfc * rng.uniform(0.6, 1.4), own_lfc])
            programs[t].append((np.concatenate([core, own])[order], both[order]))
    return Effects(n_donors, n_conditions, donor, condition, genes, lfc, programs)


def truth(effects: Effects, genes: pd.Index, n_mito: int, q: np.ndarray) -> dict[str, Any]:
    """``uns["simulation"]``: the covariates' effects as plain JSON values; ``q`` is the
    types' gene shares (types x nuclear genes), from which each condition's change of a type's
    total counts follows (``total_ratio``)."""
    donors, conditions = level_names(effects.n_donors, effects.n_conditions)
    n_types = len(q)

    def names(nuclear: np.ndarray) -> list[str]:
        return [str(g) for g in genes[nuclear + n_mito]]

    out: dict[str, Any] = {
        "effects": "a cell's mean count of a gene, at its library size, is multiplied by "
                   "exp(log_fold_change) (natural log) for its donor and its condition; the "
                   "genes' shares are not renormalised, so a cell's total counts change too "
                   "(total_ratio: per condition, each type's mean nuclear total over ctrl's), "
                   "and fold changes of counts normalised per cell differ from these by it",
        "donor_key": DONOR_KEY, "donors": donors,
        "condition_key": CONDITION_KEY, "conditions": conditions,
        "reference": REFERENCE}  # fmt: skip
    if effects.n_donors:
        out["donor_shift"] = {"genes": names(effects.donor_genes), "log_fold_change": {
            d: [float(v) for v in effects.donor_lfc[i]] for i, d in enumerate(donors)}}
    out["condition_programs"] = {
        t: {c: {"genes": names(g), "log_fold_change": [float(v) for v in lfc]}
            for c, (g, lfc) in zip(conditions[1:], effects.programs[k], strict=True)}
        for k, t in enumerate(type_names(n_types))}  # fmt: skip
    out["total_ratio"] = {  # 1 + sum of the program genes' shares times (exp(lfc) - 1)
        c: [float(1 + q[k, g] @ np.expm1(lfc)) for k, (g, lfc) in
            enumerate(effects.programs[t][i] for t in range(n_types))]
        for i, c in enumerate(conditions[1:])}  # fmt: skip
    return out
