"""Faults of resumed, concurrent and atomic writes (download, store, outputs), and the checks
at the entry points; the local HTTP server is on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

import cellsynth.data.download as dl
from _http_server import ServerState, serving, start
from cellsynth.data._download_state import locked
from cellsynth.errors import CellsynthError, ConfigError, DownloadError

ACC = "E-TEST-1"
FAST = {"timeout": 5.0, "chunk_size": 1 << 16}


def _hdf5(n_bytes: int, seed: int) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["x"] = np.frombuffer(np.random.default_rng(seed).bytes(n_bytes), dtype=np.uint8)
    return buf.getvalue()


OLD = _hdf5(1 << 20, 0)
NEW = _hdf5(1 << 20, 1)  # the same size, other bytes
BIGGER = _hdf5(3 << 19, 2)


@pytest.fixture
def server() -> Iterator[tuple[ServerState, str]]:
    with serving(OLD) as served:
        yield served


def _dest(cache: Path) -> Path:
    return cache / f"{ACC}.project.h5ad"


def _part(cache: Path) -> Path:
    return cache / f"{ACC}.project.h5ad.part"


def _cut(state: ServerState, base: str, cache: Path, at: int = 400_000) -> None:
    """A first download cut at ``at`` bytes: a .part and its validators are left."""
    state.cut_after = at
    with pytest.raises(DownloadError, match="truncated"):
        dl.download(ACC, cache, base_url=base, **FAST)
    assert _part(cache).stat().st_size == at


# -- F1: a resume never joins two versions of the file -----------------------------------------

def test_a_changed_size_is_not_spliced(server, tmp_path: Path) -> None:
    state, base = server
    _cut(state, base, tmp_path)
    state.data = BIGGER  # the file changed on the server
    path = dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert path.read_bytes() == BIGGER
    assert state.ranges == [None, "bytes=400000-", None]  # refused, started again
    assert not list(tmp_path.glob("*.part*")) and not list(tmp_path.glob("*.lock"))


def test_if_range_gets_the_whole_changed_file(server, tmp_path: Path) -> None:
    state, base = server
    state.etag = '"v1"'
    _cut(state, base, tmp_path)
    stored = json.loads(Path(str(_part(tmp_path)) + ".json").read_text())
    assert stored["etag"] == '"v1"' and stored["total"] == len(OLD)
    state.data, state.etag = NEW, '"v2"'  # same size: only the ETag tells
    path = dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert state.requests[1]["If-Range"] == '"v1"'
    assert path.read_bytes() == NEW


def test_a_changed_etag_in_a_206_restarts(server, tmp_path: Path) -> None:
    state, base = server
    state.etag = '"v1"'
    _cut(state, base, tmp_path)
    state.data, state.etag, state.ignore_if_range = NEW, '"v2"', True
    path = dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert state.ranges == [None, "bytes=400000-", None]
    assert path.read_bytes() == NEW


def test_the_size_on_disk_is_what_is_checked(server, tmp_path: Path, monkeypatch) -> None:
    """Bytes received but not on disk (the part shrank meanwhile) do not make it complete."""
    _state, base = server
    real = dl._stream

    def losing(*args, **kwargs):
        out = real(*args, **kwargs)
        with open(_part(tmp_path), "r+b") as fh:
            fh.truncate(len(OLD) - 10)
        return out

    monkeypatch.setattr(dl, "_stream", losing)
    with pytest.raises(DownloadError, match=rf"truncated at {len(OLD) - 10} of {len(OLD)}"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert not _dest(tmp_path).exists()


# -- F2a, F2b: two writers of one file --------------------------------------------------------

def test_a_second_download_of_the_same_file_is_refused(server, tmp_path: Path) -> None:
    state, base = server
    with locked(_dest(tmp_path)):
        with pytest.raises(DownloadError, match=r"another download of .* is running") as err:
            dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert "\n" not in str(err.value) and state.requests == []
    assert dl.download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == OLD


def test_two_atomic_writers_of_one_output_have_their_own_files(tmp_path: Path) -> None:
    from cellsynth.data.store import _replaced
    from cellsynth.outputs import write_text

    out = tmp_path / "a.h5ad"
    with _replaced(out) as first:
        with _replaced(out) as second:
            assert first != second and first.parent == second.parent == tmp_path
            second.write_bytes(b"second")
        assert first.exists() and out.read_bytes() == b"second"  # the other's file is intact
        first.write_bytes(b"first")
    assert out.read_bytes() == b"first" and sorted(tmp_path.iterdir()) == [out]
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    write_text(tmp_path / "m.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5ad", "m.json"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- F3: a reply that is not the file never touches a good .part -------------------------------

def test_an_html_page_on_resume_keeps_the_part(server, tmp_path: Path) -> None:
    state, base = server
    _cut(state, base, tmp_path)
    before = _part(tmp_path).read_bytes()
    state.html = b"<!DOCTYPE html><html><title>Down for maintenance</title></html>"
    with pytest.raises(DownloadError, match=r"HTML page: 'Down for maintenance'.*is kept"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert _part(tmp_path).read_bytes() == before
    state.html = None
    assert dl.download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == OLD
    assert state.ranges[-1] == "bytes=400000-"


def test_a_whole_file_that_is_not_hdf5_keeps_the_part(server, tmp_path: Path) -> None:
    state, base = server
    _cut(state, base, tmp_path)
    state.data, state.ignore_range = b"\x00" * 100_000, True
    with pytest.raises(DownloadError, match=r"not an HDF5.*is kept"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert _part(tmp_path).stat().st_size == 400_000
    assert not list(tmp_path.glob("*.new"))


# -- F6: a full disk is not a network fault ----------------------------------------------------

def test_a_full_disk_says_so(server, tmp_path: Path, monkeypatch) -> None:
    _state, base = server

    class Full(io.FileIO):
        def write(self, b):
            if self.tell() >= 300_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b[:300_000 - self.tell()] or b)

    monkeypatch.setattr(dl, "open", lambda path, mode, buffering: Full(path, mode[0]),
                        raising=False)
    with pytest.raises(DownloadError) as err:
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    message = str(err.value)
    assert "disk" in message and "full" in message and "truncated" not in message
    assert f"{len(OLD) - 300_000:,} more bytes" in message and "free" in message


# -- F7: the server's own copy is incomplete ----------------------------------------------------

def test_a_server_copy_cut_short_is_named(tmp_path: Path) -> None:
    srv, _state, base = start(OLD[: len(OLD) // 2])
    try:
        with pytest.raises(DownloadError, match=r"server's own copy .* is incomplete") as err:
            dl.download(ACC, tmp_path, base_url=base, **FAST)
    finally:
        srv.shutdown()
        srv.server_close()
    assert "resumes it" not in str(err.value)
    assert not _part(tmp_path).exists()


# -- F8: --force discards the cached file, not a matching partial download ---------------------

def test_force_resumes_a_matching_part(server, tmp_path: Path) -> None:
    state, base = server
    _dest(tmp_path).write_bytes(_hdf5(1000, 3))  # a cached complete file
    state.cut_after = 400_000
    with pytest.raises(DownloadError, match="truncated"):
        dl.download(ACC, tmp_path, base_url=base, force=True, **FAST)
    assert not _dest(tmp_path).exists()
    path = dl.download(ACC, tmp_path, base_url=base, force=True, **FAST)
    assert state.ranges == [None, "bytes=400000-"] and path.read_bytes() == OLD


# -- F9, F10: messages ------------------------------------------------------------------------

def test_an_unknown_home_is_one_line(tmp_path: Path, capsys) -> None:
    from cellsynth.cli import main

    with pytest.raises(ConfigError, match="cannot expand '~nosuchuser_cs'"):
        dl.download(ACC, "~nosuchuser_cs/x", base_url="http://127.0.0.1:9", **FAST)
    for argv in (["info", "~nosuchuser_cs/x.h5ad"],
                 ["simulate", "--cells", "10", "--genes", "30", "--types", "2", "--out",
                  "~nosuchuser_cs/x.h5ad"],
                 ["download", ACC, "--cache-dir", "~nosuchuser_cs/x"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "~nosuchuser_cs" in err and "Traceback" not in err and err.count("\n") == 1


def test_a_stopped_download_says_its_part_is_kept() -> None:
    from cellsynth.cli import _after_stop

    said = _after_stop(argparse.Namespace(command="download"))
    assert "kept" in said and "resume" in said and "removed" not in said
    assert "removed" in _after_stop(argparse.Namespace(command="simulate"))


def test_a_missing_mirror_file_and_a_timeout_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError, match="does not exist") as err:
        dl.download(ACC, tmp_path / "c", base_url=(tmp_path / "mirror").as_uri(), **FAST)
    assert "offline" not in str(err.value)
    with socket.socket() as sock:  # listening, never answering
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.h5ad"
        with pytest.raises(DownloadError, match=r"within 0.3 s \(timed out\)") as err:
            dl.download_url(url, tmp_path / "x.h5ad", timeout=0.3)
    assert "offline" not in str(err.value)


# -- F11, F5: values checked at the entry points -----------------------------------------------

@pytest.mark.parametrize(("call", "said"), [
    (lambda: __import__("cellsynth").simulate(100, 100, 3, seed=-1), "seed must be"),
    (lambda: __import__("cellsynth").simulate(100, 100, 3, seed=1.5), "seed must be"),
    (lambda: __import__("cellsynth").simulate(1e3, 100, 3), "pass the int 1000"),
    (lambda: _sim().simulate_atlas(100, 100, 3, library_size=float("nan")), "library_size"),
    (lambda: _sim().simulate_atlas(100, 100, 3, library_size=float("inf")), "library_size"),
    (lambda: _sim().simulate_atlas(100, 100, 3, n_donors=2.5), "n_donors"),
    (lambda: _sim().write_atlas("unused.h5ad", 100, 100, 3, chunk_size=2.5), "chunk_size"),
    (lambda: _sim().write_atlas("unused.h5ad", 100, 100, 3, compression="zstd"), "compression"),
    (lambda: dl.download(ACC, "unused", chunk_size=0), "chunk_size"),
    (lambda: _sim().simulate_atlas(100, 2000, 10**9), "fewer types"),
])
def test_bad_values_are_refused_in_one_line(call, said, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CellsynthError, match=said) as err:
        call()
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def _sim():
    import cellsynth.data.simulate as sim

    return sim
