"""A threaded HTTP file server on 127.0.0.1 for tests and benchmarks (img2dataset's input mode).

Paths under `/slow/` answer after `slow_s` seconds, to exercise client time-outs; a missing file
is a 404.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from contextlib import contextmanager


class _Handler(http.server.SimpleHTTPRequestHandler):
    slow_s = 0.0

    def do_GET(self):
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_s)
            self.path = self.path[len("/slow"):]
        return super().do_GET()

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
    handler = type("Handler", (_Handler,), {"slow_s": slow_s})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
