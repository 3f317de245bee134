"""`gridpilot node check [--json]`: the node probe (pilot/nodeprobe.py) as a table or JSON. Exits 0 when the node
can run jobs (warnings or not), 1 (cli_codes.FAILED) when it cannot, with the reasons, 2 on a bad argument."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List

import orjson

from gridpilot import cli_codes


def add_check(node_sub: argparse._SubParsersAction) -> None:
    p = node_sub.add_parser("check", help="probe what this worker node can run (CPU level, OS, cgroups, user "
                                          "namespaces, container runtimes, GPUs, CVMFS, central); exit 1 when it "
                                          "can run no job")
    p.add_argument("--config", help="the pilot's YAML configuration (default: $GRIDPILOT_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--proc", default="/proc", help="procfs root (default /proc)")
    p.add_argument("--sys", default=None, help="sysfs root (default: the configuration's sysfs, /sys)")
    p.add_argument("--etc", default="/etc", help="where os-release is (default /etc)")
    p.add_argument("--cvmfs", default="/cvmfs", help="CVMFS root (default /cvmfs)")
    p.add_argument("--pci-ids", dest="pci_ids", default=None, help="pci.ids file naming the GPUs")
    p.add_argument("--lspci-output", dest="lspci_output", default=None, metavar="FILE",
                   help="`lspci -mm -nn -D` output to read instead of running lspci")
    p.add_argument("--offline", action="store_true",
                   help="read files only: start no unshare, container or lspci (for captured nodes)")
    p.add_argument("--central", default=None, metavar="URL",
                   help="check that central answers and the clock offset (default: $GRIDPILOT_CENTRAL_URL; "
                        "unset: not checked)")
    p.add_argument("--no-cache", dest="no_cache", action="store_true",
                   help="probe unshare and the runtimes again, ignoring this boot's cached answers")
    p.add_argument("--runtime-timeout", dest="runtime_timeout", type=float, default=30.0, metavar="S",
                   help="seconds each runtime gets to start its trivial container (default 30)")
    p.add_argument("--workdir", default=None, help="the work directory whose free space counts (default: the "
                                                   "configuration's workdir; the cache lives there)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from gridpilot.config import load_config
    from gridpilot.errors import ConfigError
    from gridpilot.pilot.nodeprobe import NodePaths, probe

    try:
        cfg = load_config(args.config, overrides={"sysfs": args.sys, "pci_ids": args.pci_ids,
                                                  "workdir": args.workdir})
    except ConfigError as e:
        print(f"gridpilot node check: {e}", file=sys.stderr)
        return cli_codes.USAGE
    for flag, path in (("--proc", args.proc), ("--sys", cfg.sysfs)):
        if not os.path.isdir(path):
            print(f"gridpilot node check: {flag} {path}: not a directory", file=sys.stderr)
            return cli_codes.USAGE
    for flag, path in (("--pci-ids", args.pci_ids), ("--lspci-output", args.lspci_output)):
        if path is not None and not os.path.isfile(path):
            print(f"gridpilot node check: {flag} {path}: no such file", file=sys.stderr)
            return cli_codes.USAGE
    if args.runtime_timeout <= 0:
        print("gridpilot node check: --runtime-timeout must be above 0", file=sys.stderr)
        return cli_codes.USAGE
    paths = NodePaths(proc=args.proc, sys=cfg.sysfs, etc=args.etc, cvmfs=args.cvmfs, lspci_output=args.lspci_output,
                      live=not args.offline)
    t0 = time.monotonic()
    result = probe(cfg, paths, central_url=args.central or os.environ.get("GRIDPILOT_CENTRAL_URL") or None,
                   use_cache=not args.no_cache, runtime_timeout=args.runtime_timeout).to_dict()
    result["seconds"] = round(time.monotonic() - t0, 3)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        sys.stdout.write(table(result))
    return cli_codes.OK if result["ok"] else cli_codes.FAILED


def _yn(v: Any) -> str:
    return "yes" if v else "no" if v is not None else "-"


def rows(r: Dict[str, Any]) -> List[List[str]]:
    cpu, osr, mem, disk = r["cpu"], r["os"], r["memory"], r["disk"]
    out = [["arch", cpu["arch"]], ["cpu", f"{cpu.get('model') or '?'}, {cpu['logical_cpus']} logical CPUs"]]
    if cpu["arch"] == "x86_64":
        out.append(["x86-64 level", f"{cpu['x86_64_level']} (AVX {_yn(cpu['avx'])}, AVX2 {_yn(cpu['avx2'])}, "
                                    f"AVX-512 {' '.join(cpu['avx512']) or 'no'})"])
    elif cpu["arch"] == "aarch64":
        out.append(["features", " ".join(cpu["features"]) or "-"])
    elif cpu["arch"] == "riscv64":
        out.append(["isa", cpu.get("isa") or "-"])
    out += [["os", f"{osr['name'] or '?'} (kernel {osr['kernel'] or '?'})"],
            ["memory", f"{mem['total_mb']} MB, {mem['available_mb']} MB available"],
            ["disk", f"{disk['workdir']}: {disk.get('free_mb')} MB free"]]
    cg = r["cgroups"]
    if cg["version"] is None:
        out.append(["cgroups", "none mounted"])
    else:
        v1 = f", v1 controllers: {' '.join(cg['v1_controllers'])}" if cg.get("v1_controllers") else ""
        out.append(["cgroups", f"{cg['version']}; v2 controllers here: {' '.join(cg.get('controllers') or []) or '-'}"
                               f", can make job cgroups: {_yn(cg.get('delegated'))}{v1}"])
    un = r["user_namespaces"]
    sysctls = " ".join(f"{k}={v}" for k, v in un["sysctls"].items())
    works = un.get("unshare")
    out.append(["user namespaces", (sysctls or "-") + ("" if works is None else
                "; unshare -U: works" if works["works"] else f"; unshare -U fails: {works['why']}")])
    for name, rt in r["runtimes"]["found"].items():
        if not rt["found"]:
            text = "not found"
        elif rt.get("starts"):
            text = f"starts a container ({rt['seconds']} s)"
        else:
            text = f"found, does not start: {rt['why']}"
        out.append([f"runtime {name}", text])
    out.extend(gpu_rows(r["gpus"]))
    repos = r["cvmfs"]["repositories"]
    out.append(["cvmfs", ", ".join(f"{x['name']}@{x['revision']}" for x in repos) or f"nothing under {r['cvmfs']['root']}"])
    c = r.get("central")
    if c is not None:
        out.append(["central", f"{c['url']}: reachable, clock offset {c['clock_offset_s']} s" if c["reachable"]
                    else f"{c['url']}: unreachable ({c['why']})"])
    out += [["warning", w] for w in r["warnings"]]
    out += [["CANNOT RUN JOBS", f] for f in r["fatal"]]
    out.append(["verdict", "ok: this node can run jobs" if r["ok"] else "this node cannot run any job"])
    return out


def gpu_rows(g: Dict[str, Any]) -> List[List[str]]:
    """The probe's gpus section as table rows: each GPU with the arch and memory the broker matches GPUArch on
    (docs/gpus.md; "?" where the node does not know), or where the probe looked."""
    if not g["gpus"]:
        return [["gpu", f"none (looked in: {', '.join(g['tried'])})"]]
    out = []
    for gpu in g["gpus"]:
        memory = f", {gpu['memory_mb']} MB" if gpu.get("memory_mb") else ""
        out.append(["gpu", f"{gpu['pci_address']} {gpu['vendor']} {gpu['model'] or '?'} "
                           f"(arch {gpu.get('arch') or '?'}{memory}, driver {gpu['driver'] or '-'}, "
                           f"from {g['source']})"])
    return out


def table(r: Dict[str, Any]) -> str:
    rs = rows(r)
    width = max(len(k) for k, _ in rs)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rs)
