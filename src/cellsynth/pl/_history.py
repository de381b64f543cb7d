"""``cs.pl.history``: a generator's training curve."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, ModelFileError
from ..paths import expand_user
from ._common import REAL_COLOR, SYNTH_COLOR, axes, finish, plot

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _history(source: Any) -> Mapping[str, Any]:
    """The history dict of a model, a dict, or a model directory / ``history.json`` path."""
    if isinstance(source, str | Path):
        path = expand_user(source, "the model directory")  # ~/models/cvae
        path = path / "history.json" if path.is_dir() else path
        if not path.is_file():
            if path.name == "history.json":  # a model directory without one: said by its
                # kind; only then (a mistyped run1/generator/cvae had been called a saved
                # model "which keeps no history.json" of run1/generator, which held one)
                _no_curve(path.parent)
                if (path.parent / "generator" / "history.json").is_file():
                    raise DataError(f"{path.parent} is a run directory: its generator's curve "
                                    f"is in {path.parent / 'generator'}; give that directory")
            raise ModelFileError(f"{path} does not exist; give a model directory, its "
                                 "history.json, a model or its history dict")
        try:
            hist = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{path} is not a JSON history ({exc})") from None
        if not isinstance(hist, Mapping):
            raise ModelFileError(f"{path} holds a JSON {type(hist).__name__}, not a history "
                                 "(an object of losses per epoch, as a model's fit writes it)")
        if path.name != "history.json" and not {"train_loss", "elbo_train"} & set(hist):
            # fidelity.json had been called a model that "has not been trained"
            raise ModelFileError(f"{path} holds no train_loss per epoch: it is not a model's "
                                 "history.json; give a model directory or its history.json")
        return hist
    hist = getattr(source, "history", source)
    if not isinstance(hist, Mapping):
        raise DataError(f"a {type(source).__name__} has no training history; give a trained "
                        "model, its history dict or its directory")
    return hist


def _curve(hist: Mapping[str, Any], key: str) -> np.ndarray:
    """``hist[key]``, one number (or None: not checked that epoch) per epoch, as floats; a
    hand-made or edited history whose curve is not one is refused by name (it had stopped in
    numpy or matplotlib with a traceback)."""
    values = hist.get(key)
    values = [] if values is None else values
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        raise DataError(f"the history's {key} must be a list of one number per epoch, not "
                        f"{type(values).__name__} {str(values)[:40]!r}")
    bad = [v for v in values if v is not None and (isinstance(v, bool) or not isinstance(v, Real))]
    if bad:
        raise DataError(f"the history's {key} holds {bad[0]!r} ({len(bad)} of {len(values)} "
                        "values are not numbers): give one number (or None) per epoch")
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)


def _no_curve(directory: Path) -> None:
    """Refuse a saved model directory without ``history.json`` by its kind (``config.json``'s
    ``model``), as a model object without a curve is refused; return when it is no model."""
    try:
        kind = json.loads((directory / "config.json").read_text()).get("model")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return
    if not kind:
        return
    how = ("is fitted by moments without epochs and has no training curve" if kind == "nb"
           else "keeps no history.json of losses per epoch")
    raise DataError(f"{directory} is a saved {kind} model, which {how}; cs.pl.history draws "
                    "the curve of a cvae or reference model")


@plot
def history(model_or_history: Any, *, ax: Axes | None = None, show: bool | None = None,
            save: str | Path | None = None) -> Axes | None:
    """The training curve of a generator: loss per epoch, the validation check, the kept epoch.

    The validation curve is the quantity that chose the kept epoch (its legend says so):
    with ``cvae.select = "fidelity"`` (the CVAE's default) the two-sample AUC of generated
    against validation cells, on a second y axis (right); otherwise the validation loss,
    beside the training loss.

    Parameters
    ----------
    model_or_history
        A trained model (its ``history``; an scvi model's ELBO per epoch), a history dict, or
        a saved model directory (or its ``history.json``).
    {ax}
    {show_save}

    Returns
    -------
    Axes or None
        The :class:`~matplotlib.axes.Axes` of the training loss (the AUC, when drawn, is on
        its twin, ``ax.right_ax``); None with ``show=True``.
    """
    hist = _history(model_or_history)
    elbo = "train_loss" not in hist and bool(hist.get("elbo_train"))  # scvi's curve
    if elbo:  # its validation ELBO is what its early stopping watched
        hist = {"train_loss": hist["elbo_train"], "val_loss": hist.get("elbo_validation") or []}
    train = _curve(hist, "train_loss")
    if train.size == 0:
        raise DataError("the history has no train_loss per epoch: the model has not been "
                        "trained, or was fitted without epochs (such as nb), which has no "
                        "curve")
    if not np.isfinite(train).any():
        raise DataError(f"every one of the history's {train.size} train_loss values is NaN or "
                        "infinite (the training diverged): there is no curve to draw; train "
                        "again, with a smaller learning rate")
    val = _curve(hist, "val_loss")
    if val.size > train.size:
        raise DataError(f"the history has {val.size} val_loss values for {train.size} epochs of "
                        "train_loss: give one value (or None) per epoch, as a model's fit "
                        "writes them")
    best = hist.get("best_epoch")
    if best is not None and (isinstance(best, bool) or not isinstance(best, Integral)
                             or not -1 <= best < train.size):  # -1: no epoch improved
        raise DataError(f"the history's best_epoch {best!r} is not an epoch of its curve "
                        f"(0 to {train.size - 1}): give the kept epoch's number, or None")
    epochs = np.arange(train.size)
    ax = axes(ax, (6.0, 3.8))
    lines = ax.plot(epochs, train, color=REAL_COLOR,
                    label="training ELBO" if elbo else "training loss")
    checked = np.flatnonzero(np.isfinite(val))
    if hist.get("select") == "fidelity" and checked.size:
        right = ax.twinx()
        lines += right.plot(epochs[checked], val[checked], color=SYNTH_COLOR, marker=".",
                            label="validation two-sample AUC (chose the kept epoch)")
        right.set_ylabel("two-sample AUC (0.5: indistinguishable)")
        ax.right_ax = right
    elif checked.size:
        lines += ax.plot(epochs[checked], val[checked], color=SYNTH_COLOR,
                         marker="." if checked.size <= 30 else None,
                         label="validation ELBO (early stopping)" if elbo
                         else "validation loss (chose the kept epoch)")
    if best is not None and best >= 0:
        lines.append(ax.axvline(best, color="black", linestyle="--", linewidth=0.8,
                                label=f"kept epoch ({best})"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(handles=lines, fontsize=8, loc="best")
    return finish(ax, show, save)
