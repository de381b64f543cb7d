"""A distributed training's process group is stopped whole even when the stop is interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from cellsynth.pipeline.models import _stop_group

IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(120)")


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_a_rank_that_ignores_sigterm_is_killed_when_the_wait_is_interrupted():
    """After a command's first Ctrl-C or SIGTERM, the signal is raised again every 10 s while
    it runs on (cli_signals.Signals); raised during the grace a stop gives the ranks, it left
    a rank that ignores SIGTERM running after the run had ended. It is killed now."""
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        import _thread

        # the repeated signal; SIGINT as Python's default handler takes it (a test worker may
        # ignore SIGINT, and interrupt_main then does nothing)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            threading.Timer(0.5, _thread.interrupt_main).start()
            with pytest.raises(KeyboardInterrupt):
                _stop_group(proc, grace=30.0)
        finally:
            signal.signal(signal.SIGINT, previous)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is not None, "the rank outlived the stop"
    finally:
        proc.kill()
        proc.wait()
