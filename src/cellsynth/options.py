"""Settings read by the whole package, set once: whether loops show progress bars.

As ``scanpy.settings``: set a value once (``cs.settings.progress = False``) rather than pass it
to every function. The command line sets it from ``--quiet`` and from whether stderr is a
terminal; in Python the default, ``"auto"``, shows bars when stderr is a terminal (or a
notebook). :func:`progress_bar` is the one place a loop asks for a bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from tqdm.auto import tqdm

from .errors import CellsynthError

__all__ = ["Settings", "progress_bar", "settings"]


class Settings:
    """Package-wide settings (one instance, :data:`settings`).

    Attributes
    ----------
    progress
        ``True`` shows tqdm progress bars (on stderr) over long loops: PCA, training epochs,
        sampling, XGBoost rounds, SHAP, fidelity folds; ``False`` hides them; ``"auto"`` (the
        default) shows them when stderr is a terminal or in a notebook.
    """

    def __init__(self) -> None:
        self._progress: bool | Literal["auto"] = "auto"

    @property
    def progress(self) -> bool | Literal["auto"]:
        return self._progress

    @progress.setter
    def progress(self, value: bool | Literal["auto"]) -> None:
        if value != "auto" and not isinstance(value, bool):
            raise CellsynthError(f"settings.progress must be True, False or 'auto', not {value!r}")
        self._progress = value

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


def progress_bar(iterable: Iterable | None = None, *, here: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (on stderr), shown when :attr:`Settings.progress` says so.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ...) but ``disable``; ``here=False``
    hides it whatever the setting (a data-parallel fit shows its bar on the first process only).
    """
    return tqdm(iterable, disable=not (here and settings.show_progress()), **kwargs)
