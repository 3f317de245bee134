"""The node probe's wall time (`make bench`): `gridpilot node check` cold and warm on this machine, and each
section's share (docs/node-check.md, docs/benchmarks.md).

  cold   a fresh work directory, so no node-check.json: `unshare -U` and each container runtime's probe container
         are started for real (what a pilot's first start after a boot pays)
  warm   the same work directory again: those answers come from the per-boot cache; the rest is read again
         (what every later pilot start in the same boot pays; target < 2 s)

Each is measured twice: nodeprobe.probe() in this process, timed per section (the section functions are wrapped
with a timer, the real ones run), and the whole command `gridpilot node check --json` in a new process (Python's
start and imports included: what the user or a pilot start-up script sees). The runtimes are all those the command
probes by default (config.CONTAINER_RUNTIMES), each either started or named as not found.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gridpilot import _native  # noqa: E402
from gridpilot.config import load_config  # noqa: E402
from gridpilot.pilot import nodecpu, nodeprobe  # noqa: E402

#: The probe's sections in the order it runs them, each the function of nodeprobe (or nodecpu) that computes it.
SECTIONS = ("cpu_info", "describe", "os_release", "memory", "disk", "cgroups", "user_namespaces", "runtimes", "gpus",
            "cvmfs", "central")
#: Parts of a section, timed inside it (not added to the total again): the GPU section's lspci in a container, run
#: when neither sysfs nor the host's lspci names a GPU.
PARTS = ("lspci_in_container",)
#: What docs call each timed function: cpu_info and describe together make the `cpu` section.
LABEL = {"cpu_info": "cpu (read)", "describe": "cpu (describe)", "lspci_in_container": "  of which lspci in a container"}
TARGET_WARM_S = 2.0


class _TimedNative:
    """nodeprobe's view of the native module, with cpu_info timed; everything else passed through."""

    def __init__(self, record: Callable[[str, float], None]) -> None:
        self._record = record

    def cpu_info(self, *a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return _native.cpu_info(*a, **kw)
        finally:
            self._record("cpu_info", time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(_native, name)


def _timed(fn: Callable[..., Any], name: str, record: Callable[[str, float], None]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            record(name, time.perf_counter() - t0)
    return wrapper


def probe_by_section(workdir: Path, image: str, central_url: Optional[str], timeout: float) -> Dict[str, Any]:
    """One nodeprobe.probe() as `gridpilot node check` runs it (cache in `workdir`), with its total and each
    section's seconds; `rest` is what no section holds (boot id, the cache's load and save, the verdict)."""
    seconds: Dict[str, float] = {}

    def record(name: str, s: float) -> None:
        seconds[name] = seconds.get(name, 0.0) + s

    saved = {name: getattr(nodeprobe, name) for name in SECTIONS + PARTS if hasattr(nodeprobe, name)}
    saved_describe, saved_native = nodecpu.describe, nodeprobe._native
    try:
        for name, fn in saved.items():
            setattr(nodeprobe, name, _timed(fn, name, record))
        nodecpu.describe = _timed(saved_describe, "describe", record)  # type: ignore[assignment]
        nodeprobe._native = _TimedNative(record)  # type: ignore[assignment]
        cfg = load_config(None, environ={}, overrides={"workdir": str(workdir), "default_image": image})
        t0 = time.perf_counter()
        result = nodeprobe.probe(cfg, nodeprobe.NodePaths(), central_url=central_url, runtime_timeout=timeout)
        total = time.perf_counter() - t0
    finally:
        for name, fn in saved.items():
            setattr(nodeprobe, name, fn)
        nodecpu.describe = saved_describe  # type: ignore[assignment]
        nodeprobe._native = saved_native  # type: ignore[assignment]
    r = result.to_dict()
    seconds["rest"] = max(0.0, total - sum(v for k, v in seconds.items() if k not in PARTS))
    return {"total_s": total, "sections_s": seconds, "cache_hits": r["cache"]["hits"], "probe": r}


def command(workdir: Path, image: str, central_url: Optional[str], timeout: float) -> Dict[str, Any]:
    """`gridpilot node check --json` in a new process, with a pilot configuration naming `workdir` and `image`:
    its wall time and the probe's own `seconds`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir.parent / f"{workdir.name}.yaml"
    config.write_bytes(b"workdir: " + orjson.dumps(str(workdir)) + b"\ndefault_image: " + orjson.dumps(image) + b"\n")
    argv = [sys.executable, "-m", "gridpilot", "node", "check", "--json", "--config", str(config),
            "--runtime-timeout", str(timeout)]
    if central_url:
        argv += ["--central", central_url]
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("GRIDPILOT_CENTRAL_URL", "GRIDPILOT_CONFIG")}
    out = subprocess.run(argv, capture_output=True, timeout=timeout * 10 + 120, env=env)
    wall = time.perf_counter() - t0
    if not out.stdout.strip():
        raise RuntimeError(f"gridpilot node check printed nothing (exit {out.returncode}): "
                           f"{out.stderr.decode(errors='replace')[-2000:]}")
    r = orjson.loads(out.stdout)
    return {"wall_s": wall, "probe_s": r["seconds"], "cache_hits": r["cache"]["hits"], "exit": out.returncode}


def stats(xs: List[float]) -> Dict[str, float]:
    s = sorted(xs)
    return {"n": len(s), "median": s[len(s) // 2], "min": s[0], "max": s[-1]}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.image is None:
        from support.images import build_image

        args.image = str(build_image())
    res: Dict[str, Any] = {"rounds_cold": args.cold, "rounds_warm": args.warm, "central": args.central,
                           "image": args.image, "cpus": os.cpu_count()}
    cold: List[Dict[str, Any]] = []
    warm: List[Dict[str, Any]] = []
    cmd_cold: List[Dict[str, Any]] = []
    cmd_warm: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-nodecheck-") as tmp:
        for i in range(args.cold):
            # In process: a new work directory each round, then the warm rounds on it.
            wd = Path(tmp) / f"inproc{i}"
            cold.append(probe_by_section(wd, args.image, args.central, args.runtime_timeout))
            warm += [probe_by_section(wd, args.image, args.central, args.runtime_timeout)
                     for _ in range(args.warm // args.cold or 1)]
            wd = Path(tmp) / f"cmd{i}"
            cmd_cold.append(command(wd, args.image, args.central, args.runtime_timeout))
            cmd_warm += [command(wd, args.image, args.central, args.runtime_timeout)
                         for _ in range(args.warm // args.cold or 1)]
            print(f"   round {i + 1}: cold {cold[-1]['total_s']:.2f} s, warm {warm[-1]['total_s']:.2f} s (in "
                  f"process); command cold {cmd_cold[-1]['wall_s']:.2f} s, warm {cmd_warm[-1]['wall_s']:.2f} s",
                  flush=True)
    if any(r["cache_hits"] for r in cold) or any(r["cache_hits"] for r in cmd_cold):
        raise RuntimeError("a cold probe found its answers cached: the work directory was not new")
    if not all(r["cache_hits"] for r in warm + cmd_warm):
        raise RuntimeError("a warm probe found nothing cached (no boot id? the cache file not written?)")
    order = [*SECTIONS[:SECTIONS.index("gpus") + 1], *PARTS, *SECTIONS[SECTIONS.index("gpus") + 1:], "rest"]
    names = [k for k in order if any(k in r["sections_s"] for r in cold + warm)]
    for label, rounds in (("cold", cold), ("warm", warm)):
        res[label] = {"total_s": stats([r["total_s"] for r in rounds]), "cache_hits": rounds[-1]["cache_hits"],
                      "sections_s": {k: stats([r["sections_s"].get(k, 0.0) for r in rounds]) for k in names}}
    for label, rounds in (("command_cold", cmd_cold), ("command_warm", cmd_warm)):
        res[label] = {"wall_s": stats([r["wall_s"] for r in rounds]), "probe_s": stats([r["probe_s"] for r in rounds]),
                      "exit": sorted({r["exit"] for r in rounds})}
    res["rounds_warm"] = len(warm)
    last = cold[-1]["probe"]
    res["node"] = {"arch": last["cpu"]["arch"], "model": last["cpu"].get("model"),
                   "logical_cpus": last["cpu"]["logical_cpus"], "os": last["os"].get("name"),
                   "kernel": last["os"].get("kernel"), "cgroups": last["cgroups"].get("version"),
                   "runtimes": {n: {k: v for k, v in r.items() if k in ("found", "starts", "seconds", "why")}
                                for n, r in last["runtimes"]["found"].items()},
                   "unshare": last["user_namespaces"].get("unshare"), "gpus": len(last["gpus"]["gpus"]),
                   "gpus_tried": last["gpus"]["tried"], "cvmfs": len(last["cvmfs"]["repositories"])}
    res["load"] = os.getloadavg()
    return res


def report(res: Dict[str, Any]) -> None:
    n = res["node"]
    print(f"\nmachine: {res['cpus']} CPUs, load average {' '.join(f'{x:.2f}' for x in res['load'])}; "
          f"{n['arch']} {n['model']}, {n['os']}, kernel {n['kernel']}, cgroups {n['cgroups']}")
    for name, r in n["runtimes"].items():
        state = ("starts" if r.get("starts") else "does not start") if r.get("found") else "not found"
        took = f" ({r['seconds']:.2f} s)" if r.get("seconds") is not None else ""
        print(f"  runtime {name}: {state}{took}{'' if r.get('starts') else ': ' + str(r.get('why'))[:100]}")
    print(f"  unshare -U: {n['unshare']}; GPUs: {n['gpus']} (tried {', '.join(n['gpus_tried'])}); "
          f"CVMFS repositories: {n['cvmfs']}; central: {res['central'] or 'not asked (no --central)'}")
    print(f"\nsection (in process)              cold median ms  share   warm median ms  share   "
          f"({res['rounds_cold']} cold, {res['rounds_warm']} warm rounds)")
    ct, wt = res["cold"]["total_s"]["median"], res["warm"]["total_s"]["median"]
    for k in res["cold"]["sections_s"]:
        c, w = res["cold"]["sections_s"][k]["median"], res["warm"]["sections_s"][k]["median"]
        print(f"  {LABEL.get(k, k):<32} {1000 * c:10.1f}   {100 * c / ct:5.1f} %   {1000 * w:10.1f}   "
              f"{100 * w / wt:5.1f} %")
    print(f"  {'total':<32} {1000 * ct:10.1f}            {1000 * wt:10.1f}      "
          f"(min-max cold {res['cold']['total_s']['min']:.2f}-{res['cold']['total_s']['max']:.2f}, "
          f"warm {res['warm']['total_s']['min']:.2f}-{res['warm']['total_s']['max']:.2f})")
    for label in ("command_cold", "command_warm"):
        m = res[label]
        print(f"  gridpilot node check --json, {label.split('_')[1]}: wall {m['wall_s']['median']:.2f} s "
              f"(min {m['wall_s']['min']:.2f}, max {m['wall_s']['max']:.2f}), the probe's own {m['probe_s']['median']:.2f}"
              f" s, exit {m['exit']}")
    w = res["command_warm"]["wall_s"]["median"]
    print(f"target: warm node check {w:.2f} s {'<' if w < TARGET_WARM_S else '>='} {TARGET_WARM_S:.0f} s")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", type=int, default=3, help="cold rounds, each in a new work directory (default 3)")
    ap.add_argument("--warm", type=int, default=9, help="warm rounds in all, spread over the cold ones' work "
                                                        "directories (default 9)")
    ap.add_argument("--runtime-timeout", type=float, default=30.0, help="seconds each runtime's probe container "
                                                                        "may take (node check's default 30)")
    ap.add_argument("--image", help="the default_image the runtimes start (default: the tests' Debian 12 image, "
                                    ".cache/images, built with debootstrap on first use)")
    ap.add_argument("--central", help="a central URL to ask too (reachability and clock offset; default none)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.cold < 1 or args.warm < 1:
        ap.error("--cold and --warm must be at least 1")
    res = run(args)
    report(res)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
