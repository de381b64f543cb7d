"""``cellsynth benchmark``: every generator on every data set, one results page
(:func:`run_benchmark`); the data sets and the held-out combination checked before any fit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .. import config
from .. import keys as K
from ..benchmark import benchmark_dataset, prepare
from ..benchmark_kept import is_kept
from ..errors import CellsynthError, ConfigError, DataError, listed
from ..outputs import check_file_out, check_out_dir, write_json, write_text
from ..resume import input_digest
from ..runtime import RunLock
from ..seeds import checked_whole
from .page import our_page, results_page, verdict_summary

logger = logging.getLogger(__name__)


def _check_data_settings(overrides: list[str], datasets: list[str], label_key: str | None) -> None:
    """Refuse a ``--set dataset.path`` where ``--data`` gives h5ad files (each is read instead:
    the setting only points preset TOMLs at another file) and a ``--set dataset.label_key``
    other than ``--label-key``: one of the two was ignored without a word, as ``cellsynth fit``
    refuses them."""
    from ..config_rules import apply_overrides
    from ..config_sources import _leaves

    given = _leaves(apply_overrides({}, overrides))
    files = [item for item in datasets if not item.lower().endswith(".toml")]
    if "dataset.path" in given and files:
        raise ConfigError(f"--set dataset.path={given['dataset.path']!r} names a data file, but "
                          f"--data gives {listed(files)}, which the benchmark reads instead: "
                          "drop the --set (it points the preset TOMLs of --data at another "
                          "file), or give that file in --data")
    if label_key and given.get("dataset.label_key", label_key) != label_key:
        raise ConfigError(f"--set dataset.label_key={given['dataset.label_key']!r} and "
                          f"--label-key {label_key!r} both give the label column; the benchmark "
                          "uses --label-key: drop the --set")


def run_benchmark(datasets: list[str | Path], models: list[str], out: Path, *,
                  config_path: str | None = None, overrides: list[str] | None = None,
                  label_key: str | None = None, doc: Path | None = None,
                  command: str | None = None, reuse: bool = False, kept_only: bool = False,
                  kept: Path | None = None, holdout: dict[str, str] | None = None,
                  fits: int = 1) -> Path:
    """Benchmark ``models`` on each dataset (an .h5ad, or a preset .toml) and write a results page.

    With ``reuse``, a generator whose results in ``out`` were made with the same settings and
    package version (``benchmark.model_key``) is read back instead of rerun; with
    ``kept_only``, nothing is fitted: the page is written from the kept results alone. Kept
    results are in ``kept/DATASET/`` (default ``out/DATASET/results/``). With ``holdout``
    (``{column: level}``, the type and covariates), each dataset also holds that combination
    out of training and scores it (:func:`~cellsynth.holdout.benchmark_holdout`). With ``fits``
    above one, each generator's row is the mean of that many fits, each with its own seeds
    (:func:`~cellsynth.benchmark.benchmark_dataset`), and the page gives their spread.

    Returns the path of the markdown page (``doc``, default ``out/RESULTS.md``).
    """
    from ..config import canonical_model
    from ..models.registry import GENERATORS

    checked_whole(fits, "fits")
    datasets = [item for item in _listed(datasets, "datasets", paths=True) if item.strip()]
    models = [m.strip().lower() for m in _listed(models, "models") if m.strip()]  # "CVAE"
    if not models:
        raise DataError(f"no generator given; choose from {', '.join(GENERATORS)}")
    unknown = [m for m in models if canonical_model(m) not in GENERATORS]
    if unknown:
        raise DataError(f"unknown generator(s) {unknown}; choose from {', '.join(GENERATORS)}")
    _distinct_models(models)
    # an old name (seed) is its generator's: one row, one kept result and one fit under its name
    models = [canonical_model(m) for m in models]
    if not datasets:  # `--data ""` or `--data ,`: a page of nothing, said to be written
        raise DataError("no data set given; give --data one or more .h5ad files or preset "
                        "TOMLs, separated by commas")
    out = check_out_dir(out, "--out", "the benchmark (RESULTS.md and a folder per data set)",
                        DataError)  # before any work; ~ expanded
    overrides = _listed(overrides or [], "overrides")  # one string: one setting
    if holdout and kept_only:  # it fitted every generator again, where nothing is to be
        raise ConfigError("kept_only writes the page from kept results, fitting nothing, but "
                          "holdout fits every generator again (its scores are not kept): give "
                          "one or the other")  # fmt: skip
    if isinstance(holdout, str):  # as --holdout reads it, not its letters as columns
        from ..holdout import parse_holdout

        holdout = parse_holdout(holdout)
    from ..paths import expand_user

    doc, kept = (expand_user(p, what) if p is not None else None
                 for p, what in ((doc, "doc"), (kept, "kept")))  # a string: a path too
    _check_data_settings(overrides, datasets, label_key)
    tomls = [item for item in datasets if item.lower().endswith(".toml")]
    if config_path and tomls:
        logger.warning("--config %s is not applied to %s: a preset TOML is the whole config of "
                       "its data set; put those settings in it, or give them with --set (which "
                       "applies to every data set)", config_path, ", ".join(tomls))  # fmt: skip
    cfgs = []
    for item in datasets:
        # TOML strings written by json: a path or column holding a quote or a backslash
        extra = [f"dataset.label_key={json.dumps(label_key)}"] if label_key else []
        if item.lower().endswith(".toml"):
            if not expand_user(item, "--data").is_file():  # not "give an existing --config"
                raise DataError(f"the preset {item} in --data "
                                + ("is a directory" if expand_user(item).is_dir() else
                                   "does not exist") + "; give the path of a preset TOML (as "
                                "in examples/) or of an .h5ad")  # fmt: skip
            cfgs.append((Path(item).stem, config.load(item, overrides + extra)))
            if not str(cfgs[-1][1].dataset.path).strip():  # it was read as the folder "."
                raise DataError(f"the preset {item} in --data names no data file: add "
                                "[dataset] path = \"....h5ad\" to it")
        else:
            cfgs.append((Path(item).stem, config.load(config_path, overrides + extra + [
                f"dataset.path={json.dumps(str(item))}"])))
    _distinct_names(cfgs, datasets)
    for name, _ in cfgs:  # each data set's folder: a file there was found after those before it
        if (out / name).exists() and not (out / name).is_dir():
            raise DataError(f"--out {out}: {out / name} is a file, where the benchmark writes "
                            f"the folder of data set {name!r}; move the file or choose another "
                            "--out")  # fmt: skip
    _check_inputs(cfgs, holdout, models)  # every file, covariate and the holdout, before hours
    # of fitting
    digests = {name: _data_digest(cfg.dataset.path) for name, cfg in cfgs}
    # so are the packages (of the generators to fit: not those whose results are read back;
    # --holdout fits each again) and the devices
    _check_engines(cfgs, models, fitting=None if holdout else set() if kept_only else {
        model for model in models for name, cfg in cfgs
        if not (reuse and is_kept((kept / name) if kept else out / name / "results", model,
                                  cfg, fits, digests[name]))})  # fmt: skip
    if command is None:  # a call from Python: the call (sys.argv is the notebook's, a script's)
        command = (f"run_benchmark({datasets!r}, {models!r}, {str(out)!r}"
                   + (f", overrides={overrides!r}" if overrides else "") + ")")
    path = out / "RESULTS.md" if doc is None else doc
    # a RESULTS.md of the user's own in --out is not overwritten (an earlier page is)
    path = check_file_out(path, "a benchmark page", our_page, flag="doc" if doc else "--out",
                          suffixes=(path.suffix.lower(),), say=False)  # fmt: skip
    _say_dropped_sections(path, [name for name, _ in cfgs])
    path.parent.mkdir(parents=True, exist_ok=True)
    # one benchmark per directory: two at once would fit the same generators into one
    # models/ and results/, a page's rows then read beside another command's models
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock.of_benchmark(out)
    lock.acquire()
    failed: dict[tuple[str, str], str] = {}  # (data set, generator): why
    try:
        sections = []
        for name, cfg in cfgs:
            try:  # QC's refusals (one type left, no gene left) name the data set
                pre = prepare(cfg.dataset.path, cfg)
            except (DataError, ConfigError) as err:
                said = str(err).startswith(str(cfg.dataset.path))
                raise type(err)(str(err) if said else f"{name} ({cfg.dataset.path}): {err}"
                                ) from None  # fmt: skip
            if not kept_only:  # as each fit reads them, before any (none with kept_only)
                _check_designs(name, cfg, models, pre.obs)
            if holdout:  # QC may have removed cells of it: checked again before any fit
                from ..holdout import check_holdout

                check_holdout(pre.obs, holdout, cfg.dataset.label_key,
                              split=pre.obs[K.SPLIT].to_numpy())
            details = benchmark_dataset(pre, models, cfg, out / name, reuse=reuse,
                                        kept_only=kept_only,
                                        kept_dir=kept / name if kept else None, fits=fits,
                                        data=digests[name])
            if holdout:  # not the generators that failed: they would fail again
                from ..holdout import benchmark_holdout

                details["holdout"] = benchmark_holdout(
                    pre, [m for m in models if m not in details.get("failed", {})], cfg,
                    out / name / "holdout", holdout)  # fmt: skip
            failed.update({(name, m): why for m, why in details.get("failed", {}).items()})
            failed.update({(name, f"{m} (held out)"): why
                           for m, why in details.get("holdout", {}).get("failed", {}).items()})
            for line in verdict_summary(details):
                logger.info("benchmark %s: %s", name, line)
            shape = {"n_obs": pre.n_obs, "n_vars": pre.n_vars,
                     "n_types": int(pre.obs[cfg.dataset.label_key].nunique())}
            sections.append((name, cfg, shape, details))
            # the seed every other seed of the data set's benchmark derives from: its provenance,
            # which the page's command line lacks where a --config file or preset gave it
            write_json(out / name / "summary.json", {"rows": details["rows"], "shape": shape,
                                                     "seed": cfg.seed,
                                                     "verdicts": verdict_summary(details),
                                                     "failed": details.get("failed", {})})
            # the page is rewritten after every dataset, so an interrupted run still leaves one
            write_text(path, results_page(sections, command, models))
    finally:
        lock.release()
    if failed:  # the page reports the others; the command still fails, naming each
        raise CellsynthError(
            f"{len(failed)} generator run(s) failed: " + "; ".join(
                f"{model} on {data}: {why}" for (data, model), why in failed.items())
            + f"; {path} reports the others; mend the cause and run the same command again "
            "(the finished generators are read back; --verbose shows each failure's "
            "traceback), or leave the failed generator out of --models")  # fmt: skip
    return path


#: what each list argument of :func:`run_benchmark` holds, with an example
_LISTS = {"datasets": ("paths", "['kang.h5ad', 'baron.toml']"), "models": ("names", "['cvae', 'nb']"),
          "overrides": ("settings", "['seed=3', 'cvae.max_epochs=50']")}


def _listed(items: Any, what: str, *, paths: bool = False) -> list[Any]:
    """``datasets``, ``models`` or ``overrides`` as a list: one string (``"cvae,nb"``, as
    ``--models`` reads it; one data file; one setting) or path is one item, not its
    characters; an item that is not a name (None, a number) is refused in one line."""
    import os

    if isinstance(items, str):
        items = items.split(",") if what == "models" else [items]
    elif isinstance(items, os.PathLike) and paths:
        items = [items]
    kinds = (str, os.PathLike) if paths else str
    try:
        items = list(items)
    except TypeError:
        items = [items]
    bad = [item for item in items if not isinstance(item, kinds)]
    if bad:
        kind, example = _LISTS[what]
        raise DataError(f"{what} takes a list of {kind}, e.g. {example}, not "
                        f"{type(bad[0]).__name__} {bad[0]!r}")
    return [os.fspath(item) if paths else item for item in items]


def _say_dropped_sections(page: Path, names: list[str]) -> None:
    """Said when the page an earlier command wrote holds data sets this one does not (a second
    `--data b.h5ad` into the `--out` of `--data a.h5ad`): the new page replaces it, and how to
    have both on it."""
    import re

    try:
        text = page.read_text(errors="replace") if page.is_file() else ""
    except OSError:
        return
    earlier = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    dropped = [n for n in earlier if n not in names]
    if dropped:
        logger.warning("%s held the data set(s) %s of an earlier command, which this page "
                       "replaces: to have them beside %s, give them in --data too (their kept "
                       "results are read back)", page, listed(dropped), listed(names))


def _data_digest(path: str) -> str | None:
    """The data file's sha256, kept beside each generator's results so that a file replaced
    under the same name is benchmarked again; None where it cannot be read (nothing checked)."""
    try:
        return input_digest(path)["sha256"]
    except OSError:
        return None


def _distinct_models(models: list[str]) -> None:
    """A generator named twice (or by its old name beside its own: ``seed``, ``reference``)
    would be fitted twice into one row, its kept results and model overwritten."""
    from ..config import MODEL_ALIASES

    seen: dict[str, str] = {}
    for name in models:
        model = MODEL_ALIASES.get(name, name)
        if model in seen:
            first = seen[model]
            raise DataError(f"--models names {model} twice"
                            + (f" ({first} and {name})" if first != name else "")
                            + "; give each generator once")  # fmt: skip
        seen[model] = name


def _distinct_names(cfgs: list[tuple[str, Any]], datasets: list[str]) -> None:
    """Each data set's results go to ``out/NAME`` (its file name): a file given twice, or two
    files of one name, would overwrite each other's (it happened without a word)."""
    seen: dict[str, str] = {}
    for (name, _), item in zip(cfgs, datasets, strict=True):
        if name in seen:
            same = Path(seen[name]).resolve() == Path(item).resolve()
            raise DataError(f"{item} is given twice" if same else
                            f"two data sets are named {name!r} ({seen[name]} and {item}): their "
                            "results would share one folder; give one a file name of its own")
        seen[name] = item


def _check_engines(cfgs: list[tuple[str, Any]], models: list[str],
                   fitting: set[str] | None = None) -> None:  # fmt: skip
    """The packages and devices asked for, refused before any fit (the devices as ``cellsynth
    run`` refuses them): scvi-tools for ``scvi`` and ``scvi-pp`` where they are to be fitted
    (in ``fitting``; None: every generator) was found missing by their fit, after the others'; a
    ``classifier.device = "cuda"`` without a GPU was found by the first utility score, after
    that generator's fit (hours), and a generator's device by its fit, after the datasets
    before it. ``classifier.backend = "dask"`` is said not to apply: the benchmark's
    classifiers train here."""
    import dataclasses

    from ..classify.xgb import resolve_device
    from ..models.registry import check_generator_device, check_generator_package

    for model in models if fitting is None else [m for m in models if m in fitting]:
        try:
            check_generator_package(model)
        except CellsynthError as err:
            raise CellsynthError(f"{err}, or leave {model} out of --models") from None
    for _, cfg in cfgs:
        resolve_device(cfg.classifier.device)
        for model in models:
            check_generator_device(dataclasses.replace(
                cfg, generator=dataclasses.replace(cfg.generator, model=model)))
    if any(cfg.classifier.backend == "dask" for _, cfg in cfgs):
        logger.warning("classifier.backend = 'dask' is read by `cellsynth run` only: the "
                       "benchmark trains its classifiers on this machine")


def _check_designs(name: str, cfg: Any, models: list[str], obs: Any, *,
                   columns_only: bool = False) -> None:  # fmt: skip
    """Each generator's covariates (``nb.covariates``...) in the dataset ``name``'s ``obs``:
    the columns (``columns_only``: a file's cells, before QC), or as its fit reads the prepared
    cells (:func:`~cellsynth.models.registry.check_design`), named by the generator: else the
    generators before it were fitted, then its own fit refused them."""
    from ..config import COVARIATE_SECTIONS, covariates_of
    from ..models import check_covariate_columns
    from ..models.registry import check_design

    for model in models:
        keys = covariates_of(cfg, model)
        if not keys:
            continue
        try:
            if columns_only:
                check_covariate_columns(obs, keys, cfg.dataset.label_key)
            else:
                check_design(cfg, model, obs, cfg.dataset.label_key)
        except DataError as err:
            raise DataError(f"{name} ({cfg.dataset.path}): {model} conditions on "
                            f"{COVARIATE_SECTIONS.get(model, model)}.covariates = {keys}: {err}") from None


def _check_inputs(cfgs: list[tuple[str, Any]], holdout: dict[str, str] | None,
                  models: list[str] = ()) -> None:  # fmt: skip
    """Every dataset file exists and is an h5ad of raw counts, each generator's covariate
    columns and ``holdout``'s columns and levels are in each one's ``obs`` (read alone), the
    combination with enough cells to hold out and to pool, so that a typo, a small combination
    or a normalised file fails at once, not after the datasets before it were benchmarked."""
    from ..data.io import check_file, find_counts
    from ..data.store import H5adFile
    from ..holdout import check_holdout

    for name, cfg in cfgs:
        try:
            path = check_file(cfg.dataset.path)
        except CellsynthError as err:  # a preset's file: which data set's
            if Path(str(cfg.dataset.path)).stem == name:
                raise
            raise type(err)(f"{name} (a preset in --data): {err}") from None
        with H5adFile(path) as h5:  # every generator is fitted on counts: none, refused first
            expr = find_counts(h5, cfg.dataset.is_normalised)
            if expr.counts is None:
                raise expr.no_counts(f"{name} ({path}): the benchmark fits generators on raw "
                                     "counts, but X holds normalised values and there is no "
                                     "layers['counts'] or raw.X with counts; give the "
                                     "unnormalised file")  # fmt: skip
            obs = h5.obs
        _check_obs(name, path, obs, cfg.dataset)
        _check_designs(name, cfg, models, obs, columns_only=True)
        if holdout:
            try:
                check_holdout(obs, holdout, cfg.dataset.label_key, after="in the file")
            except DataError as err:
                raise DataError(f"{name} ({path}): {err}") from None


def _check_obs(name: str, path: Any, obs: Any, dataset: Any) -> None:
    """What preprocessing checks in data set ``name``'s ``obs`` before QC (the label column,
    the donor column, the user's QC columns), and at least two types (the benchmark's
    classifiers tell types apart), checked in the file before any fit: else the data sets
    before it were benchmarked first (hours), then its preprocessing refused it."""
    from types import SimpleNamespace

    from ..data.labels import check_label, missing_labels
    from ..data.qc import check_donor_key, check_qc_columns

    label_key = dataset.label_key
    try:
        check_label(SimpleNamespace(obs=obs), label_key)
        check_donor_key(obs.columns, dataset)
        check_qc_columns(obs, dataset)
        col = obs[label_key]
        types = col[~missing_labels(col)].astype(str).unique()
        if len(types) < 2:
            raise DataError(f"obs['{label_key}'] holds {len(types)} cell type(s) "
                            f"({listed(types, quote=True) or 'none'}): the benchmark's classifier "
                            "experiments need at least 2; give a data set of several types or "
                            "leave this one out of --data")  # fmt: skip
    except (DataError, ConfigError) as err:
        raise type(err)(f"{name} ({path}): {err}") from None
