"""The data stage (read, QC, split, into :class:`~cellsynth.cells.Cells`) and the features
stage (PCA on the training cells, every split projected)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .. import keys as K
from ..cells import Cells, from_preprocessed
from ..config import covariates_of, unused_covariates
from ..data.groups import AUTO, PACKAGED, check_groups, load_groups, uns_groups
from ..data.io import read
from ..data.qc import QCReport
from ..data.simulate import simulate_atlas
from ..data.store import write_h5ad
from ..errors import ConfigError, DataError, did_you_mean, listed
from ..features.pca import PCAModel, fit_pca
from ..models.registry import check_design
from ..outputs import write_csv, write_json
from .context import RunContext

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """PCA features and labels of one split."""

    x: np.ndarray  # (n, k) float32, in memory or a memmap
    y: np.ndarray  # (n,) labels


def load_dataset(ctx: RunContext) -> ad.AnnData:
    """The configured h5ad, or the embedded simulated demo atlas when no path is given."""
    ds = ctx.cfg.dataset
    if not ds.path:
        logger.info("no dataset.path: using the embedded demo atlas (%d simulated cells, %d genes, "
                    "%d types)", ds.demo_cells, ds.demo_genes, ds.demo_types)
        with _demo_settings(ctx, in_memory=True):
            return simulate_atlas(ds.demo_cells, ds.demo_genes, ds.demo_types,
                                  seed=ctx.seed("demo"), label_key=ds.label_key)
    return read(ds.path, backed=ds.backed)


@contextmanager
def _demo_settings(ctx: RunContext, *, in_memory: bool) -> Iterator[None]:
    """The simulator's refusal of the demo atlas's sizes said in the run's settings: it names
    its own arguments (``n_cells= or --cells``), which a run sets as ``dataset.demo_*``."""
    try:
        yield
    except ConfigError as exc:
        ds = ctx.cfg.dataset
        disk = (" or --set dataset.backed=true to simulate it to disk chunk by chunk,"
                if in_memory and "memory" in str(exc) else "")  # fmt: skip
        raise ConfigError(
            f"the embedded demo atlas (no dataset.path) cannot be simulated with "
            f"dataset.demo_cells = {ds.demo_cells}, demo_genes = {ds.demo_genes} and demo_types "
            f"= {ds.demo_types} (the simulator's n_cells, n_genes and n_types): {exc}; change "
            f"them with --set dataset.demo_cells=N and the like,{disk} or give an atlas"
        ) from None


def data_groups(adata) -> dict[str, str]:
    """The data's own fine -> coarse mapping (``uns["celltype_groups"]``), or ``{}``."""
    return uns_groups(adata.uns.get("celltype_groups"))


def resolve_groups(ctx: RunContext, labels: list[str],
                   centroids: np.ndarray | None = None) -> tuple[dict[str, str], str]:
    """The fine -> coarse mapping and where it came from: a file or packaged name, ``auto``,
    or the data's own (recorded by the data stage in ``data/data_groups.json``).

    ``auto`` joins types whose mean training features are close (average-linkage clustering
    into about sqrt(n_types) groups); use it only where no biological grouping exists.
    """
    spec = ctx.cfg.dataset.groups
    if spec == AUTO:
        from scipy.cluster.hierarchy import fcluster, linkage

        n_groups = max(2, round(len(labels) ** 0.5))
        cut = fcluster(linkage(centroids, "average"), n_groups, criterion="maxclust")
        return ({t: f"group_{c:02d}" for t, c in zip(labels, cut, strict=True)},
                "auto: clustered by mean training features")
    if spec:
        where = "packaged mapping" if spec in PACKAGED else "file"
        return load_groups(spec), f"{where} {spec}"
    own = ctx.path("data", "data_groups.json")
    if not own.is_file():  # a run directory of an earlier version: its data stage wrote this
        own = ctx.path("data", "groups.json")
    groups = json.loads(own.read_text()) if own.is_file() else {}
    return groups, 'the data\'s uns["celltype_groups"]'


def _backed_source(ctx: RunContext) -> Path:
    """The h5ad to preprocess from disk: ``dataset.path``, or the demo atlas written to disk."""
    ds = ctx.cfg.dataset
    if ds.path:
        return Path(ds.path).expanduser()
    from ..data.simulate import write_atlas

    path = ctx.path("data", "demo.h5ad")
    logger.info("no dataset.path: writing the embedded demo atlas (%d simulated cells, %d genes, "
                "%d types) to %s", ds.demo_cells, ds.demo_genes, ds.demo_types, path)
    with _demo_settings(ctx, in_memory=False):
        return write_atlas(path, ds.demo_cells, ds.demo_genes, ds.demo_types,
                           seed=ctx.seed("demo"), label_key=ds.label_key)


def check_covariates(ctx: RunContext, obs: pd.DataFrame) -> None:
    """The generator's covariate columns, checked against ``obs`` before QC (a missing or
    numeric column was found after the classifier had trained); a covariate setting of
    another generator than the one run is said not to be used."""
    from ..models import check_covariate_columns

    keys = covariates_of(ctx.cfg, ctx.cfg.generator.model)
    if keys:
        check_covariate_columns(obs, keys, ctx.label_key)
    donor, held = ctx.cfg.dataset.donor_key, ctx.cfg.split.heldout_donors
    if donor and held and donor in keys:
        logger.warning("covariate %r is the donor column, and split.heldout_donors = %d holds "
                       "%d donor(s) out of training: the generator never sees their levels, so "
                       "no generated cell has them and their test cells are not compared by "
                       "level; condition on another column, or set split.heldout_donors = 0",
                       donor, held, held)  # fmt: skip
    for section, unused in unused_covariates(ctx.cfg, ctx.cfg.generator.model).items():
        logger.warning("%s.covariates = %s is not used: generator.model = %s (set "
                       "generator.model = \"%s\" to condition on them)", section, unused,
                       ctx.cfg.generator.model, section)


def _preprocess(ctx: RunContext) -> tuple[Cells, QCReport, dict[str, str]]:
    """QC, split and normalisation into ``data/preprocessed.h5ad``: in memory, or chunk by
    chunk from disk when the run is out of core (the one place that asks); also the data's own
    coarse groups (no QC step reads them: the mapping used is chosen by the classifier stage)."""
    cfg, target = ctx.cfg, ctx.path("data", "preprocessed.h5ad")
    target.parent.mkdir(parents=True, exist_ok=True)
    seed = ctx.seed("split")
    if ctx.backed:
        from ..data.chunked import preprocess_backed
        from ..data.store import H5adFile

        source = _backed_source(ctx)
        with H5adFile(source) as h5:
            check_covariates(ctx, h5.obs)
            groups = data_groups(h5)
        _, report = preprocess_backed(source, cfg.dataset, cfg.qc, cfg.split, groups=None,
                                      seed=seed, out_path=target,
                                      needs_counts=_needs_counts(ctx))  # fmt: skip
        return from_preprocessed(target, label_key=ctx.label_key, on_disk=True), report, groups
    from ..data.qc import preprocess

    raw = load_dataset(ctx)
    check_covariates(ctx, raw.obs)
    groups = data_groups(raw)
    pre, report = preprocess(raw, cfg.dataset, cfg.qc, cfg.split, groups=None, seed=seed,
                             needs_counts=_needs_counts(ctx))
    del raw
    write_h5ad(pre, target)  # atomic: .part, then renamed
    return from_preprocessed(pre, label_key=ctx.label_key), report, groups


def stage_data(ctx: RunContext) -> tuple[Cells, QCReport]:
    """Read, QC and split the cells (or reopen them when done before); writes ``qc.json``,
    ``qc_steps.csv``, ``cells.csv`` and ``data_groups.json`` (the data's own mapping) into
    ``data/``."""
    d = ctx.path("data")
    if not ctx.runs("data"):
        with ctx.read_back("data"):
            cells = from_preprocessed(d / "preprocessed.h5ad", label_key=ctx.label_key,
                                      on_disk=ctx.backed)  # fmt: skip
            report = QCReport.from_json(d / "qc.json")
        # the covariates too, as when the stage runs: else a misspelt one is found by the
        # generator stage, after the classifier trained, and marks the trained generator failed
        check_covariates(ctx, cells.obs)
        check_before_training(ctx, cells)
        return cells, report
    with ctx.stage("data") as entry:
        cells, report, groups = _preprocess(ctx)
        write_json(d / "qc.json", {
            "steps": report.steps, "dropped_types": report.dropped_types,
            "cells_per_type_before": report.cells_per_type_before,
            "cells_per_type_after": report.cells_per_type_after,
            "n_cells": cells.n_obs, "n_genes": cells.n_vars, "has_counts": cells.has_counts,
        })  # fmt: skip
        write_csv(d / "qc_steps.csv", pd.DataFrame(report.steps), index=False)
        write_csv(d / "cells.csv", cells.obs[[ctx.label_key, K.SPLIT]], index_label="cell")
        write_json(d / "data_groups.json", groups)
        entry.update(cells=cells.n_obs, genes=cells.n_vars,
                     types=int(cells.obs[ctx.label_key].nunique()))
        if ctx.backed:
            entry.update(out_of_core=True)
        check_before_training(ctx, cells)
    return cells, report


def _needs_counts(ctx: RunContext) -> str:
    """The error of a run whose generator needs raw counts, where the data hold none ("": the
    reference, which generates points of the PCA, needs none); the QC raises it before its
    first step, with a layer of another name holding whole numbers named."""
    model = ctx.cfg.generator.model
    if model == "reference":
        return ""
    if ctx.cfg.dataset.is_normalised is True:  # the setting's word, not what X holds
        return (f"generator.model = '{model}' generates counts and needs raw counts, but "
                "dataset.is_normalised = true reads X as normalised values, and neither "
                "layers['counts'] nor raw.X holds counts: if X holds the raw counts, set "
                "dataset.is_normalised = \"auto\"; else give the unnormalised file or set "
                "generator.model = 'reference'")
    return (f"generator.model = '{model}' generates counts and needs raw counts, but the data "
            "hold normalised values only (in X, and no counts in layers['counts'] or raw.X); "
            "give the unnormalised file or set generator.model = 'reference'")


def check_before_training(ctx: RunContext, cells: Cells) -> None:
    """Settings that can only be checked against the data, before any model is trained."""
    cfg = ctx.cfg
    if _needs_counts(ctx) and not cells.has_counts:
        raise DataError(_needs_counts(ctx))
    n = cells.obs[K.SPLIT].astype(str).value_counts()
    if not n.get("test", 0) or not n.get("train", 0):
        raise DataError(
            f"after QC the {'test' if n.get('train', 0) else 'training'} split holds no cells "
            f"({cells.n_obs} cells: {n.get('train', 0)} train, {n.get('val', 0)} val, "
            f"{n.get('test', 0)} test); the classifier and the generated cells are scored on "
            "test cells: give more cells, or a larger split.test (a type gets a test cell from "
            "about 1 / split.test cells up; see data/qc_steps.csv for what QC removed)")
    # a missing level, or too many, was found by the generator stage: after the classifier
    check_design(cfg, cfg.generator.model, cells.obs, ctx.label_key)
    known = set(cells.labels())
    if cfg.explain.cell_type and cfg.explain.cell_type not in known:
        raise DataError(
            f"explain.cell_type '{cfg.explain.cell_type}' is not among the cell types left "
            f"after QC{did_you_mean(cfg.explain.cell_type, sorted(known))}; they are: "
            f"{listed(sorted(known), 20)}; set explain.cell_type to one of them"
        )


def stage_features(ctx: RunContext, cells: Cells) -> tuple[PCAModel, dict[str, Split]]:
    """PCA fitted on a class-balanced subsample of the training cells; every split projected
    (out of core into ``features/{split}.npy`` memmaps)."""
    rows, y = cells.split_rows(), cells.labels()
    if ctx.runs("features"):
        with ctx.stage("features"):
            pca = fit_pca(cells.normalised, y[rows["train"]], cells.genes, ctx.cfg.features,
                          seed=ctx.seed("pca"), rows=rows["train"])
            pca.save(ctx.path("features"))
            write_json(ctx.path("features", "pca.json"), {
                "n_components": pca.n_components,
                "explained_variance_ratio": pca.explained_variance_ratio,
            })  # fmt: skip
            return pca, _project(ctx, cells, pca, reuse=False)
    with ctx.read_back("features"):
        pca = PCAModel.load(ctx.path("features"))
        return pca, _project(ctx, cells, pca, reuse=True)


def _project(ctx: RunContext, cells: Cells, pca: PCAModel, reuse: bool) -> dict[str, Split]:
    y = cells.labels()
    out = {}
    for s, rows in cells.split_rows().items():
        def fill(z, rows=rows):
            pca.transform(cells.normalised.subset(rows), chunk_size=ctx.cfg.qc.chunk_size,
                          out=z)  # fmt: skip
        x = cells.per_cell_array(ctx.path("features", f"{s}.npy"), (len(rows), pca.n_components),
                                 fill, reuse=reuse)  # fmt: skip
        out[s] = Split(x, y[rows])
    return out


def centroids(split: Split, types: list[str], chunk: int) -> np.ndarray:
    """Mean features of each type, read ``chunk`` rows at a time (a memmap stays on disk)."""
    codes = pd.Categorical(split.y, categories=types).codes
    sums = np.zeros((len(types), split.x.shape[1]))
    for start in range(0, len(codes), chunk):
        c = codes[start:start + chunk]
        np.add.at(sums, c[c >= 0], np.asarray(split.x[start:start + chunk], np.float64)[c >= 0])
    return sums / np.maximum(np.bincount(codes[codes >= 0], minlength=len(types)), 1)[:, None]


def check_groups_setting(ctx: RunContext) -> None:
    """Read a ``dataset.groups`` file or packaged mapping before any stage, so a malformed one
    stops the run before work is done (it is held against the data's types later)."""
    spec = ctx.cfg.dataset.groups
    if spec and spec != AUTO:
        load_groups(spec)


def stage_groups(ctx: RunContext, splits: dict[str, Split], types: list[str],
                 dropped: list[str]) -> dict[str, str]:
    """The run's fine -> coarse mapping (``auto``: from the training features), held against
    the types (``dropped``: those QC removed, not named as unknown) and written to
    ``data/groups.json``; run inside the classifier stage, the first that reads it (no earlier
    stage depends on ``dataset.groups``)."""
    cents = centroids(splits["train"], types, ctx.cfg.qc.chunk_size) \
        if ctx.cfg.dataset.groups == AUTO else None
    groups, source = resolve_groups(ctx, types, cents)
    try:
        groups = check_groups(groups, types, source, dropped)
    except DataError as exc:
        if ctx.cfg.dataset.groups:
            raise
        logger.warning("%s; the data's own groups are not used", exc)  # not asked for: no stop
        groups = {}
    if groups:
        logger.info("coarse groups from %s: %d types in %d groups", source, len(groups),
                    len(set(groups.values())))
    else:
        logger.info("no coarse groups (dataset.groups is empty and the data has no "
                    "uns[\"celltype_groups\"]): the coarse scores repeat the fine ones")
    write_json(ctx.path("data", "groups.json"), groups)
    return groups


def read_groups(ctx: RunContext) -> dict[str, str]:
    """The mapping a finished classifier stage wrote (``{}`` when there is none)."""
    path = ctx.path("data", "groups.json")
    return json.loads(path.read_text()) if path.is_file() else {}
