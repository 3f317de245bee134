"""An HTTP proxy in front of a real central that forwards every request, except those a test tells it to answer
itself (a 500 or a 503 for a while, for some routes): what a pilot sees when central fails on some calls and not
on others. Shared by the outbox tests (tests/integration/test_outbox_refusals.py) and the pilot's outage tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Tuple

import urllib3

#: Given (method, path): None to forward the request to central, else the HTTP status to answer with instead.
Rule = Callable[[str, str], Optional[int]]


def forward_all(method: str, path: str) -> Optional[int]:
    return None


class CentralProxy:
    """`url` answers as central at `target` does, but for the requests `rule` picks. `seen` lists every request as
    (method, path, status answered); the rule can be replaced at any time."""

    def __init__(self, target: str, rule: Rule = forward_all) -> None:
        self.rule = rule
        self.seen: List[Tuple[str, str, int]] = []
        self._lock = threading.Lock()
        pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=60))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                status = outer.rule(self.command, self.path)
                if status is not None:
                    data = (b'{"error": {"code": "http_%d", "message": "answered by the test proxy"}}' % status)
                    ctype = "application/json"
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    r = pool.request(self.command, target + self.path, body=body, headers=headers, redirect=False)
                    status, data, ctype = r.status, r.data, r.headers.get("Content-Type", "application/json")
                with outer._lock:
                    outer.seen.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answered(self, method: str, path_part: str, status: Optional[int] = None) -> int:
        """How many `method` requests whose path contains `path_part` were answered (with `status`, if given)."""
        with self._lock:
            return sum(1 for m, p, s in self.seen if m == method and path_part in p and status in (None, s))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
