"""A combination never seen in training: hold every cell of it out, generate it, score it.

``cellsynth benchmark --holdout "cell_type=CD14+ Monocytes,condition=stim"`` removes every cell
of that (type x covariate levels) combination from the training data, fits each generator
(``cvae``, ``nb`` and ``scvi`` conditioned on the covariates named), generates the combination
and scores the generated cells against all the real cells of it, none of which any generator
saw. Beside them:

- **real vs real**: two halves of the combination's real cells (the floor);
- **pooling**: the type's real training cells of the other levels, the answer of a model that
  knows the type but not the covariate (what conditioning must beat);
- ``nb`` is fitted per combination and falls back to the type's fit for a combination it never
  saw, so it answers with the type; ``scvi`` decodes the type's latent Gaussian (pooled over the
  levels) with the held-out levels as its decoder's categorical covariates; a generator that
  cannot condition on covariates generates the type alone.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys as K
from .benchmark import generator_failure
from .config import COVARIATE_SECTIONS, RunConfig
from .data.levels import LevelLookup, level_text
from .errors import DataError, did_you_mean, listed
from .metrics.fidelity import FidelityConfig, fidelity_report, real_floor
from .metrics.genes import gene_fidelity
from .metrics.space import fit_space
from .models.registry import make_generator
from .outputs import md_text, write_json
from .seeds import derive_seed

logger = logging.getLogger(__name__)

#: real cells the held-out combination needs (each half of the floor then has 20)
MIN_HELD_OUT = 40
#: two-sample AUCs this high both mean "told apart every time": the MMD decides between them
SATURATED = 0.99
#: the columns of the held-out table: (key in a row, header, format)
HOLDOUT_COLUMNS = [
    ("c2st_auc", "2-sample AUC ↓", "{:.3f}"),
    ("mmd", "MMD ↓", "{:.4f}"),
    ("knn_precision", "kNN prec ↑", "{:.2f}"),
    ("knn_recall", "kNN rec ↑", "{:.2f}"),
    ("gene_mean_spearman", "gene mean ρ ↑", "{:.3f}"),
    ("gene_auc", "gene AUC ↓", "{:.3f}"),
    ("n_cells", "cells", "{:.0f}"),
]


def parse_holdout(text: str) -> dict[str, str]:
    """``"cell_type=CD14+ Monocytes,condition=stim"`` as ``{column: level}``. A piece without
    ``=`` after a comma goes on the level before it: the comma is the level's own
    (``"cell_type=CD4-positive, alpha-beta T cell,condition=stim"``)."""
    parts: list[str] = []
    for piece in (p for p in text.split(",") if p.strip()):
        if "=" not in piece and parts and "=" in parts[-1]:
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    out: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"--holdout wants COLUMN=LEVEL pairs separated by commas, got "
                            f"{part!r} in {text!r}")
        if key.strip() in out:
            raise DataError(f"--holdout names {key.strip()!r} twice; give each column once")
        out[key.strip()] = value.strip()
    if not out:  # `--holdout ","` or an unset variable: the benchmark would run without one
        raise DataError(f"--holdout names no combination ({text!r}); give COLUMN=LEVEL pairs "
                        "such as 'cell_type=CD14+ Monocytes,condition=stim', or leave --holdout "
                        "out")
    return out


#: training cells of the held-out type at other levels that pooling needs
MIN_POOL = 10


def check_holdout(obs: pd.DataFrame, holdout: dict[str, str], label_key: str,
                  *, after: str = "after QC",
                  split: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, str]]:  # fmt: skip
    """The combination's cells in ``obs`` and ``holdout`` with each level as ``obs`` writes it
    (``cluster=01`` for a column of numbers is ``cluster=1``), after checking that it names the
    type and a covariate, that its columns and levels exist, that it has at least
    :data:`MIN_HELD_OUT` cells, that its type has :data:`MIN_POOL` cells at other levels to
    pool, and that the generators can be conditioned on its covariates once it is held out
    (:func:`_check_conditioning`; ``split``: each cell's split, the prepared cells'; None: every
    cell outside the combination may be a training one, and missing values are not looked
    for: QC may remove their cells). A benchmark checks each data set's
    ``obs`` so before any fit (``after``: what the cells are, for the message), and the prepared
    cells again."""
    mask, levels = _resolve(obs, holdout, label_key)
    n = int(mask.sum())
    if n < MIN_HELD_OUT:
        raise DataError(f"the combination {_shown(levels)} has {n} cells {after}; the held-out "
                        f"benchmark needs at least {MIN_HELD_OUT}: hold out a larger one")
    same_type = level_text(obs[label_key]) == levels[label_key]
    if split is not None:  # pooling reads the type's training cells (benchmark_holdout)
        same_type &= np.asarray(split).astype(str) == "train"
    pool = int((same_type & ~mask).sum())
    if pool < MIN_POOL:
        raise DataError(f"{levels[label_key]} has {pool} {'' if split is None else 'training '}"
                        f"cells {after} outside the combination {_shown(levels)}: pooling its "
                        f"other levels needs at least {MIN_POOL}; hold out a combination whose "
                        "type has other levels")
    _check_conditioning(obs, mask, levels, label_key, split)
    return mask, levels


def _check_conditioning(obs: pd.DataFrame, mask: np.ndarray, levels: dict[str, str],
                        label_key: str, split: np.ndarray | None) -> None:  # fmt: skip
    """Refuse, before any fit, a held-out combination the generators cannot be conditioned on:
    a level that no training cell keeps once the combination is held out (every generator was
    fitted, then refused to generate it), or a covariate the design refuses in the cells they
    are fitted on (missing values, too many levels: refused by the first fit)."""
    from .models import training_levels

    keys = [k for k in levels if k != label_key]
    if split is None:  # a file's cells, some of them QC's to remove: their missing values are
        # checked once the data set is prepared
        train, used = ~mask, np.zeros(len(obs), dtype=bool)
    else:
        split = np.asarray(split).astype(str)
        train, used = ~mask & (split == "train"), ~mask & np.isin(split, ["train", "val"])
    try:
        found = training_levels(obs, keys, label_key, np.flatnonzero(train), np.flatnonzero(used))
    except DataError as err:
        raise DataError(f"--holdout {_shown(levels)} conditions the generators on "
                        f"{', '.join(keys)}, fitted on the cells outside it: {err}") from None
    for key in keys:
        if levels[key] not in found[key]:
            raise DataError(
                f"--holdout {_shown(levels)} holds out every "
                f"{'' if split is None else 'training '}cell of {key}={levels[key]}: no "
                "generator would be trained on the level, so none could generate it; hold out "
                f"a combination whose {key} level other types have too (the {key} levels left "
                f"for training: {listed(found[key], 20)})")


def _shown(holdout: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in holdout.items())


def holdout_mask(obs: pd.DataFrame, holdout: dict[str, str], label_key: str) -> np.ndarray:
    """The cells of the combination ``holdout`` in ``obs``, after checking that it names the
    type and a covariate, and that its columns and levels exist (see :func:`check_holdout`,
    which also counts them)."""
    return _resolve(obs, holdout, label_key)[0]


def _resolve(obs: pd.DataFrame, holdout: dict[str, str],
             label_key: str) -> tuple[np.ndarray, dict[str, str]]:  # fmt: skip
    for i, key in enumerate(holdout):  # a misspelt column first: why the type seems missing
        if key not in obs:
            near = did_you_mean(key, obs.columns)
            hint = "" if near or not i else (
                "; or the rest of a level holding ',' and '=', which the command line cannot "
                "tell from a pair: give holdout={column: level} to "
                "cellsynth.evaluation.run_benchmark")
            raise DataError(f"--holdout: no column {key!r}{near}; the columns are "
                            f"{', '.join(map(str, obs.columns))}{hint}")
    if label_key not in holdout or len(holdout) < 2:
        raise DataError(f"--holdout names the type ({label_key}=...) and at least one covariate "
                        f"(e.g. condition=stim), got {sorted(holdout)}")
    mask = np.ones(len(obs), dtype=bool)
    levels = {}
    for key, level in holdout.items():
        values = level_text(obs[key])
        seen = sorted(set(values))
        code = LevelLookup(seen).code(level)  # a number matches by value: 12 is 12.0
        if code < 0:
            raise DataError(f"--holdout: {key} has no level {level!r}; it has "
                            f"{listed(seen, 20)}")
        mask &= values == seen[code]
        levels[key] = str(seen[code])
    return mask, levels


def _row(space: Any, real: sp.csr_matrix, label: str, other: sp.csr_matrix, seed: int,
         floor: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """The held-out table's numbers for ``other`` cells against the combination's real ones."""
    cfg = FidelityConfig(min_cells=10)
    lab_r, lab_o = np.full(real.shape[0], label), np.full(other.shape[0], label)
    rep = floor or fidelity_report(space, real, lab_r, other, lab_o, seed=seed, cfg=cfg)
    o = rep["overall"]
    return {"c2st_auc": o.get("c2st_auc"), "mmd": o.get("mmd_rbf"),
            "knn_precision": o.get("knn_precision"), "knn_recall": o.get("knn_recall"),
            "gene_mean_spearman": (o.get("gene_stats") or {}).get("mean"),
            "n_cells": int(other.shape[0])}


def benchmark_holdout(pre: ad.AnnData, models: list[str], cfg: RunConfig, out: Path,
                      holdout: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """Hold the combination ``holdout`` out of training, generate it with each of ``models`` and
    score it beside the floor and pooling (see the module docstring).

    Returns
    -------
    ``holdout``, ``n_held_out``, ``rows`` (name -> the :data:`HOLDOUT_COLUMNS` numbers, the
    floor and pooling first) and ``conditioned`` (True: the generator generated the combination;
    ``"fallback"``: it answered with its type's fit (``nb``: an unseen combination); False: it
    cannot condition on the covariates); also written to ``out/holdout.json``.
    """
    label_key = cfg.dataset.label_key
    held, holdout = check_holdout(pre.obs, holdout, label_key, split=pre.obs[K.SPLIT].to_numpy())
    covariates = [k for k in holdout if k != label_key]
    cell_type, where = holdout[label_key], {k: holdout[k] for k in covariates}
    split = pre.obs[K.SPLIT].astype(str).to_numpy()
    y = level_text(pre.obs[label_key])
    counts = sp.csr_matrix(pre.layers[K.COUNTS] if K.COUNTS in pre.layers else pre.X)
    genes = list(map(str, pre.var_names))
    seed = cfg.seed
    train = (split == "train") & ~held
    space = fit_space(counts[train], y[train], genes, seed=derive_seed(seed, "eval-space"))
    real = counts[held]
    label = f"{cell_type} | " + ", ".join(f"{k}={v}" for k, v in where.items())
    floor = real_floor(space, real, np.full(real.shape[0], label),
                       seed=derive_seed(seed, "floor"), cfg=FidelityConfig(min_cells=10))
    pool = counts[train & (y == cell_type)]
    if pool.shape[0] < MIN_POOL:  # check_holdout counted the type's cells of every split
        raise DataError(f"{cell_type} has {pool.shape[0]} training cells outside {where}: too "
                        "few to pool; hold out a combination whose type has other levels")
    gseed = derive_seed(seed, "holdout-genes")
    rows = {"real vs real": {**_row(space, real, label, real, seed, floor=floor),
                             "n_cells": int(real.shape[0])},
            "pooling (other levels)": _row(space, real, label, pool, derive_seed(seed, "pool"))}
    pool_genes = gene_fidelity(real, pool, seed=gseed)["overall"]
    rows["real vs real"]["gene_auc"] = pool_genes["floor_auc"]
    rows["pooling (other levels)"]["gene_auc"] = pool_genes["auc"]
    fit_on = pre[np.isin(split, ["train", "val"]) & ~held].copy()
    conditioned = {}
    failed: dict[str, str] = {}
    for name in models:
        t0 = time.perf_counter()
        try:  # the generator's own failure: said, the others still scored
            gen = make_generator(name, _conditioned(cfg, name, covariates))
            gen.fit(fit_on, label_key, seed=derive_seed(seed, f"fit-{name}"))
            can = "where" in inspect.signature(gen.sample).parameters and set(covariates) <= set(
                getattr(getattr(gen, "design", None), "keys", []) or [])
            request = {cell_type: int(real.shape[0])}
            syn = (gen.sample(request, where=where, seed=derive_seed(seed, f"holdout-{name}"))
                   if can else gen.sample(request, seed=derive_seed(seed, f"holdout-{name}")))
        except Exception as err:
            if (why := generator_failure(err)) is None:
                raise
            logger.error("holdout %s failed: %s; the other generators go on", name, why)
            failed[name] = why
            continue
        x = sp.csr_matrix(syn.X)
        rows[name] = _row(space, real, label, x, derive_seed(seed, f"fid-{name}"))
        rows[name]["gene_auc"] = gene_fidelity(real, x, seed=gseed)["overall"]["auc"]
        fell_back = bool((syn.uns.get(K.UNS) or {}).get("fallback_combinations"))
        conditioned[name] = "fallback" if can and fell_back else bool(can)
        logger.info("holdout %s: AUC %.3f (pooling %.3f, floor %.3f) in %.0f s", name,
                    rows[name]["c2st_auc"], rows["pooling (other levels)"]["c2st_auc"],
                    rows["real vs real"]["c2st_auc"], time.perf_counter() - t0)  # fmt: skip
    result = {"holdout": holdout, "n_held_out": int(held.sum()), "rows": rows,
              "conditioned": conditioned, **({"failed": failed} if failed else {})}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "holdout.json", result)
    return result


def _conditioned(cfg: RunConfig, name: str, covariates: list[str]) -> RunConfig:
    """``cfg`` with generator ``name`` conditioned on ``covariates`` too (those that can:
    ``config.COVARIATE_SECTIONS``); the others' settings as they are."""
    section = COVARIATE_SECTIONS.get(name)
    if section is None:
        return cfg
    old = getattr(cfg, section)
    keys = sorted(set(old.covariates) | set(covariates))
    return dataclasses.replace(cfg, **{section: dataclasses.replace(old, covariates=keys)})


def holdout_section(result: dict[str, Any]) -> list[str]:
    """The held-out combination's markdown: the table and one line per generator."""
    from .benchmark import table

    spec = md_text(", ".join(f"{k}={v}" for k, v in result["holdout"].items()))  # a type's <, *
    lines = [f"### Held-out combination: {spec}", "",
             f"All {result['n_held_out']} cells of it were removed from training; every row is "
             "scored against them. Pooling: the type's real training cells of the other levels.",
             "", *table(result["rows"], HOLDOUT_COLUMNS), ""]
    rows = result["rows"]
    for name, cond in result["conditioned"].items():
        how = {True: "generated the combination",
               "fallback": "fell back to the type's fit (it fits seen combinations only)",
               False: "cannot condition on it: generated the type"}[cond]
        others = ["pooling (other levels)", *(["scvi"] if name != "scvi" and "scvi" in rows else [])]
        said = "; ".join(_compared(rows[name], rows[o], o.split(" (")[0]) for o in others)
        lines.append(f"- {name} {how}: AUC {rows[name]['c2st_auc']:.3f}; {said}.")
    lines += [f"- {name} failed (no row): {md_text(why)}"
              for name, why in result.get("failed", {}).items()]
    return [*lines, ""]


def _compared(row: dict[str, Any], other: dict[str, Any], name: str) -> str:
    """Whether ``row`` is closer to the held-out cells than ``other``, in words: by the
    two-sample AUC as the page shows it, or by the MMD where both AUCs are at least
    :data:`SATURATED` (a classifier that tells both from real cells every time ranks neither)."""
    auc, theirs = round(row["c2st_auc"], 3), round(other["c2st_auc"], 3)
    if min(auc, theirs) >= SATURATED and row.get("mmd") is not None and other.get("mmd") is not None:
        closer = round(row["mmd"], 4) < round(other["mmd"], 4)
        return (f"{'closer' if closer else 'not closer'} than {name} by MMD ({row['mmd']:.4f} "
                f"against {other['mmd']:.4f}; both AUCs saturated: {auc:.3f}, {theirs:.3f})")
    return f"{'closer' if auc < theirs else 'not closer'} than {name} ({theirs:.3f})"
