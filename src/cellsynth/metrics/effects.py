"""Whether generated cells keep the effect of a covariate: condition effects per type.

For each type and a pair of levels of a covariate (Kang: ``stim`` against ``ctrl``), the
per-gene log fold change of mean log-normalised expression between the levels in generated
cells is compared with the same in real cells: Pearson r over all genes and the slope of
generated on real over the genes the real cells change most (attenuated effects: a slope
well below 1). The floor is the same comparison between two random halves of the real cells:
what r a perfect generator could reach on this many real cells.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..seeds import derive_seed

TOP_GENES = 100  # the slope is fitted on the genes the real cells change most
MIN_CELLS = 10  # cells of each level a type needs on both sides


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
    r_cov = real_obs[covariate].astype(str).to_numpy()
    s_cov = syn_obs[covariate].astype(str).to_numpy()
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
