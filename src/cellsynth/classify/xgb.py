"""XGBoost cell-type classifier on PCA features.

:func:`train_classifier` fits a ``multi:softprob`` booster with the ``hist`` tree method,
early stopping on a validation split and optional class-balanced weights; :class:`Classifier`
predicts with the best iteration and saves to a directory of plain files (XGBoost's own UBJ
model, the label list as JSON, metadata as JSON). Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

from ..config import ClassifierConfig
from ..config_rules import fix_hint
from ..data.labels import label_names
from ..errors import ConfigError, DataError, ModelFileError, listed
from ..options import progress_bar
from ..outputs import check_out_dir, write_bytes, write_text
from ..paths import expand_user
from ..runtime import cpu_threads
from .checks import (
    REWRITE,
    check_features,
    check_matrix,
    checked_config,
    saved_best,
    saved_labels,
    saved_meta,
)

logger = logging.getLogger(__name__)

MODEL_FILE = "model.ubj"
LABELS_FILE = "labels.json"
META_FILE = "meta.json"
#: rows per DMatrix when predicting
PREDICT_ROWS = 100_000
#: cells per DataIter batch for a memory-mapped X when classifier.chunk_size is 0
MEMMAP_CHUNK = 100_000
#: ClassifierConfig fields passed to XGBoost under the same name
_HYPERPARAMETERS = "max_depth subsample colsample_bytree learning_rate reg_alpha reg_lambda".split()


def _as_features(X: Any) -> np.ndarray | sp.csr_matrix:
    """``X`` as float32 CSR (sparse input) or a float32 numpy array; sparse stays sparse."""
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32)
    return np.asarray(X, dtype=np.float32)


def _num_class(booster: xgb.Booster) -> int:
    """Number of output classes the booster predicts (1 for a non-multiclass objective)."""
    config = json.loads(booster.save_config())
    return max(1, int(config["learner"]["learner_model_param"]["num_class"]))


@dataclass
class Classifier:
    """A trained booster and the labels its output columns stand for."""

    booster: xgb.Booster  # all rounds, including those after the best one
    labels: list[str]  # class index -> label: column i of predict_proba is labels[i]
    best_iteration: int  # zero-based best validation round; prediction uses rounds 0..best
    evals_result: dict = field(default_factory=dict)  # {"train"/"val": {"mlogloss": [...]}}

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities ``(n_cells, n_classes)``, float32; ``X`` dense or sparse (kept sparse).

        Rows go to XGBoost ``PREDICT_ROWS`` at a time (a memory-mapped ``X`` is read so).
        """
        X = self._checked(X)
        out = np.empty((X.shape[0], len(self.labels)), dtype=np.float32)
        for start in range(0, X.shape[0], PREDICT_ROWS):
            block = X[start : start + PREDICT_ROWS]
            check_features(block, "the features to classify", start)
            dmat = xgb.DMatrix(block)
            prob = self.booster.predict(dmat, iteration_range=(0, self.best_iteration + 1))
            out[start : start + PREDICT_ROWS] = np.asarray(prob).reshape(-1, len(self.labels))
        return out

    def _checked(self, X: Any) -> np.ndarray | sp.csr_matrix:
        """``X`` as features, refused unless it is cells x the booster's features (XGBoost
        would read fewer columns as missing values and fail on more with a C++ trace)."""
        if hasattr(X, "obs") and hasattr(X, "var_names"):
            raise DataError("the classifier reads PCA features, not an AnnData: project the "
                            "cells first (PCAModel.load(RUN / 'features').transform(adata) on "
                            "log-normalised values)")
        try:
            X = _as_features(X)
        except (TypeError, ValueError) as exc:
            raise DataError(f"the classifier's input must be a numeric cells x features matrix "
                            f"({type(exc).__name__}: {exc})") from None
        want = self.booster.num_features()
        if X.ndim != 2 or X.shape[1] != want:
            raise DataError(f"the classifier was trained on {want} features (PCA components), "
                            f"the input has shape {X.shape}: give cells x {want} (the run's "
                            "features stage, PCAModel.transform; one cell: x.reshape(1, -1))")
        return X

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each cell, an object array of strings."""
        idx = self.predict_proba(X).argmax(axis=1)
        return np.asarray(self.labels, dtype=object)[idx]

    def save(self, directory: str | Path) -> None:
        """Write ``model.ubj``, ``labels.json`` and ``meta.json`` into ``directory`` (``~``
        expanded; an existing file there, or a place nothing can be written, refused first)."""
        directory = check_out_dir(directory, "the classifier directory", "the classifier",
                                  ModelFileError)
        directory.mkdir(parents=True, exist_ok=True)
        # XGBoost's own UBJ, written by cellsynth's atomic writer: save_model on a full disk
        # raised an XGBoostError (a traceback) and left a truncated file
        write_bytes(directory / MODEL_FILE, bytes(self.booster.save_raw(raw_format="ubj")))
        write_text(directory / LABELS_FILE, json.dumps(list(self.labels), indent=1))
        meta: dict[str, Any] = {
            "best_iteration": int(self.best_iteration),
            "n_classes": len(self.labels),
            "xgboost_version": xgb.__version__,
            "evals_result": self.evals_result,
        }
        with contextlib.suppress(ImportError):  # PackageNotFoundError: cellsynth not installed
            meta["cellsynth_version"] = version("cellsynth")
        write_text(directory / META_FILE, json.dumps(meta, indent=1))
        logger.info("saved classifier (%d classes) to %s", len(self.labels), directory)

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        """Load a classifier written by :meth:`save` (``~`` expanded); raise
        :class:`ModelFileError` if broken."""
        directory = expand_user(directory, "the classifier directory")
        if not directory.is_dir():
            raise ModelFileError(f"classifier directory {directory} does not exist")
        for name in (MODEL_FILE, LABELS_FILE):
            if not (directory / name).is_file():
                raise ModelFileError(
                    f"classifier directory {directory} lacks {name}; it must hold "
                    f"{MODEL_FILE} and {LABELS_FILE} as written by Classifier.save"
                )
        labels = saved_labels(directory / LABELS_FILE)
        booster = xgb.Booster()
        try:
            booster.load_model(directory / MODEL_FILE)
        except xgb.core.XGBoostError as exc:  # its first line; then a C++ stack trace
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise ModelFileError(f"cannot read {directory / MODEL_FILE} ({why[:300]}): it is "
                                 "not an XGBoost model Classifier.save wrote; save the "
                                 f"classifier again ({REWRITE})") from None
        n_class = _num_class(booster)
        if n_class != len(labels):
            raise ModelFileError(
                f"{directory / LABELS_FILE} lists {len(labels)} labels but the model in "
                f"{MODEL_FILE} predicts {n_class} classes; the files do not belong together"
            )
        meta = saved_meta(directory / META_FILE)
        best = saved_best(meta, booster, directory / META_FILE)
        evals = meta.get("evals_result", {})
        return cls(booster, labels, best, evals if isinstance(evals, dict) else {})


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when XGBoost can train on a visible CUDA device, else ``"cpu"``.

    The CPU build of torch (the one cellsynth pins) never sees a GPU, while XGBoost's own CUDA
    build can use one; so a GPU counts when torch sees one, or when this XGBoost was built with
    CUDA and the CUDA driver reports a device. ``"cpu"`` is returned as given; ``"cuda"``
    without such a device is refused (XGBoost would fall back to the CPU with a warning of its
    own while the run's record said CUDA).
    """
    if device == "cpu":
        return device
    if device not in ("auto", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if _has_gpu():
        return "cuda"
    if device == "cuda":
        raise ConfigError("classifier.device = 'cuda', but XGBoost sees no CUDA device here "
                          f"(XGBoost built with CUDA: {_xgboost_has_cuda()}, CUDA devices: "
                          f"{cuda_driver_devices()}): set classifier.device = 'auto' or 'cpu'")
    return "cpu"


def _has_gpu() -> bool:
    """Whether torch sees a CUDA device, or this XGBoost was built with CUDA and the driver
    reports one."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    return _xgboost_has_cuda() and cuda_driver_devices() > 0


def _xgboost_has_cuda() -> bool:
    """Whether the installed XGBoost was built with CUDA."""
    return bool(xgb.build_info().get("USE_CUDA", False))


def cuda_driver_devices() -> int:
    """CUDA devices the driver reports (``cuDeviceGetCount``); 0 without a driver or a device.

    Asks ``libcuda`` directly, so it works without a CUDA build of torch.
    """
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def balanced_weights(y: Sequence[str] | np.ndarray) -> np.ndarray:
    """Class-balanced sample weights ``n / (k * count_c)`` (float32); each class sums to ``n / k``."""
    y = label_names(y, "the labels")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts[inverse])).astype(np.float32)


#: a validation loss above this share of ln(classes) (equal odds) is a classifier that learned
#: next to nothing (said); one that learned anything real ends far below it
LEARNED_NOTHING = 0.97

AUTO_MAX_CELLS = 100_000  # classifier.max_cells_per_class = "auto": train on at most this many


def resolve_cap(y: Sequence[str] | np.ndarray, max_per_class: int | str) -> int:
    """``max_per_class``, or for ``"auto"`` 0 (no cap) when there are at most
    :data:`AUTO_MAX_CELLS` cells, else the largest cap per class that keeps at most that many:
    rare classes whole, the common ones cut to one size (the simulated E-ANND-5's 533k training
    cells of 126 types: 928 a class). XGBoost's time grows with cells x features x classes."""
    if max_per_class != "auto":
        return int(max_per_class)
    counts = np.sort(np.unique(label_names(y, "the labels"), return_counts=True)[1])
    if counts.sum() <= AUTO_MAX_CELLS:
        return 0
    left = AUTO_MAX_CELLS
    for i, n in enumerate(counts):  # ascending: classes below the cap are kept whole
        if n * (len(counts) - i) > left:
            return max(1, left // (len(counts) - i))
        left -= n
    return 0  # pragma: no cover - the sum above exceeds AUTO_MAX_CELLS


def cap_per_class(
    y: Sequence[str] | np.ndarray, max_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` cells of each class (all if ``<= 0``)."""
    y = label_names(y, "the labels")
    if max_per_class <= 0:
        return np.arange(len(y))
    keep = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        if len(idx) > max_per_class:
            idx = rng.choice(idx, size=max_per_class, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep))


class _ProgressBar(xgb.callback.TrainingCallback):
    """A tqdm bar over boosting rounds showing the latest validation loss."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.bar = progress_bar(total=total, desc="xgboost", unit="round")
        self.enabled = not self.bar.disable

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        self.bar.update(1)
        val = evals_log.get("val", {}).get("mlogloss")
        if val and self.enabled:
            self.bar.set_postfix(val_mlogloss=f"{val[-1]:.4f}", refresh=False)
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        self.bar.close()
        return model


def _check_shapes(X_train: Any, y_train: np.ndarray, X_val: Any, y_val: np.ndarray) -> None:
    (n_tr, f_tr), (n_va, f_va) = X_train.shape, X_val.shape
    if n_tr != len(y_train) or n_va != len(y_val) or f_tr != f_va:
        raise DataError(
            f"train/val features and labels do not match: X_train {n_tr}x{f_tr}, y_train "
            f"{len(y_train)}, X_val {n_va}x{f_va}, y_val {len(y_val)}"
        )


def select_training(
    y_train: np.ndarray, y_val: np.ndarray, cfg: ClassifierConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows to train and validate on, and the classes: the per-class cap, unknown types dropped.

    Returns sorted training rows (at most ``cfg.max_cells_per_class`` a class, ``"auto"``
    resolved by :func:`resolve_cap`), sorted
    validation rows (those of a training class) and the sorted class list.
    """
    cap = resolve_cap(y_train, cfg.max_cells_per_class)
    keep = cap_per_class(y_train, cap, np.random.default_rng(seed))
    if len(keep) < len(y_train):
        msg = "capped training cells at %d per class (classifier.max_cells_per_class = %s): " \
              "%d of %d kept"
        logger.info(msg, cap, cfg.max_cells_per_class, len(keep), len(y_train))
    labels = sorted(np.unique(y_train[keep]).tolist())
    if len(labels) < 2:
        raise DataError(
            f"training needs at least two cell types, got {len(labels)} ({labels}); "
            "check the label column and the QC filters that drop types"
        )
    known = np.isin(y_val, labels)
    if not known.all():
        unknown = sorted(set(y_val[~known].tolist()))
        msg = "dropping %d validation cells of %d types absent from training: %s"
        logger.warning(msg, int((~known).sum()), len(unknown), listed(unknown, 10))
    return keep, np.flatnonzero(known), labels


def prepare_training(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, cfg: ClassifierConfig, seed: int
) -> tuple[Any, np.ndarray, Any, np.ndarray, list[str]]:
    """Checked features and labels: per-class cap, class list, unknown validation types dropped.

    Every backend (here and :mod:`cellsynth.classify.dask`) calls this, so all fit the same
    problem. ``X`` may be numpy, scipy or dask arrays (rows indexable).
    """
    y_train, y_val = label_names(y_train, "y_train"), label_names(y_val, "y_val")
    _check_shapes(X_train, y_train, X_val, y_val)
    check_features(X_train, "the training features")
    check_features(X_val, "the validation features")
    keep, keep_val, labels = select_training(y_train, y_val, cfg, seed)
    if len(keep) < len(y_train):
        X_train, y_train = X_train[keep], y_train[keep]
    if len(keep_val) < len(y_val):
        X_val, y_val = X_val[keep_val], y_val[keep_val]
    return X_train, y_train, X_val, y_val, labels


class _RowBatches(xgb.DataIter):
    """Rows ``rows`` of ``X`` with their labels and weights, ``chunk_size`` rows a batch.

    A ``QuantileDMatrix`` built from it sketches and quantises batch by batch, so only one
    batch of raw features is in memory: ``X`` may be a memory-mapped ``.npy`` (e.g. the PCA
    features written by ``PCAModel.transform(..., out=np.lib.format.open_memmap(...))``).
    """

    def __init__(self, X: Any, rows: np.ndarray, label: np.ndarray, weight: np.ndarray | None,
                 chunk_size: int) -> None:
        super().__init__(release_data=True)
        self.X, self.rows, self.label, self.weight = X, rows, label, weight
        self.chunk_size, self.start = chunk_size, 0

    def next(self, input_data: Any) -> bool:
        if self.start >= len(self.rows):
            return False
        sl = slice(self.start, self.start + self.chunk_size)
        idx = self.rows[sl]
        contiguous = idx[-1] - idx[0] + 1 == len(idx)
        block = _as_features(self.X[idx[0] : idx[-1] + 1] if contiguous else self.X[idx])
        check_features(block, f"the features of rows {idx[0]}-{idx[-1]}", int(idx[0]))
        input_data(data=block, label=self.label[sl],
                   weight=None if self.weight is None else self.weight[sl])
        self.start += self.chunk_size
        return True

    def reset(self) -> None:
        self.start = 0


def _chunk_size(cfg: ClassifierConfig, X: Any) -> int:
    """Cells per DataIter batch, 0 for one in-memory array (``classifier.chunk_size``)."""
    if cfg.chunk_size < 0:
        raise ConfigError(f"classifier.chunk_size must be 0 or more, got {cfg.chunk_size}; "
                          f"{fix_hint('classifier.chunk_size')}")
    return cfg.chunk_size or (MEMMAP_CHUNK if isinstance(X, np.memmap) else 0)


def train_classifier(
    X_train: Any,
    y_train: Sequence[str] | np.ndarray,
    X_val: Any,
    y_val: Sequence[str] | np.ndarray,
    cfg: ClassifierConfig,
    *,
    seed: int,
) -> Classifier:
    """Fit a multiclass XGBoost classifier with early stopping on the validation cells.

    Parameters
    ----------
    X_train, X_val
        Features (cells x features), dense or scipy.sparse; sparse input is never densified.
        With ``cfg.chunk_size > 0``, or ``X_train`` a ``np.memmap``, XGBoost reads the rows a
        batch at a time through a ``DataIter`` (the per-class cap selects rows, copying none).
    y_train, y_val
        Labels of the cells: names, or numbers named as covariate levels are (``1.0`` and ``1``
        are the class ``"1"``); a missing label is refused. Classes are the sorted unique
        training labels; validation cells of other labels are dropped with a warning.
    cfg
        Hyperparameters; ``cfg.max_cells_per_class`` (a number above 0, or ``"auto"`` over
        100,000 cells) subsamples the training cells per class,
        ``cfg.balanced_weights`` weights training cells by ``n / (k * count_c)``.
    seed
        Seeds the per-class subsample and XGBoost's row/column sampling.

    Returns
    -------
    Classifier
        Predicting with rounds up to the best validation ``mlogloss``.
    """
    cfg = checked_config(cfg)
    check_matrix(X_train, "X_train")
    check_matrix(X_val, "X_val")
    chunk = _chunk_size(cfg, X_train)
    if chunk:  # rows are read a batch at a time, never gathered into one array
        y_train, y_val = label_names(y_train, "y_train"), label_names(y_val, "y_val")
        _check_shapes(X_train, y_train, X_val, y_val)
        keep, keep_val, labels = select_training(y_train, y_val, cfg, seed)
        y_train, y_val = y_train[keep], y_val[keep_val]
    else:
        X_train, y_train, X_val, y_val, labels = prepare_training(
            _as_features(X_train), y_train, _as_features(X_val), y_val, cfg, seed
        )
    codes_train = np.searchsorted(labels, y_train).astype(np.int32)  # labels are sorted
    codes_val = np.searchsorted(labels, y_val).astype(np.int32)
    weight = balanced_weights(y_train) if cfg.balanced_weights else None
    nthread = cfg.n_jobs or cpu_threads()
    device = resolve_device(cfg.device)

    if chunk:
        data = _RowBatches(X_train, keep, codes_train, weight, chunk)
        dtrain = xgb.QuantileDMatrix(data, nthread=nthread)
    else:
        dtrain = xgb.QuantileDMatrix(X_train, label=codes_train, weight=weight, nthread=nthread)
    evals = [(dtrain, "train")]
    if len(y_val):
        if chunk:
            data = _RowBatches(X_val, keep_val, codes_val, None, chunk)
            dval = xgb.QuantileDMatrix(data, ref=dtrain, nthread=nthread)
        else:
            dval = xgb.QuantileDMatrix(X_val, label=codes_val, ref=dtrain, nthread=nthread)
        evals.append((dval, "val"))
    else:
        msg = "no validation cells left: training all %d rounds without early stopping"
        logger.warning(msg, cfg.n_estimators)

    params = {
        "objective": "multi:softprob",
        "num_class": len(labels),
        "eval_metric": "mlogloss",
        "tree_method": "hist",
        "device": device,
        "nthread": nthread,
        "seed": seed,
        **{key: getattr(cfg, key) for key in _HYPERPARAMETERS},
    }
    msg = "training XGBoost on %d cells x %d features, %d classes, device %s, %d threads%s"
    logger.info(msg, len(y_train), X_train.shape[1], len(labels), device, nthread,
                f", {chunk}-cell batches" if chunk else "")
    evals_result: dict = {}
    start = time.perf_counter()
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=cfg.n_estimators,
        evals=evals,
        early_stopping_rounds=cfg.early_stopping_rounds if len(evals) > 1 else None,
        evals_result=evals_result,
        verbose_eval=False,
        callbacks=[_ProgressBar(cfg.n_estimators)],
    )
    if len(evals) == 1:
        booster.set_attr(best_iteration=str(booster.num_boosted_rounds() - 1))
    best = int(booster.best_iteration)
    val_loss = evals_result["val"]["mlogloss"][best] if "val" in evals_result else float("nan")
    msg = "trained %d rounds in %.1f s; best iteration %d (val mlogloss %.4f)"
    logger.info(msg, booster.num_boosted_rounds(), time.perf_counter() - start, best, val_loss)
    if len(labels) > 1 and val_loss >= LEARNED_NOTHING * np.log(len(labels)):
        logger.warning("the classifier's validation loss stayed at guessing's (mlogloss %.4f; "
                       "equal odds for every type is ln %d = %.4f): it learned next to "
                       "nothing. Too few training cells (%d; classifier.max_cells_per_class = "
                       "%s), or features that do not tell the types apart?", val_loss,
                       len(labels), np.log(len(labels)), len(y_train), cfg.max_cells_per_class)
    return Classifier(booster, labels, best, evals_result)
