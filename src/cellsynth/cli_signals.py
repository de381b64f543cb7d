"""How a ``cellsynth`` command meets signals and a broken HDF5: SIGINT, SIGTERM and SIGHUP
unwind the command as Ctrl-C does (raised again while it runs on), a signal ignored at start
stays ignored, and a command whose h5ad write failed exits at once (HDF5's clean-up of a file
the disk filled under would crash the process)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a batch scheduler's cancel or time limit, `timeout`, a closed
    terminal), raised in the main thread so that it unwinds as Ctrl-C does: the stage running
    is marked failed in the manifest and partial outputs are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: seconds after a signal before it is raised again while the command is still running
REPEAT_SIGNAL_SECONDS = 10.0


class Signals:
    """The handler of SIGINT (``KeyboardInterrupt``), SIGTERM and SIGHUP (:class:`Terminated`)
    while a command runs. An exception raised where Python cannot propagate it (inside a
    finaliser or a C extension's callback: "Exception ignored in ...") is lost, and the command
    would run on; so after the first signal a watcher raises it again in the main thread every
    :data:`REPEAT_SIGNAL_SECONDS` until the command has ended."""

    def __init__(self) -> None:
        import threading

        self.done = threading.Event()
        self.watcher: threading.Thread | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        import signal
        import threading

        if self.watcher is None:
            self.watcher = threading.Thread(target=self._repeat, args=(signum,), daemon=True,
                                            name="cellsynth-signal")  # fmt: skip
            self.watcher.start()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def _repeat(self, signum: int) -> None:
        import _thread

        while not self.done.wait(REPEAT_SIGNAL_SECONDS):
            _thread.interrupt_main(signum)  # runs this handler in the main thread again


@contextlib.contextmanager
def terminations() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` / :class:`Terminated` within the
    block, and again while it has not ended (:class:`Signals`; main thread only). A signal
    the command was started with ignored stays ignored: SIGHUP under ``nohup`` (a closed
    terminal or SSH session must not stop it), SIGINT in a script's background job (Ctrl-C is
    meant for the job in the foreground)."""
    import signal
    import threading

    names = [n for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)
             and signal.getsignal(getattr(signal, n)) is not signal.SIG_IGN]  # fmt: skip
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = Signals()
    old = {n: signal.signal(getattr(signal, n), handler) for n in names}
    try:
        yield
    finally:
        handler.done.set()
        # the watcher stops before the old handlers are back, so no repeat reaches the main
        # thread after the command has ended (one already sent is raised here, by this handler)
        try:
            if handler.watcher is not None:
                handler.watcher.join()
        finally:
            for n, previous in old.items():
                signal.signal(getattr(signal, n), previous)


def hdf5_failures() -> int:
    store = sys.modules.get("cellsynth.data.store")
    return 0 if store is None else store.hdf5_failures()


def exit_if_hdf5_broken(code: int, since: int) -> None:
    """Exit at once (logs flushed) when an h5ad write failed in this command (more than
    ``since`` failures in the process): HDF5 cannot close a file that the disk filled under,
    and its clean-up at exit would crash the process (a segmentation fault, exit 139, after
    the right message)."""
    if hdf5_failures() <= since:
        return
    import os

    for stream in [h for name in (None, "cellsynth") for h in logging.getLogger(name).handlers
                   ] + [sys.stdout, sys.stderr]:  # the log file and the terminal's lines out
        try:
            stream.flush()
        except (OSError, ValueError):  # a stream closed already: nothing to keep
            pass
    os._exit(code)
