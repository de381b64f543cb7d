"""The functions behind ``cellsynth.read``, ``simulate``, ``run``, ``evaluate`` and ``load_model``.

Each is a thin, documented entry point to the module that does the work (``data.io``,
``data.simulate``, ``config`` with ``pipeline``, ``evaluation``, ``models.registry``); heavy
libraries are imported inside the functions, so ``import cellsynth`` stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import anndata as ad

    from .config import RunConfig
    from .evaluation.result import Evaluation
    from .models.base import Generator

logger = logging.getLogger(__name__)

#: the run directory's parent when ``out`` is not given (as ``cellsynth run``)
RUNS_DIR = Path("runs")


def simulate(
    n_cells: int = 3000,
    n_genes: int = 2000,
    n_types: int = 8,
    *,
    seed: int = 0,
    label_key: str = "cell_type",
) -> ad.AnnData:
    """Simulate a labelled atlas of raw counts in memory.

    Negative binomial counts with per-type marker programs, a few doublets and uninformative
    labels, as :func:`cellsynth.data.simulate.simulate_atlas` makes them (its other keywords
    are there; :func:`~cellsynth.data.simulate.write_atlas` writes an atlas of any size
    straight to a file).

    Parameters
    ----------
    n_cells
        Cells.
    n_genes
        Genes, the mitochondrial ones (``MT-``, the first columns) included.
    n_types
        Informative cell types.
    seed
        The one seed: the same arguments give the same atlas.
    label_key
        The ``obs`` column holding the cell type.

    Returns
    -------
    AnnData with whole counts in ``X`` (CSR float32) and the cell type in ``obs[label_key]``.

    Examples
    --------
    >>> import cellsynth as cs
    >>> adata = cs.simulate(600, 200, 4, seed=0)
    >>> adata.obs["cell_type"].nunique() >= 4
    True
    """
    from .data.simulate import simulate_atlas
    from .seeds import checked_whole

    for name, v in (("n_cells", n_cells), ("n_genes", n_genes), ("n_types", n_types)):
        checked_whole(v, name)
    return simulate_atlas(n_cells, n_genes, n_types, seed=seed, label_key=label_key)


def read(path: str | Path, *, backed: Literal["auto", True, False] = "auto") -> ad.AnnData:
    """Read an ``.h5ad`` file, backed (``X`` left on disk) when it is large.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    backed
        ``"auto"``: backed when the file is larger than
        :data:`cellsynth.data.io.BACKED_BYTES`; ``True`` / ``False`` force it.

    Returns
    -------
    The AnnData.

    Raises
    ------
    DataError
        A missing, non-h5ad, corrupt or empty file, or duplicate cell or gene names.
    """
    from .data.io import read as read_h5ad

    return read_h5ad(path, backed=backed)


def _default_out(data: Any, config: Any, cfg: RunConfig | None = None) -> Path:
    """``runs/<name>``, named as ``cellsynth run`` names its run directory: the data file's
    stem, else the config file's, else ``runs/anndata`` for an AnnData (not the demo's folder:
    its cells are other cells), else ``dataset.path``'s stem (``cfg``, the resolved settings:
    a path set by ``overrides`` or a :class:`RunConfig`), else ``runs/demo``."""
    for named in (data, config):
        if isinstance(named, str | Path) and str(named):
            return RUNS_DIR / Path(named).stem
    if data is not None:
        return RUNS_DIR / "anndata"
    path = cfg.dataset.path if cfg is not None else ""
    return RUNS_DIR / (Path(path).stem if path else "demo")


def _data_path(data: Any, out: Path | None) -> str | None:
    """The h5ad path of ``data``: a path as given; an AnnData written to ``out/input.h5ad``."""
    if data is None:
        return None
    if isinstance(data, str | Path):
        return str(data)
    if hasattr(data, "write_h5ad") and hasattr(data, "obs"):
        if getattr(data, "isbacked", False):
            return str(data.filename)
        from .data.store import as_written, write_h5ad
        from .errors import DataError

        _check_matrix_dtypes(data)  # else anndata's writer's error, said of obs columns
        out.mkdir(parents=True, exist_ok=True)
        path = out / "input.h5ad"
        logger.info("writing the AnnData to %s for the run to read", path)
        try:
            # atomic: nothing is left under path when it fails; the caller's AnnData unchanged
            write_h5ad(as_written(data), path)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise DataError(f"the AnnData cannot be written to {path}, which the run reads "
                            f"({type(exc).__name__}: {exc}): an obs column of mixed types, or "
                            "uns keys that are not strings? Convert them (e.g. adata.obs[col] = "
                            "adata.obs[col].astype(str)) or drop them, or pass an .h5ad path"
                            ) from None
        return str(path)
    from .errors import DataError

    raise DataError(f"data is a {type(data).__name__}; give an .h5ad path or an AnnData")


def _check_matrix_dtypes(adata: Any) -> None:
    """Refuse, before the AnnData is written for the run, a matrix of values that are not
    numbers (an ``X`` of Python objects: anndata cannot write it, and its error was answered
    as one of an obs column), naming the matrix."""
    from .data.values import check_dtype

    raw = getattr(adata, "raw", None)
    matrices = {"X": adata.X, **{f"layers[{k!r}]": v for k, v in adata.layers.items()},
                **({"raw.X": raw.X} if raw is not None else {})}
    for name, m in matrices.items():
        if getattr(m, "dtype", None) is not None:
            check_dtype(m.dtype, f"the AnnData's {name}")


def _config(data: str | None, label_key: str | None, config: Any,
            overrides: Sequence[str]) -> RunConfig:
    """The run's validated config: ``config`` (a file, a :class:`RunConfig` or None), then the
    overrides, then ``data`` and ``label_key``."""
    from . import config as cfg_mod

    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(config, cfg_mod.RunConfig):
        tree = cfg_mod.apply_overrides(cfg_mod.to_dict(config), list(overrides))
        if data is not None:
            tree["dataset"]["path"] = data
        if label_key is not None:
            tree["dataset"]["label_key"] = label_key
        return cfg_mod.run_config(tree)
    if config is not None and not isinstance(config, str | Path):
        from .errors import ConfigError

        raise ConfigError(f"config is a {type(config).__name__}; give a TOML path, a "
                          "cellsynth.RunConfig or None" + (
                              " (a dict of sections: config=cs.RunConfig(**settings), e.g. "
                              "cs.RunConfig(cvae={'max_epochs': 20}))"
                              if isinstance(config, dict) else ""))
    from .config_sources import resolve

    cfg, sources = resolve(data, label_key, config, list(overrides))
    logger.debug("settings from: %s", sorted(set(sources.values())))
    return cfg


def run(
    data: str | Path | ad.AnnData | None = None,
    *,
    label_key: str | None = None,
    config: str | Path | RunConfig | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Path:
    """Run the whole pipeline (``cellsynth run``): QC, PCA, classifier, generator, experiments,
    fidelity, SHAP and the report, into one resumable run directory.

    Parameters
    ----------
    data
        The labelled atlas: an ``.h5ad`` path, or an AnnData (written to ``out/input.h5ad``
        first). None with no ``config``: the embedded demo (a simulated atlas).
    label_key
        The ``obs`` column holding the cell type (``dataset.label_key``); None keeps the
        config's.
    config
        A TOML config file, a :class:`~cellsynth.config.RunConfig`, or None for the package
        defaults (the demo preset when no data is given at all).
    out
        The run directory; default, as ``cellsynth run`` names it, ``runs/<data file stem>``,
        else ``runs/<config file stem>``, else ``runs/anndata`` for an AnnData, else
        ``runs/<dataset.path's stem>``, else ``runs/demo``. A second run into the same
        directory skips the stages already done with the same settings.
    overrides
        ``"section.key=value"`` settings (``--set``), values in TOML syntax, e.g.
        ``["generator.model='nb'", "cvae.max_epochs=20"]``.

    Returns
    -------
    The path of the run's ``results.md`` (``report.html`` is beside it).

    Raises
    ------
    ConfigError
        An unknown setting, a value of the wrong type, or the data given twice.
    DataError
        Data that cannot be used (missing label column, normalised values without counts, ...),
        checked before any training.

    Examples
    --------
    >>> import cellsynth as cs
    >>> results = cs.run("atlas.h5ad", label_key="cell_type", out="runs/atlas")  # doctest: +SKIP
    """
    from . import pipeline
    from .outputs import check_run_dir
    from .paths import expand_user

    copied = hasattr(data, "write_h5ad") and not getattr(data, "isbacked", False)
    if copied:  # an AnnData is copied into its run directory: named before the settings
        out_dir = expand_user(out, "out") if out is not None else _default_out(data, config)
        check_run_dir(out_dir, "out")  # before an AnnData is written into it
        path = str(out_dir / "input.h5ad")
    else:
        path = _data_path(data, None)
    # an AnnData's settings are checked before its copy is written (a misspelt setting left a
    # copy of the atlas behind), and the copy is written where the config says
    cfg = _config(path, label_key, config, overrides)
    if not copied:  # named as `cellsynth run` names it, dataset.path of the settings too
        out_dir = expand_user(out, "out") if out is not None else _default_out(data, config, cfg)
        check_run_dir(out_dir, "out")
    from .runtime import RunLock

    # a run going on there: its input.h5ad and run.log are not this call's to write
    RunLock(out_dir).check_free()
    if copied:
        from .data.labels import check_label

        key = cfg.dataset.label_key
        if not isinstance(key, str) or key not in data.obs.columns:
            check_label(data, key)  # a misspelt label_key leaves no copy behind
        _data_path(data, out_dir)
    from .run_log import run_log

    with run_log(out_dir):
        logger.info("run: %s into %s", cfg.dataset.path or "the demo atlas", out_dir)
        return pipeline.run(cfg, out_dir)


def evaluate(
    real: ad.AnnData | str | Path,
    synthetic: ad.AnnData | str | Path,
    *,
    label_key: str,
    seed: int = 0,
    out: str | Path | None = None,
    max_cells: int | None = None,
    heldout: ad.AnnData | str | Path | None = None,
    donor_key: str | None = None,
    gene_repeats: int | Literal["auto"] | None = None,
) -> Evaluation:
    """Are the synthetic cells good? A verdict, per type and overall, each metric read against
    the real-vs-real floor, and, given held-out cells, a privacy audit.

    Each side is a stratified subsample of at most ``max_cells`` cells, read from disk row by
    row when given as a path (a file is never loaded whole). Genes are matched by name; the
    evaluation space (HVGs, log1p counts per 10k, 30 PCs) is fitted on other real cells (at
    most ``max_cells``, disjoint from the scored ones, which are at most half the real
    cells). The floor compares two disjoint halves of the scored real cells. Each metric (the
    two-sample AUC in PCs and on genes, k-NN precision and recall, DE log-fold-change r,
    marker overlap) is called indistinguishable from its floor, close, or distinguishable
    (:mod:`cellsynth.metrics.verdict` gives the thresholds and why); a type with too few cells,
    or absent from the synthetic data, is named. See :func:`cellsynth.evaluation.compare`.

    Parameters
    ----------
    real, synthetic
        AnnData objects or ``.h5ad`` paths with raw counts (in ``X``, ``layers['counts']`` or
        ``raw.X``) and the cell type in ``obs[label_key]``. With ``heldout``, ``real`` are
        the cells the generator was trained on.
    label_key
        The ``obs`` column holding the cell type, in both.
    seed
        Seeds the subsamples, the evaluation space and every metric.
    out
        A directory to write ``fidelity.json``, ``fidelity.md`` (the verdict first) and
        ``per_type.csv`` into; None writes nothing.
    max_cells
        Cells used at most from each side; default ``report.max_cells`` (3,000).
    heldout
        Real cells the generator never saw (e.g. the test split): the privacy audit asks
        whether the synthetic cells reveal which cells trained it. Cells shared with ``real``
        are an error.
    donor_key
        The ``obs`` column naming each cell's donor (in ``real`` and ``heldout``), for the
        audit's donor-level attacks (skipped, with the reason, when a side has one donor).
    gene_repeats
        Random halvings the gene-level AUCs and their floor average over (``"auto"``: up to 10
        when there are few cells; 1 is the quickest); default ``report.gene_repeats``
        (``cellsynth evaluate --gene-repeats``).

    Returns
    -------
    Evaluation
        ``.verdict`` (``overall`` and ``per_type``: ``verdict``, ``decided_by``, ``reason``;
        ``too_few``, ``absent``), ``.summary`` (the verdict as text), ``.per_type`` (a
        DataFrame, one row per type), ``.privacy`` (None without ``heldout``), ``.genes``,
        ``.to_dict()``, ``.to_html(path)``. It is also a read-only mapping of the JSON-ready
        result (``result["synthetic_vs_real"]``, ``result["real_vs_real"]``,
        ``result["n_cells"]``, ...): plot it with :func:`cellsynth.pl.fidelity`.

    Examples
    --------
    >>> import cellsynth as cs
    >>> real, fake = cs.simulate(800, 300, 4, seed=0), cs.simulate(800, 300, 4, seed=1)
    >>> result = cs.evaluate(real, fake, label_key="cell_type", max_cells=400)
    >>> result.verdict["overall"]["verdict"]
    'distinguishable'
    >>> result.per_type.loc["type_00", "verdict"]  # doctest: +SKIP
    'distinguishable'
    """
    from . import evaluation
    from .evaluation.result import Evaluation

    if out is not None:
        evaluation._out_dir(out, "out")  # before any work
    result = Evaluation(evaluation.compare(real, synthetic, label_key=label_key, seed=seed,
                                           max_cells=max_cells, heldout=heldout,
                                           donor_key=donor_key, gene_repeats=gene_repeats))
    if out is not None:
        path = evaluation.write(result, out)
        logger.info("fidelity written to %s", path)
    return result


def load_model(directory: str | Path) -> Generator:
    """Load a generator saved with its ``save(directory)`` method (or by a pipeline run,
    ``RUN/generator``), whatever its kind (``cvae``, ``nb``, ``reference``, ``scvi``).

    Parameters
    ----------
    directory
        The model directory: ``config.json``, ``weights.safetensors`` (or the model's own
        files), ``labels.json``, ``genes.json``.

    Returns
    -------
    The fitted generator; ``sample({"type": n, ...}, seed=...)`` gives new cells.

    Raises
    ------
    ModelFileError
        A missing, corrupt or inconsistent model directory, or an unknown model kind; also
        the ``generator/`` of a run of ``generator.model = "reference"``, a model of that
        run's PCA and not a generator of cells (its points are in ``RUN/synthetic/``;
        ``cs.ReferenceGenerator`` is the reference model as a generator).

    Examples
    --------
    >>> import cellsynth as cs
    >>> model = cs.load_model("runs/demo/generator")  # doctest: +SKIP
    >>> cells = model.sample({"B cells": 100}, seed=0)  # doctest: +SKIP
    """
    from .models.registry import load_generator

    return load_generator(directory)
