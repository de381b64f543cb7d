"""Where the gene-level gap of generated cells comes from (issue 21): one JSON per dataset.

Prepares a dataset as ``benchmarks/fidelity.py`` does (its preset's QC, split and seed), fits
``cvae`` (default settings) and ``nb`` on the training and validation cells, generates as many
cells of each type as the real test split holds, and writes
``benchmarks/results/gene_gap/<dataset>[_allgenes][-<tag>].json`` with, for each generator:

- ``pcs``: the PC-level two-sample AUC (``fidelity_report``, 30 PCs of 2,000 HVGs) beside its
  floor (``pcs_floor``), as the fidelity benchmark scores it;
- ``gene_fidelity``: :func:`~cellsynth.metrics.genes.gene_fidelity` on 500 HVGs (``hvg``) and
  on every detected gene (``detected``), overall and per type, each beside its floor;
- ``auc_by_level``: the gene-level AUC on the genes of one tercile of mean expression at a time
  (each cell normalised by its whole library);
- ``importance``: :func:`~cellsynth.metrics.genes.gene_importance` over every gene, summed by
  decile of mean expression (share of importance, share carried by the detection indicator,
  mean signed coefficients), and the top genes with their statistics;
- ``decoder_means`` (cvae): the decoder's means and their spread at posterior draws of the
  training cells and at cells drawn from the sampler's mixture (:func:`decoder_means`);

with ``--oracles``, ``oracles``: the same gene-level AUCs of reference samples built from real
cells (training cells, their genes shuffled within types, their counts redrawn with added
noise, the cvae's posterior re-draw of each; :func:`oracles`): what the test's floor asks of a
generator;

and ``stats``: per (type, gene) pair, binned by the pair's mean count in the training cells,
each generator's cells against the training cells (:func:`binned_stats`: mean and detection
ratios, zero-fraction difference, Fano factors, correlation of counts with library size,
pairs never expressed); the real test cells, measured the same way at the same number of
cells, are the floor (``test``).

``--genes all`` keeps every gene detected in ``--min-cells`` training cells (QC's gene filters
off) instead of the preset's QC'd genes. Fitted models are kept in ``--out``; ``--reuse`` reads
them back instead of fitting (``--reuse-from KEY``: another run's), ``--refit-sampler`` then
refits the cvae's sampler with today's code (the network as it was). ``--write-doc`` writes
``docs/GENE_LEVEL.md`` from every JSON in ``--results`` (``--doc-only``: only that; the page is
built by ``benchmarks/gene_gap_doc.py``).

Usage, from the repository root:
.venv/bin/python benchmarks/gene_gap.py [--data pbmc4k_10x|PRESET|PATH] [--genes qc|all]
    [--tag T] [--note TEXT] [--set SECTION.KEY=VALUE] [--reuse [--reuse-from KEY]
    [--refit-sampler]] [--oracles] [--write-doc | --doc-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reference_experiments import PRESETS  # noqa: E402

logger = logging.getLogger("gene_gap")

#: edges of the bins of a (type, gene) pair's mean count per training cell of the type
COUNT_EDGES = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, np.inf]
#: genes returned by gene_importance and kept in the JSON, most important first
TOP_GENES = 25


# ---------------------------------------------------------------------------------------------
# data


def resolve(data: str, genes: str, min_cells: int, overrides: list[str]):
    """The dataset's name and run config: a preset name, or an h5ad path (its preset when one
    reads the same file, else the default settings with single-cell types dropped)."""
    from cellsynth import config

    sets = list(overrides)
    if genes == "all":
        sets += [f"qc.min_cells_per_gene={min_cells}", "qc.variance_threshold=0"]
    preset = ROOT / "examples" / f"{data}.toml"
    if not preset.is_file():
        path = Path(data).resolve()
        preset = next((ROOT / "examples" / f"{p}.toml" for p in PRESETS
                       if (ROOT / config.load(ROOT / "examples" / f"{p}.toml").dataset.path
                           ).resolve() == path), None)
        if preset is None:
            cfg = config.load(None, [f"dataset.path={path}", "qc.on_single_cell_type=drop",
                                     *sets])
            return path.stem, cfg
    cfg = config.load(preset, sets)
    cfg.dataset.path = str((ROOT / cfg.dataset.path).resolve())
    return preset.stem, cfg


def type_gene_stats(x: sp.csr_matrix) -> dict[str, np.ndarray]:
    """Per gene, over the cells (rows) of ``x``: mean and variance of counts, zero fraction and
    the Pearson correlation of counts with log library size (NaN for a constant gene)."""
    n = x.shape[0]
    lib = np.log(np.maximum(np.asarray(x.sum(axis=1), dtype=np.float64).ravel(), 1.0))
    mean = np.asarray(x.sum(axis=0), dtype=np.float64).ravel() / n
    sq = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel() / n
    var = np.maximum(sq - mean**2, 0.0) * n / max(n - 1, 1)
    zero = 1.0 - np.bincount(x.indices, minlength=x.shape[1]) / n
    lc = lib - lib.mean()
    cov = np.asarray(x.T @ lc, dtype=np.float64).ravel() / n
    sd = np.sqrt(np.maximum(sq - mean**2, 0.0)) * np.sqrt(np.mean(lc**2))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(sd > 0, cov / sd, np.nan)
    return {"mean": mean, "var": var, "zero": zero, "corr": corr}


def binned_stats(train: sp.csr_matrix, y_train: np.ndarray,
                 others: dict[str, tuple[sp.csr_matrix, np.ndarray]]) -> list[dict[str, Any]]:
    """Each source's cells against the training cells, per (type, gene) pair binned by the
    pair's training mean (:data:`COUNT_EDGES`); pairs with no training count are left out.

    Every pair weighs as many cells as the source has of its type, so that a type with a
    handful of cells (noisy on both sides) weighs little. Per bin and source: ``mean_ratio``
    and ``detect_ratio`` (the bin's weighted sums of means, and of detection rates, source over
    training), ``zero_diff`` (weighted mean of the source's zero fraction minus the training
    one), ``fano_log2`` (weighted median, over pairs expressed on both sides, of log2 of the
    source's Fano factor over the training one: robust to the single outlier cells that
    dominate a summed variance), ``lib_corr`` (weighted mean correlation of counts with log
    library size; ``train_lib_corr`` the training cells', weighted by the test split's
    cells), ``absent`` (weighted share of pairs the source has no count of).
    """
    types = sorted(set(y_train.tolist()))
    ref = {t: type_gene_stats(train[y_train == t]) for t in types}
    src = {name: {t: (type_gene_stats(x[lab == t]), int((lab == t).sum())) for t in types
                  if (lab == t).sum() >= 2} for name, (x, lab) in others.items()}
    rows = []
    for lo, hi in itertools.pairwise(COUNT_EDGES):
        row: dict[str, Any] = {"mean_low": lo, "mean_high": None if np.isinf(hi) else hi}
        pairs = {t: np.flatnonzero((ref[t]["mean"] > lo) & (ref[t]["mean"] <= hi)) for t in types}
        row["n_pairs"] = int(sum(len(p) for p in pairs.values()))
        row["train_lib_corr"] = None
        for name, st in src.items():
            ts = [t for t in types if t in st and len(pairs[t])]
            if not ts:
                row[name] = None
                continue
            s = {k: np.concatenate([st[t][0][k][pairs[t]] for t in ts]) for k in ref[ts[0]]}
            r = {k: np.concatenate([ref[t][k][pairs[t]] for t in ts]) for k in s}
            w = np.concatenate([np.full(len(pairs[t]), st[t][1], dtype=float) for t in ts])
            both = (s["mean"] > 0) & (r["mean"] > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                fano = np.log2((s["var"] / s["mean"]) / (r["var"] / r["mean"]))
            ok = both & np.isfinite(fano)
            row[name] = {"mean_ratio": float(w @ s["mean"] / (w @ r["mean"])),
                         "detect_ratio": float(w @ (1 - s["zero"]) / (w @ (1 - r["zero"]))),
                         "zero_diff": float(np.average(s["zero"] - r["zero"], weights=w)),
                         "fano_log2": _wmedian(fano[ok], w[ok]),
                         "lib_corr": _wmean(s["corr"], w),
                         "absent": float(np.average(s["mean"] == 0, weights=w))}
            if name == "test":
                row["train_lib_corr"] = _wmean(r["corr"], w)
        rows.append(row)
    return rows


def _wmean(v: np.ndarray, w: np.ndarray) -> float | None:
    ok = np.isfinite(v)
    return float(np.average(v[ok], weights=w[ok])) if ok.any() else None


def _wmedian(v: np.ndarray, w: np.ndarray) -> float | None:
    if not len(v):
        return None
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, cum[-1] / 2)])


def posterior_draws(module, rows, idx: np.ndarray, rng: np.random.Generator, *,
                    calibrated: bool):
    """The decoder's distribution at one posterior draw of ``z`` for each of the rows ``idx``
    of ``rows`` (cells of one type), 256 cells at a time, with their library sizes: ``(px,
    library)`` per batch; the normals from ``rng``. ``calibrated``: with the sampler's gene
    scale and zero inflation, as generation decodes."""
    import torch

    from cellsynth.models import _training as tr

    for sl in tr.iter_slices(len(idx), 256):
        x, y, library, c = rows.batch(idx[sl])
        qz, _ = module.inference(x, y, library, c)
        eps = torch.from_numpy(rng.standard_normal(tuple(qz.loc.shape), dtype=np.float32))
        yield module.generative(qz.loc + qz.scale * eps.to(qz.loc), y, library, c,
                                calibrated=calibrated, one_type=True), library


def decoder_means(gen, x_train: sp.csr_matrix, y_train: np.ndarray, seed: int
                  ) -> list[dict[str, Any]]:
    """Where a cvae's generated means and spread go wrong, per (type, gene) pair binned as in
    :func:`binned_stats`: the decoder's means (without its gene scale) at one posterior draw of
    every training cell (``posterior``) and at as many cells drawn from the type's mixture over
    ``(z, log library)``, at least 2,000 (``mixture``).

    Per bin: ``posterior`` and ``mixture``, the summed training means over the summed decoded
    means; ``posterior_var`` and ``mixture_var``, the summed variance of the decoded means
    across cells over the training cells' variance beyond Poisson (summed ``var - mean``): above
    1, the network alone spreads the genes more than the data do, before any NB noise.
    """
    import torch

    from cellsynth.models import _training as tr
    from cellsynth.models._counts import Rows

    module = gen.module.eval()
    codes = np.array([gen.labels.index(t) for t in y_train])
    rows = Rows(x_train, codes, gen.device)
    rng = np.random.default_rng(seed)
    shape = (module.n_labels, module.n_input)
    train, excess = np.zeros(shape), np.zeros(shape)
    sums = {k: np.zeros(shape) for k in ("post", "post2", "mix", "mix2")}

    def add(key: str, t: int, mu: torch.Tensor, n: int) -> None:  # type t's row
        sums[key][t] += mu.sum(0, dtype=torch.float64).cpu().numpy() / n
        sums[key + "2"][t] += (mu.double() ** 2).sum(0).cpu().numpy() / n

    with torch.no_grad():
        for t in range(module.n_labels):
            idx = np.flatnonzero(codes == t)
            x = x_train[idx]
            train[t] = np.asarray(x.mean(axis=0)).ravel()
            var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - train[t] ** 2
            excess[t] = var * len(idx) / max(len(idx) - 1, 1) - train[t]
            for px, _ in posterior_draws(module, rows, idx, rng, calibrated=False):
                add("post", t, px.mean, len(idx))
            n = max(2000, len(idx))
            for sl in tr.iter_slices(n, 256):
                b = sl.stop - sl.start
                y = torch.full((b,), t, dtype=torch.long, device=gen.device)
                u = torch.from_numpy(rng.random(b, dtype=np.float32)).to(gen.device)
                eps = torch.from_numpy(rng.standard_normal((b, module.n_latent + 1),
                                                           dtype=np.float32)).to(gen.device)
                z, library = module.mixture_from_noise(u, eps, y)
                add("mix", t, module.generative(z, y, library, calibrated=False).mean, n)
    rows_out = []
    for lo, hi in itertools.pairwise(COUNT_EDGES):
        sel = (train > lo) & (train <= hi)
        spread = float(excess[sel].sum())  # not positive: no spread beyond Poisson to share
        rows_out.append({
            "mean_low": lo, "mean_high": None if np.isinf(hi) else hi, "n_pairs": int(sel.sum()),
            # None for an empty bin (not NaN, which is not JSON)
            "posterior": float(train[sel].sum() / sums["post"][sel].sum()) if sel.any() else None,
            "mixture": float(train[sel].sum() / sums["mix"][sel].sum()) if sel.any() else None,
            "posterior_var": (float((sums["post2"] - sums["post"] ** 2)[sel].sum() / spread)
                              if spread > 0 else None),
            "mixture_var": (float((sums["mix2"] - sums["mix"] ** 2)[sel].sum() / spread)
                            if spread > 0 else None)})
    return rows_out


def independent_samples(x_train: sp.csr_matrix, y_train: np.ndarray, sizes: dict[str, int],
                        seed: int) -> dict[str, sp.csr_matrix]:
    """``oracles``' ``independent`` and ``independent_half`` samples: ``sizes[t]`` cells of
    each type ``t`` (in the order of ``sizes``), each gene's counts drawn with replacement
    from the type's training cells (all, or a random half), every gene and cell apart."""
    own = np.random.default_rng([seed, 1])  # the oracles' other draws are as they were
    out = {}
    for key, share in (("independent", 1.0), ("independent_half", 0.5)):
        dense = []
        for t, m in sizes.items():
            pool = x_train[y_train == t]
            keep = np.sort(own.choice(pool.shape[0], max(1, int(share * pool.shape[0])),
                                      replace=False))
            pool = pool[keep].toarray()
            pick = own.integers(len(pool), size=(m, pool.shape[1]))
            dense.append(np.take_along_axis(pool, pick, axis=0))
        out[key] = sp.csr_matrix(np.concatenate(dense))
    return out


def oracles(gen, x_train: sp.csr_matrix, y_train: np.ndarray, x_test: sp.csr_matrix,
            y_test: np.ndarray, genes: list[str], seed: int, repeats: int | str = "auto"
            ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The gene-level AUCs (500 HVGs and every detected gene, against the real test cells, as
    the generators are scored) of reference samples that bound what a generator can reach:

    - ``training``: real training cells, as many of each type as the test split holds, drawn
      without replacement: a sample of the distribution the generators learn (a perfect
      generator's score);
    - ``shuffled``: the same cells with each gene's counts permuted among the type's training
      cells: every gene's distribution in a type exactly the training cells', no dependence
      between genes (nor between a gene and the cell's depth);
    - ``poisson``: the same cells with each count ``x`` replaced by a Poisson draw at mean ``x``:
      the same means, more count noise;
    - ``redraw`` (a cvae without covariates): the same cells encoded, one posterior draw of
      ``z`` each decoded with the sampler's calibration (gene scale, zero inflation) and counts
      drawn, as generation draws them: the cells' own states, the model's count noise.
    - ``independent``: each gene's counts drawn with replacement from the type's training
      cells, independently of every other gene and cell: what a generator that had learned each
      type's gene distributions exactly as its training cells show them (and nothing else)
      would generate. Unlike ``shuffled``, whose counts are the training cells' own, drawn
      without replacement, these cells carry the training set's sampling error in every gene:
      the error any estimate from a finite training set makes;
    - ``independent_half``: the same from a random half of each type's training cells: that
      error doubled (its variance), to show how the test reads it.

    ``repeats``: the halvings each AUC is the mean of (``gene_fidelity``'s).
    """
    import torch

    from cellsynth.metrics.genes import gene_fidelity
    from cellsynth.models._counts import Rows
    from cellsynth.models._draws import draw_counts

    rng = np.random.default_rng(seed)
    types = sorted(set(y_test.tolist()))
    idx = np.concatenate([np.sort(rng.choice(np.flatnonzero(y_train == t),
                                             min(int((y_test == t).sum()),
                                                 int((y_train == t).sum())), replace=False))
                          for t in types])
    labels = y_train[idx]
    cells = x_train[idx].tocsr()
    samples = {"training": cells}
    dense = []
    for t in types:
        pool = x_train[y_train == t].toarray()
        dense.append(np.stack([rng.permutation(pool[:, j]) for j in range(pool.shape[1])], 1)
                     [: int((labels == t).sum())])
    samples["shuffled"] = sp.csr_matrix(np.concatenate(dense))
    noisy = cells.copy()
    noisy.data = rng.poisson(noisy.data).astype(np.float32)
    noisy.eliminate_zeros()
    samples["poisson"] = noisy
    if gen is not None and getattr(gen, "module", None) is not None and not gen.design:
        module = gen.module.eval()
        codes = np.array([gen.labels.index(t) for t in labels])
        rows = Rows(x_train[idx], codes, gen.device)
        parts = []
        with torch.no_grad():
            for t in types:
                parts += [draw_counts(px, library, rng) for px, library in posterior_draws(
                    module, rows, np.flatnonzero(labels == t), rng, calibrated=True)]
        samples["redraw"] = sp.vstack(parts, format="csr")
    sizes = {t: int((labels == t).sum()) for t in types}
    samples.update(independent_samples(x_train, y_train, sizes, seed))
    out = {}
    for name, x in samples.items():
        out[name] = {g: gene_fidelity(x_test, x, real_labels=y_test, synth_labels=labels,
                                      seed=seed, genes=g, gene_names=genes,
                                      repeats=repeats)["overall"]["auc"]
                     for g in ("hvg", "detected")}
        logger.info("oracle %s: genes %.3f, detected %.3f", name, out[name]["hvg"],
                    out[name]["detected"])
    return out


# ---------------------------------------------------------------------------------------------
# gene-level metrics


def auc_by_level(x_test, y_test, syn, syn_labels, order: np.ndarray, seed: int) -> list[dict]:
    """Gene-level AUC (``detected`` genes) on one tercile of genes at a time, ``order`` sorting
    the genes by training mean. The other genes are summed into one column so that each cell is
    still normalised by its whole library (a near-constant feature, the same for the floor)."""
    from cellsynth.metrics.genes import gene_fidelity

    out = []
    for k, cols in enumerate(np.array_split(order, 3)):
        cols = np.sort(cols)

        def part(x, cols=cols):
            rest = np.asarray(x.sum(axis=1)).ravel() - np.asarray(x[:, cols].sum(axis=1)).ravel()
            return sp.hstack([x[:, cols], sp.csr_matrix(rest[:, None])], format="csr")

        quiet = logging.getLogger("cellsynth.metrics.genes")
        level, quiet.level = quiet.level, logging.WARNING  # every type skipped: overall only
        try:
            g = gene_fidelity(part(x_test), part(syn), real_labels=y_test,
                              synth_labels=syn_labels, seed=seed, genes="detected",
                              min_type_cells=10**9)
        finally:
            quiet.level = level
        out.append({"tercile": k, "n_genes": len(cols), "auc": g["overall"]["auc"],
                    "floor_auc": g["overall"]["floor_auc"],
                    "classifier_genes": g["overall"]["n_genes"]})
    return out


def importance_summary(x_test, syn, genes: list[str], seed: int) -> dict[str, Any]:
    """gene_importance over every gene, summed by decile of real mean expression, and the top."""
    from cellsynth.metrics.gene_test import gene_importance

    rows = gene_importance(x_test, syn, genes, seed=seed, top=len(genes))
    df = pd.DataFrame(rows)
    df["decile"] = np.minimum((df["real_mean_quantile"] * 10).astype(int), 9)
    total = df["importance"].sum()
    deciles = []
    for d, g in df.groupby("decile"):
        deciles.append({
            "decile": int(d), "n_genes": len(g),
            "importance_share": float(g["importance"].sum() / total),
            "detected_share": float(g["coef_detected"].abs().sum() / g["importance"].sum()),
            "mean_coef_detected": float(g["coef_detected"].mean()),
            "mean_coef_value": float(g["coef_value"].mean()),
            "zero_diff": float((g["synth_zero_fraction"] - g["real_zero_fraction"]).mean()),
            "real_mean_low": float(g["real_mean"].min()),
            "real_mean_high": float(g["real_mean"].max())})
    top = df.head(TOP_GENES).drop(columns="decile").to_dict(orient="records")
    return {"n_genes": len(df), "deciles": deciles, "top": top}


def strip_genes(report: dict[str, Any]) -> dict[str, Any]:
    """gene_fidelity's report without its per-gene block (large; figures only)."""
    return {k: v for k, v in report.items() if k != "genes"}


# ---------------------------------------------------------------------------------------------
# one dataset


def fitted(name: str, cfg, fit_on, saved: Path, args, seed: int, train):
    """A generator fitted on ``fit_on`` (or read back from ``saved`` with ``--reuse``, its
    sampler refitted on ``train``, ``(counts, labels)``, with ``--refit-sampler``), and the
    seconds its fit took (None when read back)."""
    from cellsynth.models.registry import load_generator, make_generator

    if args.reuse and (saved / "config.json").is_file():
        logger.info("%s: reading the fitted model in %s", name, saved)
        gen = load_generator(saved)
        if args.refit_sampler and name == "cvae":  # the network as it is, today's sampler fit
            from cellsynth.models._counts import Rows

            codes = np.array([gen.labels.index(t) for t in train[1]])
            gen._fit_sampler(Rows(train[0], codes, gen.device), codes, seed)
        return gen, None
    gen = make_generator(name, cfg)
    t0 = time.perf_counter()
    gen.fit(fit_on, cfg.dataset.label_key, seed=seed)
    seconds = time.perf_counter() - t0
    gen.save(saved)
    return gen, seconds


def run_dataset(name: str, cfg, args) -> dict[str, Any]:
    """Every number of one dataset's JSON (see the module docstring)."""
    from cellsynth import keys as K
    from cellsynth.benchmark import _counts, prepare
    from cellsynth.metrics.fidelity import fidelity_report, real_floor
    from cellsynth.metrics.genes import gene_fidelity
    from cellsynth.metrics.space import fit_space
    from cellsynth.seeds import derive_seed

    seed = cfg.seed
    pre = prepare(cfg.dataset.path, cfg)
    split = pre.obs[K.SPLIT].astype(str).to_numpy()
    y = pre.obs[cfg.dataset.label_key].astype(str).to_numpy()
    genes = list(map(str, pre.var_names))
    counts = _counts(pre).astype(np.float32)
    (x_train, y_train), (x_test, y_test) = [(counts[split == s], y[split == s])
                                            for s in ("train", "test")]
    n_test = {str(t): int(n) for t, n in pd.Series(y_test).value_counts().items()}
    order = np.argsort(np.asarray(x_train.mean(axis=0)).ravel(), kind="stable")
    detected = np.flatnonzero(np.bincount(x_train.indices, minlength=len(genes)) >= 1)
    order = order[np.isin(order, detected)]
    space = fit_space(x_train, y_train, genes, seed=derive_seed(seed, "eval-space"))
    pc_floor = real_floor(space, x_test, y_test, seed=derive_seed(seed, "floor"))
    out: dict[str, Any] = {
        "dataset": name, "path": cfg.dataset.path, "genes": args.genes, "tag": args.tag,
        "n_cells": int(pre.n_obs), "n_genes": len(genes),
        "n_train": len(y_train), "n_test": len(y_test), "n_test_per_type": n_test,
        "overrides": args.set, "commit": _commit(), "note": args.note, "pcs_floor": pc_floor["overall"]["c2st_auc"], "models": {}}
    gseed = derive_seed(seed, "gene-fidelity")
    fit_on = pre[np.isin(split, ["train", "val"])]
    sources = {"test": (x_test, y_test)}
    for model in args.models.split(","):
        saved = ROOT / args.out / (args.reuse_from or out_key(name, args)) / "models" / model
        gen, seconds = fitted(model, cfg, fit_on, saved, args, derive_seed(seed, f"fit-{model}"),
                              (x_train, y_train))
        syn = gen.sample(n_test, seed=derive_seed(seed, f"gen-test-{model}"))
        sx = sp.csr_matrix(syn.X, dtype=np.float32)
        sl = syn.obs[cfg.dataset.label_key].astype(str).to_numpy()
        sources[model] = (sx, sl)
        t0 = time.perf_counter()
        pc = fidelity_report(space, x_test, y_test, sx, sl, seed=derive_seed(seed, f"fid-{model}"))
        gf = {g: strip_genes(gene_fidelity(x_test, sx, real_labels=y_test, synth_labels=sl,
                                           seed=gseed, genes=g, gene_names=genes))
              for g in ("hvg", "detected")}
        out["models"][model] = {
            "fit_seconds": seconds,
            "pcs": {"auc": pc["overall"]["c2st_auc"],
                    "per_type": {t: r["c2st_auc"] for t, r in pc["per_type"].items()},
                    "library_distance": pc["overall"]["library_size_distance"]},
            "gene_fidelity": gf,
            "auc_by_level": auc_by_level(x_test, y_test, sx, sl, order, gseed),
            "importance": importance_summary(x_test, sx, genes,
                                             derive_seed(seed, "gene-importance"))}
        if model == "cvae" and not gen.design:
            out["models"][model]["decoder_means"] = decoder_means(
                gen, x_train, y_train, derive_seed(seed, "decoder-means"))
        if model == "cvae" and args.oracles:
            out["oracles"] = oracles(gen, x_train, y_train, x_test, y_test, genes, gseed)
        logger.info("%s %s: PCs %.3f (floor %.3f), genes %.3f (floor %.3f), detected %.3f "
                    "(floor %.3f); metrics in %.0f s", name, model, pc["overall"]["c2st_auc"],
                    out["pcs_floor"], gf["hvg"]["overall"]["auc"],
                    gf["hvg"]["overall"]["floor_auc"], gf["detected"]["overall"]["auc"],
                    gf["detected"]["overall"]["floor_auc"], time.perf_counter() - t0)
    out["stats"] = binned_stats(x_train, y_train, sources)
    return out


def _commit() -> str:
    """The checkout's commit, ``+`` when the model's files differ from it."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "src/cellsynth/models")
    return git("rev-parse", "--short", "HEAD") + ("+" if dirty else "")


def out_key(name: str, args) -> str:
    """The file name of a dataset's results: ``<name>[_allgenes][-<tag>]``."""
    return name + ("_allgenes" if args.genes == "all" else "") + (f"-{args.tag}" if args.tag else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="pbmc4k_10x",
                    help="a dataset preset in examples/ or an h5ad path (default pbmc4k_10x)")
    ap.add_argument("--genes", choices=("qc", "all"), default="qc",
                    help="qc: the preset's QC'd genes; all: every gene detected in --min-cells "
                         "training cells")
    ap.add_argument("--min-cells", type=int, default=3)
    ap.add_argument("--models", default="cvae,nb")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--tag", default="", help="suffix of the JSON's name (a variant's run)")
    ap.add_argument("--out", default="runs/gene_gap", help="where fitted models are kept")
    ap.add_argument("--reuse", action="store_true",
                    help="read fitted models back from --out instead of fitting them")
    ap.add_argument("--reuse-from", default="", metavar="KEY",
                    help="with --reuse: read the models of run KEY (a results file's name)")
    ap.add_argument("--note", default="", help="a line kept in the JSON and shown on the page")
    ap.add_argument("--refit-sampler", action="store_true",
                    help="with --reuse: refit the read-back cvae's sampler with today's code")
    ap.add_argument("--oracles", action="store_true",
                    help="also score reference samples (training cells, shuffled genes, added "
                         "count noise, the cvae's posterior re-draw): oracles()")
    ap.add_argument("--results", default="benchmarks/results/gene_gap")
    ap.add_argument("--doc", default="docs/GENE_LEVEL.md")
    ap.add_argument("--write-doc", action="store_true", help="write --doc from --results")
    ap.add_argument("--doc-only", action="store_true", help="only write --doc from --results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from cellsynth.options import settings

    settings.progress = False
    command = shlex.join(["python", "benchmarks/gene_gap.py", *sys.argv[1:]])
    results = ROOT / args.results
    if not args.doc_only:
        name, cfg = resolve(args.data, args.genes, args.min_cells, args.set)
        t0 = time.perf_counter()
        out = run_dataset(name, cfg, args)
        out.update(command=command, seconds=time.perf_counter() - t0,
                   date=dt.datetime.now().isoformat(timespec="minutes"),
                   machine=f"{platform.machine()}, {__import__('os').cpu_count()} cores")
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{out_key(name, args)}.json"
        path.write_text(json.dumps(out, indent=1, default=float) + "\n")
        print(f"wrote {path}")
    if args.write_doc or args.doc_only:
        from gene_gap_doc import write_doc

        print(f"wrote {write_doc(results, ROOT / args.doc, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
