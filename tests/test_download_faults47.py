"""Faults of ``cellsynth download`` against servers that misbehave (a 206 to a request for the
whole file, a reply that is not HTTP, a stall after the headers, a redirect loop, a base URL
without a host) and cache folders that cannot be used; the server is on 127.0.0.1 only."""

from __future__ import annotations

import errno
import gzip
import io
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

import cellsynth.data.download as dl
from cellsynth.errors import ConfigError, DownloadError

ACC = "E-TEST-1"
FAST = {"timeout": 2.0, "chunk_size": 1 << 16}


def _hdf5() -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["x"] = np.arange(100_000)
    return buf.getvalue()


DATA = _hdf5()


class _Handler(BaseHTTPRequestHandler):
    """Answers as ``server.mode`` says: a misbehaving server, one fault per mode."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _head(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def do_GET(self) -> None:
        mode, n = self.server.mode, len(DATA)
        if mode == "206":  # a 206 although no Range was asked for
            self._head(206, Content_Range=f"bytes 0-{n - 1}/{n}", Content_Length=str(n))
            self.wfile.write(DATA)
        elif mode == "206-first-half":
            half = n // 2
            rng = self.headers.get("Range")
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
            end = n - 1 if rng else half - 1
            self._head(206, Content_Range=f"bytes {start}-{end}/{n}",
                       Content_Length=str(end + 1 - start))
            self.wfile.write(DATA[start:end + 1])
        elif mode == "206-no-range":
            self._head(206, Content_Length=str(n))
            self.wfile.write(DATA)
        elif mode == "not-http":
            self.wfile.write(b"SSH-2.0-OpenSSH_8.9\r\n")
        elif mode == "stall":  # the headers, then nothing
            self._head(200, Content_Length=str(n))
            self.wfile.flush()
            time.sleep(4)
        elif mode == "stall-mid":  # the headers and 1000 bytes, then nothing
            self._head(200, Content_Length=str(n))
            self.wfile.write(DATA[:1000])
            self.wfile.flush()
            time.sleep(4)
        elif mode == "gzip":  # compressed although not asked for
            body = gzip.compress(DATA)
            self._head(200, Content_Encoding="gzip", Content_Length=str(len(body)))
            self.wfile.write(body)
        elif mode == "hang-up":  # the request read, no reply
            self.close_connection = True
        elif mode == "416-no-size":  # a Range past the end refused without a Content-Range
            self._head(416 if self.headers.get("Range") else 200, Content_Length="0")
        elif mode == "loop":
            self._head(302, Location=self.path, Content_Length="0")
        else:
            self._head(200, Content_Length=str(n))
            self.wfile.write(DATA)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = "ok"


@pytest.fixture
def server() -> Iterator[tuple[_Server, str]]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _dest(cache: Path) -> Path:
    return cache / f"{ACC}.project.h5ad"


def test_a_206_to_a_request_for_the_whole_file_is_taken(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "206"
    assert dl.download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == DATA


def test_a_206_with_part_of_the_file_is_resumed(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "206-first-half"
    with pytest.raises(DownloadError, match="truncated"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert dl.download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == DATA


def test_a_full_disk_at_a_206s_first_record_says_so(server, tmp_path: Path,
                                                   monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    srv, base = server
    srv.mode = "206"
    monkeypatch.setattr(dl, "write_state", full)
    with pytest.raises(DownloadError, match=r"disk holding .* is full"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)


def test_a_206_without_a_content_range_is_one_line(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "206-no-range"
    with pytest.raises(DownloadError, match="Content-Range is missing") as err:
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert "None instead" not in str(err.value)


def test_a_reply_that_is_not_http_is_one_line(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "not-http"
    with pytest.raises(DownloadError, match=r"did not answer in HTTP.*BadStatusLine"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)


def test_a_stall_after_the_headers_is_a_timeout_not_an_empty_file(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "stall"
    with pytest.raises(DownloadError, match="headers but no data") as err:
        dl.download(ACC, tmp_path, base_url=base, timeout=0.5, chunk_size=1 << 16)
    assert "no data for 0.5 s" in str(err.value) and "empty" not in str(err.value)
    assert not _dest(tmp_path).exists()


def test_the_bytes_before_a_stall_are_kept(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "stall-mid"
    with pytest.raises(DownloadError, match=r"truncated at 1000 of \d+ bytes \(no data for 0.5 s"):
        dl.download(ACC, tmp_path, base_url=base, timeout=0.5, chunk_size=1 << 16)
    srv.mode = "206-first-half"  # answers a Range with the rest
    assert dl.download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == DATA


def test_a_redirect_loop_is_one_line_that_names_the_base_url(server, tmp_path: Path,
                                                              capsys) -> None:
    from cellsynth.cli import main

    srv, base = server
    srv.mode = "loop"
    assert main(["download", ACC, "--cache-dir", str(tmp_path), "--base-url", base,
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "redirect that cannot be followed" in err and "--base-url" in err


@pytest.mark.parametrize("base, said", [
    ("http://", "no host"), ("https:///data", "no host"), ("http://127.0.0.1:9/x?a=1", "query"),
    ("http://127.0.0.1:9/x#top", "fragment"), ("http://127.0.0.1:9/x/?", "query"),
    ("http://me:secret@127.0.0.1:9", "user name"),
])
def test_a_base_url_the_address_cannot_be_built_on_is_refused(base, said, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot be used: .*{said}.*--base-url"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_cache_dir_that_cannot_be_made_is_a_download_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for cache in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(DownloadError, match=r"cannot make the folder.*--cache-dir"):
            dl.download(ACC, cache, base_url="http://127.0.0.1:9", **FAST)


def test_a_read_only_cache_dir_is_a_download_error(tmp_path: Path, monkeypatch) -> None:
    _refuse_locks(monkeypatch)
    with pytest.raises(DownloadError, match=r"cannot write in .*Permission denied.*--cache-dir"):
        dl.download(ACC, tmp_path, base_url="http://127.0.0.1:9", **FAST)


def test_a_read_only_cache_serves_the_file_it_holds(tmp_path: Path, monkeypatch) -> None:
    _dest(tmp_path).write_bytes(DATA)
    _refuse_locks(monkeypatch)
    assert dl.download(ACC, tmp_path, base_url="http://127.0.0.1:9", **FAST) == _dest(tmp_path)


def _refuse_locks(monkeypatch) -> None:
    real = os.open

    def refuse_locks(path, *args, **kwargs):  # a read-only folder (the tests may run as root)
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_locks)


def test_a_compressed_reply_is_refused_before_it_is_saved(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "gzip"
    with pytest.raises(DownloadError, match="Content-Encoding: gzip") as err:
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    assert "decompress it first" not in str(err.value)
    assert not _dest(tmp_path).exists()


@pytest.mark.parametrize("mode, scheme", [("hang-up", "http"), ("ok", "https")])
def test_a_server_that_hangs_up_is_not_called_unreachable(server, tmp_path: Path, mode,
                                                          scheme) -> None:
    srv, base = server
    srv.mode = mode
    with pytest.raises(DownloadError, match="was reached but the connection failed") as err:
        dl.download(ACC, tmp_path, base_url=base.replace("http", scheme), **FAST)
    assert "offline" not in str(err.value)


def test_a_file_mirror_with_a_folder_for_the_file_is_not_called_offline(tmp_path: Path) -> None:
    (tmp_path / "mirror" / ACC / f"{ACC}.project.h5ad").mkdir(parents=True)
    with pytest.raises(DownloadError, match=r"cannot read file:.*Is a directory") as err:
        dl.download(ACC, tmp_path / "cache", base_url=(tmp_path / "mirror").as_uri(), **FAST)
    assert "offline" not in str(err.value)


def test_a_complete_part_refused_416_without_a_size_is_kept(server, tmp_path: Path) -> None:
    srv, base = server
    srv.mode = "206-first-half"  # the first half, then the rest: a .part of the whole file
    with pytest.raises(DownloadError, match="truncated"):
        dl.download(ACC, tmp_path, base_url=base, **FAST)
    part = tmp_path / f"{ACC}.project.h5ad.part"
    with open(part, "ab") as fh:  # as if the rest had arrived before the rename
        fh.write(DATA[len(DATA) // 2:])
    srv.mode = "416-no-size"
    assert dl.download(ACC, tmp_path, base_url=base, **FAST).read_bytes() == DATA
