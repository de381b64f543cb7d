"""Signs of life where no progress bar is shown: cellsynth.heartbeat."""

from __future__ import annotations

import logging
import time

import pytest

from cellsynth import heartbeat as hb
from cellsynth import options, runtime


@pytest.fixture
def fast(monkeypatch, caplog):
    """A heartbeat after 0.3 s of silence, looked at every 0.05 s; INFO lines captured."""
    monkeypatch.setattr(hb, "LOG_SECONDS", 0.3)
    monkeypatch.setattr(hb, "CHECK_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="cellsynth")
    return caplog


def _beats(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "still running after" in r.getMessage()]


def test_a_silent_step_logs_that_it_is_still_running(fast):
    """A step that logs nothing (a PCA, a large write, one long epoch) says it is still running,
    named, with its time and memory, until it ends; nothing after."""
    with options.settings.override(progress=False), runtime.timed("quiet step"):
        time.sleep(1.0)
    beats = _beats(fast)
    assert 2 <= len(beats) <= 5, beats
    assert all(b.startswith("stage quiet step: still running after ") and "peak RSS" in b
               for b in beats)  # fmt: skip
    fast.clear()
    time.sleep(0.3)
    assert not _beats(fast)
    assert not any(isinstance(h, hb._Clock) for h in logging.getLogger("cellsynth").handlers)


def test_other_lines_keep_it_quiet_and_the_innermost_step_is_named(fast):
    with options.settings.override(progress=False), hb.heartbeat("cellsynth run"):
        for _ in range(8):  # a loop logging its own lines often enough
            logging.getLogger("cellsynth.pipeline").info("working")
            time.sleep(0.1)
        assert not _beats(fast)
        with hb.heartbeat("stage generator"):
            time.sleep(0.6)
    beats = _beats(fast)
    assert beats and all(b.startswith("stage generator: ") for b in beats)


def test_no_heartbeat_beside_a_progress_bar(fast):
    """Where bars are shown (a terminal) the bar is the sign of life: no line is written
    through it."""
    with options.settings.override(progress=True), hb.heartbeat("cellsynth fit"):
        time.sleep(0.6)
    assert not _beats(fast)


def test_a_loop_logs_its_line_before_the_heartbeat_would():
    """A loop whose next step would end after its line is due logs it now (its own line, with
    where it is, rather than the heartbeat's)."""
    due = options.LOG_SECONDS - options.LOG_MARGIN
    assert options.log_due(due - 4.0, 5.0) and not options.log_due(due - 6.0, 5.0)
    assert options.log_due(due, 0.0)
    assert options.LOG_MARGIN > hb.CHECK_SECONDS  # the loop's line comes first


def test_durations_read_as_a_person_writes_them():
    assert hb.duration_text(42.7) == "42 s"
    assert hb.duration_text(187) == "3 min 07 s"
    assert hb.duration_text(3900) == "1 h 05 min"


def test_a_forked_child_starts_without_the_parents_heartbeat(fast):
    """A child forked while a heartbeat runs (a data loader's worker) has none: its thread was
    not copied, and its lock may have been held at the fork."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ctx = mp.get_context("fork")
    with options.settings.override(progress=False), hb.heartbeat("parent"):
        time.sleep(0.1)
        child = ctx.Process(target=_child_enters)
        child.start()
        child.join(20)
    assert child.exitcode == 0


def _child_enters() -> None:
    assert hb._BEAT.steps == [] and hb._BEAT.stop is None
    with hb.heartbeat("child"):  # would wait for ever on a lock held at the fork
        pass
