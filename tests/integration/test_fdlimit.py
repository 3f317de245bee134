"""gridpilot.pilot.fdlimit: the soft RLIMIT_NOFILE raised for the pilot, the original given back to the payload.

Each case runs in a child process that sets its own limits first, so nothing depends on the host's ulimit.
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, logging, os, resource, subprocess, sys
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
os.environ.pop("GRIDPILOT_NOFILE_SOFT", None)
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger().addHandler(Keep())
from gridpilot.pilot import fdlimit
first = fdlimit.raise_nofile()
second = fdlimit.raise_nofile()
payload = subprocess.run(
    [sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"],
    preexec_fn=fdlimit.payload_limit, capture_output=True, text=True, check=True,
).stdout.strip()
print(json.dumps({"first": first, "second": second, "now": resource.getrlimit(resource.RLIMIT_NOFILE),
                  "payload": int(payload), "warnings": warnings}))
"""


def run(soft: int, hard: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(soft), str(hard)], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_soft_limit_raised_to_hard_and_the_payload_gets_the_original():
    got = run(256, 8192)
    assert got["first"] == [8192, 8192] and got["now"] == [8192, 8192]
    assert got["payload"] == 256
    assert got["warnings"] == []


def test_low_hard_limit_is_logged_once():
    got = run(100, 1000)
    assert got["now"] == [1000, 1000]
    assert len(got["warnings"]) == 1
    assert "hard RLIMIT_NOFILE is 1000" in got["warnings"][0]
    assert got["payload"] == 100
