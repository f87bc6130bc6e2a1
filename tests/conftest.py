"""Shared fixtures: a local HTTP server for the download tests (test_fetch, test_backbone).

``server`` yields a :class:`ServerState`: put bytes in ``server.files`` (or call
``server.serve(path)``), point the code under test at ``server.url(name)``, then
check ``server.requests``. The failure knobs (``status``, ``cut``, ``stall``,
``ignore_range``) script what the next responses do; ``throttle`` slows every body down
(e.g. so that a test can kill the client halfway). Nothing here is autouse.
"""

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sam2_3dmed.data import fetch as fetch_mod


class ServerState:
    """What the server serves and has been asked, plus the scripted failures."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.files: dict[str, bytes] = {}  # request path ("/NAME") -> body
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False  # answer Range requests with the whole file (200)
        self.status = None  # answer every request with this status
        self.cut = 0  # this many responses stop after half their body
        self.stall = 0  # this many responses hang after half their body
        self.throttle = None  # (piece, seconds): send bodies in pieces of `piece` bytes, pausing after each

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def serve(self, path: Path, data: bytes | None = None) -> str:
        """Serve ``data`` (default: the file's bytes) as ``/PATH.NAME``; return its URL."""
        self.files[f"/{path.name}"] = path.read_bytes() if data is None else data
        return self.url(path.name)


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ServerState.files with single-range support ('bytes=N-') and scripted failures."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        st: ServerState = self.server.state
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        if st.status:
            self.send_error(st.status)
            return
        data = st.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        if rng and not st.ignore_range:
            start, status = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if st.throttle:
            piece, pause = st.throttle
            for i in range(0, len(body), piece):
                self.wfile.write(body[i:i + piece])  # a client gone raises here: handle_error is quiet
                self.wfile.flush()
                time.sleep(pause)
            return
        if st.cut or st.stall:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if st.cut:
                st.cut -= 1  # returning closes the connection (HTTP/1.0): a short body
            else:
                st.stall -= 1
                time.sleep(1.0)
            return
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # broken pipes after a client timeout are expected


@pytest.fixture()
def fast_and_local(monkeypatch):
    """No waiting between download retries, and no proxy for 127.0.0.1."""
    monkeypatch.setattr(fetch_mod, "RETRY_DELAY_S", 0.0)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture()
def server(fast_and_local):
    """A threaded HTTP server on 127.0.0.1 (a free port); yields its :class:`ServerState`."""
    httpd = _QuietServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState(f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()
