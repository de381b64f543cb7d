"""``cellsynth evaluate`` and ``cellsynth benchmark``: files in, JSON and markdown out."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import sys
from pathlib import Path

import scipy.sparse as sp

from . import config
from .runtime import write_json
from .seeds import derive_seed
from .benchmark import flat_report, benchmark_dataset, prepare, table
from .data.io import check_label, read
from .errors import DataError
from .metrics.fidelity import fidelity_report, real_floor
from .metrics.space import fit_space
from .models.base import training_counts

logger = logging.getLogger(__name__)


def _load_counts(path: str | Path, label_key: str, what: str):
    adata = read(path)
    if adata.isbacked:
        adata = adata.to_memory()
    check_label(adata, label_key)
    try:
        counts = training_counts(adata)
    except DataError as exc:
        raise DataError(f"{what} ({path}): {exc}") from None
    return adata, counts, adata.obs[label_key].astype(str).to_numpy()


def evaluate(real: str | Path, synthetic: str | Path, label_key: str, out: Path, *,
             seed: int = 0, progress: bool = False) -> Path:
    """Fidelity of ``synthetic`` against ``real`` counts, beside two halves of ``real``.

    The evaluation space (HVGs, PCA) is fitted on the real cells; genes are matched by name.
    Writes ``fidelity.json`` and ``fidelity.md`` into ``out`` and returns the markdown path.
    ``progress`` shows tqdm bars (on stderr) over the PCA fit and the fidelity metrics.
    """
    ra, rc, rl = _load_counts(real, label_key, "the real data")
    sa, sc, sl = _load_counts(synthetic, label_key, "the synthetic data")
    genes = [g for g in map(str, ra.var_names) if g in set(map(str, sa.var_names))]
    if not genes:
        raise DataError("the real and synthetic data share no gene names; compare matching files")
    if len(genes) < ra.n_vars or len(genes) < sa.n_vars:
        logger.warning("comparing the %d genes both files hold (real %d, synthetic %d)",
                       len(genes), ra.n_vars, sa.n_vars)
    ri = ra.var_names.get_indexer(genes)
    si = sa.var_names.get_indexer(genes)
    rc, sc = sp.csr_matrix(rc[:, ri]), sp.csr_matrix(sc[:, si])
    space = fit_space(rc, rl, genes, seed=derive_seed(seed, "eval-space"), progress=progress)
    floor = real_floor(space, rc, rl, seed=derive_seed(seed, "floor"), progress=progress)
    fid = fidelity_report(space, rc, rl, sc, sl, seed=derive_seed(seed, "fidelity"),
                          progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fidelity.json", {"real_vs_real": floor, "synthetic_vs_real": fid,
                                       "real": str(real), "synthetic": str(synthetic)})
    lines = [
        "# Fidelity", "",
        f"`cellsynth evaluate --real {real} --synthetic {synthetic} --label-key {label_key}`: "
        f"{rc.shape[0]} real and {sc.shape[0]} synthetic cells, {len(genes)} genes. The first row "
        "compares two disjoint halves of the real cells: the floor every other number is read against.",
        "", *table({"real vs real": flat_report(floor), "synthetic": flat_report(fid)}), "",
    ]
    path = out / "fidelity.md"
    path.write_text("\n".join(lines))
    return path


def run_benchmark(datasets: list[str], models: list[str], out: Path, *,
                  config_path: str | None = None, overrides: list[str] | None = None,
                  label_key: str | None = None, doc: Path | None = None,
                  command: str | None = None, reuse: bool = False, kept_only: bool = False,
                  kept: Path | None = None, progress: bool = False) -> Path:
    """Benchmark ``models`` on each dataset (an .h5ad, or a preset .toml) and write a results page.

    With ``reuse``, a generator whose results in ``out`` were made with the same settings and
    package version (``benchmark.model_key``) is read back instead of rerun; with
    ``kept_only``, nothing is fitted: the page is written from the kept results alone. Kept
    results are in ``kept/DATASET/`` (default ``out/DATASET/results/``).

    ``progress`` shows tqdm bars (on stderr) over training, sampling and scoring.

    Returns the path of the markdown page (``doc``, default ``out/RESULTS.md``).
    """
    from .models.registry import GENERATORS

    unknown = [m for m in models if m not in GENERATORS]
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
                                    kept_only=kept_only, progress=progress,
                                    kept_dir=kept / name if kept else None)
        shape = {"n_obs": pre.n_obs, "n_vars": pre.n_vars,
                 "n_types": int(pre.obs[cfg.dataset.label_key].nunique())}
        sections.append((name, cfg, shape, details))
        write_json(out / name / "summary.json", {"rows": details["rows"], "shape": shape})
        # the page is rewritten after every dataset, so an interrupted run still leaves one
        path.write_text(results_page(sections, command, models))
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

