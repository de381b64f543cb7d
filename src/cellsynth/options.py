"""Settings read by the whole package, set once: whether loops show progress bars.

As ``scanpy.settings``: set a value once (``cs.settings.progress = False``) rather than pass it
to every function. The command line sets it from ``--quiet`` and from whether stderr is a
terminal; in Python the default, ``"auto"``, shows bars when stderr is a terminal (or a
notebook). :func:`progress_bar` is the one place a loop asks for a bar; where no bar is shown
(a log file, a batch job), a loop that runs longer than :data:`LOG_SECONDS` logs where it is
every :data:`LOG_SECONDS` instead, so that a long job's log is never silent for minutes.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm
from tqdm.std import tqdm as _plain_tqdm

from .errors import CellsynthError

__all__ = ["LOG_SECONDS", "Settings", "progress_bar", "settings"]

logger = logging.getLogger("cellsynth.progress")

#: where no bar is shown, a loop logs a line at least this often (seconds) once it has run as long
LOG_SECONDS = 30.0

#: a loop logs its line this long before :data:`LOG_SECONDS` of silence, when its next step
#: would pass it: :func:`cellsynth.heartbeat.heartbeat` speaks after about a second less than
#: LOG_SECONDS of silence, and the loop's own line (where it is, its rate) is the one to read
LOG_MARGIN = 2.0


def log_due(silent: float, step: float) -> bool:
    """Whether a loop, ``silent`` seconds after its last line and its last step having taken
    ``step`` seconds, logs its line now: the next step would end after the line was due."""
    return silent + step >= LOG_SECONDS - LOG_MARGIN


class Settings:
    """Package-wide settings (one instance, :data:`settings`).

    Attributes
    ----------
    progress
        ``True`` shows tqdm progress bars (on stderr) over long loops: PCA, training epochs,
        sampling, XGBoost rounds, SHAP, fidelity folds; ``False`` hides them; ``"auto"`` (the
        default) shows them when stderr is a terminal or in a notebook.
    """

    __slots__ = ("_progress",)  # a misspelt setting (settings.progres = False) is an error

    def __init__(self) -> None:
        self._progress: bool | Literal["auto"] = "auto"

    @property
    def progress(self) -> bool | Literal["auto"]:
        """Whether long loops show progress bars: True, False or ``"auto"`` (when stderr is a
        terminal or in a notebook)."""
        return self._progress

    @progress.setter
    def progress(self, value: bool | Literal["auto"]) -> None:
        if isinstance(value, np.bool_):  # a numpy bool is a bool
            value = bool(value)
        if value != "auto" and not isinstance(value, bool):
            raise CellsynthError(f"settings.progress must be True, False or 'auto', not {value!r}")
        self._progress = value

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in ("progress", "_progress"):  # scanpy's settings.verbosity, say
            raise AttributeError(
                f"cs.settings has no setting {name!r}: its one setting is progress (True, False "
                "or 'auto'); cellsynth's messages go through Python's logging: without a "
                "logging set-up only its warnings are shown; logging.basicConfig("
                "level=logging.INFO) shows its progress lines too (as the command line does), "
                "logging.getLogger('cellsynth').setLevel(logging.ERROR) hides its warnings")
        object.__setattr__(self, name, value)

    def show_progress(self) -> bool:
        """Whether a loop starting now shows a bar (``"auto"`` resolved)."""
        if self._progress == "auto":
            return _interactive()
        return self._progress

    @contextmanager
    def override(self, *, progress: bool | Literal["auto"]) -> Iterator[None]:
        """Use ``progress`` inside the ``with`` block, then restore the previous value."""
        before = self._progress
        self.progress = progress
        try:
            yield
        finally:
            self._progress = before

    def __repr__(self) -> str:
        return f"Settings(progress={self._progress!r})"


def _interactive() -> bool:
    if "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget
        return True
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


#: the package's settings: ``cs.settings.progress = False`` silences every progress bar
settings = Settings()


def progress_bar(iterable: Iterable | None = None, *, here: bool = True, log: bool = True,
                 **kwargs: Any) -> tqdm:  # fmt: skip
    """A tqdm bar (on stderr), shown when :attr:`Settings.progress` says so.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ...) but ``disable``; ``here=False``
    hides it whatever the setting (a data-parallel fit shows its bar on the first process only).
    Where the bar is hidden, ``here`` and ``log`` (the default) make it a log line instead,
    every :data:`LOG_SECONDS` (``desc: n/total unit [elapsed<left, rate]``) at INFO level on the
    ``cellsynth.progress`` logger; ``log=False`` for a loop that logs its own (the epoch loop).
    """
    if here and settings.show_progress():
        return tqdm(iterable, **kwargs)
    if here and log:
        return _LogBar(iterable, **kwargs)
    return tqdm(iterable, disable=True, **kwargs)


class _NullFile:
    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass


class _LogBar(_plain_tqdm):
    """A tqdm that draws nothing and logs its line every :data:`LOG_SECONDS` instead (a step
    earlier when the next would end after it: :func:`log_due`)."""

    def __init__(self, iterable: Iterable | None = None, **kwargs: Any) -> None:
        kwargs.pop("file", None)
        kwargs.setdefault("bar_format", "{desc}: {n_fmt}/{total_fmt} {unit} "
                                        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self._logged_at = self._shown_at = time.monotonic()
        super().__init__(iterable, file=_NullFile(), mininterval=min(LOG_SECONDS, 1.0),
                         miniters=1, dynamic_ncols=False, **kwargs)  # fmt: skip

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        step, self._shown_at = now - self._shown_at, now
        if log_due(now - self._logged_at, step) and not getattr(self, "disable", False):
            self._logged_at = now
            logger.info("%s", str(self).strip())
        return True


#: matplotlib's warning of a character its font cannot draw (an emoji in a type's name)
_NO_GLYPH = re.compile(r"Glyph \d+ \((.*?)\) missing from font")
_NO_GLYPH_SAID: set[str] = set()  # each character is said once a session, not per figure


@contextmanager
def literal_text() -> Iterator[None]:
    """Text drawn inside is shown as spelled: matplotlib reads no ``$...$`` as mathtext, so a
    cell type or gene named ``IFN$\\gamma$`` or ``$\\frac$`` is its name on a figure, never a
    formula or a ValueError that stops a plot, a report section or the explain stage. A
    character the font cannot draw (an emoji) is said once in a log line, not in matplotlib's
    raw warnings, one per figure; other warnings pass on as they were."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    missing = set()
    for w in caught:  # matplotlib's one warning per character and figure, said once here
        glyph = _NO_GLYPH.search(str(w.message))
        if glyph and issubclass(w.category, UserWarning):
            missing.add(glyph.group(1))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    missing -= _NO_GLYPH_SAID
    if missing:
        _NO_GLYPH_SAID.update(missing)
        logging.getLogger("cellsynth.figures").warning(
            "the font has no glyph for %s (in a cell type's or a gene's name): drawn as an "
            "empty box on the figures; the tables and files spell the name whole",
            ", ".join(sorted(missing)))


def log_scale(ax: Any, axis: Literal["x", "y"]) -> None:
    """Put ``ax``'s ``axis`` on a log scale whose tick labels are plain numbers (``100``,
    ``1,000``): matplotlib's own labels of a log axis are mathtext (``$\\mathdefault{10^{2}}$``),
    which :func:`literal_text` (around every figure) drew as spelled. Which ticks are labelled
    stays matplotlib's choice (:class:`~matplotlib.ticker.LogFormatter`)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            if not super().__call__(x, pos):  # a tick matplotlib leaves unlabelled
                return ""
            return f"{x:,.0f}" if x >= 1 else f"{x:.2g}"

    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(Plain())
    target.set_minor_formatter(Plain())


#: the most characters of a cell type's name a figure's tick or legend label shows
LABEL_CHARS = 40


def short_label(name: Any, limit: int = LABEL_CHARS) -> str:
    """``name`` for a figure's tick or legend: a name longer than ``limit`` characters keeps
    its start and end around an ellipsis (``"CD4-positive, alpha…ory T cell"``), so that one
    long cell type does not squeeze every bar of a figure into a sliver; tables keep it whole."""
    text = str(name)
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 3
    return f"{text[: limit - 1 - tail]}…{text[len(text) - tail:]}"
