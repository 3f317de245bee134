"""`gridpilot node check`: what this worker node can run, probed for real (issue 20, section 1). CPU and GPUs come
from the same readers as `gridpilot node` and the site map (_native.cpu_info, sitemap.node_gpus); the rest from
procfs, sysfs, /etc/os-release, /cvmfs and by starting things: `unshare -U` and each container runtime's trivial
container (the pilot's own probe, isolation/containers.py). Those starts are slow, so their answers are cached per
boot in `<workdir>/node-check.json`, keyed on /proc/sys/kernel/random/boot_id (and on what was probed).

Every path read is a field of NodePaths, so tests run the probe on captured nodes (tests/fixtures/arch)."""

from __future__ import annotations

import email.utils
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import orjson

from gridpilot import _native
from gridpilot.config import CONTAINER_RUNTIMES, PilotConfig
from gridpilot.isolation import cgroupfs
from gridpilot.isolation.containers import CONTAINER_TMP, job_image, probe_spec, python_binds
from gridpilot.isolation.runtimes import Bind, LaunchSpec, make_runtime
from gridpilot.pilot import nodecpu
from gridpilot.pilot import gpuarch
from gridpilot.pilot.sitemap import node_gpus
from gridpilot.private_files import write_private

CACHE_NAME = "node-check.json"
#: Less free space than this in the work directory and no job can be given its sandbox.
MIN_DISK_MB = 1024
#: `lspci` on the host or in a container: it reads sysfs and pci.ids, a second on any node.
LSPCI_TIMEOUT = 20.0
LSPCI_ARGV = ["lspci", "-mm", "-nn", "-D"]


@dataclass
class NodePaths:
    """Where the probe reads; "/" roots on a real node, a fixture tree in tests."""

    proc: str = "/proc"
    sys: str = "/sys"
    etc: str = "/etc"
    cvmfs: str = "/cvmfs"
    #: A file holding `lspci -mm -nn -D` output to use instead of running lspci (fixtures).
    lspci_output: Optional[str] = None
    #: False on fixtures: nothing is started (unshare, runtimes, lspci), only files are read.
    live: bool = True
    #: The host's lspci (a name looked up on PATH, or a path).
    lspci: str = "lspci"


@dataclass
class Probe:
    sections: Dict[str, Any] = field(default_factory=dict)
    #: Why no job can run here; empty when some can.
    fatal: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.sections, ok=not self.fatal, fatal=self.fatal, warnings=self.warnings)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def boot_id(paths: NodePaths) -> Optional[str]:
    text = _read(os.path.join(paths.proc, "sys/kernel/random/boot_id"))
    return text.strip() if text else None


class BootCache:
    """Answers of slow probes kept for this boot: the file holds {"boot_id": ..., "entries": {key: answer}}; a file of
    another boot (or unreadable) counts as empty. Without a boot id nothing is cached."""

    def __init__(self, path: Optional[Path], boot: Optional[str]) -> None:
        self.path, self.boot = path, boot
        self.entries: Dict[str, Any] = {}
        self.hits = 0
        if path is None or boot is None:
            return
        try:
            data = orjson.loads(path.read_bytes())
            if isinstance(data, dict) and data.get("boot_id") == boot and isinstance(data.get("entries"), dict):
                self.entries = data["entries"]
        except (OSError, orjson.JSONDecodeError):
            pass

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self.entries:
            self.hits += 1
            return self.entries[key]
        value = self.entries[key] = compute()
        return value

    def save(self) -> None:
        if self.path is None or self.boot is None:
            return
        try:
            # Written aside then renamed: two pilots starting on one node never read half a file.
            write_private(self.path, orjson.dumps({"boot_id": self.boot, "entries": self.entries}))
        except OSError:
            pass


def os_release(paths: NodePaths) -> Dict[str, Any]:
    fields: Dict[str, str] = {}
    for line in (_read(os.path.join(paths.etc, "os-release")) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip().strip("\"'")
    kernel = (_read(os.path.join(paths.proc, "sys/kernel/osrelease")) or "").strip() or None
    return {"name": fields.get("PRETTY_NAME") or fields.get("NAME"), "id": fields.get("ID"),
            "version_id": fields.get("VERSION_ID"), "kernel": kernel}


def memory(paths: NodePaths) -> Dict[str, Any]:
    out: Dict[str, Any] = {"total_mb": None, "available_mb": None}
    for line in (_read(os.path.join(paths.proc, "meminfo")) or "").splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and rest.split():
            out["total_mb" if key == "MemTotal" else "available_mb"] = int(rest.split()[0]) // 1024
    return out


def disk(workdir: str) -> Dict[str, Any]:
    """Free space where the jobs' directories go (the nearest existing parent when it does not exist yet)."""
    where = Path(workdir)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError as e:
        return {"workdir": workdir, "free_mb": None, "error": e.strerror}
    return {"workdir": workdir, "free_mb": usage.free // 2**20, "total_mb": usage.total // 2**20,
            "writable": os.access(where, os.W_OK)}


def cgroups(paths: NodePaths) -> Dict[str, Any]:
    """The cgroup version and, on v2, the controllers of this process's cgroup and whether it can make children
    there (what the pilot's per-job cgroups need, isolation/jobcgroup.py)."""
    mountinfo = os.path.join(paths.proc, "self/mountinfo")
    try:
        mounts = cgroupfs.parse_mountinfo(Path(mountinfo).read_text())
    except (OSError, ValueError) as e:
        return {"version": None, "error": str(e)}
    v1 = any(m.fstype == "cgroup" for m in mounts)
    v2 = any(m.fstype == "cgroup2" for m in mounts)
    out: Dict[str, Any] = {"version": "hybrid" if v1 and v2 else "2" if v2 else "1" if v1 else None,
                           "controllers": [], "delegated": False}
    # v1 hierarchies name their controllers in the super options (name=systemd is a named hierarchy, none).
    out["v1_controllers"] = sorted({o for m in mounts if m.fstype == "cgroup" for o in m.super_options
                                    if o not in ("rw", "ro") and "=" not in o})
    if not v2:
        return out
    try:
        own = str(cgroupfs.own_v2_dir(mountinfo, os.path.join(paths.proc, "self/cgroup")))
    except Exception as e:  # noqa: BLE001 - any unreadable layout is reported, not raised: it is a finding
        out["error"] = str(e)
        return out
    if paths.sys != "/sys" and own.startswith("/sys/"):
        own = os.path.join(paths.sys, own[len("/sys/"):])
    out["path"] = own
    out["controllers"] = (_read(os.path.join(own, "cgroup.controllers")) or "").split()
    out["delegated"] = cgroupfs.can_make_children(own)
    return out


def user_namespaces(paths: NodePaths, cache: BootCache, timeout: float) -> Dict[str, Any]:
    sysctls = {}
    for name in ("user/max_user_namespaces", "kernel/unprivileged_userns_clone",
                 "kernel/apparmor_restrict_unprivileged_userns"):
        text = _read(os.path.join(paths.proc, "sys", name))
        if text is not None:
            sysctls[name.split("/")[-1]] = int(text.strip()) if text.strip().lstrip("-").isdigit() else text.strip()
    out: Dict[str, Any] = {"sysctls": sysctls, "unshare": None}
    if paths.live:
        out["unshare"] = cache.get("unshare -U", lambda: _try_unshare(timeout))
    return out


def _try_unshare(timeout: float) -> Dict[str, Any]:
    binary = shutil.which("unshare")
    if binary is None:
        return {"works": False, "why": "no unshare on PATH (util-linux)"}
    start = time.monotonic()
    try:
        out = subprocess.run([binary, "--user", "--map-root-user", "true"], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"works": False, "why": f"did not finish within {timeout:.0f} s"}
    except OSError as e:
        return {"works": False, "why": e.strerror}
    took = round(time.monotonic() - start, 3)
    if out.returncode != 0:
        return {"works": False, "why": out.stderr.decode(errors="replace").strip()[-300:] or f"exit {out.returncode}",
                "seconds": took}
    return {"works": True, "seconds": took}


def runtimes(cfg: PilotConfig, arch: str, cache: BootCache, timeout: float,
             names: Sequence[str] = CONTAINER_RUNTIMES) -> Dict[str, Any]:
    """Each runtime found, and whether it starts the pilot's probe container (the default image) within
    `timeout`. A runtime whose binary is missing is listed as not found, without a start."""
    image = job_image(cfg, None, arch)
    out: Dict[str, Any] = {"image": image.path, "image_why": image.why, "found": {}}
    with tempfile.TemporaryDirectory(prefix="gridpilot-nodecheck-") as probe_tmp:
        binds = [*python_binds(), Bind(probe_tmp, CONTAINER_TMP, read_only=False)]
        for name in names:
            rt = make_runtime(name, apptainer_cvmfs_path=cfg.apptainer_cvmfs_path)
            missing = rt.missing()
            if missing is not None:
                out["found"][name] = {"found": False, "why": missing}
                continue
            if image.path is None:
                out["found"][name] = {"found": True, "starts": None, "why": f"no image to start: {image.why}"}
                continue
            spec = probe_spec(image.path, binds)

            def start(rt: Any = rt, spec: LaunchSpec = spec) -> Dict[str, Any]:
                t0 = time.monotonic()
                why = rt.probe(spec, timeout)
                return {"found": True, "starts": why is None, "why": why, "seconds": round(time.monotonic() - t0, 3)}

            out["found"][name] = cache.get(f"runtime {name} {getattr(rt, 'binary', lambda: None)()} {image.path}",
                                           start)
    return out


def _gpu_dict(g: Any, sysfs: str) -> Dict[str, Any]:
    """The native record's fields, and the architecture and memory the site map gives the broker (pilot/gpuarch.py):
    from lspci, whose -nn gives the ids, the arch comes from the table of PCI ids."""
    d = g.to_dict()
    out = {k: d.get(k) for k in ("pci_address", "vendor", "model", "vendor_id", "device_id", "class_id", "driver")}
    out["arch"] = gpuarch.gpu_arch(g, sysfs)
    out["memory_mb"] = gpuarch.gpu_memory_mb(g, sysfs)
    return out


def gpus(paths: NodePaths, pci_ids: Optional[str], container: Optional[Callable[[], Optional[str]]]) -> Dict[str, Any]:
    """GPUs in ALICE's gpu.sh order: sysfs, else `lspci -mm -nn -D` on the host, else lspci inside the container
    runtime (a node whose host lacks pciutils). `container` runs lspci in a working runtime and returns its output."""
    tried: List[str] = []
    found = node_gpus(paths.sys, pci_ids)
    if found:
        return {"source": "sysfs", "tried": ["sysfs"], "gpus": [_gpu_dict(g, paths.sys) for g in found]}
    tried.append("sysfs")
    text: Optional[str] = None
    if paths.lspci_output is not None:
        text = _read(paths.lspci_output)
        tried.append(f"lspci output {paths.lspci_output}")
    elif paths.live:
        binary = shutil.which(paths.lspci)
        tried.append("lspci (host)" if binary else "lspci (host): not installed (pciutils)")
        text = _run_lspci([binary, *LSPCI_ARGV[1:]]) if binary else None
    if text:
        found = _native.parse_lspci(text, pci_ids)
        if found:
            return {"source": tried[-1], "tried": tried, "gpus": [_gpu_dict(g, paths.sys) for g in found]}
    if container is not None and paths.live:
        tried.append("lspci (container)")
        text = container()
        if text:
            found = _native.parse_lspci(text, pci_ids)
            if found:
                return {"source": "lspci (container)", "tried": tried, "gpus": [_gpu_dict(g, paths.sys) for g in found]}
    return {"source": None, "tried": tried, "gpus": []}


def _run_lspci(argv: List[str], env: Optional[Dict[str, str]] = None) -> Optional[str]:
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=LSPCI_TIMEOUT, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode(errors="replace") if out.returncode == 0 else None


def lspci_in_container(cfg: PilotConfig, image: Optional[str], runtime_name: Optional[str]) -> Optional[str]:
    if image is None or runtime_name is None:
        return None
    rt = make_runtime(runtime_name, apptainer_cvmfs_path=cfg.apptainer_cvmfs_path)
    launch = rt.command(LaunchSpec(LSPCI_ARGV, image, binds=[], env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
                                   workdir="/", stdin=False))
    return _run_lspci(launch.argv, launch.env)


def cvmfs(paths: NodePaths) -> Dict[str, Any]:
    """The repositories mounted under the CVMFS root and their revision (the `user.revision` attribute the CVMFS
    client exposes on a repository's root). Listing the root does not mount anything autofs would (only what is
    mounted shows)."""
    try:
        names = sorted(os.listdir(paths.cvmfs))
    except OSError:
        return {"root": paths.cvmfs, "repositories": []}
    repos = []
    for name in names:
        where = os.path.join(paths.cvmfs, name)
        if not os.path.isdir(where):
            continue
        revision: Optional[int] = None
        try:
            raw = os.getxattr(where, "user.revision").decode(errors="replace").strip()
            revision = int(raw) if raw.isdigit() else None
        except OSError:
            pass
        repos.append({"name": name, "revision": revision})
    return {"root": paths.cvmfs, "repositories": repos}


def central(url: Optional[str], timeout: float) -> Optional[Dict[str, Any]]:
    """Central reachable, and its clock minus ours (seconds, from the HTTP Date header: whole seconds, so an offset
    below ±1 s reads as 0)."""
    if not url:
        return None
    target = url.rstrip("/") + "/"
    t0 = time.time()
    try:
        req = urllib.request.Request(target, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the configured central
                status, date = resp.status, resp.headers.get("Date")
        except urllib.error.HTTPError as e:  # any answer means central is there
            status, date = e.code, e.headers.get("Date")
    except (OSError, ValueError) as e:
        return {"url": url, "reachable": False, "why": str(getattr(e, "reason", e))}
    t1 = time.time()
    offset = None
    if date:
        try:
            offset = round(email.utils.parsedate_to_datetime(date).timestamp() - (t0 + t1) / 2, 1)
        except (TypeError, ValueError):
            pass
    return {"url": url, "reachable": True, "status": status, "clock_offset_s": offset,
            "round_trip_s": round(t1 - t0, 3)}


def probe(cfg: PilotConfig, paths: NodePaths, *, central_url: Optional[str] = None, use_cache: bool = True,
          runtime_timeout: float = 30.0, min_disk_mb: int = MIN_DISK_MB,
          runtime_names: Sequence[str] = CONTAINER_RUNTIMES) -> Probe:
    p = Probe()
    cache = BootCache(Path(cfg.workdir) / CACHE_NAME if use_cache else None, boot_id(paths))
    cpuinfo_text = _read(os.path.join(paths.proc, "cpuinfo")) or ""
    cpu = _native.cpu_info(proc=paths.proc, sys=paths.sys) if paths.live else _native.parse_cpuinfo(cpuinfo_text)
    p.sections["cpu"] = nodecpu.describe(cpu, cpuinfo_text)
    p.sections["os"] = os_release(paths)
    p.sections["memory"] = memory(paths)
    p.sections["disk"] = disk(cfg.workdir)
    p.sections["cgroups"] = cgroups(paths)
    p.sections["user_namespaces"] = user_namespaces(paths, cache, runtime_timeout)
    rts: Dict[str, Any] = {"image": None, "found": {}}
    if paths.live:
        rts = runtimes(cfg, cpu.arch, cache, runtime_timeout, runtime_names)
    p.sections["runtimes"] = rts
    working = next((n for n, r in rts["found"].items() if r.get("starts")), None)
    # A container start per probe would be most of a warm probe on a node without GPUs (bench_node_check.py): its
    # answer is kept per boot like the runtimes' own starts, as a PCI device list does not change within a boot.
    key = f"lspci (container) {working} {rts.get('image')}"
    p.sections["gpus"] = gpus(paths, cfg.pci_ids, None if working is None else
                              lambda: cache.get(key, lambda: lspci_in_container(cfg, rts.get("image"), working)))
    p.sections["cvmfs"] = cvmfs(paths)
    c = central(central_url, timeout=10.0)
    if c is not None:
        p.sections["central"] = c
    p.sections["boot_id"] = cache.boot
    p.sections["cache"] = {"path": str(cache.path) if cache.path else None, "hits": cache.hits}
    cache.save()
    _verdict(p, cfg, min_disk_mb)
    return p


def _verdict(p: Probe, cfg: PilotConfig, min_disk_mb: int) -> None:
    s = p.sections
    d = s["disk"]
    if d.get("free_mb") is None or not d.get("writable", False):
        p.fatal.append(f"work directory {d['workdir']}: not writable ({d.get('error') or 'no write access'})")
    elif d["free_mb"] < min_disk_mb:
        p.fatal.append(f"work directory {d['workdir']}: {d['free_mb']} MB free, less than {min_disk_mb} MB")
    if s["cpu"]["logical_cpus"] < 1:
        p.fatal.append("no CPU listed in cpuinfo")
    found = s["runtimes"]["found"]
    starts = [n for n, r in found.items() if r.get("starts")]
    if cfg.require_container and found and not starts:
        p.fatal.append("require_container is set and no container runtime starts a container")
    un = s["user_namespaces"].get("unshare")
    if un is not None and not un["works"] and not starts:
        p.warnings.append("no container runtime starts and unprivileged unshare fails: jobs run on the host's pids")
    if s["cpu"]["arch"] == "x86_64" and not s["cpu"].get("avx"):
        p.warnings.append("no AVX: ALICE blocks such nodes from production jobs")
    c = s.get("central")
    if c is not None and not c["reachable"]:
        p.fatal.append(f"central {c['url']} unreachable: {c['why']}")
    elif c is not None and c.get("clock_offset_s") is not None and abs(c["clock_offset_s"]) > 60:
        p.warnings.append(f"clock is {c['clock_offset_s']} s off central's: tokens and deadlines may misbehave")


def at_pilot_start(cfg: PilotConfig, say: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """The probe as the JobRunner runs it at start: only the runtimes this pilot may use (none with
    container_runtime none), runtime starts cached per boot in the workdir, central left out (the runner asks it
    itself). Says one line of what it found; returns the probe (what the pilot will post to central), or None when
    the probe itself broke (said, never fatal: the runner's own checks decide whether it takes jobs)."""
    names: Sequence[str] = () if cfg.container_runtime == "none" else \
        list(cfg.container_order) if cfg.container_runtime == "auto" else [cfg.container_runtime]
    t0 = time.monotonic()
    try:
        r = probe(cfg, NodePaths(sys=cfg.sysfs), runtime_timeout=cfg.container_probe_timeout,
                  runtime_names=names).to_dict()
    except Exception as e:  # noqa: BLE001 - a probe bug must not stop a pilot that can otherwise run jobs
        say(f"Node probe failed: {type(e).__name__}: {e}")
        return None
    say(summary(r) + f" (node probe {time.monotonic() - t0:.2f} s, {r['cache']['hits']} cached)")
    return r


def summary(r: Dict[str, Any]) -> str:
    cpu = r["cpu"]
    level = cpu.get("x86_64_level") or cpu.get("isa") or ("features " + " ".join(cpu.get("features", [])[:8]))
    starts = [n for n, x in r["runtimes"]["found"].items() if x.get("starts")]
    un = r["user_namespaces"].get("unshare") or {}
    repos = ", ".join(f"{x['name']}@{x['revision']}" for x in r["cvmfs"]["repositories"]) or "none"
    return (f"Node: {cpu['arch']} {level}; {r['os']['name'] or '?'}, kernel {r['os']['kernel'] or '?'}; "
            f"cgroups {r['cgroups']['version'] or 'none'}; unshare -U {'works' if un.get('works') else 'fails'}; "
            f"containers start: {', '.join(starts) or 'none'}; GPUs: {len(r['gpus']['gpus'])} "
            f"(from {r['gpus']['source'] or 'nowhere'}); CVMFS: {repos}")
