"""``cs.pl.history``: a generator's training curve."""

from __future__ import annotations

import json
from collections.abc import Mapping
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
            _no_curve(path.parent)
            raise ModelFileError(f"{path} does not exist; give a model directory, its "
                                 "history.json, a model or its history dict")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{path} is not a JSON history ({exc})") from None
    hist = getattr(source, "history", source)
    if not isinstance(hist, Mapping):
        raise DataError(f"a {type(source).__name__} has no training history; give a trained "
                        "model, its history dict or its directory")
    return hist


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
    train = np.asarray([np.nan if v is None else v for v in hist.get("train_loss", [])], float)
    if train.size == 0:
        raise DataError("the history has no train_loss per epoch: the model has not been "
                        "trained, or was fitted without epochs (such as nb), which has no "
                        "curve")
    val = np.asarray([np.nan if v is None else v for v in hist.get("val_loss", [])], float)
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
    best = hist.get("best_epoch")
    if best is not None:
        lines.append(ax.axvline(best, color="black", linestyle="--", linewidth=0.8,
                                label=f"kept epoch ({best})"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(handles=lines, fontsize=8, loc="best")
    return finish(ax, show, save)
