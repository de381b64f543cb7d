"""Signs of life: where no progress bar is shown, a job's log is never silent for long.

A loop logs where it is every :data:`~cellsynth.options.LOG_SECONDS` (its bar's line), but only
between two of its steps: a step of a minute (an epoch of an atlas, a round of XGBoost on a
busy host) or a step outside any loop (a PCA, writing a file of gigabytes) left the log silent
for longer, and a job watched through its log file looked hung. While :func:`heartbeat` is
active and no cellsynth logger has written a line for about :data:`LOG_SECONDS`, a thread logs
``STEP: still running after T (peak RSS M MB)``; any other line resets its clock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .options import LOG_SECONDS, settings

__all__ = ["heartbeat"]

logger = logging.getLogger("cellsynth.progress")

#: how often the thread looks at the clock (seconds): a silence ends within this of LOG_SECONDS
CHECK_SECONDS = 1.0


class _Clock(logging.Handler):
    """A handler on the ``cellsynth`` logger that writes nothing: it keeps the time of the last
    record any cellsynth logger passed on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        self.last = time.monotonic()


class _Beat:
    """The one thread of every active :func:`heartbeat` (they nest: the innermost is named)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps: list[tuple[str, float]] = []  # (what, started) innermost last
        self.clock: _Clock | None = None
        self.stop: threading.Event | None = None

    def enter(self, what: str) -> None:
        with self.lock:
            self.steps.append((what, time.monotonic()))
            if self.stop is None:
                self.stop = threading.Event()
                threading.Thread(target=self._run, args=(self.stop,), name="cellsynth-heartbeat",
                                 daemon=True).start()  # fmt: skip

    def leave(self) -> None:
        with self.lock:
            self.steps.pop()
            if not self.steps and self.stop is not None:
                self.stop.set()
                self.stop = None
                self._detach()

    def _detach(self) -> None:
        if self.clock is not None:
            logging.getLogger("cellsynth").removeHandler(self.clock)
            self.clock = None

    def _run(self, stop: threading.Event) -> None:
        root = logging.getLogger("cellsynth")
        while not stop.wait(CHECK_SECONDS):
            with self.lock:
                if stop.is_set() or not self.steps:
                    return
                what, started = self.steps[-1]
                if self.clock is None:
                    # only where cellsynth's lines are written somewhere: a handler beside
                    # none would stop logging's last resort from showing the warnings
                    if root.isEnabledFor(logging.INFO) and root.hasHandlers():
                        self.clock = _Clock()
                        root.addHandler(self.clock)
                    continue
                clock = self.clock
            now = time.monotonic()
            if now - clock.last >= LOG_SECONDS - CHECK_SECONDS:
                from .runtime import peak_rss_mb

                logger.info("%s: still running after %s (peak RSS %.0f MB)", what,
                            duration_text(now - started), peak_rss_mb())  # fmt: skip
                clock.last = now  # also when no handler passed the line on


_BEAT = _Beat()


def _forked() -> None:
    """A forked child (a data loader's worker) starts with no heartbeat: the thread is not
    copied, and its lock may have been held by it at the fork."""
    if _BEAT.clock is not None:
        logging.getLogger("cellsynth").removeHandler(_BEAT.clock)
    _BEAT.__init__()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def duration_text(seconds: float) -> str:
    """``1 h 05 min``, ``3 min 07 s`` or ``42 s``."""
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds % 3600 // 60, seconds % 60
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


@contextmanager
def heartbeat(what: str) -> Iterator[None]:
    """Inside the block, where no progress bar is shown (:attr:`Settings.progress
    <cellsynth.options.Settings.progress>` resolved to False) and cellsynth's INFO lines are
    written somewhere (a handler: the command line's, a user's ``logging`` set-up), a line
    ``WHAT: still running after T`` whenever cellsynth has logged nothing for about
    :data:`~cellsynth.options.LOG_SECONDS`. Blocks nest; the innermost ``what`` is named.

    Parameters
    ----------
    what
        The step, as the log names it (``"stage generator"``).
    """
    if settings.show_progress():
        yield
        return
    _BEAT.enter(what)
    try:
        yield
    finally:
        _BEAT.leave()
