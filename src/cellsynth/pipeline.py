"""The reference experiment end to end, stage by stage, into one run directory.

Stages: data (read, QC, split) -> features (PCA) -> classifier (real) -> generator -> experiments
(a) real/real, (b) real classifier on synthetic, (c) synthetic-trained classifier on real ->
explain (SHAP) -> results.md. Each stage logs its wall time and peak memory into the manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys as K
from .runtime import Manifest, ResumePlan, environment, timed, write_json
from .seeds import derive_seed
from .classify.xgb import Classifier, train_classifier
from .config import RunConfig, save, to_dict
from .data.groups import load_groups
from .data.io import read
from .data.qc import QCReport, normalise_log1p, preprocess
from .data.simulate import simulate_atlas
from .data.split import stratified_subsample
from .errors import CellsynthError, DataError
from .explain.shap import explain_type, write_shap
from .features.pca import PCAModel, fit_pca
from .metrics.classification import classification_report, summary_row, to_coarse, write_report
from .models.registry import load_generator, make_generator
from .models.seed import SeedCVAE
from .report.html import write_report as write_html_report
from .report.results import write_results

logger = logging.getLogger(__name__)



@dataclass
class Split:
    """PCA features and labels of one split."""

    x: np.ndarray  # (n, k) float32
    y: np.ndarray  # (n,) labels


def load_dataset(cfg: RunConfig) -> ad.AnnData:
    """The configured h5ad, or the embedded simulated demo atlas when no path is given."""
    ds = cfg.dataset
    if not ds.path:
        logger.info("no dataset.path: using the embedded demo atlas (%d simulated cells, %d genes, "
                    "%d types)", ds.demo_cells, ds.demo_genes, ds.demo_types)
        return simulate_atlas(ds.demo_cells, ds.demo_genes, ds.demo_types,
                              seed=derive_seed(cfg.seed, "demo"), label_key=ds.label_key)
    return read(ds.path, backed=ds.backed)


def resolve_groups(cfg: RunConfig, adata: ad.AnnData, labels: list[str],
                   centroids: np.ndarray | None = None) -> dict[str, str]:
    """The fine -> coarse mapping: a file or packaged name, the data's own, or ``auto``.

    ``auto`` joins types whose mean training features are close (average-linkage clustering
    into about sqrt(n_types) groups); use it only where no biological grouping exists.
    """
    spec = cfg.dataset.groups
    if spec == "auto":
        from scipy.cluster.hierarchy import fcluster, linkage

        n_groups = max(2, round(len(labels) ** 0.5))
        cut = fcluster(linkage(centroids, "average"), n_groups, criterion="maxclust")
        return {t: f"group_{c:02d}" for t, c in zip(labels, cut, strict=True)}
    if spec:
        return load_groups(spec)
    uns_groups = adata.uns.get("celltype_groups")
    if isinstance(uns_groups, dict):
        return {str(k): str(v) for k, v in uns_groups.items()}
    return {}


def _stage_data(cfg: RunConfig, out: Path, progress: bool) -> tuple[ad.AnnData, QCReport, ad.AnnData]:
    raw = load_dataset(cfg)
    groups = {} if cfg.dataset.groups == "auto" else resolve_groups(cfg, raw, [])
    pre, report = preprocess(raw, cfg.dataset, cfg.qc, cfg.split, groups=groups,
                             seed=derive_seed(cfg.seed, "split"))
    d = out / "data"
    write_json(d / "qc.json", {
        "steps": report.steps, "dropped_types": report.dropped_types,
        "cells_per_type_before": report.cells_per_type_before,
        "cells_per_type_after": report.cells_per_type_after,
        "n_cells": pre.n_obs, "n_genes": pre.n_vars,
        "has_counts": bool(pre.uns[K.UNS]["has_counts"]),
    })
    pd.DataFrame(report.steps).to_csv(d / "qc_steps.csv", index=False)
    cols = [cfg.dataset.label_key, K.SPLIT] + ([K.GROUP] if K.GROUP in pre.obs else [])
    pre.obs[cols].to_csv(d / "cells.csv", index_label="cell")
    return pre, report, raw


def _splits(pre: ad.AnnData, z: np.ndarray, label_key: str) -> dict[str, Split]:
    split = pre.obs[K.SPLIT].to_numpy()
    y = pre.obs[label_key].astype(str).to_numpy()
    return {s: Split(z[split == s], y[split == s]) for s in K.SPLITS}


def _score(y_true, y_pred, groups: dict[str, str], out: Path, name: str) -> dict:
    """Fine and coarse reports of one experiment, written as ``{name}_*`` and ``{key}_summary.json``."""
    fine = classification_report(y_true, y_pred)
    coarse = classification_report(to_coarse(y_true, groups), to_coarse(y_pred, groups))
    write_report(fine, out, f"{name}_fine")
    write_report(coarse, out, f"{name}_coarse")
    summary = {"fine": summary_row(fine), "coarse": summary_row(coarse)}
    write_json(out / f"{name[0]}_summary.json", summary)
    return summary


def _check_before_training(cfg: RunConfig, obs: pd.DataFrame, has_counts: bool) -> None:
    """Settings that can only be checked against the data, before any model is trained."""
    if cfg.generator.model != "seed" and not has_counts:
        raise DataError(
            f"generator.model = '{cfg.generator.model}' generates counts and needs raw counts, "
            "but the data holds normalised values only; give the unnormalised file or set "
            "generator.model = 'seed'"
        )
    known = set(obs[cfg.dataset.label_key].astype(str))
    if cfg.explain.cell_type and cfg.explain.cell_type not in known:
        raise DataError(
            f"explain.cell_type '{cfg.explain.cell_type}' is not among the cell types left "
            f"after QC ({', '.join(sorted(known)[:20])}); set explain.cell_type to one of them"
        )


def _synthetic_adata(x: np.ndarray, y: np.ndarray, cfg: RunConfig, seed: int, model: str) -> ad.AnnData:
    from importlib.metadata import version

    obs = pd.DataFrame({cfg.dataset.label_key: pd.Categorical(y)},
                       index=[f"syn{i}" for i in range(len(y))])
    var = pd.DataFrame(index=[f"PC{i + 1}" for i in range(x.shape[1])])
    a = ad.AnnData(X=x, obs=obs, var=var)
    a.uns[K.UNS] = {"version": version("cellsynth"), "model": model, "seed": seed,
                    "space": "PCA coordinates (the seed model generates in PCA space)"}
    return a


def _fit_classifier(x, y, xv, yv, cfg: RunConfig, seed: int, progress: bool) -> Classifier:
    """XGBoost here, or on a Dask cluster (``classifier.backend = "dask"``)."""
    c = cfg.classifier
    if c.backend == "dask":
        from .classify.dask import train_classifier_dask

        return train_classifier_dask(x, y, xv, yv, c, seed=seed, scheduler=c.dask_scheduler,
                                     n_workers=c.dask_workers)
    return train_classifier(x, y, xv, yv, c, seed=seed, progress=progress)


def _fit_cvae_distributed(cfg: RunConfig, fit_on: ad.AnnData, seed: int, out: Path,
                          checkpoint_dir: Path, checkpoint_key: str) -> Any:
    """Train the CVAE with DistributedDataParallel in ``torchrun`` processes; load the result."""
    import subprocess

    from .models.cvae import CVAE
    from .models.distributed import torchrun_command

    work = out / "generator_ddp"
    work.mkdir(parents=True, exist_ok=True)
    fit_on.write_h5ad(work / "fit_on.h5ad")
    save(cfg, work / "run.toml")
    cmd = torchrun_command(work / "fit_on.h5ad", cfg.dataset.label_key, work / "model",
                           nproc_per_node=cfg.cvae.nproc_per_node, config=work / "run.toml",
                           seed=seed, checkpoint_dir=checkpoint_dir, checkpoint_key=checkpoint_key)
    logger.info("torchrun: %s", " ".join(map(str, cmd)))
    if subprocess.run(cmd).returncode != 0:
        raise CellsynthError(f"distributed CVAE training failed; see the torchrun output above "
                             f"(command: {' '.join(map(str, cmd))})")
    return CVAE.load(work / "model")


def _fit_generator(cfg: RunConfig, pre: ad.AnnData, pca: PCAModel, sp_: dict[str, Split],
                   types: list[str], progress: bool, out: Path, checkpoint_key: str = "",
                   fresh: bool = False) -> tuple[Any, dict]:
    """Train the configured generator: ``seed`` on PCA features (as the reference), the
    count-space ones on the preprocessed counts (training split, validation for early stopping).

    The seed model and the CVAE save training checkpoints in ``generator/checkpoint/`` and
    resume from them when they match (settings, data, seed, ``checkpoint_key``); ``fresh``
    deletes them first."""
    import shutil

    seed = derive_seed(cfg.seed, "generator")
    ckpt = out / "generator" / "checkpoint"
    if fresh:
        shutil.rmtree(ckpt, ignore_errors=True)
    if cfg.generator.model == "seed":
        gen = SeedCVAE(pca.n_components, types, cfg.seed_vae)
        history = gen.fit(sp_["train"].x, sp_["train"].y, sp_["val"].x, sp_["val"].y,
                          seed=seed, progress=progress, checkpoint_dir=ckpt,
                          checkpoint_key=checkpoint_key)
        return gen, history
    fit_on = pre[pre.obs[K.SPLIT].isin(["train", "val"]).to_numpy()]
    if cfg.generator.model == "cvae" and cfg.cvae.distributed:
        gen = _fit_cvae_distributed(cfg, fit_on, seed, out, ckpt, checkpoint_key)
        return gen, dict(gen.history)
    gen = make_generator(cfg.generator.model, cfg)
    if cfg.generator.model == "cvae":
        history = gen.fit(fit_on, cfg.dataset.label_key, seed=seed, progress=progress,
                          checkpoint_dir=ckpt, checkpoint_key=checkpoint_key)
    else:
        history = gen.fit(fit_on, cfg.dataset.label_key, seed=seed, progress=progress)
    return gen, history


def _generate(gen: Any, cfg: RunConfig, pca: PCAModel, counts: dict[str, int], seed: int,
              path: Path | None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Generate cells, write them (when ``path``), and return them in the classifier's PCA space."""
    label_key = cfg.dataset.label_key
    if isinstance(gen, SeedCVAE):
        x, y = gen.sample(counts, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _synthetic_adata(x, y, cfg, seed, "seed").write_h5ad(path)
        return x, y
    from .models.cvae import CVAE

    syn = (gen.sample(counts, seed=seed, progress=progress) if isinstance(gen, CVAE)
           else gen.sample(counts, seed=seed))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        syn.write_h5ad(path)
    y = syn.obs[label_key].astype(str).to_numpy()
    z = pca.transform(normalise_log1p(sp.csr_matrix(syn.X), cfg.qc.target_sum),
                      chunk_size=cfg.qc.chunk_size)
    return z, y


def _write_umap(cfg: RunConfig, out: Path, z_real: np.ndarray, z_syn: np.ndarray,
                cells: list, labels: list) -> None:
    """``features/umap.csv``: one UMAP of real then generated cells (their PCA features)."""
    import umap  # umap-learn, a scanpy dependency; imported here as it is slow to import

    emb = umap.UMAP(random_state=derive_seed(cfg.seed, "umap") % 2**31).fit_transform(
        np.vstack([z_real, z_syn]))
    pd.DataFrame({
        "cell": cells,
        "origin": ["real"] * len(z_real) + ["synthetic"] * len(z_syn),
        "label": labels,
        "x": emb[:, 0], "y": emb[:, 1],
    }).to_csv(out / "features" / "umap.csv", index=False)


def _write_fidelity(cfg: RunConfig, out: Path, space: Any, real_c: sp.csr_matrix, y_real: np.ndarray,
                    syn_c: sp.csr_matrix, y_syn: np.ndarray, progress: bool) -> None:
    """``metrics/fidelity.json``: generated vs real test counts, beside two halves of the real."""
    from .metrics.fidelity import fidelity_report, real_floor

    write_json(out / "metrics" / "fidelity.json", {
        "real_vs_real": real_floor(space, real_c, y_real, seed=derive_seed(cfg.seed, "floor"),
                                   progress=progress),
        "synthetic_vs_real": fidelity_report(space, real_c, y_real, syn_c, y_syn,
                                             seed=derive_seed(cfg.seed, "fidelity"),
                                             progress=progress),
    })


def _evaluate(cfg: RunConfig, pre: ad.AnnData, pca: PCAModel, out: Path,
              progress: bool = False) -> None:
    """The report's UMAP of real test and generated cells, and the fidelity metrics (with the
    real-vs-real floor) when the generator made counts."""
    label_key = cfg.dataset.label_key
    test = pre[(pre.obs[K.SPLIT] == "test").to_numpy()]
    syn = ad.read_h5ad(out / "synthetic" / "eval.h5ad")
    y_real = test.obs[label_key].astype(str).to_numpy()
    y_syn = syn.obs[label_key].astype(str).to_numpy()
    cap = cfg.report.max_cells
    ir = stratified_subsample(y_real, cap, seed=derive_seed(cfg.seed, "eval-real"))
    is_ = stratified_subsample(y_syn, cap, seed=derive_seed(cfg.seed, "eval-synthetic"))
    has_counts = syn.n_vars == pre.n_vars  # the seed model's cells are PCA coordinates
    if cfg.report.umap:
        z_real = pca.transform(test.X[ir])
        if has_counts:
            z_syn = pca.transform(normalise_log1p(sp.csr_matrix(syn.X[is_]), cfg.qc.target_sum))
        else:
            z_syn = np.asarray(syn.X[is_], dtype=np.float32)
        _write_umap(cfg, out, z_real, z_syn, [*test.obs_names[ir], *syn.obs_names[is_]],
                    [*y_real[ir], *y_syn[is_]])
    if cfg.report.fidelity and has_counts and K.COUNTS in pre.layers:
        from .metrics.space import fit_space

        train = (pre.obs[K.SPLIT] == "train").to_numpy()
        counts = sp.csr_matrix(pre.layers[K.COUNTS])
        space = fit_space(counts[train], pre.obs[label_key].astype(str).to_numpy()[train],
                          list(map(str, pre.var_names)), seed=derive_seed(cfg.seed, "eval-space"),
                          progress=progress)
        _write_fidelity(cfg, out, space, sp.csr_matrix(test.layers[K.COUNTS]), y_real,
                        sp.csr_matrix(syn.X[is_]), y_syn[is_], progress)


def _save_pca(pca: PCAModel, out: Path) -> None:
    """The fitted PCA in ``features/`` and its explained variance in ``features/pca.json``."""
    pca.save(out / "features")
    write_json(out / "features" / "pca.json", {
        "n_components": pca.n_components,
        "explained_variance_ratio": pca.explained_variance_ratio,
    })


def run(cfg: RunConfig, out: str | Path, *, progress: bool = True,
        force: set[str] | None = None) -> Path:
    """Run every stage into ``out`` and return the path of ``results.md``.

    A stage already done in ``out`` with the same settings (and upstream stages unchanged) is
    skipped and its outputs are read back; ``force`` names stages to redo (and so everything
    after them).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CellsynthError(f"cannot write to the output directory {out} ({exc.strerror}); "
                             "choose another with --out") from None
    save(cfg, out / "config.toml")
    manifest = Manifest(out / "manifest.json")
    manifest.set_meta(config=to_dict(cfg), environment=environment())
    plan = ResumePlan(manifest, cfg, force or set())
    label_key = cfg.dataset.label_key
    data_dir, metrics_dir = out / "data", out / "metrics"
    from . import pipeline_backed as ooc  # imports this module: not at the top

    store = pre = None  # out of core: the cells on disk (a PreprocessedStore); else in memory
    backed = ooc.out_of_core(cfg)
    if backed:
        from .data.chunked import PreprocessedStore
        from .features.pca import fit_pca_backed

        ooc.check_backed(cfg)
        logger.info("out of core (dataset.backed = %s): cells are read from disk in chunks of "
                    "%d", cfg.dataset.backed, cfg.qc.chunk_size)

    if backed and plan.runs("data"):
        with manifest.stage("data", plan.hash("data")) as entry:
            store, report = ooc.stage_data(cfg, out, progress)
            entry.update(cells=store.n_obs, genes=store.n_vars,
                         types=int(store.obs[label_key].nunique()), out_of_core=True)
            _check_before_training(cfg, store.obs, store.has_counts)
    elif backed:
        store = PreprocessedStore(data_dir / "preprocessed.h5ad")
        report = QCReport.from_json(data_dir / "qc.json")
        _check_before_training(cfg, store.obs, store.has_counts)
    elif plan.runs("data"):
        with manifest.stage("data", plan.hash("data")) as entry:
            pre, report, raw = _stage_data(cfg, out, progress)
            entry.update(cells=pre.n_obs, genes=pre.n_vars, types=int(pre.obs[label_key].nunique()))
            _check_before_training(cfg, pre.obs, bool(pre.uns[K.UNS]["has_counts"]))
            groups = {} if cfg.dataset.groups == "auto" else resolve_groups(cfg, raw, [])
            write_json(data_dir / "groups.json", groups)
            del raw
            pre.write_h5ad(data_dir / "preprocessed.h5ad")
    else:
        pre = ad.read_h5ad(data_dir / "preprocessed.h5ad")
        report = QCReport.from_json(data_dir / "qc.json")
        _check_before_training(cfg, pre.obs, bool(pre.uns[K.UNS]["has_counts"]))

    if store is not None:
        if plan.runs("features"):
            with manifest.stage("features", plan.hash("features")):
                train_rows = ooc.split_rows(store)["train"]
                pca = fit_pca_backed(store.normalised,
                                     store.obs[label_key].to_numpy()[train_rows], store.genes,
                                     cfg.features, seed=derive_seed(cfg.seed, "pca"),
                                     rows=train_rows, progress=progress)
                _save_pca(pca, out)
                sp_ = ooc.splits(store, pca, label_key, out / "features", cfg.qc.chunk_size,
                                 progress, reuse=False)
        else:
            pca = PCAModel.load(out / "features")
            sp_ = ooc.splits(store, pca, label_key, out / "features", cfg.qc.chunk_size,
                             progress, reuse=True)
    else:
        train = (pre.obs[K.SPLIT] == "train").to_numpy()
        if plan.runs("features"):
            with manifest.stage("features", plan.hash("features")):
                pca = fit_pca(pre.X[train], pre.obs[label_key].to_numpy()[train],
                              list(pre.var_names), cfg.features, seed=derive_seed(cfg.seed, "pca"),
                              progress=progress)
                _save_pca(pca, out)
        else:
            pca = PCAModel.load(out / "features")
        sp_ = _splits(pre, pca.transform(pre.X, chunk_size=cfg.qc.chunk_size), label_key)
    types = sorted(np.unique(sp_["train"].y).tolist())
    groups = json.loads((data_dir / "groups.json").read_text())
    if cfg.dataset.groups == "auto":
        if store is not None:
            centroids = ooc.centroids(sp_["train"], types, cfg.qc.chunk_size)
        else:
            centroids = np.stack([sp_["train"].x[sp_["train"].y == t].mean(axis=0) for t in types])
        groups = resolve_groups(cfg, pre if store is None else store, types, centroids)
        write_json(data_dir / "groups.json", groups)

    if plan.runs("classifier"):
        with manifest.stage("classifier", plan.hash("classifier")):
            clf = _fit_classifier(sp_["train"].x, sp_["train"].y, sp_["val"].x, sp_["val"].y,
                                  cfg, derive_seed(cfg.seed, "classifier"), progress)
            clf.save(out / "classifier")
            _score(sp_["test"].y, clf.predict(sp_["test"].x), groups, metrics_dir, "a_real_real")
    else:
        clf = Classifier.load(out / "classifier")

    if plan.runs("generator"):
        with manifest.stage("generator", plan.hash("generator")) as entry:
            fresh = bool(plan.force & {"data", "features", "generator"})
            if store is not None:
                gen, history = ooc.fit_generator(cfg, store, progress, out,
                                                 checkpoint_key=plan.hash("features"), fresh=fresh)
            else:
                gen, history = _fit_generator(cfg, pre, pca, sp_, types, progress, out,
                                              checkpoint_key=plan.hash("features"), fresh=fresh)
            gen.save(out / "generator")
            entry.update(model=cfg.generator.model, epochs=history.get("epochs"),
                         best_epoch=history.get("best_epoch"))
            write_json(out / "generator" / "history.json", history)
    else:
        gen = SeedCVAE.load(out / "generator") if cfg.generator.model == "seed" else \
            load_generator(out / "generator")

    if plan.runs("experiments"):
        with manifest.stage("experiments", plan.hash("experiments")):
            g = cfg.generator
            draws = {
                "eval": ({t: g.n_per_type_eval for t in types}, derive_seed(cfg.seed, "generate-eval")),
                "train": ({t: g.n_per_type_train for t in types},
                          derive_seed(cfg.seed, "generate-train")),
                "val": ({t: g.n_per_type_val for t in types}, derive_seed(cfg.seed, "generate-val")),
            }
            if store is not None:
                syn = {name: ooc.generate(gen, cfg, pca, counts, seed_,
                                          out / "synthetic" / f"{name}.h5ad"
                                          if name != "val" else None,
                                          out / "synthetic" / f"{name}_pca.npy", progress)
                       for name, (counts, seed_) in draws.items()}
            else:
                syn = {name: _generate(gen, cfg, pca, counts, seed_,
                                       out / "synthetic" / f"{name}.h5ad"
                                       if name != "val" else None, progress)
                       for name, (counts, seed_) in draws.items()}
            x_b, y_b = syn["eval"]
            _score(y_b, clf.predict(x_b), groups, metrics_dir, "b_real_synthetic")
            (x_c, y_c), (x_cv, y_cv) = syn["train"], syn["val"]
            clf_syn = _fit_classifier(x_c, y_c, x_cv, y_cv, cfg,
                                      derive_seed(cfg.seed, "classifier-synthetic"), progress)
            clf_syn.save(out / "classifier_synthetic")
            _score(sp_["test"].y, clf_syn.predict(sp_["test"].x), groups, metrics_dir,
                   "c_synthetic_real")
    results = {k: json.loads((metrics_dir / f"{k}_summary.json").read_text()) for k in "abc"}
    write_json(metrics_dir / "summary.json", results)

    if plan.runs("explain"):
        with manifest.stage("explain", plan.hash("explain")) as entry:
            cell_type = cfg.explain.cell_type or pd.Series(sp_["train"].y).value_counts().index[0]
            test = sp_["test"]
            x_t = test.x[test.y == cell_type]
            if x_t.shape[0] == 0:
                x_t = sp_["train"].x[sp_["train"].y == cell_type]
            shap = explain_type(clf, x_t, cell_type, pca.components, pca.genes,
                                n_top=cfg.explain.n_top_genes, max_cells=cfg.explain.max_cells,
                                seed=derive_seed(cfg.seed, "explain"), progress=progress)
            write_shap(shap, out / "explain")
            entry.update(cell_type=cell_type)

    if plan.runs("evaluation"):
        with manifest.stage("evaluation", plan.hash("evaluation")):
            if store is not None:
                ooc.evaluate(cfg, store, pca, out, progress)
            else:
                _evaluate(cfg, pre, pca, out, progress)

    if store is not None:
        store.close()
    with timed("report"):
        path = write_results(out, results, report, cfg, manifest.data, has_groups=bool(groups))
        logger.info("results: %s", path)
        logger.info("report: %s", write_html_report(out))
    return path

