"""What every plot shares: the axes to draw into, ``show``/``save`` and the colours."""

from __future__ import annotations

import functools
import inspect
import logging
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, listed
from ..figure_io import FIGURE_MARK as FIGURE_MARK  # a figure cellsynth saved says so
from ..figure_io import check_save, save_figure
from ..figure_io import figure_written as figure_written
from ..options import LABEL_CHARS as LABEL_CHARS  # the figures' labels, as the explain stage's
from ..options import literal_text
from ..options import short_label as short_label

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: the colours of the two origins everywhere (the report's too): real cells and the
#: real-vs-real floor, synthetic cells. No cell-type colour is near either (:func:`type_colors`)
REAL_COLOR, SYNTH_COLOR = "#4c72b0", "#dd8452"
#: a flag (a privacy attack over its threshold)
FLAG_COLOR = "#c44e52"

#: the parameters every plot shares, put in its docstring by :func:`doc_params`
_DOC_PARAMS = {
    "{ax}": "ax\n    The axes to draw into; None makes a new figure.",
    "{show_save}": "show\n    True: show the figure (``plt.show()``) and return None.\n"
                   "save\n    A file path (``.png``, ``.pdf``, ``.svg``...) to save the figure to; "
                   "where\n    matplotlib cannot show figures (Agg) the figure a call made is then "
                   "closed in\n    pyplot (its axes are still returned).",
}


def doc_params(func: Callable) -> Callable:
    """Write the shared parameters into ``func``'s docstring where it says ``{ax}`` or
    ``{show_save}`` (on a line of its own, indented as the text it stands for), as scanpy's
    ``_doc_params`` does."""
    doc = func.__doc__ or ""
    for key, text in _DOC_PARAMS.items():
        doc = re.sub(rf"^( *){re.escape(key)}$", lambda m, t=text: textwrap.indent(t, m.group(1)),
                     doc, flags=re.M)  # fmt: skip
    func.__doc__ = doc
    return func


def plot(func: Callable) -> Callable:
    """A ``cs.pl`` function: its docstring completed (:func:`doc_params`), its ``save=`` path
    checked before any work (:func:`check_save`; a path refused once the figure was drawn had
    cost a whole UMAP), and the figures it opened closed when it fails (a notebook showed the
    half-drawn figure beside the error, and a loop of failing calls kept each one open), as
    are those it saved or "showed" where nothing can show them (Agg)."""
    func = doc_params(func)
    signature = inspect.signature(func)

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            given = signature.bind(*args, **kwargs).arguments
        except TypeError:  # the call itself says what is wrong with its arguments
            given = {}
        save = given.get("save")
        if save is not None:
            check_save(save)
            one_figure(given.get("ax"))
        import matplotlib.pyplot as plt

        before = set(plt.get_fignums())
        try:
            with literal_text():
                out = func(*args, **kwargs)
        except Exception:  # its own refusals and any other failure: no half-drawn figure
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise
        if (given.get("show") or given.get("save") is not None) and _non_interactive():
            # nothing will ever show a figure made here that is saved or "shown" (Agg): each
            # call had left one open in pyplot, and a loop of save= calls warned "More than 20
            # figures" and grew in memory (scanpy closes a saved figure too); the axes returned
            # still draw and save, and a figure of the caller's (ax=) stays open
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
        return out

    return checked


#: tab10 and tab20 without their blues and oranges, which are the origins' colours
_TAB10 = (2, 3, 4, 5, 6, 7, 8, 9)
_TAB20 = (4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)


def type_colors(n: int) -> list:
    """``n`` distinct cell-type colours, none a blue or an orange (the origins' colours).

    Eight from tab10, sixteen from tab20, beyond that evenly spaced hues of ``hsv`` with the
    blue and orange bands left out.

    Parameters
    ----------
    n
        How many colours.

    Returns
    -------
    list
        ``n`` RGBA tuples.
    """
    from matplotlib import colormaps

    if n <= len(_TAB10):
        return [colormaps["tab10"](i) for i in _TAB10[:n]]
    if n <= len(_TAB20):
        return [colormaps["tab20"](i) for i in _TAB20[:n]]
    # hues in [0, 1): orange is about 0.05-0.12, blue about 0.55-0.68; keep the rest
    keep = [(0.0, 0.04), (0.13, 0.54), (0.69, 1.0)]
    span = sum(b - a for a, b in keep)
    out = []
    for i in range(n):
        t = span * i / n
        for a, b in keep:
            if t < b - a:
                out.append(colormaps["hsv"](a + t))
                break
            t -= b - a
    return out


def finite(value: Any) -> float:
    """``value`` as a float, or NaN where it is no finite number (None, NaN, an infinity,
    text): a result's number that cannot be drawn as a bar's length (an infinite one stopped
    a plot with matplotlib's "Axis limits cannot be NaN or Inf", text with ValueError)."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan
    return x if np.isfinite(x) else np.nan


def mark_missing(ax: Axes, y: Sequence[float], values: Sequence[float], height: float) -> None:
    """Write "n/a" where a horizontal bar at ``y`` (``height`` high) has no value (NaN): a
    missing bar looked like a bar of 0, the worst score of some metrics and the best of
    others."""
    missing = [yi for yi, v in zip(y, values, strict=True) if np.isnan(v)]
    for yi in missing:
        ax.text(0, yi, " n/a", va="center", ha="left", fontsize=7, color="#555555")
    if missing:  # a bar without a value widens no limit: "n/a" of a first or last row was
        # drawn outside the axes, over the legend
        lo, hi = sorted(ax.get_ylim())
        pad = 0.6 * height
        ax.set_ylim(min(lo, min(missing) - pad), max(hi, max(missing) + pad))


def root_figure(ax: Axes) -> Any:
    """The figure ``ax`` is saved and closed with: its own, or the one its subfigure lies in
    (a SubFigure has no ``savefig``)."""
    from matplotlib.figure import Figure

    fig = ax.figure
    while not isinstance(fig, Figure):  # a SubFigure's figure: its parent
        fig = fig.figure
    return fig


def one_figure(ax: object) -> None:
    """With ``save=``: refuse, before any work, panels (``ax=``) that lie in several figures:
    one file holds one figure, and only the first panel's was saved."""
    from matplotlib.axes import Axes as _Axes

    if isinstance(ax, np.ndarray):
        ax = list(ax.ravel())
    if not isinstance(ax, Sequence) or isinstance(ax, str):
        return
    figures = {id(root_figure(a)) for a in ax if isinstance(a, _Axes)}
    if len(figures) > 1:
        raise DataError(f"save= writes one figure, but the axes given (ax=) lie in "
                        f"{len(figures)} figures: give axes of one figure (plt.subplots(1, "
                        f"{len(ax)})), or save each figure yourself (fig.savefig)")


def axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the axes of a new pyplot figure of ``figsize`` inches (never shown here);
    one Axes, also in a list, is taken (:func:`axes_list`), anything else refused by name."""
    if ax is not None:
        return axes_list(ax, 1, "panel")[0]
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def axes_list(ax: object, n: int, what: str) -> list[Axes]:
    """``ax`` given to a plot of ``n`` panels (``what``: one per what) as a list of ``n``
    Axes: one Axes or a list of them; anything else, or another count, refused by name."""
    import numpy as np
    from matplotlib.axes import Axes as _Axes

    if isinstance(ax, np.ndarray):  # as plt.subplots returns several
        ax = list(ax.ravel())
    axs = [ax] if isinstance(ax, _Axes) else (
        list(ax) if isinstance(ax, Sequence) and not isinstance(ax, str) else None)
    if axs is None or not all(isinstance(a, _Axes) for a in axs):
        raise DataError(f"ax= takes {n} matplotlib Axes (one per {what}), got "
                        f"{type(ax).__name__}")
    odd = sorted({a.name for a in axs if a.name != "rectilinear"})
    if odd:  # bars and points drawn in polar or 3-d coordinates: a figure that reads wrong
        raise DataError(f"ax= takes ordinary (x, y) axes, got {' and '.join(odd)} ones; make "
                        "them with plt.subplots() (no projection=)")
    if len(axs) != n:
        raise DataError(f"ax= takes {n} axes (one per {what}), got {len(axs)}")
    return axs


def finish(ax: Axes | Sequence[Axes], show: bool | None, save: str | Path | None
           ) -> Axes | list[Axes] | None:
    """scanpy's ending of a plot: ``save`` the figure to a path, ``plt.show()`` it when
    ``show`` is True (then return None), else return the axes."""
    first = ax if not isinstance(ax, Sequence) else ax[0]
    figure = root_figure(first)
    if save is not None:
        path = check_save(save, figure.canvas.get_supported_filetypes())
        save_figure(figure, path, bbox_inches="tight", dpi=150)
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        backend = _non_interactive()
        if backend:  # plt.show() returned at once and showed nothing: said (the figure a
            # call made is closed by plot()); "give save=" to one who gave it misled
            keep = (f"it is saved in {path}" if save is not None else
                    "give save= a file path to keep the figure")
            logger.warning("show=True: matplotlib's backend %r cannot show figures (no "
                           "display); %s, or show=False to get its axes", backend, keep)
        return None
    return list(ax) if isinstance(ax, Sequence) else ax


def _non_interactive() -> str | None:
    """The name of matplotlib's backend when it is one that draws into files only (Agg on a
    machine without a display), else None (a window, or a notebook's inline figures)."""
    import matplotlib

    try:
        from matplotlib.backends import BackendFilter, backend_registry

        files_only = backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)
    except ImportError:  # matplotlib before 3.9
        from matplotlib.rcsetup import non_interactive_bk as files_only
    backend = matplotlib.get_backend()
    return backend if backend.lower() in {b.lower() for b in files_only} else None


def need_cells(adata: object, what: str) -> None:
    """:class:`DataError` unless ``adata`` is an AnnData (cells), naming what was given: an
    evaluation result goes to ``cs.pl.fidelity``, ``per_type`` or ``privacy`` instead."""
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        hint = (" (an evaluation result: plot it with cs.pl.fidelity, cs.pl.per_type or "
                "cs.pl.privacy)" if hasattr(adata, "verdict") else "")
        raise DataError(f"{what} must be an AnnData of cells, got {type(adata).__name__}{hint}")


def labelled(adata: Any, label_key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the cells with a label, and their labels as ``str`` (cells without one
    are left out with a warning, as :func:`cellsynth.evaluate` leaves them out)."""
    from ..data.labels import check_spaced_names, missing_labels

    if not isinstance(label_key, str):  # a list stopped pandas with "unhashable type"
        raise DataError(f"label_key takes the name of one obs column (a string such as "
                        f"'cell_type'), not {type(label_key).__name__} {label_key!r}")
    if label_key not in adata.obs:
        raise DataError(f"label column '{label_key}' not in the obs of {what}; columns "
                        f"are: {', '.join(map(str, adata.obs.columns)) or '(none)'}")
    col = adata.obs[label_key]
    keep = np.flatnonzero(~missing_labels(col))
    if len(keep) < len(col):
        logger.warning("%s: %d cells have no label in obs['%s'] and are left out", what,
                       len(col) - len(keep), label_key)  # fmt: skip
    labels = col.astype(str).to_numpy()[keep]
    # "B cells" beside "B cells " (or a line break in a name): two entries that read as one,
    # refused as cellsynth.evaluate refuses them
    check_spaced_names(np.unique(labels), label_key, "cell types")
    return keep, labels


def no_shared_type(real: Sequence[Any], synthetic: Sequence[Any], label: str) -> DataError:
    """The error of real and synthetic cells without a cell type in common (``real``,
    ``synthetic``: the types each side holds; ``label``: where they were read), naming each
    side's types, or the side that has no labelled cell at all: "share no cell type" alone
    said nothing of an empty side, nor of 'type_1' beside 'type_1.0'."""
    for side, types in (("real", real), ("synthetic", synthetic)):
        if not len(types):
            return DataError(f"the {side} data hold no cell with a label in {label} (no cells, "
                             "or every label missing): give cells of the types to plot")
    return DataError(f"the real and synthetic cells share no cell type in {label} (real: "
                     f"{listed(sorted(map(str, real)), quote=True)}; synthetic: "
                     f"{listed(sorted(map(str, synthetic)), quote=True)}): give both sides "
                     "the same type names (label_key)")
