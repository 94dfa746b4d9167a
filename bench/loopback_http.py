"""A threaded HTTP file server on 127.0.0.1 for tests and benchmarks (img2dataset's input mode).

Paths under `/slow/` answer after `slow_s` seconds, to exercise client time-outs; under `/drip/`
the body comes 1 KB every `slow_s` seconds (each read is quick, the whole is not); under `/noai/`
the answer carries `X-Robots-Tag: noai, noindex` and under `/otherbot-noai/` `X-Robots-Tag:
otherbot: noai` (an opt-out addressed to another agent); under `/flaky/` the first request for each
path is a 503 and later ones succeed. A missing file is a 404.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from contextlib import contextmanager

ROBOTS = {"/noai/": "noai, noindex", "/otherbot-noai/": "otherbot: noai"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    slow_s = 0.0
    robots = ""

    def do_GET(self):
        for prefix, value in ROBOTS.items():
            if self.path.startswith(prefix):
                self.robots, self.path = value, self.path[len(prefix) - 1:]
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_s)
            self.path = self.path[len("/slow"):]
        if self.path.startswith("/drip/"):
            return self._drip(self.path[len("/drip"):])
        if self.path.startswith("/flaky/"):
            with self.flaky_lock:
                first = self.path not in self.flaky_seen
                self.flaky_seen.add(self.path)
            if first:
                return self.send_error(503)
            self.path = self.path[len("/flaky"):]
        return super().do_GET()

    def end_headers(self):
        if self.robots:
            self.send_header("X-Robots-Tag", self.robots)
        super().end_headers()

    def _drip(self, path: str) -> None:
        data = open(self.translate_path(path), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for start in range(0, len(data), 1024):
                self.wfile.write(data[start:start + 1024])
                self.wfile.flush()
                time.sleep(self.slow_s)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            pass

    def log_message(self, *args):  # keep test and benchmark output clean
        pass


class _Server(http.server.ThreadingHTTPServer):
    # http.server listens with a backlog of 5: under 32 concurrent clients the kernel drops SYNs, and
    # each drop stalls a fetch for the 1 s SYN retry. Web servers listen with hundreds (nginx: 511).
    request_queue_size = 1024
    daemon_threads = True


@contextmanager
def serve_folder(folder: str, slow_s: float = 0.0):
    """Yield the base URL of a server for `folder`; stopped on exit."""
    handler = type("Handler", (_Handler,), {"slow_s": slow_s, "flaky_seen": set(), "flaky_lock": threading.Lock()})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
