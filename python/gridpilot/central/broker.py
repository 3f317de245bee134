"""The broker's decisions as pure functions: what a job needs, what a site offers, whether one fits the other,
whether the job's Requirements hold there, and which job ranks first. No database, no clock, no I/O.

matching.match() narrows the queue in SQL with the same numeric rules (see `sql_limits`) and calls `choose` on the
few rows it reads, so both places agree on what "fits" means.

Resource fit: the job's CPUCores, TTL and GPUs must fit the slot. MemorySize and WorkDirectorySize are compared
only when the JDL sets them: their defaults (8 GB and 10 GB per core, DESIGN) are limits the pilot enforces while
the job runs, not a request a small node could never satisfy.

Ranking: higher priority first, then higher price, then older (lower id, as ids grow with submission time).

Requirements cost central CPU at every match, so (docs/broker.md): their size is bounded at submission
(`bounded_requirements`); each distinct text is compiled once per process and its verdicts are remembered
(`RequirementCache`); and a match gives each user a share (`Share`): a user whose candidates were turned down for
USER_REJECTIONS reasons waits until the others have had their turn, one whose Requirements took USER_NODES to
evaluate (or USER_COMPILE_CHARS to compile) is passed over for the rest of the match.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, MutableMapping, Optional, Sequence, Set, Tuple

from gridpilot.central import bounds
from gridpilot.errors import JdlError
from gridpilot.jdl import Expr, JobDescription, parse_expression, write_expression
from gridpilot.jdl import gpus as gpu_terms
from gridpilot.jdl.platform import DEFAULT_ARCH, cpu_level_name, normalise_arch, parse_cpu_level
from gridpilot.jdl.requirements import CompiledRequirements, SiteView, compile_expression, count_nodes
from gridpilot.pilotversion import older_than, version_key

MB = 1 << 20


class SiteMapError(ValueError):
    """A site map field with the wrong type or value; the message names the field, and so does `field`."""

    def __init__(self, message: str, field: str = "site map") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class JobNeeds:
    """What the broker reads from a job: stored in the jobs table's broker columns at submission."""

    cores: int
    memory_mb: int
    disk_mb: int
    ttl: int
    gpus: int
    gpu_name: Optional[str]
    price: float
    requirements: Optional[str]
    req_hash: str
    #: The GPU request's other terms (jdl/gpus.py): an exact model, a vendor, an architecture (schema step 15).
    gpu_model: Optional[str] = None
    gpu_vendor: Optional[str] = None
    gpu_arch: Optional[str] = None
    #: The architecture the job runs on (JobDescription.needed_arch); None: any (a row stored before schema step 14).
    arch: Optional[str] = DEFAULT_ARCH
    #: The x86-64 level asked (CPULevel, 1..4); 0: none.
    cpu_level: int = 0
    #: RequireContainer: only a node where a container runtime starts one.
    require_container: bool = False
    #: MinPilotVersion: the oldest pilot that may run it.
    min_pilot_version: Optional[str] = None


def requirements_hash(text: Optional[str]) -> str:
    """Jobs with the same Requirements text share one evaluation per match; "" stands for no Requirements."""
    return hashlib.sha1(text.encode()).hexdigest() if text else ""


#: Bounds on a job's Requirements, checked at submission: the broker may evaluate it at every match, so its cost is
#: bounded. Real ALICE Requirements (examples/, public ALICE JDLs) have 3 to some 25 nodes and at most about 300
#: characters: the bounds leave forty times that. Nodes: each operator, attribute, literal, function call and list
#: item; `other.TTL > 7200` is three.
MAX_REQUIREMENTS_NODES = 1000
#: Characters of the Requirements written out canonically (as stored).
MAX_REQUIREMENTS_CHARS = 16 << 10


def bounded_requirements(job: JobDescription) -> Optional[str]:
    """The job's Requirements written canonically (None: none), or a JdlError at the Requirements entry naming the
    bound it is over."""
    if job.requirements is None:
        return None
    entry = job.document.entry("Requirements")
    line, column = (entry.line, entry.column) if entry is not None else (0, 0)
    nodes = count_nodes(job.requirements)
    if nodes > MAX_REQUIREMENTS_NODES:
        raise JdlError(f"Requirements has {nodes:,} expression nodes, at most {MAX_REQUIREMENTS_NODES:,} are "
                       "allowed (each operator, attribute, value and list item is one)", line, column)
    text = write_expression(job.requirements)
    if len(text) > MAX_REQUIREMENTS_CHARS:
        raise JdlError(f"Requirements is {len(text):,} characters long written out, at most "
                       f"{MAX_REQUIREMENTS_CHARS:,} are allowed", line, column)
    return text


def needs_of(job: JobDescription) -> JobNeeds:
    """What the broker reads from the job; a JdlError when its Requirements are over the bounds."""
    doc = job.document
    memory_mb = math.ceil(job.memory_size / MB) if doc.get("MemorySize") is not None else 0
    disk_mb = math.ceil(job.work_directory_size / MB) if doc.get("WorkDirectorySize") is not None else 0
    req = bounded_requirements(job)
    return JobNeeds(
        cores=job.cpu_cores,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        ttl=job.ttl,
        gpus=job.gpu.count if job.gpu is not None else 0,
        gpu_name=job.gpu.name if job.gpu is not None else None,
        price=job.price,
        requirements=req,
        req_hash=requirements_hash(req),
        gpu_model=job.gpu.model if job.gpu is not None else None,
        gpu_vendor=job.gpu.vendor if job.gpu is not None else None,
        gpu_arch=job.gpu.arch if job.gpu is not None else None,
        arch=job.needed_arch,
        cpu_level=job.cpu_level,
        require_container=job.require_container,
        min_pilot_version=job.min_pilot_version,
    )


@dataclass(frozen=True)
class Gpu:
    """A free GPU of a site map (the agent lists only the GPUs no running job holds). `model` None: the node could
    not name it (no pci.ids there); such a GPU counts for a job asking a number of GPUs or a vendor, never for one
    asking a model. `pci_id` ("10de:2321") says which device it is then. `arch` None: the node does not know its
    architecture, and it never answers to a job asking one (docs/gpus.md)."""

    vendor: str
    model: Optional[str] = None
    pci_address: str = ""
    pci_id: Optional[str] = None
    arch: Optional[str] = None
    memory_mb: Optional[float] = None

    def label(self) -> str:
        return f"{self.vendor} {self.model or ''}".strip()

    def described(self) -> str:
        """label() with the architecture, for `why`: "AMD Vega 20 (gfx906)"."""
        return self.label() + (f" ({self.arch})" if self.arch else "")


@dataclass(frozen=True)
class Site:
    """A site map as the broker reads it. None means "not said": no check is made on it."""

    ttl: Optional[float] = None
    cores: Optional[int] = None
    memory_mb: Optional[float] = None
    disk_mb: Optional[float] = None
    platform: Optional[str] = None
    arch: Optional[str] = None
    avx: Optional[bool] = None
    gpus: Tuple[Gpu, ...] = ()
    ce: Optional[str] = None
    site: Optional[str] = None
    partitions: Tuple[str, ...] = ()
    users: Tuple[str, ...] = ()
    nousers: Tuple[str, ...] = ()
    close_se: Tuple[str, ...] = ()
    cvmfs_revision: Optional[object] = None
    node: Optional[str] = None
    #: x86_64_level as a number (x86-64-v3 is 3); None: not said.
    x86_64_level: Optional[int] = None
    #: The CPU's features: x86 flags of note (avx2, avx512f...), aarch64 Features, or a riscv64 ISA and extensions.
    cpu_features: Tuple[str, ...] = ()
    #: The pilot's version (PEP 440); None: not said (a pilot from before it was sent, or a CE's probe).
    pilot_version: Optional[str] = None
    #: The container runtimes that started a container on the node; None: not said (a CE's probe).
    containers: Optional[Tuple[str, ...]] = None
    #: Other keys of the site map (e.g. Packages, Price), offered to Requirements as they are.
    extra: Mapping[str, object] = field(default_factory=dict)


_KNOWN = {"ttl", "cores", "memory_mb", "disk_mb", "platform", "arch", "avx", "gpus", "ce", "site", "partition",
          "users", "nousers", "close_se", "cvmfs_revision", "node", "x86_64_level", "cpu_features", "pilot_version",
          "containers"}


def _number(d: Mapping[str, Any], key: str) -> Optional[float]:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise SiteMapError(f"site map field {key!r} must be a number >= 0, got {v!r}", key)
    return float(v)


def _name(v: Any, key: str) -> str:
    """A string the broker may store (the node) or compare with a stored name (users): at most bounds.MAX_NAME
    characters, no NUL."""
    if not isinstance(v, str) or len(v) > bounds.MAX_NAME or "\0" in v:
        got = f"{len(v)} characters" if isinstance(v, str) and len(v) > bounds.MAX_NAME else repr(v)[:80]
        raise SiteMapError(f"site map field {key!r} must be a string of at most {bounds.MAX_NAME} characters "
                           f"without NUL, got {got}", key)
    return v


def _string(d: Mapping[str, Any], key: str) -> Optional[str]:
    v = d.get(key)
    return None if v is None else _name(v, key)


def _strings(d: Mapping[str, Any], key: str) -> Tuple[str, ...]:
    """A list of names (or one comma-separated string): at most bounds.MAX_SITE_LIST of them. users and nousers
    become bind parameters of the broker's query; the bound keeps them far below PostgreSQL's 65,535."""
    v = d.get(key)
    if v is None:
        return ()
    items = [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise SiteMapError(f"site map field {key!r} must be a list of strings", key)
    if len(items) > bounds.MAX_SITE_LIST:
        raise SiteMapError(f"site map field {key!r} lists {len(items)} items, at most {bounds.MAX_SITE_LIST}", key)
    return tuple(_name(i, key) for i in items)


#: GPUs one site map may list: more than any node has, few enough to keep a match cheap.
MAX_GPUS = bounds.MAX_GPUS
#: Each GPU field: its longest value, and the form it must have ("" or absent: not said; null: unknown).
_GPU_FIELDS: Mapping[str, Tuple[int, Optional[re.Pattern[str]], str]] = {
    "vendor": (64, None, "a string of at most 64 characters"),
    "model": (256, None, "a string of at most 256 characters, or null (unknown)"),
    # As the kernel names it: domain (4 to 8 hex digits, Intel VMD's are longer), bus, device, function.
    "pci_address": (20, re.compile(r"[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"),
                    'a PCI address such as "0000:41:00.0"'),
    # vendor:device as lspci -nn prints them.
    "pci_id": (9, re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}"), 'a PCI id such as "10de:2321"'),
    # As the node knows it (pilot/gpuarch.py): sm_80, gfx90a, Xe-HPC; a form wider than a job may ask for, so a
    # node that learns a new architecture's name is not refused for it.
    "arch": (32, re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"), 'a GPU architecture such as "sm_80" or "gfx906"'),
}


def _gpu_field(g: Mapping[str, Any], i: int, key: str) -> Optional[str]:
    v = g.get(key)
    if v is None or v == "":
        # The CE's probes say only a vendor, and a node without pci.ids knows no model: neither is an error.
        return None
    longest, form, expected = _GPU_FIELDS[key]
    if not isinstance(v, str) or len(v) > longest or (form is not None and not form.fullmatch(v)):
        got = f"{len(v)} characters" if isinstance(v, str) and len(v) > longest else repr(v)[:80]
        raise SiteMapError(f"site map field 'gpus[{i}].{key}' must be {expected}, got {got}", f"gpus[{i}].{key}")
    return v


def _gpus(d: Mapping[str, Any]) -> Tuple[Gpu, ...]:
    v = d.get("gpus")
    if v is None:
        return ()
    if not isinstance(v, list):
        raise SiteMapError("site map field 'gpus' must be a list of {vendor, model, pci_address, pci_id}", "gpus")
    if len(v) > MAX_GPUS:
        raise SiteMapError(f"site map field 'gpus' lists {len(v)} GPUs, at most {MAX_GPUS} are taken", "gpus")
    out: List[Gpu] = []
    for i, g in enumerate(v):
        if not isinstance(g, dict):
            raise SiteMapError(f"site map field 'gpus[{i}]' must be an object {{vendor, model, pci_address, pci_id}}",
                               f"gpus[{i}]")
        vendor, model, address, ids, arch = (_gpu_field(g, i, k) for k in _GPU_FIELDS)
        out.append(Gpu(vendor or "", model, address or "", ids, arch, _gpu_memory(g, i)))
    return tuple(out)


def _gpu_memory(g: Mapping[str, Any], i: int) -> Optional[float]:
    v = g.get("memory_mb")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= bounds.MAX_ID:
        raise SiteMapError(f"site map field 'gpus[{i}].memory_mb' must be a number >= 0 or null, got {v!r}"[:200],
                           f"gpus[{i}].memory_mb")
    return float(v)


def _plain(v: object) -> bool:
    if isinstance(v, (str, bool, int, float)):
        return True
    return isinstance(v, list) and all(isinstance(i, (str, bool, int, float)) for i in v)


#: A key a Requirements expression can name (`other.Packages`); others could never be read, so they are dropped.
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _extra(d: Mapping[str, Any]) -> Dict[str, object]:
    """The site map's other keys, offered to Requirements: plain values (strings, numbers, lists of them) under
    names an expression can use; each list at most bounds.MAX_SITE_LIST items, each string bounds.MAX_SITE_TEXT."""
    out: Dict[str, object] = {}
    for k, v in d.items():
        if not (isinstance(k, str) and _ATTRIBUTE.fullmatch(k)) or k.lower() in _KNOWN or not _plain(v):
            continue
        items = v if isinstance(v, list) else [v]
        if len(items) > bounds.MAX_SITE_LIST:
            raise SiteMapError(f"site map field {k!r} lists {len(items)} items, at most {bounds.MAX_SITE_LIST}", k)
        if any(isinstance(i, str) and len(i) > bounds.MAX_SITE_TEXT for i in items):
            raise SiteMapError(f"site map field {k!r} has a string over {bounds.MAX_SITE_TEXT} characters", k)
        out[k] = v
    return out


def parse_site_map(d: Mapping[str, Any]) -> Site:
    """Check and read a site map posted by an agent (or a CE's probe). SiteMapError names the bad field."""
    if not isinstance(d, Mapping):
        raise SiteMapError("the site map must be a JSON object", "site map")
    if len(d) > bounds.MAX_SITE_KEYS:
        raise SiteMapError(f"the site map has {len(d)} keys, at most {bounds.MAX_SITE_KEYS}", "site map")
    cores = _number(d, "cores")
    if cores is not None and cores != int(cores):
        raise SiteMapError(f"site map field 'cores' must be a whole number, got {cores}", "cores")
    avx = d.get("avx")
    if avx is not None and not isinstance(avx, bool):
        raise SiteMapError("site map field 'avx' must be true or false", "avx")
    rev = d.get("cvmfs_revision")
    if rev is not None and (isinstance(rev, bool) or not isinstance(rev, (int, str))):
        raise SiteMapError("site map field 'cvmfs_revision' must be a number or a string", "cvmfs_revision")
    if isinstance(rev, str):
        _name(rev, "cvmfs_revision")
    extra = _extra(d)
    containers = None if d.get("containers") is None else _strings(d, "containers")
    return Site(
        ttl=_number(d, "ttl"),
        cores=None if cores is None else int(cores),
        memory_mb=_number(d, "memory_mb"),
        disk_mb=_number(d, "disk_mb"),
        platform=_string(d, "platform"),
        arch=_string(d, "arch"),
        avx=avx,
        gpus=_gpus(d),
        ce=_string(d, "ce"),
        site=_string(d, "site"),
        partitions=_strings(d, "partition"),
        users=_strings(d, "users"),
        nousers=_strings(d, "nousers"),
        close_se=_strings(d, "close_se"),
        cvmfs_revision=rev,
        node=_string(d, "node"),
        x86_64_level=_x86_level(d),
        cpu_features=_features(d),
        pilot_version=_pilot_version(d),
        containers=containers,
        extra=extra,
    )


#: Features one site map may list, and each one's length (bounds.py).
MAX_CPU_FEATURES = bounds.MAX_CPU_FEATURES
MAX_CPU_FEATURE_CHARS = bounds.MAX_CPU_FEATURE_CHARS


def _x86_level(d: Mapping[str, Any]) -> Optional[int]:
    v = d.get("x86_64_level")
    if v is None:
        return None
    try:
        if not isinstance(v, str) or not v.startswith("x86-64"):
            raise ValueError(v)
        return parse_cpu_level(v)
    except ValueError:
        raise SiteMapError(f"site map field 'x86_64_level' must be \"x86-64-v1\" to \"x86-64-v4\", got "
                           f"{repr(v)[:40]}", "x86_64_level") from None


def _features(d: Mapping[str, Any]) -> Tuple[str, ...]:
    v = d.get("cpu_features")
    if v is None:
        return ()
    if not isinstance(v, list) or len(v) > MAX_CPU_FEATURES or not all(
            isinstance(f, str) and 0 < len(f) <= MAX_CPU_FEATURE_CHARS and "\0" not in f for f in v):
        raise SiteMapError(f"site map field 'cpu_features' must be a list of at most {MAX_CPU_FEATURES} strings of 1 "
                           f"to {MAX_CPU_FEATURE_CHARS} characters", "cpu_features")
    return tuple(f.lower() for f in v)


def _pilot_version(d: Mapping[str, Any]) -> Optional[str]:
    v = d.get("pilot_version")
    if v is None:
        return None
    try:
        version_key(v)
    except ValueError as e:
        raise SiteMapError(f"site map field 'pilot_version': {e}", "pilot_version") from None
    return str(v).strip()


def site_attributes(site: Site) -> Dict[str, object]:
    """The `other.*` attributes a JDL's Requirements see, with ALICE's names where ALICE has one.

    LocalDiskSpace is in kB, as in ALICE JDLs (`other.LocalDiskSpace > 200000000` asks for ~200 GB).
    Extra keys of the site map come first, so they can never shadow the standard ones.
    """
    attrs: Dict[str, object] = dict(site.extra)
    std: Dict[str, object] = {
        "Type": "machine",
        "TTL": site.ttl,
        "CPUCores": site.cores,
        "Memory": site.memory_mb,
        "Disk": site.disk_mb,
        "LocalDiskSpace": None if site.disk_mb is None else site.disk_mb * 1024,
        "Platform": site.platform,
        "Arch": site.arch,
        "AVX": site.avx,
        "GPUs": len(site.gpus),
        "GPUModels": [g.label() for g in site.gpus],
        "GPUVendors": sorted({g.vendor for g in site.gpus if g.vendor}),
        "GPUArchs": sorted({g.arch for g in site.gpus if g.arch}),
        "CE": site.ce,
        "Site": site.site,
        "Partition": ",".join(site.partitions) if site.partitions else None,
        "GridPartitions": list(site.partitions),
        "Users": list(site.users),
        "NoUsers": list(site.nousers),
        "CloseSE": list(site.close_se),
        "CVMFS_Revision": site.cvmfs_revision,
        "Node": site.node,
        "Host": site.node,
        "X86Level": site.x86_64_level,
        "AVX2": None if site.arch is None or normalise_arch(site.arch) != "x86_64" else "avx2" in site.cpu_features,
        "CPUFeatures": list(site.cpu_features),
        "PilotVersion": site.pilot_version,
        "Containers": None if site.containers is None else list(site.containers),
    }
    lower = {k.lower(): k for k in attrs}
    for k, v in std.items():
        attrs.pop(lower.get(k.lower(), k), None)
        if v is not None:
            attrs[k] = v
    return attrs


def matching_gpus(site: Site, name: Optional[str] = None, *, model: Optional[str] = None,
                  vendor: Optional[str] = None, arch: Optional[str] = None) -> int:
    """How many of the site's (free) GPUs answer to every term given (jdl/gpus.py: `name` a case-insensitive
    substring of vendor and model, `model` an exact model name, `vendor`, `arch`; none: all). A GPU of unknown model
    answers to its vendor only, one of unknown arch to no arch."""
    return sum(1 for g in site.gpus if gpu_terms.answers(g.vendor, g.model, g.arch, name=name, model=model,
                                                         vendor=vendor, arch=arch))


def _job_gpu_terms(job: Any) -> Dict[str, Optional[str]]:
    # getattr: rows read before schema step 15's columns (and callers' stand-ins) have only gpu_name.
    return {"name": job.gpu_name, "model": getattr(job, "gpu_model", None),
            "vendor": getattr(job, "gpu_vendor", None), "arch": getattr(job, "gpu_arch", None)}


def _gpu_misfit(job: Any, site: Site) -> str:
    terms = _job_gpu_terms(job)
    asked = gpu_terms.request_terms(_Terms(**terms))
    if list(terms.values()) == [job.gpu_name, None, None, None]:
        # The words of before GPUVendor/GPUArch, which users' scripts may read.
        what = f"{job.gpus} GPU(s)" + (f" matching {job.gpu_name!r}" if job.gpu_name else "")
    else:
        what = f"{job.gpus} GPU(s) of {asked}"
    text = f"needs {what}, slot has {matching_gpus(site, **terms)}"
    wants_name = job.gpu_name or terms["model"]
    unknown = [g for g in site.gpus if g.model is None and wants_name
               and not gpu_terms.answers(g.vendor, g.model, g.arch, **terms)]
    if unknown:
        # Said, because the GPU asked for may well be among them, and the remedy is on the node (a pci.ids, which
        # names the models), not in the job.
        ids = sorted({" ".join(x for x in (g.vendor, g.pci_id) if x) or "no vendor" for g in unknown})
        text += (f" (and {len(unknown)} of unknown model, {', '.join(ids)}, which answer to a vendor, never to a "
                 "model: a node names its GPUs' models from its pci.ids)")
    no_arch = [g for g in site.gpus if g.arch is None]
    if terms["arch"] and no_arch:
        text += (f" ({len(no_arch)} of unknown architecture, which answer to no GPUArch: the node knows an "
                 "architecture from the driver or its table of PCI ids, docs/gpus.md)")
    # What is free, so the user sees what the slot would have given (and a typo in the request stands out).
    kinds: Dict[str, int] = {}
    for g in site.gpus:
        kinds[g.described()] = kinds.get(g.described(), 0) + 1
    return text + "; free: " + (", ".join(f"{n}x {k}" for k, n in sorted(kinds.items())) or "none")


@dataclass(frozen=True)
class _Terms:
    name: Optional[str]
    model: Optional[str]
    vendor: Optional[str]
    arch: Optional[str]


@dataclass(frozen=True)
class Policy:
    """Central's settings that gate matches on what a node can do (CentralSettings; docs/broker.md): applied at
    match time, so a change reaches the jobs already queued."""

    #: Users whose jobs are production (ALICE's aliprod): with production_requires_avx they never go to an x86_64
    #: node without AVX.
    production_users: FrozenSet[str] = frozenset({"aliprod"})
    production_requires_avx: bool = True
    #: The lowest x86-64 level (1..4; 0: none) any x86_64 job needs.
    min_x86_level: int = 0
    #: The oldest pilot version (PEP 440) given any job; None: any.
    min_pilot_version: Optional[str] = None
    #: Every job needs a node where a container runtime starts a container.
    require_container: bool = False


DEFAULT_POLICY = Policy()
#: What a pilot that does not say its version is taken for (matching sets it for agents from before versions were
#: sent): older than any minimum.
UNSAID_VERSION = "0"


def _site_arch(site: Site) -> Optional[str]:
    return None if site.arch is None else (normalise_arch(site.arch.lower()) or site.arch.lower())


def _pilot_misfit(minimum: Optional[str], site: Site, whose: str) -> Optional[Tuple[str, str]]:
    if minimum is None or site.pilot_version is None or not older_than(site.pilot_version, minimum):
        return None
    said = "does not say its version (a pilot from before versions were sent)" \
        if site.pilot_version == UNSAID_VERSION else f"is {site.pilot_version}"
    return "pilot_version", f"needs pilot {minimum} or newer ({whose}), the pilot {said}"


def site_refusal(site: Site, policy: Policy = DEFAULT_POLICY) -> Optional[Tuple[str, str]]:
    """A clause that fails for every job on this site map under central's policy (the pilot older than
    min_pilot_version, an x86_64 node below min_x86_level), or None: the match need not read the queue."""
    found = _pilot_misfit(policy.min_pilot_version, site, "central's min_pilot_version")
    if found is not None:
        return found
    if policy.min_x86_level > 1 and _site_arch(site) == DEFAULT_ARCH:
        needed = f"needs {cpu_level_name(policy.min_x86_level)} (central's min_x86_level)"
        if site.x86_64_level is None:
            return "cpu_level", f"{needed}, the node does not say its x86-64 level"
        if site.x86_64_level < policy.min_x86_level:
            return "cpu_level", f"{needed}, node is {cpu_level_name(site.x86_64_level)}"
    return None


def _needs(job: Any) -> Tuple[Optional[str], int, bool, Optional[str]]:
    """The job's arch, CPU level, container and pilot needs; a row or object without them (from before schema step
    14) asks none of them."""
    return (getattr(job, "arch", None), getattr(job, "cpu_level", 0) or 0, bool(getattr(job, "require_container", 0)),
            getattr(job, "min_pilot_version", None))


def _arch_misfit(job: Any, site: Site) -> Optional[Tuple[str, str]]:
    arch, job_arch = _site_arch(site), _needs(job)[0]
    if job_arch is not None and arch is not None and job_arch != arch:
        return "arch", f"needs {job_arch}, node is {arch}"
    return None


def _capability_misfit(job: Any, site: Site, policy: Policy) -> Optional[Tuple[str, str]]:
    """The x86-64 level and AVX gates, the pilot's version and the container: checked after the resources."""
    _, cpu_level, require_container, min_pilot_version = _needs(job)
    if _site_arch(site) == DEFAULT_ARCH:
        level = max(cpu_level, policy.min_x86_level)
        whose = " (central's min_x86_level)" if level > cpu_level else ""
        if level > 1 and site.x86_64_level is None:
            return "cpu_level", f"needs {cpu_level_name(level)}{whose}, the node does not say its x86-64 level"
        if level > 1 and site.x86_64_level is not None and site.x86_64_level < level:
            return "cpu_level", f"needs {cpu_level_name(level)}{whose}, node is {cpu_level_name(site.x86_64_level)}"
        if site.avx is False and policy.production_requires_avx and job.user in policy.production_users:
            return "avx", (f"a production job (user {job.user!r}) needs AVX (central's production_requires_avx), "
                           "the node has none")
    found = _pilot_misfit(policy.min_pilot_version, site, "central's min_pilot_version")
    if found is None:
        found = _pilot_misfit(min_pilot_version, site, "the job's MinPilotVersion")
    if found is not None:
        return found
    if (require_container or policy.require_container) and site.containers is not None and not site.containers:
        whose = "RequireContainer" if require_container else "central's require_container"
        return "container", f"needs a container ({whose}), no container runtime starts one on the node"
    return None


def misfit(job: Any, site: Site, policy: Policy = DEFAULT_POLICY) -> Optional[str]:
    """Why the job's resources do not fit the site, or None when they fit. `job` has JobNeeds' fields and `user`."""
    found = misfit_clause(job, site, policy)
    return None if found is None else found[1]


def misfit_clause(job: Any, site: Site, policy: Policy = DEFAULT_POLICY) -> Optional[Tuple[str, str]]:
    """The first clause that fails, as (clause, why), or None when the job fits. The clause names are part of
    GET /jobs/{id}/why: arch, cores, ttl, memory, disk, gpus, users, cpu_level, avx, pilot_version, container."""
    found = _arch_misfit(job, site)
    if found is not None:
        return found
    if site.cores is not None and job.cores > site.cores:
        return "cores", f"needs {job.cores} cores, slot has {site.cores}"
    if site.ttl is not None and job.ttl > site.ttl:
        return "ttl", f"needs TTL {job.ttl} s, slot has {site.ttl:.0f} s left"
    if site.memory_mb is not None and job.memory_mb > site.memory_mb:
        return "memory", f"needs {job.memory_mb} MB of memory, slot has {site.memory_mb:.0f} MB"
    if site.disk_mb is not None and job.disk_mb > site.disk_mb:
        return "disk", f"needs {job.disk_mb} MB of disk, slot has {site.disk_mb:.0f} MB"
    if job.gpus > 0 and matching_gpus(site, **_job_gpu_terms(job)) < job.gpus:
        return "gpus", _gpu_misfit(job, site)
    if site.users and job.user not in site.users:
        return "users", f"user {job.user!r} is not among the site's users"
    if job.user in site.nousers:
        return "users", f"user {job.user!r} is excluded by the site"
    return _capability_misfit(job, site, policy)


@dataclass(frozen=True)
class SqlLimits:
    """The numeric part of `misfit` as bounds for a SQL filter (None: no bound)."""

    max_cores: Optional[int]
    max_ttl: Optional[float]
    max_memory_mb: Optional[float]
    max_disk_mb: Optional[float]
    max_gpus: int
    users: Tuple[str, ...]
    nousers: Tuple[str, ...]
    #: Jobs of this architecture (or of none said: rows from before schema step 14); None: any.
    arch: Optional[str] = None
    #: The highest CPULevel a job may ask.
    max_cpu_level: int = 4
    #: Whether a job that requires a container may come.
    container_ok: bool = True


def sql_limits(site: Site) -> SqlLimits:
    arch = _site_arch(site)
    level = 4 if arch != DEFAULT_ARCH else site.x86_64_level or 1
    return SqlLimits(site.cores, site.ttl, site.memory_mb, site.disk_mb, len(site.gpus), site.users, site.nousers,
                     arch, level, site.containers is None or bool(site.containers))


def rank_key(job: Any) -> Tuple[float, float, float, int]:
    """Sort key: priority (high first), price (high first), age (old first), id."""
    return (-job.priority, -job.price, job.created, job.id)


def rank(jobs: Iterable[Any]) -> List[Any]:
    return sorted(jobs, key=rank_key)


#: Texts found false lately that a match looks up for its site map before its first scan (RequirementCache.known_false):
#: each costs a dictionary lookup per match, and the scan's SQL carries the hashes that are false there.
FALSE_REMEMBERED = 64


class RequirementCache:
    """One process's memory of Requirements, shared by all its matches:

    - each distinct text compiled once, by its hash (`learn` at submission, `compile` on first use in other
      processes), the least recently used dropped first; a text that does not parse, or is over the bounds (stored
      before they existed), compiles to None: it matches nowhere;
    - verdicts by (hash, what the expression can tell of the site map: SiteView.key) (`holds`), so the same text is
      not evaluated again for site maps that agree on what it reads, across matches and agents.

    Threads of a process share it; a lock keeps its dictionaries whole (compiling and evaluating run outside it).
    Its memory is bounded: a compiled expression takes some 300 bytes per node, so at most `nodes` nodes are kept
    (~60 MB: 200 texts of the largest size, or 4,096 of ALICE's), and `verdicts` verdicts (~300 bytes each).
    """

    def __init__(self, size: int = 4096, verdicts: int = 1 << 16, nodes: int = 200_000) -> None:
        self.size = size
        self.verdicts_size = verdicts
        self.nodes_size = nodes
        self._lock = threading.Lock()
        self._compiled: OrderedDict[str, Optional[CompiledRequirements]] = OrderedDict()
        self._nodes = 0
        self._verdicts: OrderedDict[Tuple[str, Tuple[object, ...]], bool] = OrderedDict()
        #: Hashes of texts found false on some site map lately, newest last (`known_false`).
        self._false: OrderedDict[str, None] = OrderedDict()

    def knows(self, req_hash: str) -> bool:
        with self._lock:
            return req_hash in self._compiled

    def learn(self, req_hash: str, tree: Expr) -> None:
        """Compile a job's Requirements at submission, where its tree is at hand (needs_of has checked the bounds)."""
        self._keep(req_hash, compile_expression(tree))

    def lookup(self, req_hash: str) -> Tuple[bool, Optional[CompiledRequirements]]:
        """(found, compiled): found is False when the hash is not compiled in this process (yet, or any more)."""
        with self._lock:
            if req_hash not in self._compiled:
                return False, None
            self._compiled.move_to_end(req_hash)
            return True, self._compiled[req_hash]

    def compile(self, req_hash: str, text: str) -> Optional[CompiledRequirements]:
        """Compile a stored text (compile_requirements) and keep it."""
        c = compile_requirements(text)
        self._keep(req_hash, c)
        return c

    def _keep(self, req_hash: str, c: Optional[CompiledRequirements]) -> None:
        with self._lock:
            old = self._compiled.pop(req_hash, None)
            self._nodes += _weight(c) - _weight(old)
            self._compiled[req_hash] = c
            while len(self._compiled) > 1 and (len(self._compiled) > self.size or self._nodes > self.nodes_size):
                _, dropped = self._compiled.popitem(last=False)
                self._nodes -= _weight(dropped)

    def holds(self, req_hash: str, c: CompiledRequirements, view: SiteView,
              evaluate: bool = True) -> Tuple[Optional[bool], int]:
        """Whether the expression holds on the site, and the nodes evaluated to learn it (0: remembered).
        (None, 0) when it is not remembered and `evaluate` is false."""
        key = (req_hash, view.key(c.spec))
        with self._lock:
            ok = self._verdicts.get(key)
            if ok is not None:
                self._verdicts.move_to_end(key)
                return ok, 0
        if not evaluate:
            return None, 0
        ok = c.holds(view)
        with self._lock:
            self._verdicts[key] = ok
            if len(self._verdicts) > self.verdicts_size:
                self._verdicts.popitem(last=False)
            if not ok:
                self._false[req_hash] = None
                self._false.move_to_end(req_hash)
                if len(self._false) > FALSE_REMEMBERED:
                    self._false.popitem(last=False)
        return ok, c.nodes

    def known_false(self, view: SiteView) -> List[str]:
        """Hashes of texts this process has found false on a site map that agrees with `view` on what they read
        (the verdicts `holds` remembers), among the FALSE_REMEMBERED found false lately: a match leaves their jobs out
        of its first scan instead of reading a batch of them to learn it again (the jobs no slot takes gather at the
        head of the queue). Only remembered verdicts count: nothing is evaluated here."""
        with self._lock:
            found = [(h, self._compiled[h]) for h in self._false if h in self._compiled]
        out = []
        for h, c in found:
            if c is None:
                continue  # matches nowhere, but is never judged by `holds`: not in the list
            key = (h, view.key(c.spec))
            with self._lock:
                ok = self._verdicts.get(key)
            if ok is False:
                out.append(h)
        return out


def _weight(c: Optional[CompiledRequirements]) -> int:
    return 1 if c is None else c.nodes


def compile_requirements(text: str) -> Optional[CompiledRequirements]:
    """A stored Requirements text compiled; None when it cannot match anywhere (unparsable, or over the bounds)."""
    if len(text) > MAX_REQUIREMENTS_CHARS:
        return None
    try:
        c = compile_expression(parse_expression(text))
    except JdlError:
        return None  # stored by an older version, or edited by hand
    return c if c.nodes <= MAX_REQUIREMENTS_NODES else None


# -- the per-user share of a match --

#: A user whose jobs were turned down for this many distinct reasons (Requirements texts that do not hold here,
#: resources that do not fit) has had their turn: the match passes over them until the other users' candidates
#: have run out, then gives them another turn. One batch's worth, so a user with many kinds of jobs loses nothing
#: on a queue that is theirs alone.
USER_REJECTIONS = 16
#: In one match, a user whose Requirements took this many nodes to evaluate is passed over for the rest of it: four
#: expressions of the largest size allowed (~0.2 ms each on the build machine). Remembered verdicts cost nothing.
USER_NODES = 4 * MAX_REQUIREMENTS_NODES
#: In one match, all users together: past this, only remembered verdicts and jobs without Requirements are judged
#: (the agent asks again later, and what was learnt meanwhile is remembered).
MATCH_NODES = 5 * USER_NODES
#: Characters of Requirements texts one match may compile (parse, mostly: ~0.5 ms per KB, some 50 times the cost of
#: evaluating the result), per user and in all. A job's text is compiled at submission in the process that takes it
#: (RequirementCache.learn), so this is spent in the other processes, or after a restart, once per text.
USER_COMPILE_CHARS = MAX_REQUIREMENTS_CHARS
MATCH_COMPILE_CHARS = 2 * MAX_REQUIREMENTS_CHARS


@dataclass
class Share:
    """What each user has had of one match so far (broker.choose fills it; matching leaves out in SQL the users it
    passes over). The policy is docs/broker.md's."""

    rejections: Optional[int] = USER_REJECTIONS
    user_nodes: int = USER_NODES
    match_nodes: int = MATCH_NODES
    user_chars: int = USER_COMPILE_CHARS
    match_chars: int = MATCH_COMPILE_CHARS
    nodes: Dict[str, int] = field(default_factory=dict)
    chars: Dict[str, int] = field(default_factory=dict)
    turned_down: Dict[str, Set[object]] = field(default_factory=dict)
    #: Users who spent what they may on judging: passed over for the rest of the match.
    exhausted: Set[str] = field(default_factory=set)
    #: Users who had their turn: passed over until new_turn().
    resting: Set[str] = field(default_factory=set)
    total_nodes: int = 0
    total_chars: int = 0

    def passed_over(self) -> List[str]:
        return sorted(self.exhausted | self.resting)

    def may_evaluate(self) -> bool:
        return self.total_nodes < self.match_nodes

    def spend(self, user: str, nodes: int) -> None:
        self.total_nodes += nodes
        n = self.nodes[user] = self.nodes.get(user, 0) + nodes
        if n >= self.user_nodes:
            self.exhausted.add(user)

    def may_compile(self, user: str, chars: int) -> bool:
        """Whether the user's text of `chars` characters may be compiled now (and if so, charge it). A user whose
        own allowance it exceeds is passed over for the rest of the match; when the match's is spent, nobody's."""
        if chars > MAX_REQUIREMENTS_CHARS:
            return True  # refused unread (compile_requirements): it costs nothing
        if self.total_chars + chars > self.match_chars:
            return False
        mine = self.chars.get(user, 0) + chars
        if mine > self.user_chars:
            self.exhausted.add(user)
            return False
        self.chars[user] = mine
        self.total_chars += chars
        return True

    def turn_down(self, user: str, reason: object) -> None:
        seen = self.turned_down.setdefault(user, set())
        seen.add(reason)
        if self.rejections is not None and len(seen) >= self.rejections:
            self.resting.add(user)

    def new_turn(self) -> bool:
        """Give the resting users another turn (when no other user's candidates are left); False if none rested."""
        if not self.resting:
            return False
        for user in self.resting:
            self.turned_down.pop(user, None)
        self.resting.clear()
        return True


def judge(job: Any, view: SiteView, cache: RequirementCache, share: Share, texts: Mapping[str, str]) -> Optional[bool]:
    """Whether the job's Requirements hold on the site, paying for it from its user's share; None when the match
    cannot afford to learn it (or its text is not at hand): the job is passed over this time, not turned down."""
    h = job.req_hash
    found, c = cache.lookup(h)
    if not found:
        text = getattr(job, "requirements", None) or texts.get(h)
        if text is None or not share.may_compile(job.user, len(text)):
            return None
        c = cache.compile(h, text)
    if c is None:
        return False
    # A text just compiled is evaluated whatever is left (an evaluation costs a fraction of its compiling), so its
    # verdict is learnt with it, and remembered.
    ok, cost = cache.holds(h, c, view, evaluate=not found or share.may_evaluate())
    share.spend(job.user, cost)
    return ok


def choose(
    candidates: Sequence[Any],
    site: Site,
    attrs: Any,
    cache: RequirementCache,
    verdicts: MutableMapping[str, bool],
    misfits: Optional[List[int]] = None,
    share: Optional[Share] = None,
    texts: Mapping[str, str] = {},
    policy: Policy = DEFAULT_POLICY,
) -> Optional[Any]:
    """The best-ranked candidate that fits the site and whose Requirements hold there, or None. A pure function of
    its arguments (the cache only remembers what it computes).

    `attrs` is site_attributes(site), or a SiteView of them. `verdicts` (req_hash -> holds) is filled as
    Requirements are judged, and may be carried over between calls for the same site map: each distinct text is
    judged once per match. The ids of candidates whose resources do not fit are appended to `misfits` when given.
    A candidate's Requirements text is its `requirements` field when it has one, else `texts[req_hash]` (needed
    only when the cache has not compiled it).

    `share` (a new one when None) is what each user has had of this match: candidates of users it passes over are
    skipped, and each turn-down and evaluation is charged to the candidate's user (Share). `policy` is central's
    (Policy).
    """
    view = attrs if isinstance(attrs, SiteView) else SiteView(attrs)
    share = share if share is not None else Share()
    for job in rank(candidates):
        user = job.user
        if user in share.exhausted or user in share.resting:
            continue
        if misfit(job, site, policy) is not None:
            if misfits is not None:
                misfits.append(job.id)
            share.turn_down(user, ("resources", job.cores, job.memory_mb, job.disk_mb, job.ttl, job.gpus,
                                   *_job_gpu_terms(job).values(), *_needs(job)))
            continue
        h = job.req_hash
        if not h:
            return job
        ok = verdicts.get(h)
        if ok is None:
            ok = judge(job, view, cache, share, texts)
            if ok is None:
                continue
            verdicts[h] = ok
        if ok:
            return job
        share.turn_down(user, h)
    return None
