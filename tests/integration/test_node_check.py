"""`gridpilot node check` on this machine, for real: the CPU, kernel and cores it reports are this machine's,
`unshare -U` and each installed container runtime are started (the runtimes with the test image), lspci from
pciutils runs on the host, a central's Date header gives the clock offset, and the second run answers from the
per-boot cache within the 2 s target. A test that needs a component this machine lacks skips naming its package."""

from __future__ import annotations

import http.server
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import orjson
import pytest
from support.require import require_or_skip

from gridpilot import cli_codes

GRIDPILOT = [sys.executable, "-m", "gridpilot"]


def node_check(args: List[str], env: Dict[str, str] | None = None) -> Tuple[int, Dict[str, Any], float]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("GRIDPILOT_CENTRAL_URL", "GRIDPILOT_CONFIG")}
    full_env.update(env or {})
    t0 = time.monotonic()
    out = subprocess.run([*GRIDPILOT, "node", "check", "--json", *args], capture_output=True, timeout=300,
                         env=full_env)
    took = time.monotonic() - t0
    assert out.stderr == b"" or out.returncode != 0, out.stderr
    return out.returncode, orjson.loads(out.stdout), took


def config(tmp_path: Path, **fields: Any) -> str:
    path = tmp_path / "pilot.yaml"
    path.write_text("".join(f"{k}: {orjson.dumps(v).decode()}\n" for k, v in dict(workdir=str(tmp_path / "work"),
                                                                                     **fields).items()))
    return str(path)


def test_this_machine_for_real_and_the_second_run_comes_from_the_boot_cache(tmp_path: Path, image_dir: Path) -> None:
    cfg = config(tmp_path, default_image=str(image_dir))
    code, r, cold = node_check(["--config", cfg])
    assert code == cli_codes.OK, r["fatal"]
    assert r["cpu"]["arch"] == platform.machine()
    assert r["cpu"]["logical_cpus"] == os.cpu_count()
    assert r["os"]["kernel"] == os.uname().release
    assert r["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert r["cache"]["path"] == str(tmp_path / "work" / "node-check.json") and r["cache"]["hits"] == 0
    # unshare: the probe's answer is what running it says.
    real = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, timeout=60)
    assert r["user_namespaces"]["unshare"]["works"] is (real.returncode == 0)
    for name, package in (("podman", "podman runc"), ("bwrap", "bubblewrap")):
        if shutil.which(name) is None:
            require_or_skip(f"no {name} (Debian package {package})")
        assert r["runtimes"]["found"][name]["starts"] is True, r["runtimes"]["found"][name]
    for name in ("apptainer", "singularity"):
        assert r["runtimes"]["found"][name]["found"] is (shutil.which(name) is not None)
    if shutil.which("lspci") is None:
        require_or_skip("no lspci (Debian package pciutils)")
    g = r["gpus"]
    assert g["source"] is not None or "lspci (host)" in g["tried"]
    code, again, cached = node_check(["--config", cfg])
    assert code == cli_codes.OK
    assert again["cache"]["hits"] >= 3  # unshare, podman, bwrap
    assert again["runtimes"] == r["runtimes"] and again["user_namespaces"] == r["user_namespaces"]
    assert again["seconds"] < 2.0, f"cached probe took {again['seconds']} s (cold {r['seconds']} s)"
    print(f"node check wall time: cold {cold:.2f} s (probe {r['seconds']} s), cached {cached:.2f} s "
          f"(probe {again['seconds']} s)")


def test_a_runtime_that_cannot_start_the_image_and_require_container_make_the_node_unfit(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        require_or_skip("no bwrap (Debian package bubblewrap)")
    empty = tmp_path / "empty-image"
    empty.mkdir()
    code, r, _ = node_check(["--config", config(tmp_path, default_image=str(empty), require_container=True)])
    bwrap = r["runtimes"]["found"]["bwrap"]
    assert bwrap["found"] is True and bwrap["starts"] is False and bwrap["why"]
    assert code == cli_codes.FAILED and not r["ok"]
    assert r["fatal"] == ["require_container is set and no container runtime starts a container"]


@pytest.fixture
def central_stub() -> Iterator[str]:
    """An HTTP server answering every GET with an error and a Date header, as any web server (and central) does."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_central_reachable_and_the_clock_offset(tmp_path: Path, central_stub: str) -> None:
    code, r, _ = node_check(["--config", config(tmp_path), "--no-cache"],
                            env={"GRIDPILOT_CENTRAL_URL": central_stub})
    c = r["central"]
    assert code == cli_codes.OK and c["reachable"] is True and c["url"] == central_stub
    # Same clock on both ends: the Date header's whole seconds leave at most about one second.
    assert abs(c["clock_offset_s"]) <= 1.5


def test_the_runner_probes_the_node_at_start_and_says_what_it_found(tmp_path: Path, image_dir: Path) -> None:
    """A real JobRunner (LocalGrid) with bwrap: its log has the probe's line, the runtime it may use started, and
    the per-boot cache is in its workdir."""
    from gridpilot.testing import LocalGrid

    if shutil.which("bwrap") is None:
        require_or_skip("no bwrap (Debian package bubblewrap)")
    with LocalGrid(tmp_path / "grid") as grid:
        log = tmp_path / "runner.log"
        workdir = tmp_path / "work"
        grid.start_runner(log=log, slot_ttl=600, cores=1, max_empty_matches=1000, container_runtime="bwrap",
                          default_image=str(image_dir), workdir=str(workdir))
        deadline = time.monotonic() + 120
        while "Node: " not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            assert grid.runner is not None and grid.runner.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        grid.stop_runner()
    (line,) = [x for x in log.read_text(errors="replace").splitlines() if "Node: " in x]
    assert f"Node: {platform.machine()} " in line and "containers start: bwrap;" in line, line
    assert (workdir / "node-check.json").is_file()
