"""The reference experiment end to end, stage by stage, into one run directory.

Stages: data (read, QC, split) -> features (PCA) -> classifier (real) -> generator -> experiments
(a) real/real, (b) real classifier on synthetic, (c) synthetic-trained classifier on real ->
explain (SHAP) -> evaluation -> results.md and report.html. Each stage is a function of the
:class:`~cellsynth.pipeline.context.RunContext` and what earlier stages made; it runs, or reads
back what it wrote when it was done before with the same settings. The cells are one
:class:`~cellsynth.cells.Cells`, in memory or on disk: no stage asks which.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..classify.xgb import resolve_device
from ..config import RunConfig
from ..config_rules import fix_hint
from ..errors import CellsynthError, ConfigError
from ..outputs import write_json
from ..report.html import write_report as write_html_report
from ..report.results import write_results
from ..runtime import timed
from .context import RunContext, check_backed
from .data import check_groups_setting, stage_data, stage_features
from .evaluation import stage_evaluation, stage_explain
from .models import stage_classifier, stage_experiments, stage_generator

logger = logging.getLogger(__name__)


def run(cfg: RunConfig, out: str | Path, *,
        force: set[str] | None = None, command: str | None = None) -> Path:  # fmt: skip
    """Run every stage into ``out`` and return the path of ``results.md``.

    A stage already done in ``out`` with the same settings (and upstream stages unchanged) is
    skipped and its outputs are read back; ``force`` names stages to redo (and so everything
    after them). With ``dataset.backed`` (or ``"auto"`` and a file over 2 GB) the cells stay on
    disk and are read in chunks of ``qc.chunk_size``. ``command``, the command line that
    started the run, is recorded in the manifest.
    """
    ctx = RunContext(cfg, Path(out), force=set(force or ()), command=command)
    try:
        return _stages(ctx, cfg)
    finally:
        ctx.close()  # the run directory's lock


def _stages(ctx: RunContext, cfg: RunConfig) -> Path:
    if cfg.classifier.backend == "local":  # a device that is not there: said before any stage
        if cfg.classifier.dask_scheduler:  # trained here, the cluster unused, without a word
            raise ConfigError(
                f"classifier.dask_scheduler = {cfg.classifier.dask_scheduler!r} is used only "
                "with classifier.backend = \"dask\", but the backend is \"local\": set "
                "classifier.backend = \"dask\" (or dask_scheduler = \"\" to train here); "
                f"{fix_hint('classifier.backend')}")
        resolve_device(cfg.classifier.device)
    elif not ctx.backed:  # out of core, check_backed refuses the dask backend itself
        from ..classify.dask import check_settings

        check_settings(cfg.classifier)  # dask missing, a scheduler address, a GPU not here
    from ..models.registry import check_generator_device, check_generator_package

    check_generator_device(cfg)  # torch: imported when run
    try:  # scvi-tools for scvi: said before the data stage, not after the classifier trained
        check_generator_package(cfg.generator.model)
    except CellsynthError as exc:
        raise CellsynthError(f"{exc}, or choose another generator.model") from None
    if cfg.generator.model == "cvae" and cfg.cvae.distributed and not ctx.backed:
        from ..models.distributed import check_processes, check_type_only

        check_type_only(cfg.cvae)
        check_processes(cfg.cvae)  # one rank per device, at most 4 per core
    if ctx.backed:
        check_backed(cfg)
        logger.info("out of core (dataset.backed = %s): cells are read from disk in chunks of "
                    "%d", cfg.dataset.backed, cfg.qc.chunk_size)
    check_groups_setting(ctx)
    cells, report = stage_data(ctx)
    try:
        pca, splits = stage_features(ctx, cells)
        types = sorted(np.unique(splits["train"].y).tolist())
        clf, groups = stage_classifier(ctx, splits, types, report.dropped_types)
        gen = stage_generator(ctx, cells, pca, splits, types)
        stage_experiments(ctx, gen, cells, pca, clf, splits, types, groups)
        metrics = ctx.path("metrics")
        results = {}
        for k, stage in (("a", "classifier"), ("b", "experiments"), ("c", "experiments")):
            with ctx.read_back(stage):
                results[k] = json.loads((metrics / f"{k}_summary.json").read_text())
        write_json(metrics / "summary.json", results)
        stage_explain(ctx, clf, pca, splits)
        stage_evaluation(ctx, cells, pca)
    finally:
        cells.close()
    ctx.record_config()  # a rerun that found every stage done still ran with these settings
    ctx.end()
    with timed("report"):
        path = write_results(ctx.out, results, report, cfg, ctx.manifest.data,
                             groups=groups)  # fmt: skip
        logger.info("results: %s", path)
        logger.info("report: %s", write_html_report(ctx.out))
    return path

