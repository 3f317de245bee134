"""The overhead of starting a job in each container runtime, next to starting it with none (issue 6).

    .venv/bin/python benches/bench_runtimes.py [--starts 20] [--image DIR] [--json FILE]

For each runtime, `--starts` times: the time from launching the command the agent would launch (the runtime's argv
around the pilot's Python, with the same binds and environment) to the first byte the Python inside writes on fd 3,
where the JobWrapper's first message arrives (after importing gridpilot.pilot.wrapper); then the time to run a
trivial `/bin/true` in the same runtime and image, to the runtime's exit. Medians, and the ratio to "none" (plain
fork+exec, no namespace). The image is the one the tests build (tests/support/images.py: .cache/images/debian12-<arch>).
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import orjson

from gridpilot.isolation.runtimes import Bind, Bubblewrap, ContainerRuntime, LaunchSpec, NoContainer, Podman
from gridpilot.isolation import containers

ROOT = Path(__file__).resolve().parent.parent
FIRST_MESSAGE = "import os, gridpilot.pilot.wrapper; os.write(3, b'x')"


def first_message_s(rt: ContainerRuntime, spec: LaunchSpec) -> float:
    r, w = os.pipe()

    def at_fd3() -> None:
        os.dup2(os.dup(w), 3)

    launch = rt.command(spec)
    t0 = time.perf_counter()
    proc = subprocess.Popen(launch.argv, env=launch.env, close_fds=False, preexec_fn=at_fd3,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 120)
    t = time.perf_counter() - t0
    got = os.read(r, 1) if ready else b""
    os.close(r)
    _, err = proc.communicate(timeout=120)
    if got != b"x" or proc.returncode != 0:
        raise SystemExit(f"{rt.name}: no first message (exit {proc.returncode}): {err.decode(errors='replace')[-500:]}")
    return t


def true_s(rt: ContainerRuntime, spec: LaunchSpec) -> float:
    launch = rt.command(spec)
    t0 = time.perf_counter()
    out = subprocess.run(launch.argv, env=launch.env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    t = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{rt.name}: /bin/true failed ({out.returncode}): {out.stderr.decode(errors='replace')[-500:]}")
    return t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--image", default=str(ROOT / ".cache" / "images" / f"debian12-{platform.machine()}"))
    ap.add_argument("--json")
    args = ap.parse_args()
    image = args.image
    if not os.path.isfile(os.path.join(image, "etc", "debian_version")):
        print(f"no image at {image}: run the container tests once (they build it), or pass --image", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="bench-runtimes-")
    binds = [*containers.python_binds(), Bind(work, "/workdir", read_only=False)]
    env = containers.container_env({})
    runtimes: List[tuple] = [("none", NoContainer(False)), ("none+unshare", NoContainer(True))]
    for rt in (Bubblewrap(), Podman()):
        why = rt.missing()
        if why is None:
            runtimes.append((rt.name, rt))
        else:
            print(f"{rt.name}: skipped ({why})")
    results: Dict[str, Dict[str, float]] = {}
    for name, rt in runtimes:
        contained = not isinstance(rt, NoContainer)
        spec = LaunchSpec([sys.executable, "-c", FIRST_MESSAGE], image if contained else None,
                          binds=binds if contained else [], env=env if contained else dict(os.environ),
                          workdir="/workdir" if contained else work, pass_fds=1, stdin=False, name=None)
        tspec = LaunchSpec(["/bin/true"], image if contained else None, binds=binds if contained else [],
                           env=env if contained else dict(os.environ), workdir="/workdir" if contained else work,
                           stdin=False)
        first_message_s(rt, spec)  # warm the page cache and Podman's storage once, not counted
        msg = [first_message_s(rt, spec) for _ in range(args.starts)]
        tr = [true_s(rt, tspec) for _ in range(args.starts)]
        results[name] = {"first_message_ms": statistics.median(msg) * 1e3, "true_ms": statistics.median(tr) * 1e3}
    base = results["none"]
    print(f"median of {args.starts} starts, image {image}")
    print(f"{'runtime':<14} {'to first message':>17} {'vs none':>8} {'extra':>9} {'/bin/true':>10}")
    for name, r in results.items():
        print(f"{name:<14} {r['first_message_ms']:>14.1f} ms {r['first_message_ms'] / base['first_message_ms']:>7.2f}x "
              f"{r['first_message_ms'] - base['first_message_ms']:>+6.0f} ms {r['true_ms']:>7.1f} ms")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    os.rmdir(work) if not os.listdir(work) else None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
