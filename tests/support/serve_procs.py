"""Real `gridpilot central serve` processes on one database for the overload tests: started side by side, each on
a free port, stopped (SIGTERM, then SIGKILL) whatever happens."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

from gridpilot.central.serve import init
from gridpilot.central.settings import CentralSettings
from gridpilot.client import CentralClient
from gridpilot.endpoints import URL_FILE
from gridpilot.errors import CentralError, CentralUnreachable


class ServeProcs:
    """`count` serve processes on `db_url` with `args` added; `urls`, `admin_token`, `logs`; a context manager."""

    def __init__(self, root: Path, db_url: str, count: int = 1, args: Sequence[str] = ()) -> None:
        self.root, self.db_url, self.count, self.args = root, db_url, count, list(args)
        self.procs: List[subprocess.Popen] = []
        self.urls: List[str] = []
        self.admin_token = ""

    def __enter__(self) -> "ServeProcs":
        settings = CentralSettings.from_args(self.root / "init", self.db_url)
        self.admin_token = init(settings).admin_token
        try:
            for i in range(self.count):
                state = self.root / f"serve{i}"
                state.mkdir(parents=True, exist_ok=True)
                with open(state / "serve.log", "wb") as log:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", "gridpilot", "central", "serve", "--db", self.db_url, "--state-dir",
                         str(state), "--signing-key", str(settings.signing_key_path), "--port", "0",
                         "--sweep-interval", "0", "--log-level", "warning", *self.args],
                        stdout=log, stderr=subprocess.STDOUT))
            self.urls = [self._wait(p, self.root / f"serve{i}") for i, p in enumerate(self.procs)]
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, proc: subprocess.Popen, state: Path) -> str:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (state / "serve.log").read_text()
            assert time.monotonic() < deadline, "central serve did not come up"
            url_file = state / URL_FILE
            if url_file.exists() and url_file.read_text().strip():
                url = url_file.read_text().strip()
                try:
                    CentralClient(url, None, retries=0, timeout=5).health()
                    return url
                except (CentralUnreachable, CentralError):
                    pass
            time.sleep(0.05)

    def logs(self) -> str:
        return "\n".join((self.root / f"serve{i}" / "serve.log").read_text(errors="replace")
                         for i in range(len(self.procs)))

    def stop(self) -> None:
        stop_all(self.procs, 20)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to every process still running, then each waited for `grace_s` at most and SIGKILLed past it (the
    benches' serve processes too)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
