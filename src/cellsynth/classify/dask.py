"""The XGBoost classifier trained on a Dask cluster (optional extra ``cellsynth[dask]``).

:func:`train_classifier_dask` fits the same booster as :func:`~cellsynth.classify.xgb.train_classifier`
(same parameters, label encoding, class-balanced weights, per-class cap and early stopping on the
validation cells) with :func:`xgboost.dask.train`, and returns the same
:class:`~cellsynth.classify.xgb.Classifier`, so saving, loading and prediction do not change.

The cluster is the caller's :class:`distributed.Client`, a scheduler address (a SLURM or
Kubernetes cluster started elsewhere, see ``docs/SCALING.md``), or, with neither, a
``LocalCluster`` of ``n_workers`` single-threaded processes started and closed here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..config import ClassifierConfig
from ..errors import CellsynthError, ConfigError
from ..runtime import cpu_threads
from .checks import check_matrix, checked_config
from .xgb import (
    _HYPERPARAMETERS,
    Classifier,
    _as_features,
    balanced_weights,
    prepare_training,
    resolve_device,
)

logger = logging.getLogger(__name__)

#: most rows in one partition: larger inputs get more partitions than workers
MAX_PARTITION_ROWS = 100_000


def _require_dask() -> None:
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
        from xgboost import dask as _  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"classifier.backend = 'dask' needs dask and distributed ({exc}); install them with "
            "pip install 'cellsynth[dask]', or set classifier.backend = 'local'"
        ) from None


@contextlib.contextmanager
def _connect(client: Any, scheduler: str, n_workers: int) -> Iterator[Any]:
    """The given client; a client of ``scheduler``; or a local cluster, closed afterwards."""
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    if scheduler:
        check_scheduler(scheduler)
        logger.info("connecting to the Dask scheduler at %s", scheduler)
        try:
            remote = Client(scheduler, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} "
                              f"(classifier.dask_scheduler) within {CONNECT_SECONDS} s: "
                              f"{str(exc).splitlines()[0][:200]}; start it (dask scheduler), "
                              "check its host and port, or leave the setting empty for a "
                              "local cluster") from None
        with remote:
            yield remote
        return
    if n_workers < 1:
        raise ConfigError(f"n_workers must be at least 1, got {n_workers}")
    cores = os.cpu_count() or 1
    if n_workers > 4 * cores:
        raise ConfigError(f"classifier.dask_workers = {n_workers} local worker processes on "
                          f"{cores} cores: each is a process of its own; give at most {cores} "
                          "(or a scheduler of a real cluster, classifier.dask_scheduler)")
    if n_workers > cores:
        logger.warning("%d local Dask workers on %d cores: they share the cores, no faster "
                       "than %d (classifier.dask_workers)", n_workers, cores, cores)
    logger.info("starting a local Dask cluster of %d single-threaded workers", n_workers)
    try:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.WARNING)
    except RuntimeError as exc:
        raise ConfigError(f"the local Dask cluster did not start ({str(exc).splitlines()[0]}). "
                          "In a script, its worker processes import the script again: put the "
                          "code that runs cellsynth under `if __name__ == \"__main__\":`") from None
    with cluster, Client(cluster) as local:
        yield local


@contextlib.contextmanager
def _cluster_failures() -> Iterator[None]:
    """A worker or the scheduler lost during the training (a worker killed for memory, a node
    preempted, the scheduler stopped) said in one line, not distributed's traceback."""
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker
    from xgboost.core import XGBoostError

    try:
        yield
    except (CancelledError, KilledWorker, OSError, XGBoostError) as exc:
        raise CellsynthError(
            f"XGBoost's training on the Dask cluster failed ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}): a worker or the scheduler was lost, "
            "or a worker could not run the task; see the workers' logs (killed for memory: "
            "more workers, or fewer cells with classifier.max_cells_per_class, need less each; "
            "an ImportError: install xgboost and scipy on every worker, pip install "
            "'cellsynth[dask]'); rerun once the cluster is fixed (the finished stages are "
            "kept), or set classifier.backend = 'local'"
        ) from None


#: seconds to reach a Dask scheduler before saying it cannot be reached
CONNECT_SECONDS = 10

_SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_scheduler(address: str) -> None:
    """Refuse a Dask scheduler address that is not ``[scheme://]host:port`` (a setting's typo,
    said before any stage rather than by a 60-line trace from the connection), and one whose
    transport cannot connect from here: ``tls://`` and ``wss://`` without the client's
    certificates in Dask's configuration, ``ucx://`` without UCX."""
    from urllib.parse import urlsplit

    text = address if "://" in address else f"tcp://{address}"
    try:  # an unclosed "[" of an IPv6 host, a port out of range: ValueErrors
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    inproc = parts is not None and parts.scheme == "inproc"
    if (parts is None or text != text.strip() or parts.scheme not in _SCHEMES
            or not parts.hostname or (port is None and not inproc)
            or (parts.path and not inproc) or parts.query or parts.fragment
            or parts.username is not None):
        raise ConfigError(f"classifier.dask_scheduler = {address!r} is not a scheduler "
                          "address: give SCHEME://HOST:PORT, e.g. tcp://10.0.0.5:8786 (what "
                          "`dask scheduler` prints), or leave it empty for a local cluster")
    _check_transport(parts.scheme, address)


def _check_transport(scheme: str, address: str) -> None:
    """Refuse a scheme whose connection cannot be made from here (distributed raised a
    TypeError from inside the client, left half-open, instead)."""
    if scheme in ("tls", "wss", "ucx"):
        _require_dask()
    if scheme in ("tls", "wss"):
        from distributed.security import Security

        if Security().get_connection_args("client").get("ssl_context") is None:
            raise ConfigError(
                f"classifier.dask_scheduler = {address!r} is a {scheme}:// address, but no "
                "TLS certificates for the client are set in Dask's configuration: set "
                "distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
                "distributed.comm.tls.client.key (or the DASK_DISTRIBUTED__COMM__TLS__... "
                "variables), or give the scheduler's tcp:// address")
    elif scheme == "ucx":
        from distributed.comm.registry import get_backend

        try:
            get_backend(scheme).get_connector()
        except (TypeError, ImportError, ValueError) as exc:
            raise ConfigError(
                f"classifier.dask_scheduler = {address!r} is a ucx:// address, but UCX cannot "
                f"be used here ({str(exc).splitlines()[0][:120]}): install distributed-ucxx, "
                "or give the scheduler's tcp:// address") from None


def check_settings(cfg: ClassifierConfig) -> None:
    """What :func:`train_classifier_dask` would find only once the stages before it are done:
    dask not installed, a scheduler address that cannot be one, and for a local cluster (whose
    workers run on this machine) ``device = "cuda"`` without a CUDA device (XGBoost's workers
    fell back to the CPU with warnings of their own while the run's record said CUDA)."""
    _require_dask()
    if cfg.dask_scheduler:
        check_scheduler(cfg.dask_scheduler)
    elif cfg.device == "cuda":
        _local_cuda()


def _local_cuda() -> None:
    """Refuse ``device = "cuda"`` for a local cluster on a machine XGBoost sees no GPU on."""
    try:
        resolve_device("cuda")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (classifier.backend = 'dask' with no dask_scheduler starts "
                          "its workers on this machine)") from None


def _is_dask(x: Any) -> bool:
    import dask.array as da

    return isinstance(x, da.Array)


def _scatter(client: Any, parts: list[tuple[Any, ...]], workers: list[str]) -> list[Any]:
    """Dask arrays (one per field) from row blocks; block ``i`` lives on worker ``i % n``.

    Each block's fields (features, codes, weights) are sent together to one worker, so XGBoost
    finds them side by side and the rows are spread evenly (it never moves data itself).
    """
    import dask.array as da

    columns: list[list[Any]] = [[] for _ in parts[0]]
    for i, part in enumerate(parts):
        futures = client.scatter(list(part), workers=[workers[i % len(workers)]], hash=False)
        for column, value, future in zip(columns, part, futures, strict=True):
            meta = value[:0] if sp.issparse(value) else np.empty((0,) * value.ndim, value.dtype)
            column.append(da.from_delayed(future, shape=value.shape, dtype=value.dtype, meta=meta))
    return [da.concatenate(column, axis=0) for column in columns]


def _distribute(
    client: Any, X: Any, codes: np.ndarray, weight: np.ndarray | None
) -> tuple[Any, Any, Any]:
    """Features, label codes and weights as row-partitioned dask arrays on the workers."""
    import dask.array as da

    n = len(codes)
    if _is_dask(X):  # already distributed: align the labels with its row chunks
        chunks = (X.chunks[0],)
        y = da.from_array(codes, chunks=chunks)
        w = da.from_array(weight, chunks=chunks) if weight is not None else None
        return X, y, w
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ConfigError("the Dask cluster has no workers; start some or check the address")
    n_parts = max(len(workers), math.ceil(n / MAX_PARTITION_ROWS))
    rows = max(1, math.ceil(n / n_parts))
    parts = []
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        part = (X[sl], codes[sl]) + ((weight[sl],) if weight is not None else ())
        parts.append(part)
    arrays = _scatter(client, parts, workers)
    return arrays[0], arrays[1], arrays[2] if weight is not None else None


def _prepare(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, cfg: ClassifierConfig, seed: int
) -> tuple[Any, np.ndarray, Any, np.ndarray, list[str]]:
    """:func:`~cellsynth.classify.xgb.prepare_training` on dask or in-memory features."""
    check_matrix(X_train, "X_train")
    check_matrix(X_val, "X_val")
    if not _is_dask(X_train):
        X_train = _as_features(X_train)
    if not _is_dask(X_val):
        X_val = _as_features(X_val)
    return prepare_training(X_train, y_train, X_val, y_val, cfg, seed)


def train_classifier_dask(
    X_train: Any,
    y_train: Sequence[str] | np.ndarray,
    X_val: Any,
    y_val: Sequence[str] | np.ndarray,
    cfg: ClassifierConfig,
    *,
    seed: int,
    client: Any = None,
    scheduler: str = "",
    n_workers: int = 2,
) -> Classifier:
    """Fit the multiclass XGBoost classifier on a Dask cluster; early stopping on validation.

    Parameters
    ----------
    X_train, X_val
        Features (cells x features): numpy, scipy.sparse (kept sparse; rows are sent to the
        workers in blocks) or a row-chunked ``dask.array`` already on the cluster.
    y_train, y_val
        Labels of the cells (in memory). Classes are the sorted unique training labels;
        validation cells of other labels are dropped with a warning.
    cfg
        The same settings as the local backend. ``cfg.n_jobs`` (> 0) overrides the threads per
        worker; ``cfg.device = "auto"`` means ``"cpu"`` here (the workers' devices are not
        visible from the client): set ``"cuda"`` for GPU workers.
    seed
        Seeds the per-class subsample and XGBoost's row/column sampling. Row subsampling happens
        per worker, so the trees differ from the local backend's (not the accuracy).
    client
        A connected :class:`distributed.Client`; left open.
    scheduler
        Address of a running scheduler (``"tcp://host:8786"``), used when ``client`` is None.
    n_workers
        Size of the local cluster started when neither ``client`` nor ``scheduler`` is given.

    Returns
    -------
    Classifier
        The same class :func:`~cellsynth.classify.xgb.train_classifier` returns.
    """
    cfg = checked_config(cfg)
    _require_dask()
    if client is None and not scheduler and cfg.device == "cuda":
        _local_cuda()
    from xgboost import dask as dxgb

    X_train, y_train, X_val, y_val, labels = _prepare(X_train, y_train, X_val, y_val, cfg, seed)
    codes_train = np.searchsorted(labels, y_train).astype(np.int32)  # labels are sorted
    codes_val = np.searchsorted(labels, y_val).astype(np.int32)
    weight = balanced_weights(y_train) if cfg.balanced_weights else None
    device = "cpu" if cfg.device == "auto" else cfg.device
    params: dict[str, Any] = {
        "objective": "multi:softprob",
        "num_class": len(labels),
        "eval_metric": "mlogloss",
        "tree_method": "hist",
        "device": device,
        "seed": seed,
        **{key: getattr(cfg, key) for key in _HYPERPARAMETERS},
    }
    if cfg.n_jobs > 0:
        params["nthread"] = cfg.n_jobs

    with _connect(client, scheduler, n_workers) as c, _cluster_failures():
        start = time.perf_counter()
        Xt, yt, wt = _distribute(c, X_train, codes_train, weight)
        dtrain = dxgb.DaskQuantileDMatrix(c, Xt, yt, weight=wt)
        evals = [(dtrain, "train")]
        if len(y_val):
            Xv, yv, _ = _distribute(c, X_val, codes_val, None)
            evals.append((dxgb.DaskQuantileDMatrix(c, Xv, yv, ref=dtrain), "val"))
        else:
            msg = "no validation cells left: training all %d rounds without early stopping"
            logger.warning(msg, cfg.n_estimators)
        n_workers_used = len(c.scheduler_info()["workers"])
        msg = "training XGBoost on Dask (%d workers): %d cells x %d features, %d classes, %s"
        logger.info(msg, n_workers_used, *X_train.shape, len(labels), device)
        result = dxgb.train(
            c,
            params,
            dtrain,
            num_boost_round=cfg.n_estimators,
            evals=evals,
            early_stopping_rounds=cfg.early_stopping_rounds if len(evals) > 1 else None,
            verbose_eval=False,
        )
        seconds = time.perf_counter() - start

    booster = result["booster"]
    booster.set_param({"nthread": cfg.n_jobs or cpu_threads()})  # predict on this machine
    evals_result = {
        name: {metric: [float(v) for v in values] for metric, values in log.items()}
        for name, log in result["history"].items()
    }
    if len(evals) == 1 or booster.attr("best_iteration") is None:
        booster.set_attr(best_iteration=str(booster.num_boosted_rounds() - 1))
    best = int(booster.attr("best_iteration"))
    val_loss = evals_result["val"]["mlogloss"][best] if "val" in evals_result else float("nan")
    msg = "trained %d rounds on Dask in %.1f s; best iteration %d (val mlogloss %.4f)"
    logger.info(msg, booster.num_boosted_rounds(), seconds, best, val_loss)
    return Classifier(booster, labels, best, evals_result)
