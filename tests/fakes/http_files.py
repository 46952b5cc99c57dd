"""A static file server standing in for GitHub's LFS media host in tests of `vital sources fetch`.

It serves `files` ({url path: bytes}) with Range support (206 + Content-Range) that can be switched off, and can
cut the first response for a path after `cut_after` bytes (the connection closes early, as a dropped download
does) so tests can check that a re-run resumes. With `announce_length=False` it sends bodies without a
Content-Length (read until the connection closes), as a hostile server may. It records each request's path and
Range header.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        return

    def do_GET(self):
        server = self.server
        requested = self.headers.get("Range")
        server.requests.append((self.path, requested))
        data = server.files.get(self.path)
        if data is None:
            self._send(404, b"not found")
            return
        start = 0
        if requested and server.ranges:
            match = re.fullmatch(r"bytes=(\d+)-", requested)
            start = int(match.group(1)) if match else 0
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
        body = data[start:]
        headers = {"Accept-Ranges": "bytes" if server.ranges else "none"}
        status = 200
        if requested and server.ranges:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = server.cut_after.pop(self.path, None)
        if cut is not None:
            self._send_cut(status, body, headers, cut)
            return
        self._send(status, body, headers)

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        if self.server.announce_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_cut(self, status: int, body: bytes, headers: dict, cut: int) -> None:
        """Announce the whole body, send only `cut` bytes, then drop the connection."""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(2)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], ranges: bool = True, announce_length: bool = True):
        super().__init__(("127.0.0.1", 0), FileHandler)
        self.files = files
        self.ranges = ranges
        self.announce_length = announce_length
        self.cut_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextlib.contextmanager
def serving_files(files: dict[str, bytes], ranges: bool = True, announce_length: bool = True) -> Iterator[FileServer]:
    server = FileServer(files, ranges=ranges, announce_length=announce_length)
    thread = threading.Thread(target=server.serve_forever, name="fake-files", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
