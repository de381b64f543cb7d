"""Faults found in session 47's own review (each test fails without its fix)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cellsynth import config


def test_a_settings_file_is_never_left_half_written(tmp_path, monkeypatch):
    """config.save wrote config.toml in place: a full disk or a kill mid-write left half of the
    settings where the whole had been (and a rerun read them)."""
    path = tmp_path / "config.toml"
    config.save(config.RunConfig(), path)
    before = path.read_text()
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    cfg = config.RunConfig(cvae={"max_epochs": 7})
    with pytest.raises(Exception):  # noqa: B017 - the disk-full error, whatever its type
        config.save(cfg, path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary left
