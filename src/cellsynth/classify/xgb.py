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
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import xgboost as xgb
from tqdm.auto import tqdm

from ..config import ClassifierConfig
from ..errors import ConfigError, DataError, ModelFileError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.ubj"
LABELS_FILE = "labels.json"
META_FILE = "meta.json"
#: ClassifierConfig fields passed to XGBoost under the same name
_HYPERPARAMETERS = "max_depth subsample colsample_bytree learning_rate reg_alpha reg_lambda".split()


def _as_features(X: Any) -> np.ndarray | sp.csr_matrix:
    """``X`` as float32 CSR (sparse input) or a float32 numpy array; sparse stays sparse."""
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32)
    return np.asarray(X, dtype=np.float32)


def _as_labels(y: Any) -> np.ndarray:
    return np.asarray(y).astype(str)


def _num_class(booster: xgb.Booster) -> int:
    """Number of output classes the booster predicts (1 for a non-multiclass objective)."""
    config = json.loads(booster.save_config())
    return max(1, int(config["learner"]["learner_model_param"]["num_class"]))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from None


@dataclass
class Classifier:
    """A trained booster and the labels its output columns stand for."""

    booster: xgb.Booster  # all rounds, including those after the best one
    labels: list[str]  # class index -> label: column i of predict_proba is labels[i]
    best_iteration: int  # zero-based best validation round; prediction uses rounds 0..best
    evals_result: dict = field(default_factory=dict)  # {"train"/"val": {"mlogloss": [...]}}

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities ``(n_cells, n_classes)``, float32; ``X`` dense or sparse (kept sparse)."""
        dmat = xgb.DMatrix(_as_features(X))
        out = self.booster.predict(dmat, iteration_range=(0, self.best_iteration + 1))
        return np.asarray(out, dtype=np.float32).reshape(-1, len(self.labels))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each cell, an object array of strings."""
        idx = self.predict_proba(X).argmax(axis=1)
        return np.asarray(self.labels, dtype=object)[idx]

    def save(self, directory: str | Path) -> None:
        """Write ``model.ubj``, ``labels.json`` and ``meta.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(directory / MODEL_FILE)
        (directory / LABELS_FILE).write_text(json.dumps(list(self.labels), indent=1))
        meta: dict[str, Any] = {
            "best_iteration": int(self.best_iteration),
            "n_classes": len(self.labels),
            "xgboost_version": xgb.__version__,
            "evals_result": self.evals_result,
        }
        with contextlib.suppress(ImportError):  # PackageNotFoundError: cellsynth not installed
            meta["cellsynth_version"] = version("cellsynth")
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        logger.info("saved classifier (%d classes) to %s", len(self.labels), directory)

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        """Load a classifier written by :meth:`save`; raise :class:`ModelFileError` if broken."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelFileError(f"classifier directory {directory} does not exist")
        for name in (MODEL_FILE, LABELS_FILE):
            if not (directory / name).is_file():
                raise ModelFileError(
                    f"classifier directory {directory} lacks {name}; it must hold "
                    f"{MODEL_FILE} and {LABELS_FILE} as written by Classifier.save"
                )
        labels = _read_json(directory / LABELS_FILE)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ModelFileError(f"{directory / LABELS_FILE} must be a JSON list of strings")
        booster = xgb.Booster()
        try:
            booster.load_model(directory / MODEL_FILE)
        except xgb.core.XGBoostError as exc:
            raise ModelFileError(f"cannot read {directory / MODEL_FILE}: {exc}") from None
        n_class = _num_class(booster)
        if n_class != len(labels):
            raise ModelFileError(
                f"{directory / LABELS_FILE} lists {len(labels)} labels but the model in "
                f"{MODEL_FILE} predicts {n_class} classes; the files do not belong together"
            )
        meta = _read_json(directory / META_FILE) if (directory / META_FILE).is_file() else {}
        n_rounds = booster.num_boosted_rounds()
        best = int(meta.get("best_iteration", booster.attr("best_iteration") or n_rounds - 1))
        if not 0 <= best < n_rounds:
            raise ModelFileError(f"best_iteration {best} is outside the {n_rounds} saved rounds")
        return cls(booster, labels, best, meta.get("evals_result", {}))


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` if torch sees a usable CUDA device, else ``"cpu"``; others as given."""
    if device in ("cpu", "cuda"):
        return device
    if device != "auto":
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def balanced_weights(y: Sequence[str] | np.ndarray) -> np.ndarray:
    """Class-balanced sample weights ``n / (k * count_c)`` (float32); each class sums to ``n / k``."""
    y = _as_labels(y)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts[inverse])).astype(np.float32)


def cap_per_class(
    y: Sequence[str] | np.ndarray, max_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` cells of each class (all if ``<= 0``)."""
    y = _as_labels(y)
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

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled
        self.bar = tqdm(total=total, desc="xgboost", unit="round", disable=not enabled)

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        self.bar.update(1)
        val = evals_log.get("val", {}).get("mlogloss")
        if val and self.enabled:
            self.bar.set_postfix(val_mlogloss=f"{val[-1]:.4f}", refresh=False)
        return False

    def after_training(self, model: xgb.Booster) -> xgb.Booster:
        self.bar.close()
        return model


def prepare_training(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, cfg: ClassifierConfig, seed: int
) -> tuple[Any, np.ndarray, Any, np.ndarray, list[str]]:
    """Checked features and labels: per-class cap, class list, unknown validation types dropped.

    Every backend (here and :mod:`cellsynth.classify.dask`) calls this, so all fit the same
    problem. ``X`` may be numpy, scipy or dask arrays (rows indexable).
    """
    y_train, y_val = _as_labels(y_train), _as_labels(y_val)
    (n_tr, f_tr), (n_va, f_va) = X_train.shape, X_val.shape
    if n_tr != len(y_train) or n_va != len(y_val) or f_tr != f_va:
        raise DataError(
            f"train/val features and labels do not match: X_train {n_tr}x{f_tr}, y_train "
            f"{len(y_train)}, X_val {n_va}x{f_va}, y_val {len(y_val)}"
        )
    keep = cap_per_class(y_train, cfg.max_cells_per_class, np.random.default_rng(seed))
    if len(keep) < len(y_train):
        msg = "capped training cells at %d per class: %d of %d kept"
        logger.info(msg, cfg.max_cells_per_class, len(keep), len(y_train))
        X_train, y_train = X_train[keep], y_train[keep]
    labels = sorted(np.unique(y_train).tolist())
    if len(labels) < 2:
        raise DataError(
            f"training needs at least two cell types, got {len(labels)} ({labels}); "
            "check the label column and the QC filters that drop types"
        )
    known = np.isin(y_val, labels)
    if not known.all():
        unknown = sorted(set(y_val[~known].tolist()))
        msg = "dropping %d validation cells of %d types absent from training: %s"
        logger.warning(msg, int((~known).sum()), len(unknown), ", ".join(unknown[:10]))
        X_val, y_val = X_val[np.flatnonzero(known)], y_val[known]
    return X_train, y_train, X_val, y_val, labels


def train_classifier(
    X_train: Any,
    y_train: Sequence[str] | np.ndarray,
    X_val: Any,
    y_val: Sequence[str] | np.ndarray,
    cfg: ClassifierConfig,
    *,
    seed: int,
    progress: bool = True,
) -> Classifier:
    """Fit a multiclass XGBoost classifier with early stopping on the validation cells.

    Parameters
    ----------
    X_train, X_val
        Features (cells x features), dense or scipy.sparse; sparse input is never densified.
    y_train, y_val
        Labels of the cells. Classes are the sorted unique training labels; validation cells
        of other labels are dropped with a warning.
    cfg
        Hyperparameters; ``cfg.max_cells_per_class > 0`` subsamples the training cells per class,
        ``cfg.balanced_weights`` weights training cells by ``n / (k * count_c)``.
    seed
        Seeds the per-class subsample and XGBoost's row/column sampling.
    progress
        Show a tqdm bar over boosting rounds.

    Returns
    -------
    Classifier
        Predicting with rounds up to the best validation ``mlogloss``.
    """
    X_train, y_train, X_val, y_val, labels = prepare_training(
        _as_features(X_train), y_train, _as_features(X_val), y_val, cfg, seed
    )
    codes_train = np.searchsorted(labels, y_train).astype(np.int32)  # labels are sorted
    codes_val = np.searchsorted(labels, y_val).astype(np.int32)
    weight = balanced_weights(y_train) if cfg.balanced_weights else None
    nthread = cfg.n_jobs or os.cpu_count() or 1
    device = resolve_device(cfg.device)

    dtrain = xgb.QuantileDMatrix(X_train, label=codes_train, weight=weight, nthread=nthread)
    evals = [(dtrain, "train")]
    if len(y_val):
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
    msg = "training XGBoost on %d cells x %d features, %d classes, device %s, %d threads"
    logger.info(msg, *X_train.shape, len(labels), device, nthread)
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
        callbacks=[_ProgressBar(cfg.n_estimators, progress)],
    )
    if len(evals) == 1:
        booster.set_attr(best_iteration=str(booster.num_boosted_rounds() - 1))
    best = int(booster.best_iteration)
    val_loss = evals_result["val"]["mlogloss"][best] if "val" in evals_result else float("nan")
    msg = "trained %d rounds in %.1f s; best iteration %d (val mlogloss %.4f)"
    logger.info(msg, booster.num_boosted_rounds(), time.perf_counter() - start, best, val_loss)
    return Classifier(booster, labels, best, evals_result)
