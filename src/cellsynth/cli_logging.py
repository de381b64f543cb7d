"""Where a ``cellsynth`` command's lines go: the handlers it puts on the ``cellsynth`` logger (the
console's, on stderr, and ``run.log``'s) belong to that command alone and are taken away when
it ends, and its last line (an error, an interrupt) is written into its log file as well as on
stderr, where a closed or broken stderr costs the line, not the exit code; its output lines
(:func:`show`) are flushed as they are printed, and a stdout that cannot take them is said as
such."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CellsynthError
from .run_log import FORMAT, log_file, start_line

#: the attribute that marks a handler as one a command installed (no other handler is touched:
#: the heartbeat's clock, a user's own)
_MARK = "_cellsynth_command"


def _own(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, _MARK, False)]


def setup(quiet: bool, logfile: Path | None = None, command: str = "") -> None:
    """The command's handlers: the console (WARNING and above with ``quiet``, else INFO) and,
    given ``logfile``, every INFO line into it after a first line that dates the ``command``
    (:func:`~cellsynth.run_log.start_line`: a rerun appends to it); those of an earlier call
    are replaced."""
    root = logging.getLogger("cellsynth")
    debug = _verbose[-1] and not quiet
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for h in _own(root):
        root.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.DEBUG if debug else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(log_file(logfile))
    for h in handlers:
        h.setFormatter(FORMAT)
        setattr(h, _MARK, True)
        root.addHandler(h)
    if logfile is not None:
        handlers[-1].handle(start_line(command))


#: whether the command running (the last entered :func:`command_logging`) asked ``--verbose``
_verbose = [False]


@contextmanager
def command_logging(verbose: bool = False) -> Iterator[None]:
    """Inside, a command may :func:`setup` its handlers (with ``verbose``, the debugging lines
    too, on the console and in its log file); after it, the ``cellsynth`` logger has its level
    and handlers as before (a ``run.log`` closed), so that a later command or Python's own work
    in the same process writes into no earlier run's log."""
    root = logging.getLogger("cellsynth")
    level = root.level
    _verbose.append(bool(verbose))
    try:
        yield
    finally:
        _verbose.pop()
        for h in _own(root):
            root.removeHandler(h)
            h.close()
        root.setLevel(level)


def to_log_file(text: str, *, exc_info: Any = None) -> None:
    """``text`` (with ``exc_info``'s traceback) into the command's log file alone (``run.log``:
    a job read through its log says why it stopped); nothing where it has none."""
    for h in _own(logging.getLogger("cellsynth")):
        if isinstance(h, logging.FileHandler):
            h.handle(logging.makeLogRecord({
                "name": "cellsynth", "levelno": logging.ERROR, "levelname": "ERROR",
                "msg": "%s", "args": (text,), "exc_info": exc_info}))


def say(text: str) -> None:
    """``text``, a command's last line, on stderr and into the command's log file. A stderr
    closed or whose reader has gone (``2>&1 | head -1``) loses the line, not the exit code."""
    to_log_file(text)
    stream = sys.stderr
    if stream is None:  # started with its stderr closed: nowhere to say it
        return
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):  # a broken pipe, a closed stream
        to_devnull(stream)


def to_devnull(stream: Any) -> None:
    """A stream whose reader has gone writes into nothing from now on: Python's own flush at
    exit would fail again ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def show(text: object) -> None:
    """``text``, a command's output, on stdout and flushed: a stdout that cannot take it (a file
    on a full disk) stops the command with an error that says so, not as the command's own
    outputs failing ("disk full while writing the output ... choose another --out") nor at
    exit (Python's "Exception ignored"). A reader that has gone (``| head -1``) is main's. A
    character the stdout's encoding lacks (a locale that is not UTF-8: the verdict's '±', a
    type named 'γδ T cells') is written as its escape, not a traceback after the work."""
    text = str(text)
    encoding = getattr(sys.stdout, "encoding", None)
    if encoding:
        try:
            text.encode(encoding)
        except UnicodeEncodeError:
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        except LookupError:  # an encoding Python does not know: printed as it is
            pass
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        to_devnull(sys.stdout)
        raise CellsynthError(
            f"the standard output could not be written ({exc.strerror or exc}): free space "
            "where it is redirected, or redirect it elsewhere; the command had done its work "
            "(its files are written) before this line") from None
