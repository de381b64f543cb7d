"""A threaded HTTP server on 127.0.0.1 that serves bytes from memory, for download tests.

Supports ``Range: bytes=N-`` (206, or 416 past the end), an ``ETag`` (``etag``) with
``If-Range`` (a Range whose If-Range is not the current ETag gets the whole file, unless
``ignore_if_range``) and these faults: close the connection after ``cut_after`` body bytes
while announcing the full length (once), announce no length at all (``no_length``), ignore
Range requests (answer 200), answer 404 to everything, and answer 200 with an HTML page
(``html``). ``data`` may be replaced between requests (the file changed on the server).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServerState:
    data: bytes
    cut_after: int | None = None  # close after this many body bytes, for the next response only
    ignore_range: bool = False
    no_length: bool = False  # send no Content-Length (nor Content-Range total)
    not_found: bool = False
    etag: str | None = None  # sent as ETag; an If-Range that differs gets the whole file
    ignore_if_range: bool = False
    html: bytes | None = None  # answer every request with this page (200, text/html)
    requests: list[dict[str, str]] = field(default_factory=list)  # headers of each request
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ranges(self) -> list[str | None]:
        """The Range header of each request (None where absent)."""
        return [h.get("Range") for h in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append(dict(self.headers.items()))
            cut, state.cut_after = state.cut_after, None
        if state.not_found:
            self.send_error(404)
            return
        if state.html is not None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(state.html)))
            self.end_headers()
            self.wfile.write(state.html)
            self.close_connection = True
            return
        data, start, total = state.data, 0, len(state.data)
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != state.etag and not state.ignore_if_range:
            rng = None  # the file changed: the whole of it
        if rng and not state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/"
                             f"{'*' if state.no_length else total}")
        else:
            self.send_response(200)
        body = data[start:]
        if state.etag is not None:
            self.send_header("ETag", state.etag)
        if not state.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:
            body = body[:cut]
        self.wfile.write(body)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


def start(data: bytes) -> tuple[_Server, ServerState, str]:
    """Start a server in a daemon thread; returns the server, its state and its base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = ServerState(data)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server, server.state, f"http://127.0.0.1:{server.server_address[1]}"


@contextmanager
def serving(data: bytes) -> Iterator[tuple[ServerState, str]]:
    """:func:`start`'s server for the ``with`` block (a fixture's body): its state and base URL."""
    server, state, base = start(data)
    try:
        yield state, base
    finally:
        server.shutdown()
        server.server_close()
