"""Where a figure may be saved, and saving it: every figure cellsynth writes to a path a user
gives (``cs.pl``'s ``save=``, :func:`cellsynth.explain.plot_shap`) and the explain stage's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DataError
from .outputs import check_writable
from .paths import expand_user


def check_save(save: Any, kinds: Mapping[str, str] | None = None, flag: str = "save=") -> Path:
    """The path a figure is saved to (``flag`` names the argument: ``save=`` of ``cs.pl``),
    ``~`` expanded, or a one-line error: not a path, a directory, a format matplotlib does not
    write (``kinds``: the canvas's; default the formats of any figure), a file cellsynth did
    not write, a place nothing can be written."""
    from matplotlib.backend_bases import FigureCanvasBase

    if isinstance(save, bool):
        raise DataError(f"{flag} takes a file path (such as 'umap.png'), not True or False")
    path = expand_user(save, flag)
    kinds = kinds if kinds is not None else FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise DataError(f"{flag} {path} is a directory; give a file path such as "
                        f"{path / 'plot.png'}")
    kind = path.suffix.lstrip(".").lower()
    if kind not in kinds:
        raise DataError(f"{flag} {path}: a figure is saved as one of "
                        f"{', '.join('.' + k for k in sorted(kinds))}; give a file name "
                        "ending in one of them")
    if kind == "pgf":  # matplotlib measures a .pgf figure's text through a TeX system
        import shutil

        import matplotlib

        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise DataError(f"{flag} {path}: a .pgf figure is written through {tex}, which is "
                            "not installed here; save as .pdf or .svg (or install TeX)")
    if path.exists() and not figure_written(path):
        unmarked = ("" if kind in _MARK_KEYS else f" (a .{kind} file has no field that "
                    "names its writer, so cellsynth never replaces one)")
        raise DataError(f"{flag} {path} exists and is not a figure that cellsynth wrote"
                        f"{unmarked}: saving would destroy it; give a new path (or remove "
                        "the file yourself)")
    check_writable(path, flag)
    return path


#: what a figure cellsynth saved says it is, in the file's own metadata (PNG "Software", PDF,
#: SVG and PostScript "Creator"), so that a later save= may replace it and nothing else: formats
#: without such a field (JPEG, TIFF...) are written but never replaced
FIGURE_MARK = "cellsynth.pl figure"
_MARK_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator", "ps": "Creator",
              "eps": "Creator"}  # fmt: skip
#: the bytes of a file searched for the mark (a figure's metadata is near either end)
_MARK_SPAN = 1 << 20


def figure_written(path: Path) -> bool:
    """Whether ``path`` is a figure ``save=`` wrote (its metadata holds :data:`FIGURE_MARK`,
    uncompressed in every format that has the field), read at both ends of the file."""
    mark = FIGURE_MARK.encode()
    try:
        with open(path, "rb") as fh:
            head = fh.read(_MARK_SPAN)
            fh.seek(max(0, path.stat().st_size - _MARK_SPAN))
            tail = fh.read(_MARK_SPAN)
    except OSError:
        return False
    return mark in head or mark in tail


def save_figure(fig: Any, path: Path, flag: str = "save=", **kwargs: Any) -> None:
    """Write ``fig`` to ``path`` (checked by :func:`check_save`, or a file of a directory that
    cellsynth writes) with :data:`FIGURE_MARK` in its metadata where the format has a field for
    it, its folder made; a write that matplotlib fails (a full disk, an image over 2^16 pixels
    a side) is a one-line :class:`DataError` naming ``flag``. ``kwargs`` go to ``savefig``."""
    path = Path(path)
    key = _MARK_KEYS.get(path.suffix.lstrip(".").lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, metadata={key: FIGURE_MARK} if key else None, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"{flag} {path}: matplotlib could not write the figure "
                        f"({str(exc).strip() or type(exc).__name__}); give another path "
                        "or format (.png, .pdf, .svg)") from None
