"""``cellsynth evaluate`` / :func:`cellsynth.evaluate` and ``cellsynth benchmark``.

:func:`compare` scores synthetic cells against real ones, beside the real-vs-real floor, from
AnnData objects or h5ad paths. A file is never loaded whole: it is opened with
:class:`~cellsynth.data.store.H5adFile` (``obs`` in memory, matrices on disk), a stratified
subsample of at most ``max_cells`` cells is read (for the real data, a second, disjoint one to
fit the evaluation space on), and everything after works on the subsamples, so memory follows
``max_cells``, not the file's size. :func:`evaluate` writes
``fidelity.json`` and ``fidelity.md`` (the CLI's ``cellsynth evaluate``).
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import config
from .benchmark import benchmark_dataset, flat_report, prepare, table
from .data.io import Expression, check_label, check_shape, check_values, find_counts, is_counts
from .data.split import stratified_subsample
from .data.store import H5adFile
from .errors import DataError
from .metrics.fidelity import fidelity_report, memorisation, real_floor
from .metrics.space import fit_space
from .runtime import write_json, write_text
from .seeds import derive_seed

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger(__name__)

#: the ``real`` / ``synthetic`` source named in a result for an AnnData given in memory
IN_MEMORY = "AnnData"


@dataclass
class _Sample:
    """The cells of one side read for an evaluation: a subsample's counts and labels."""

    counts: sp.csr_matrix  # (n_used, n_genes) raw counts, float32
    labels: np.ndarray  # (n_used,) cell types, str
    genes: pd.Index  # gene names of the columns
    n_total: int  # cells in the input
    source: str  # the path, or "AnnData" for an object in memory
    where: str  # where the counts were found: X, layers/counts or raw.X


def _counts_where(data: Any, what: str, source: str) -> Expression:
    """Where ``data`` (an AnnData or an :class:`H5adFile`) holds raw counts; else a DataError."""
    expr = find_counts(data)
    if expr.counts is None:
        raise DataError(
            f"{what} ({source}) holds normalised values in X and no raw counts in "
            "layers['counts'] or raw.X; evaluation compares counts: give the unnormalised file"
        )
    return expr


def _labels(obs: pd.DataFrame, label_key: str) -> np.ndarray:
    """``obs[label_key]`` as an object array of ``str`` (as ``.astype(str)`` gives, ``"nan"``
    for a missing label), each name one shared object: 8 bytes a cell, not a string each."""
    col = obs[label_key]
    cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
    names = np.append(cat.cat.categories.astype(str).to_numpy(dtype=object), "nan")
    return names[cat.cat.codes.to_numpy()]  # code -1 (missing) picks the last, "nan"


def _read_side(data: Any, label_key: str, pick: Callable[[np.ndarray], np.ndarray],
               what: str) -> _Sample:
    """The cells ``pick(labels)`` (sorted positions) of ``data`` (a path, an AnnData in memory
    or a backed one), read from disk row by row when ``data`` is a file."""
    if isinstance(data, str | Path):
        return _read_file(Path(data), label_key, pick, what)
    if not hasattr(data, "obs") or not hasattr(data, "var_names"):
        raise DataError(f"{what} is a {type(data).__name__}; give an AnnData or an .h5ad path")
    if getattr(data, "isbacked", False):  # layers of a backed AnnData are in memory: use the file
        return _read_file(Path(data.filename), label_key, pick, what)
    check_shape(data, what)
    check_label(data, label_key)
    where = _counts_where(data, what, IN_MEMORY).counts
    labels = _labels(data.obs, label_key)
    rows = _pick_labelled(data.obs, label_key, labels, pick, what)
    if where == "layers/counts":
        x, genes = data.layers["counts"], data.var_names
    elif where == "raw.X":
        x, genes = data.raw.X, data.raw.var_names
    else:
        x, genes = data.X, data.var_names
    x = x[rows] if len(rows) < data.n_obs else x
    return _checked(_Sample(sp.csr_matrix(x, dtype=np.float32), labels[rows], pd.Index(genes),
                            data.n_obs, IN_MEMORY, where), what)


def _pick_labelled(obs: pd.DataFrame, label_key: str, labels: np.ndarray,
                   pick: Callable[[np.ndarray], np.ndarray], what: str) -> np.ndarray:
    """``pick`` among the cells that have a label (sorted positions); cells without one are
    left out with a count in the log, as a run's QC does."""
    known = np.flatnonzero(obs[label_key].notna().to_numpy())
    if len(known) < len(labels):
        logger.warning("%s: %d cells have no label in obs['%s'] and are left out", what,
                       len(labels) - len(known), label_key)  # fmt: skip
    return known[pick(labels[known])]


def _read_file(path: Path, label_key: str, pick: Callable[[np.ndarray], np.ndarray],
               what: str) -> _Sample:
    with H5adFile(path) as h5:
        check_shape(h5, str(path))
        check_label(h5, label_key)
        expr = _counts_where(h5, what, str(path))
        store, genes = h5.matrix(expr)
        labels = _labels(h5.obs, label_key)
        rows = _pick_labelled(h5.obs, label_key, labels, pick, what)
        x = store.take(rows)  # only the subsample's rows are read
        return _checked(_Sample(x, labels[rows], genes, h5.n_obs, str(path), expr.counts), what)


def _real_rows(labels: np.ndarray, max_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint stratified subsamples of the real cells: one (``max_cells`` at most, half
    the cells at most) to evaluate, one (``max_cells`` at most, from the rest) to fit the
    evaluation space on. Returns their sorted positions together and a mask of the first's."""
    n = len(labels)
    ev = stratified_subsample(labels, min(max_cells, -(-n // 2)),
                              seed=derive_seed(seed, "eval-real-cells"))
    rest = np.setdiff1d(np.arange(n), ev, assume_unique=True)
    fit = rest[stratified_subsample(labels[rest], max_cells,
                                    seed=derive_seed(seed, "eval-space-cells"))]
    rows = np.union1d(ev, fit)
    return rows, np.isin(rows, ev, assume_unique=True)


def _checked(sample: _Sample, what: str) -> _Sample:
    values = sample.counts.data
    check_values(values, f"{what} ({sample.source}, {sample.where})")
    if not is_counts(values[:1_000_000]):
        raise DataError(
            f"{what} ({sample.source}) holds non-integer values in {sample.where}; evaluation "
            "compares raw counts: give the unnormalised counts in X, layers['counts'] or raw.X"
        )
    return sample


def compare(
    real: ad.AnnData | str | Path,
    synthetic: ad.AnnData | str | Path,
    *,
    label_key: str,
    seed: int = 0,
    max_cells: int | None = None,
) -> dict[str, Any]:
    """Fidelity of ``synthetic`` against ``real`` counts, beside two halves of ``real``.

    The cells are stratified subsamples (each type keeping its share, every type at least one
    cell), read from disk row by row when given as a path, so memory follows ``max_cells``,
    not the files' sizes: at most ``max_cells`` synthetic cells; at most ``max_cells`` real
    cells (and at most half of them) to score; and, disjoint from those, at most ``max_cells``
    other real cells the evaluation space (HVGs, log1p counts per 10k, 30 PCs) is fitted on.
    Scored cells are never those the space was fitted on (as in a run, where the space is
    fitted on training cells and test cells are scored): a space fitted on the scored real
    cells fits their noise and tells them from any new cells, however alike. Genes are matched
    by name.

    Parameters
    ----------
    real, synthetic
        AnnData objects (in memory or backed) or ``.h5ad`` paths, with raw counts in ``X``,
        ``layers['counts']`` or ``raw.X`` and the cell type in ``obs[label_key]``.
    label_key
        The ``obs`` column holding the cell type, in both.
    seed
        Seeds the subsamples, the evaluation space and every metric.
    max_cells
        Cells used at most from each side (and at most as many real cells again for the
        space); default ``report.max_cells`` (:class:`~cellsynth.config.ReportConfig`).

    Returns
    -------
    dict
        ``real_vs_real``: the floor (:func:`~cellsynth.metrics.fidelity.real_floor` on the
        scored real cells); ``synthetic_vs_real``:
        :func:`~cellsynth.metrics.fidelity.fidelity_report`; ``n_cells``: for ``real`` and
        ``synthetic``, the cells ``used`` (scored) and the ``total`` in the input, and for
        ``real`` the ``space`` cells; ``n_genes`` compared; ``max_cells``, ``seed``,
        ``label_key``; ``real`` and ``synthetic``: the paths (or ``"AnnData"``);
        ``memorisation``: :func:`~cellsynth.metrics.fidelity.memorisation` (``flagged`` when the
        synthetic cells copy real ones: an AUC below 0.4, exact or near copies, or the real
        file itself), also a WARNING in the log and a line in ``fidelity.md``.
    """
    max_cells = config.ReportConfig().max_cells if max_cells is None else int(max_cells)
    if max_cells < 4:
        raise DataError(f"max_cells must be at least 4 (the floor splits the real cells in "
                        f"halves), got {max_cells}")
    picked: dict[str, np.ndarray] = {}

    def real_rows(labels: np.ndarray) -> np.ndarray:
        rows, picked["evaluated"] = _real_rows(labels, max_cells, seed)
        return rows

    def synthetic_rows(labels: np.ndarray) -> np.ndarray:
        return stratified_subsample(labels, max_cells, seed=derive_seed(seed, "eval-synthetic-cells"))

    r = _read_side(real, label_key, real_rows, "the real data")
    s = _read_side(synthetic, label_key, synthetic_rows, "the synthetic data")
    in_synth = set(map(str, s.genes))
    genes = [g for g in map(str, r.genes) if g in in_synth]
    if not genes:
        raise DataError("the real and synthetic data share no gene names; compare matching files")
    if len(genes) < len(r.genes) or len(genes) < len(s.genes):
        logger.warning("comparing the %d genes both hold (real %d, synthetic %d)",
                       len(genes), len(r.genes), len(s.genes))
    counts = sp.csr_matrix(r.counts[:, r.genes.get_indexer(genes)])
    evaluated = picked["evaluated"]
    rc, rl = counts[evaluated], r.labels[evaluated]  # scored: never seen by the space
    fc, fl = counts[~evaluated], r.labels[~evaluated]  # the space is fitted on these
    sc = sp.csr_matrix(s.counts[:, s.genes.get_indexer(genes)])
    logger.info("evaluating %d synthetic (of %d) against %d real cells, in a space fitted on %d "
                "other real cells (of %d real; stratified subsamples of at most %d)",
                len(s.labels), s.n_total, len(rl), len(fl), r.n_total, max_cells)  # fmt: skip
    if len(fl) < 3:
        raise DataError(f"the real data hold {r.n_total} cells: too few to fit the evaluation "
                        "space on some and score others; give at least 8 real cells")
    space = fit_space(fc, fl, genes, seed=derive_seed(seed, "eval-space"))
    floor = real_floor(space, rc, rl, seed=derive_seed(seed, "floor"))
    fid = fidelity_report(space, rc, rl, sc, s.labels, seed=derive_seed(seed, "fidelity"))
    memo = memorisation(space, counts, sc, c2st=fid["overall"]["c2st_auc"],
                        seed=derive_seed(seed, "memorisation"))
    if _same_file(real, synthetic):
        memo["reasons"].insert(0, "the synthetic data are the real file itself")
        memo["flagged"] = True
    if memo["flagged"]:
        logger.warning("memorisation: the synthetic cells copy real ones (%s); their fidelity "
                       "scores do not measure generation", "; ".join(memo["reasons"]))
    return {
        "real_vs_real": floor,
        "synthetic_vs_real": fid,
        "memorisation": memo,
        "n_cells": {"real": {"used": len(rl), "space": len(fl), "total": r.n_total},
                    "synthetic": {"used": len(s.labels), "total": s.n_total}},
        "n_genes": len(genes),
        "max_cells": max_cells,
        "seed": seed,
        "label_key": label_key,
        "real": r.source,
        "synthetic": s.source,
    }


def _same_file(real: Any, synthetic: Any) -> bool:
    """Whether two paths are one file, or two files of the same bytes."""
    import filecmp

    if not (isinstance(real, str | Path) and isinstance(synthetic, str | Path)):
        return real is synthetic
    a, b = Path(real), Path(synthetic)
    try:
        return a.samefile(b) or (a.stat().st_size == b.stat().st_size
                                 and filecmp.cmp(a, b, shallow=False))  # fmt: skip
    except OSError:
        return False


def _out_dir(out: str | Path) -> Path:
    """The output directory, refused when it is an existing file (e.g. the input)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is an existing file; give a directory for fidelity.json "
                        "and fidelity.md")
    return out


def write(result: dict[str, Any], out: str | Path) -> Path:
    """Write :func:`compare`'s ``result`` as ``fidelity.json`` and ``fidelity.md`` into ``out``.

    Parameters
    ----------
    result
        What :func:`compare` returned.
    out
        The output directory (created if missing).

    Returns
    -------
    The path of ``fidelity.md``.
    """
    out = _out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fidelity.json", result)
    n = result["n_cells"]
    real, syn = n["real"], n["synthetic"]
    if IN_MEMORY in (result["real"], result["synthetic"]):
        call = f"`cellsynth.evaluate(..., label_key={result['label_key']!r})` on AnnData objects"
    else:
        call = (f"`cellsynth evaluate --real {result['real']} --synthetic {result['synthetic']} "
                f"--label-key {result['label_key']}`")
    lines = [
        "# Fidelity", "",
        f"{call}: {real['used']} of {real['total']} real and "
        f"{syn['used']} of {syn['total']} synthetic cells (stratified subsamples of at most "
        f"{result['max_cells']}), {result['n_genes']} genes, in an evaluation space fitted on "
        f"{real['space']} other real cells. The first row compares two disjoint halves of the "
        "scored real cells: the floor every other number is read against.",
        "", *table({"real vs real": flat_report(result["real_vs_real"]),
                    "synthetic": flat_report(result["synthetic_vs_real"])}), "",
    ]  # fmt: skip
    memo = result.get("memorisation") or {}
    if memo.get("flagged"):
        why = "; ".join(memo["reasons"])
        lines[2:2] = [f"**Memorisation: the synthetic cells copy real ones** ({why}). "
                      "The scores below do not measure generation: do not read them as a "
                      "success.", ""]
    path = out / "fidelity.md"
    write_text(path, "\n".join(lines))  # atomic
    return path


def evaluate(real: ad.AnnData | str | Path, synthetic: ad.AnnData | str | Path, label_key: str,
             out: str | Path, *, seed: int = 0, max_cells: int | None = None) -> Path:
    """:func:`compare`, written into ``out`` by :func:`write` (``cellsynth evaluate``).

    Parameters
    ----------
    real, synthetic, label_key, seed, max_cells
        As for :func:`compare`.
    out
        The output directory for ``fidelity.json`` and ``fidelity.md``.

    Returns
    -------
    The path of ``fidelity.md``.
    """
    _out_dir(out)  # before any work
    result = compare(real, synthetic, label_key=label_key, seed=seed, max_cells=max_cells)
    return write(result, out)


def run_benchmark(datasets: list[str], models: list[str], out: Path, *,
                  config_path: str | None = None, overrides: list[str] | None = None,
                  label_key: str | None = None, doc: Path | None = None,
                  command: str | None = None, reuse: bool = False, kept_only: bool = False,
                  kept: Path | None = None) -> Path:
    """Benchmark ``models`` on each dataset (an .h5ad, or a preset .toml) and write a results page.

    With ``reuse``, a generator whose results in ``out`` were made with the same settings and
    package version (``benchmark.model_key``) is read back instead of rerun; with
    ``kept_only``, nothing is fitted: the page is written from the kept results alone. Kept
    results are in ``kept/DATASET/`` (default ``out/DATASET/results/``).


    Returns the path of the markdown page (``doc``, default ``out/RESULTS.md``).
    """
    from .config import canonical_model
    from .models.registry import GENERATORS

    unknown = [m for m in models if canonical_model(m) not in GENERATORS]
    if unknown:
        raise DataError(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    overrides = list(overrides or [])
    cfgs = []
    for item in datasets:
        extra = [f"dataset.label_key='{label_key}'"] if label_key else []
        if item.endswith(".toml"):
            cfgs.append((Path(item).stem, config.load(item, overrides + extra)))
        else:
            cfgs.append((Path(item).stem, config.load(config_path, overrides + extra + [
                f"dataset.path='{item}'"])))
    if command is None:
        command = "cellsynth " + " ".join(sys.argv[1:])
    path = doc or out / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, cfg in cfgs:
        pre = prepare(cfg.dataset.path, cfg)
        details = benchmark_dataset(pre, models, cfg, out / name, reuse=reuse,
                                    kept_only=kept_only,
                                    kept_dir=kept / name if kept else None)
        shape = {"n_obs": pre.n_obs, "n_vars": pre.n_vars,
                 "n_types": int(pre.obs[cfg.dataset.label_key].nunique())}
        sections.append((name, cfg, shape, details))
        write_json(out / name / "summary.json", {"rows": details["rows"], "shape": shape})
        # the page is rewritten after every dataset, so an interrupted run still leaves one
        write_text(path, results_page(sections, command, models))
    return path


def _check_targets(rows: dict, models: list[str]) -> list[str]:
    """The issue's targets for ``cvae``, each said as met or missed, from the numbers."""
    if "cvae" not in rows:
        return []
    c, floor = rows["cvae"], rows["real vs real"]
    notes = []
    others = [m for m in models if m != "cvae" and m in rows]

    def beats(key: str, lower: bool) -> str:
        vals = {m: rows[m].get(key) for m in others}
        ok = all(v is None or (c[key] < v if lower else c[key] > v) for v in vals.values())
        fmt = "{:.4f}" if key == "mmd" else "{:.3f}"  # MMDs are small numbers
        return "met" if ok else "missed (" + ", ".join(
            f"{m} {fmt.format(v)}" for m, v in vals.items() if v is not None) + \
            f"; cvae {fmt.format(c[key])})"

    for key, label, lower in (("c2st_auc", "two-sample AUC", True), ("mmd", "MMD", True),
                              ("tstr_macro_f1", "TSTR macro-F1", False)):
        notes.append(f"cvae beats {', '.join(others) or 'no other model'} on {label}: {beats(key, lower)}")
    auc = c["c2st_auc"]
    notes.append(f"cvae two-sample AUC ≤ 0.65: {'met' if auc <= 0.65 else 'missed'} ({auc:.3f})")
    rho, rho_floor = c["gene_mean_spearman"], floor["gene_mean_spearman"]
    target = min(0.98, rho_floor)
    notes.append(f"cvae gene-mean Spearman ≥ min(0.98, floor {rho_floor:.3f}): "
                 f"{'met' if rho >= target else 'missed'} ({rho:.3f})")
    ratio = c["tstr_over_trtr"]
    notes.append(f"cvae TSTR ≥ 0.9 × TRTR: {'met' if ratio >= 0.9 else 'missed'} ({ratio:.2f})")
    up = c["aug_generated"] - c["aug_real"]
    notes.append(f"augmentation raises the mean F1 of the 3 rarest types: "
                 f"{'met' if up > 0 else 'missed'} ({c['aug_real']:.3f} → {c['aug_generated']:.3f}; "
                 f"oversampling {c['aug_oversample']:.3f})")
    return notes


def results_page(sections, command: str, models: list[str]) -> str:
    lines = [
        "# Fidelity and utility of the generators", "",
        f"Written by `{command}` on {dt.date.today().isoformat()} ({platform.machine()}, "
        f"{__import__('os').cpu_count()} cores). Do not edit by hand: rerun the command.", "",
        "Each table: one row per generator plus **real vs real** (two disjoint halves of the real "
        "test cells, stratified by type), the floor each number is read against. Fidelity compares "
        "generated cells with the real test split, type for type, in one evaluation space fitted "
        "on real training cells only (2,000 HVGs, log1p counts per 10k, 30 PCs). Every generator "
        "is fitted on the real training and validation cells and none sees the test split (the "
        "cvae uses its validation cells to choose which epoch to keep, `cvae.select`). "
        "AUC: cross-validated "
        "classifier two-sample test (0.5 = indistinguishable). TSTR: XGBoost trained on generated "
        "cells (as many per type as the real training split), tested on the real test split. "
        "Rare F1 +gen: mean F1 of the 3 rarest types when generated cells are added to the real "
        "training cells (the real-only and oversampling arms are in `benchmark.json`). Fit s: wall "
        "seconds of fitting, taken with whatever else ran on the machine at the time (each row "
        "names when it ran): read them as rough.", "",
    ]
    for name, cfg, shape, details in sections:
        rows = details["rows"]
        lines += [f"## {name}", "",
                  f"`{cfg.dataset.path}`: {shape['n_obs']} cells × {shape['n_vars']} genes after QC, "
                  f"{shape['n_types']} types. "
                  "Each generator's row ran on " + ", ".join(
                      f"{m} {v.get('date', '?')}" for m, v in details["models"].items()) + "."
                  + (f" **Not run** (no results kept for these settings): {', '.join(details['not_run'])}."
                     if details.get("not_run") else ""), "",
                  *table(rows), ""]
        if "cvae" in rows:
            trtr = rows["cvae"].get("trtr_macro_f1")
            lines.append(f"TRTR macro-F1 (real-trained, for TSTR/TRTR): {trtr:.3f}.")
            lines += ["", "Targets:", ""] + [f"- {n}" for n in _check_targets(rows, models)] + [""]
    return "\n".join(lines)

