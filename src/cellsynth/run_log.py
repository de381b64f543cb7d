"""``cs.run``'s ``run.log``: every INFO line of cellsynth copied into the run directory while the
run lasts, as ``cellsynth run`` writes it, and the caller's console left as the caller set it.

The ``cellsynth`` logger is lowered to INFO for the file's sake; alone, that would change what
the caller sees: every INFO line would reach a console set to WARNING (``logging.basicConfig()``:
a handler on the root logger sees every record propagated to it, whatever the root's level),
and a warning would no longer reach logging's last resort (the console of a session that set
up no logging: the file's handler counts as one found). So while the level is lowered the
caller's handlers see only the records they saw before: those at the level the logger had.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["run_log", "start_line"]

FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


def log_file(path: Path) -> logging.FileHandler:
    """The handler of a ``run.log``: UTF-8 as every text cellsynth writes, whatever the
    locale (an ASCII or Latin-1 one made each line naming a cell type such as 'γδ T cells' a
    "--- Logging error ---" traceback on stderr, the line lost), and a character no encoding
    takes (an undecodable argument) written as its escape."""
    return logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")


def start_line(command: str) -> logging.LogRecord:
    """The first line an attempt writes into ``run.log``, which a rerun appends to (a resumed
    run's log holds each attempt): its date (the lines say the time alone), the command, the
    version and the process, so that a log read later tells its attempts apart."""
    import os
    import socket
    import time

    from . import __version__

    return logging.makeLogRecord({
        "name": "cellsynth", "levelno": logging.INFO, "levelname": "INFO", "msg": "%s",
        "args": (f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {command} (cellsynth "
                 f"{__version__}, pid {os.getpid()} on {socket.gethostname()})",)})


class _AtLeast(logging.Filter):
    """Lets through the records at ``level`` or above."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _Onward(logging.Handler):
    """Passes a record on to the handlers above the ``cellsynth`` logger, and to logging's last
    resort where there is none, as propagation did (the logger's own propagation is off while
    this stands in for it); at ``level``, the level the logger had."""

    def __init__(self, level: int, others: bool) -> None:
        super().__init__(level)
        self.others = others  # the caller's handlers on the logger itself: no last resort

    def emit(self, record: logging.LogRecord) -> None:
        found = self.others
        logger = logging.getLogger("cellsynth").parent
        while logger is not None:
            for handler in logger.handlers:
                found = True
                if record.levelno >= handler.level:
                    handler.handle(record)
            logger = logger.parent if logger.propagate else None
        last = logging.lastResort
        if not found and last is not None and record.levelno >= last.level:
            last.handle(record)


@contextmanager
def run_log(out: Path, command: str = "cs.run") -> Iterator[None]:
    """Copy cellsynth's INFO lines into ``out/run.log`` while the block lasts, after a
    :func:`start_line` for ``command``, and, where it stops on an exception, why (``run
    stopped: ...``); what the caller's own handlers show stays as it was (see the module's
    text)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handler = log_file(out / "run.log")
    except OSError:  # pipeline.run says what is wrong with the directory
        yield
        return
    handler.setLevel(logging.INFO)
    handler.setFormatter(FORMAT)
    handler.handle(start_line(command))
    root = logging.getLogger("cellsynth")
    level, propagate, before = root.level, root.propagate, root.getEffectiveLevel()
    added: list[logging.Handler] = [handler]
    guarded: list[logging.Handler] = []
    guard = _AtLeast(before)
    if before > logging.INFO:
        guarded = list(root.handlers)
        for h in guarded:
            h.addFilter(guard)
        if propagate:
            added.append(_Onward(before, others=bool(guarded)))
        root.propagate = False
        root.setLevel(logging.INFO)
    for h in added:
        root.addHandler(h)
    try:
        yield
    except BaseException as exc:  # the log says why the run stopped, not only its stage
        _stopped(handler, exc)
        raise
    finally:
        for h in added:
            root.removeHandler(h)
        for h in guarded:
            h.removeFilter(guard)
        root.setLevel(level)
        root.propagate = propagate
        handler.close()


def _stopped(handler: logging.Handler, exc: BaseException) -> None:
    from .errors import CellsynthError
    from .runtime import why_stopped

    user = isinstance(exc, CellsynthError | KeyboardInterrupt)
    why = str(exc) if isinstance(exc, CellsynthError) else why_stopped(exc)
    handler.handle(logging.makeLogRecord({
        "name": "cellsynth", "levelno": logging.ERROR, "levelname": "ERROR",
        "msg": "run stopped: %s%s", "args": (why, "" if user else f": {exc}"),
        "exc_info": None if user else (type(exc), exc, exc.__traceback__)}))
