"""Tests for cellsynth.data.download against a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _http_server import ServerState, serving
from cellsynth.data.download import DEFAULT_BASE_URL, download, download_url, expression_atlas_url
from cellsynth.errors import CellsynthError, DownloadError

ACC = "E-TEST-1"
FAST = {"timeout": 5.0, "chunk_size": 1 << 16}


def _hdf5(n_bytes: int) -> bytes:
    """A whole HDF5 file of about ``n_bytes`` (a download is opened before it is kept)."""
    import io

    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["x"] = np.frombuffer(np.random.default_rng(0).bytes(n_bytes), dtype=np.uint8)
    return buf.getvalue()


PAYLOAD = _hdf5(3 * 1024 * 1024)
SIZE = len(PAYLOAD)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return PAYLOAD


@pytest.fixture
def server(payload: bytes) -> Iterator[tuple[ServerState, str]]:
    with serving(payload) as served:
        yield served


def _dest(cache: Path) -> Path:
    return cache / f"{ACC}.project.h5ad"


def _write_part(cache: Path, data: bytes) -> Path:
    """A partial download as cellsynth leaves it: the bytes and the first reply's validators."""
    part = _dest(cache).with_suffix(".h5ad.part")
    part.write_bytes(data)
    part.with_name(part.name + ".json").write_text(json.dumps({"total": SIZE}))
    return part


def test_url_pattern() -> None:
    assert expression_atlas_url("E-ANND-5") == (
        f"{DEFAULT_BASE_URL}/E-ANND-5/E-ANND-5.project.h5ad"
    )
    assert expression_atlas_url("e-mtab-1234", "http://h/x/") == (
        "http://h/x/E-MTAB-1234/E-MTAB-1234.project.h5ad"
    )


def test_full_download(server, payload: bytes, tmp_path: Path) -> None:
    state, base = server
    path = download(ACC, tmp_path / "cache", base_url=base, **FAST)
    assert path == _dest(tmp_path / "cache")
    assert path.read_bytes() == payload
    assert not path.with_suffix(".h5ad.part").exists()
    assert state.ranges == [None]
    assert state.requests[0]["User-Agent"].startswith("cellsynth")


def test_truncated_keeps_part(server, tmp_path: Path) -> None:
    state, base = server
    state.cut_after = 1_000_000
    with pytest.raises(DownloadError, match=rf"truncated at 1000000 of {SIZE} bytes.*again"):
        download(ACC, tmp_path, base_url=base, **FAST)
    assert not _dest(tmp_path).exists()
    assert _dest(tmp_path).with_suffix(".h5ad.part").stat().st_size == 1_000_000


def test_interrupted_then_resumed(server, payload: bytes, tmp_path: Path) -> None:
    state, base = server
    state.cut_after = 1_234_567
    with pytest.raises(DownloadError):
        download(ACC, tmp_path, base_url=base, **FAST)
    path = download(ACC, tmp_path, base_url=base, **FAST)
    assert state.ranges == [None, "bytes=1234567-"]
    assert path.read_bytes() == payload
    assert not path.with_suffix(".h5ad.part").exists()


def test_server_ignoring_range_restarts(server, payload: bytes, tmp_path: Path, caplog) -> None:
    state, base = server
    state.ignore_range = True
    _write_part(tmp_path, payload[:8] + b"\x00" * 499_992)  # wrong bytes: a restart drops them
    with caplog.at_level(logging.WARNING, logger="cellsynth.data.download"):
        path = download(ACC, tmp_path, base_url=base, **FAST)
    assert state.ranges == ["bytes=500000-"]
    assert path.read_bytes() == payload
    assert "restarting from zero" in caplog.text


def test_complete_part_answered_416(server, payload: bytes, tmp_path: Path) -> None:
    state, base = server
    _write_part(tmp_path, payload)
    path = download(ACC, tmp_path, base_url=base, **FAST)
    assert state.ranges == [f"bytes={SIZE}-"]
    assert path.read_bytes() == payload


def test_oversized_part_discarded(server, payload: bytes, tmp_path: Path) -> None:
    state, base = server
    _write_part(tmp_path, payload + b"junk")
    path = download(ACC, tmp_path, base_url=base, **FAST)
    assert state.ranges == [f"bytes={SIZE + 4}-", None]
    assert path.read_bytes() == payload


def test_force_downloads_again(server, payload: bytes, tmp_path: Path) -> None:
    state, base = server
    _dest(tmp_path).write_bytes(b"old")
    _dest(tmp_path).with_suffix(".h5ad.part").write_bytes(b"stale")
    path = download(ACC, tmp_path, base_url=base, force=True, **FAST)
    assert state.ranges == [None]
    assert path.read_bytes() == payload


def test_404(server, tmp_path: Path) -> None:
    state, base = server
    state.not_found = True
    with pytest.raises(DownloadError, match=r"404.*may not exist"):
        download(ACC, tmp_path, base_url=base, **FAST)
    assert not any(tmp_path.iterdir())


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound but not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.h5ad"
        with pytest.raises(DownloadError, match=r"offline|unreachable") as info:
            download_url(url, tmp_path / "x.h5ad", **FAST)
    message = str(info.value)
    assert url in message and "dataset.path" in message and "\n" not in message


def test_existing_file_not_fetched(server, tmp_path: Path, caplog) -> None:
    state, base = server
    cached = _hdf5(1000)
    _dest(tmp_path).write_bytes(cached)
    with caplog.at_level(logging.INFO, logger="cellsynth.data.download"):
        path = download(ACC, tmp_path, base_url=base, **FAST)
    assert path.read_bytes() == cached
    assert state.requests == []
    assert "cached" in caplog.text
    _dest(tmp_path).write_bytes(b"cached")  # not an h5ad: said, with the way to replace it
    with pytest.raises(DownloadError, match=r"not a readable h5ad.*--force"):
        download(ACC, tmp_path, base_url=base, **FAST)
    assert state.requests == []


@pytest.mark.parametrize("bad", ["", "E ANND 5", "../E-ANND-5", "E-ANND-5/x", "E_ANND_5", "ANND"])
def test_bad_accession(bad: str, tmp_path: Path) -> None:
    with pytest.raises(CellsynthError, match="invalid accession"):
        download(bad, tmp_path, base_url="http://127.0.0.1:9", **FAST)
    assert not any(tmp_path.iterdir())


def test_a_transfer_without_a_size_that_stops_early_is_not_kept(server, payload: bytes,
                                                                tmp_path: Path) -> None:
    """A server that announces no size and closes half way: the bytes received are not taken
    for the file (HDF5 cannot open them); the part is kept, and the same command resumes it.
    A cached file cut short the same way is downloaded again (which version of the server's
    file it holds is not known, so resuming it could join two versions), not returned."""
    state, base = server
    state.no_length, state.cut_after = True, 1_000_000
    with pytest.raises(DownloadError, match=r"ended after 1000000 bytes, but the file is not "
                                            r"complete.*resumes it"):
        download(ACC, tmp_path, base_url=base, **FAST)
    assert not _dest(tmp_path).exists()
    path = download(ACC, tmp_path, base_url=base, **FAST)
    assert path.read_bytes() == payload and state.ranges[-1] == "bytes=1000000-"
    path.write_bytes(payload[:2_000_000])  # a cached file cut short
    assert download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == payload
    assert state.ranges[-1] is None


def test_a_partial_download_that_is_not_hdf5_starts_again(server, payload: bytes,
                                                          tmp_path: Path, caplog) -> None:
    """A leftover .part that does not start as HDF5 (another file, an HTML page) is not
    resumed, which would end in blaming the server: the download starts from zero."""
    state, base = server
    part = _dest(tmp_path).with_suffix(".h5ad.part")
    part.write_bytes(b"<html>an error page</html>" * 10)
    with caplog.at_level(logging.WARNING, logger="cellsynth.data.download"):
        path = download(ACC, tmp_path, base_url=base, **FAST)
    assert state.ranges == [None] and path.read_bytes() == payload
    assert "does not start as an HDF5 file (an HTML page): starting again" in caplog.text

