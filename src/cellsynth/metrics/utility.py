"""Utility: are synthetic cells useful for training cell-type classifiers?

- :func:`tstr`: train on real, test on real (TRTR, the reference); train on synthetic, test on
  real (TSTR); and the real-trained classifier scored on synthetic cells (TRTS).
- :func:`augmentation`: for the rarest types, real training cells alone, plus duplicated rare
  real cells (oversampling), or plus generated cells of those types.

Every data argument is a ``(X, y)`` pair: ``X`` cells x features (dense or sparse, the same
feature space for every pair, e.g. :meth:`EvalSpace.embed <cellsynth.metrics.space.EvalSpace.embed>`
output) and ``y`` one label per cell. Pass ``space=`` instead to give raw counts, which are then
embedded. Classifiers are :func:`~cellsynth.classify.xgb.train_classifier` with the given
:class:`~cellsynth.config.ClassifierConfig`, early-stopped on real validation cells unless said.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..classify.xgb import train_classifier
from ..config import ClassifierConfig
from ..data.csr import stack_rows
from ..data.labels import label_names
from ..errors import DataError, listed
from ..seeds import derive_seed
from .classification import classification_report, summary_row
from .space import EvalSpace

logger = logging.getLogger(__name__)

#: ``(X, y)``: features (cells x features, dense or sparse) and one label per cell
Split = tuple[Any, Sequence[str] | np.ndarray]

ARMS = ("real", "oversample", "generated")


def _split(pair: Split, name: str, space: EvalSpace | None) -> tuple[Any, np.ndarray]:
    """``(X, y)`` checked, labels as strings, ``X`` embedded when ``space`` is given."""
    try:
        x, y = pair
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a pair (X, y) of features and labels") from None
    y = label_names(y, name)  # 1.0 and 1 one class, as the scores read them
    if space is not None:
        x = space.embed(x)
    if x.shape[0] != len(y):
        raise DataError(f"{name}: X has {x.shape[0]} cells but y has {len(y)} labels")
    return x, y


def _scored(**ys: np.ndarray) -> None:
    """Cells to score in each test set: refused here, not as "no cells to score" (naming no
    argument) once the classifiers trained."""
    for name, y in ys.items():
        if not len(y):
            raise DataError(f"{name} has no cells, so nothing can be scored on it; give test "
                            "cells")


def _same_space(xs: Mapping[str, Any]) -> None:
    """Every ``X`` (name -> cells x features) 2-d and of one width: else the classifier refused
    the test cells only after training, or numpy's concatenation failed with a ValueError."""
    widths = {}
    for name, x in xs.items():
        if len(getattr(x, "shape", ())) != 2:
            raise DataError(f"{name} must be cells x features (2-d), got shape "
                            f"{getattr(x, 'shape', None)}; one cell: x.reshape(1, -1)")
        widths[name] = x.shape[1]
    if len(set(widths.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in widths.items())
        raise DataError(f"the cells are in different feature spaces (features: {shown}); give "
                        "every X in the same space (one EvalSpace.embed, or pass counts with "
                        "space=)")


def _stack(parts: list[Any]) -> Any:
    if any(sp.issparse(p) for p in parts):
        return stack_rows([sp.csr_matrix(p) for p in parts])
    return np.concatenate([np.asarray(p) for p in parts])


def _score(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    report = classification_report(y_true, y_pred, labels=labels)
    return {"macro_f1": report["macro"]["f1"], "summary": summary_row(report), "report": report}


def tstr(
    real_train: Split, real_val: Split, real_test: Split, synth_train: Split, synth_val: Split,
    cfg: ClassifierConfig, *, seed: int, synth_test: Split | None = None,
    space: EvalSpace | None = None,
) -> dict[str, Any]:
    """TRTR, TSTR and TRTS macro-F1 of cell-type classifiers.

    Parameters
    ----------
    real_train, real_val, real_test
        Real cells: the TRTR classifier trains on ``real_train`` and early-stops on ``real_val``.
    synth_train, synth_val
        Synthetic cells: the TSTR classifier trains on ``synth_train`` and early-stops on
        ``synth_val``, so no real cell informs it.
    cfg
        Classifier hyperparameters (both classifiers).
    seed
        Seeds both classifiers (child seeds ``"trtr"`` and ``"tstr"``).
    synth_test
        Synthetic cells the real-trained classifier is scored on (TRTS); default ``synth_train``
        (unseen by that classifier).
    space
        When given, every ``X`` is raw counts and is embedded with ``space.embed``.

    Returns
    -------
    dict
        ``trtr``, ``tstr``, ``trts``: ``macro_f1``, ``summary`` (:func:`summary_row`) and the full
        ``report``; TRTR and TSTR are scored over the real test labels, TRTS over the synthetic
        test labels. ``tstr_over_trtr``: the ratio of macro-F1s; ``n``: cells per argument.
    """
    xtr, ytr = _split(real_train, "real_train", space)
    xva, yva = _split(real_val, "real_val", space)
    xte, yte = _split(real_test, "real_test", space)
    sxtr, sytr = _split(synth_train, "synth_train", space)
    sxva, syva = _split(synth_val, "synth_val", space)
    sxte, syte = (sxtr, sytr) if synth_test is None else _split(synth_test, "synth_test", space)
    _scored(real_test=yte, synth_test=syte)
    _same_space({"real_train": xtr, "real_val": xva, "real_test": xte, "synth_train": sxtr,
                 "synth_val": sxva, "synth_test": sxte})
    missing = sorted(set(yte.tolist()) - set(sytr.tolist()))
    if missing:
        logger.warning("TSTR: %d real test type(s) have no synthetic training cells and score 0: "
                       "%s", len(missing), listed(missing, 10))

    real_clf = train_classifier(xtr, ytr, xva, yva, cfg, seed=derive_seed(seed, "trtr"))
    synth_clf = train_classifier(sxtr, sytr, sxva, syva, cfg, seed=derive_seed(seed, "tstr"))
    test_labels = sorted(set(yte.tolist()))
    out = {
        "trtr": _score(yte, real_clf.predict(xte), test_labels),
        "tstr": _score(yte, synth_clf.predict(xte), test_labels),
        "trts": _score(syte, real_clf.predict(sxte), sorted(set(syte.tolist()))),
    }
    trtr = out["trtr"]["macro_f1"]
    out["tstr_over_trtr"] = out["tstr"]["macro_f1"] / trtr if trtr > 0 else float("nan")
    out["n"] = {"real_train": len(ytr), "real_val": len(yva), "real_test": len(yte),
                "synth_train": len(sytr), "synth_val": len(syva), "synth_test": len(syte)}
    logger.info("TRTR macro-F1 %.3f, TSTR %.3f, TRTS %.3f", trtr, out["tstr"]["macro_f1"],
                out["trts"]["macro_f1"])
    return out


def check_rare_count(k: Any) -> int:
    """``k``, a count of rare types, checked: a whole number of at least 1 (``k = -1`` sliced
    off the commonest type and augmented every other one, ``0`` was refused only after every
    classifier of the caller's had trained on; a float or ``None`` failed with a TypeError)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"the number of rare types must be a whole number of at least 1, got "
                        f"{k!r}; pass e.g. 3 (the 3 rarest training types) or a list of type "
                        "names")
    return int(k)


def _rare_names(rare_types: Any, y: np.ndarray) -> list[str]:
    """The rare types ``augmentation`` is given, as a list of names: ``k`` (the ``k`` rarest
    of ``y``), one name, or names (each once: one named twice was added twice)."""
    if isinstance(rare_types, (str, np.str_)):  # one name, not its characters
        rare_types = [rare_types]
    if isinstance(rare_types, (int, np.integer)) or not isinstance(rare_types, Iterable):
        rare = rarest_types(y, check_rare_count(rare_types))
        if rare_types >= len(set(y.tolist())):  # "rare" then means every type
            logger.warning("augmentation: the %d rarest types asked for are all %d training "
                           "types, so the 'rare-type' F1 is every type's; ask for fewer",
                           rare_types, len(rare))
        return rare
    rare = label_names(list(rare_types), "rare_types").tolist()
    twice = sorted({t for t in rare if rare.count(t) > 1})
    if twice:
        raise DataError(f"rare types named more than once: {listed(twice, 10)}; name each "
                        "type once")
    return rare


def rarest_types(y: Sequence[str] | np.ndarray, k: int) -> list[str]:
    """The ``k`` types with the fewest cells in ``y`` (ties by name), rarest first; ``k`` at
    least 1 (:func:`check_rare_count`)."""
    k = check_rare_count(k)
    types, counts = np.unique(np.asarray(y).astype(str), return_counts=True)
    order = np.lexsort((types, counts))
    return [str(t) for t in types[order][:k]]


def augmentation(
    real_train: Split, real_val: Split, real_test: Split, synth_by_type: Mapping[str, Any],
    rare_types: Sequence[str] | int, cfg: ClassifierConfig, *, seed: int,
    n_per_type: int | None = None, space: EvalSpace | None = None,
) -> dict[str, Any]:
    """F1 of the rare types when their training cells are augmented, three ways.

    Arms, each a classifier trained on ``real_train`` (early-stopped on ``real_val``, tested on
    ``real_test``) plus, for every rare type, ``N`` extra cells:

    - ``real``: nothing added;
    - ``oversample``: ``N`` copies drawn with replacement from the type's real training cells;
    - ``generated``: ``N`` generated cells of the type, drawn without replacement.

    Both augmented arms add the same number of cells, so they differ only in what is added.
    With ``cfg.balanced_weights`` (the default) classes are re-weighted to equal total weight,
    so oversampling changes little beyond tree-split statistics: the report records the setting.

    Parameters
    ----------
    synth_by_type
        Type -> generated cells (features, or counts with ``space``) of that type.
    rare_types
        The types to augment, or an int ``k``: the ``k`` rarest types of ``real_train``.
    n_per_type
        ``N``, cells added per rare type; default all generated cells of that type. More than
        are generated is an error (nothing is silently truncated or repeated).
    space, seed, cfg
        As for :func:`tstr`; each arm uses the same classifier seed.

    Returns
    -------
    dict
        ``rare_types``; ``n_added`` and ``n_real_train`` (type -> cells); ``test_support``;
        ``arms``: arm -> ``per_type_f1`` (rare type -> F1; None for a type without test cells,
        left out of the mean), ``mean_rare_f1``, ``macro_f1``;
        ``balanced_weights``.
    """
    xtr, ytr = _split(real_train, "real_train", space)
    xva, yva = _split(real_val, "real_val", space)
    xte, yte = _split(real_test, "real_test", space)
    if n_per_type is not None and (isinstance(n_per_type, (bool, np.bool_)) or not isinstance(
            n_per_type, (int, np.integer)) or n_per_type < 1):  # fmt: skip
        raise DataError(f"n_per_type={n_per_type!r}: the cells added per rare type must be a "
                        "whole number of at least 1; pass a positive n_per_type, or None for "
                        "all generated cells of each type")
    _scored(real_test=yte)
    rare = _rare_names(rare_types, ytr)
    synth_by_type = dict(zip(label_names(list(synth_by_type), "synth_by_type's types").tolist(),
                             synth_by_type.values(), strict=True))
    if not rare:
        raise DataError("no rare types given; pass type names or a positive count")
    rng = np.random.default_rng(derive_seed(seed, "augmentation"))
    over_x, over_y, gen_x, gen_y = [], [], [], []
    n_added, n_real = {}, {}
    for t in rare:
        if t not in synth_by_type:
            raise DataError(f"no generated cells for rare type {t!r}; generate cells of every "
                            f"rare type (got types: {listed(sorted(synth_by_type), 10)})")
        idx = np.flatnonzero(ytr == t)
        if idx.size == 0:
            raise DataError(f"rare type {t!r} has no real training cells; it cannot be oversampled")
        gx = space.embed(synth_by_type[t]) if space is not None else synth_by_type[t]
        _same_space({"real_train": xtr, "real_val": xva, "real_test": xte,
                     f"synth_by_type[{t!r}]": gx})
        n = gx.shape[0] if n_per_type is None else int(n_per_type)
        if gx.shape[0] == 0:
            raise DataError(f"no generated cells for rare type {t!r} (an empty array was given); "
                            "generate cells of every rare type")
        if n > gx.shape[0]:
            raise DataError(f"n_per_type={n} for type {t!r} but {gx.shape[0]} generated cells "
                            "were given; generate more cells or lower n_per_type")
        over_x.append(xtr[rng.choice(idx, size=n, replace=True)])
        gen_x.append(gx[np.sort(rng.choice(gx.shape[0], size=n, replace=False))])
        over_y += [t] * n
        gen_y += [t] * n
        n_added[t], n_real[t] = n, int(idx.size)

    data = {
        "real": (xtr, ytr),
        "oversample": (_stack([xtr, *over_x]), np.r_[ytr, np.asarray(over_y, dtype=str)]),
        "generated": (_stack([xtr, *gen_x]), np.r_[ytr, np.asarray(gen_y, dtype=str)]),
    }
    support = {t: int((yte == t).sum()) for t in rare}
    scored = [t for t in rare if support[t] > 0]
    if not scored:  # every arm's "mean rare F1" would be a 0 that measured nothing
        raise DataError(f"no test cells of any rare type ({listed(rare, 10)}), so no arm can be "
                        "scored; give test cells of the rare types or choose types the test "
                        "cells hold")
    if len(scored) < len(rare):
        logger.warning("rare type(s) with no test cells are not scored (F1 None, left out of "
                       "the mean rare-type F1): %s", listed(sorted(set(rare) - set(scored)), 10))
    labels = sorted(set(yte.tolist()) | set(rare))
    clf_seed = derive_seed(seed, "augmentation-clf")
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        x, y = data[arm]
        clf = train_classifier(x, y, xva, yva, cfg, seed=clf_seed)
        report = classification_report(yte, clf.predict(xte), labels=labels)
        f1 = {t: report["per_class"][t]["f1"] if support[t] else None for t in rare}
        arms[arm] = {"per_type_f1": f1, "mean_rare_f1": float(np.mean([f1[t] for t in scored])),
                     "macro_f1": report["macro"]["f1"]}
        logger.info("augmentation arm %s: mean rare-type F1 %.3f", arm, arms[arm]["mean_rare_f1"])
    return {"rare_types": rare, "n_added": n_added, "n_real_train": n_real,
            "test_support": support, "arms": arms, "balanced_weights": cfg.balanced_weights}
