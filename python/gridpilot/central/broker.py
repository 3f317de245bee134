"""The broker's decisions as pure functions: what a job needs, what a site offers, whether one fits the other,
whether the job's Requirements hold there, and which job ranks first. No database, no clock, no I/O.

matching.match() narrows the queue in SQL with the same numeric rules (see `sql_limits`) and calls `choose` on the
few rows it reads, so both places agree on what "fits" means.

Resource fit: the job's CPUCores, TTL and GPUs must fit the slot. MemorySize and WorkDirectorySize are compared
only when the JDL sets them: their defaults (8 GB and 10 GB per core, DESIGN) are limits the pilot enforces while
the job runs, not a request a small node could never satisfy.

Ranking: higher priority first, then higher price, then older (lower id, as ids grow with submission time).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from gridpilot.central import bounds
from gridpilot.errors import JdlError
from gridpilot.jdl import Expr, JobDescription, evaluate, parse_expression, write_expression

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


def requirements_hash(text: Optional[str]) -> str:
    """Jobs with the same Requirements text share one evaluation per match; "" stands for no Requirements."""
    return hashlib.sha1(text.encode()).hexdigest() if text else ""


def needs_of(job: JobDescription) -> JobNeeds:
    doc = job.document
    memory_mb = math.ceil(job.memory_size / MB) if doc.get("MemorySize") is not None else 0
    disk_mb = math.ceil(job.work_directory_size / MB) if doc.get("WorkDirectorySize") is not None else 0
    req = write_expression(job.requirements) if job.requirements is not None else None
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
    )


@dataclass(frozen=True)
class Gpu:
    """A GPU of a site map. `model` None: the node could not name it (no pci.ids there); such a GPU counts for a
    job asking a number of GPUs or a vendor, never for one asking a model. `pci_id` ("10de:2321") says which device
    it is then."""

    vendor: str
    model: Optional[str] = None
    pci_address: str = ""
    pci_id: Optional[str] = None

    def label(self) -> str:
        return f"{self.vendor} {self.model or ''}".strip()


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
    #: Other keys of the site map (e.g. Packages, Price), offered to Requirements as they are.
    extra: Mapping[str, object] = field(default_factory=dict)


_KNOWN = {"ttl", "cores", "memory_mb", "disk_mb", "platform", "arch", "avx", "gpus", "ce", "site", "partition",
          "users", "nousers", "close_se", "cvmfs_revision", "node"}


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
        vendor, model, address, ids = (_gpu_field(g, i, k) for k in _GPU_FIELDS)
        out.append(Gpu(vendor or "", model, address or "", ids))
    return tuple(out)


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
        extra=extra,
    )


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
    }
    lower = {k.lower(): k for k in attrs}
    for k, v in std.items():
        attrs.pop(lower.get(k.lower(), k), None)
        if v is not None:
            attrs[k] = v
    return attrs


def matching_gpus(site: Site, name: Optional[str]) -> int:
    """How many of the site's GPUs answer to `name` (vendor or model, case-insensitive substring; None: all).
    A GPU of unknown model answers to its vendor only."""
    if not name:
        return len(site.gpus)
    return sum(1 for g in site.gpus if _answers(g, name))


def _answers(gpu: Gpu, name: str) -> bool:
    n = name.casefold()
    return n in gpu.label().casefold() or n in gpu.vendor.casefold()


def _gpu_misfit(job: Any, site: Site) -> str:
    what = f"{job.gpus} GPU(s)" + (f" matching {job.gpu_name!r}" if job.gpu_name else "")
    text = f"needs {what}, slot has {matching_gpus(site, job.gpu_name)}"
    unknown = [g for g in site.gpus if g.model is None and job.gpu_name and not _answers(g, job.gpu_name)]
    if unknown:
        # Said, because the GPU asked for may well be among them, and the remedy is on the node (a pci.ids, which
        # names the models), not in the job.
        ids = sorted({" ".join(x for x in (g.vendor, g.pci_id) if x) or "no vendor" for g in unknown})
        text += (f" (and {len(unknown)} of unknown model, {', '.join(ids)}, which answer to a vendor, never to a "
                 "model: a node names its GPUs' models from its pci.ids)")
    return text


def misfit(job: Any, site: Site) -> Optional[str]:
    """Why the job's resources do not fit the site, or None when they fit. `job` has JobNeeds' fields and `user`."""
    if site.cores is not None and job.cores > site.cores:
        return f"needs {job.cores} cores, slot has {site.cores}"
    if site.ttl is not None and job.ttl > site.ttl:
        return f"needs TTL {job.ttl} s, slot has {site.ttl:.0f} s left"
    if site.memory_mb is not None and job.memory_mb > site.memory_mb:
        return f"needs {job.memory_mb} MB of memory, slot has {site.memory_mb:.0f} MB"
    if site.disk_mb is not None and job.disk_mb > site.disk_mb:
        return f"needs {job.disk_mb} MB of disk, slot has {site.disk_mb:.0f} MB"
    if job.gpus > 0 and matching_gpus(site, job.gpu_name) < job.gpus:
        return _gpu_misfit(job, site)
    if site.users and job.user not in site.users:
        return f"user {job.user!r} is not among the site's users"
    if job.user in site.nousers:
        return f"user {job.user!r} is excluded by the site"
    return None


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


def sql_limits(site: Site) -> SqlLimits:
    return SqlLimits(site.cores, site.ttl, site.memory_mb, site.disk_mb, len(site.gpus), site.users, site.nousers)


def rank_key(job: Any) -> Tuple[float, float, float, int]:
    """Sort key: priority (high first), price (high first), age (old first), id."""
    return (-job.priority, -job.price, job.created, job.id)


def rank(jobs: Iterable[Any]) -> List[Any]:
    return sorted(jobs, key=rank_key)


class RequirementCache:
    """Parsed Requirements by text, least recently used dropped first. Texts are canonical (write_expression)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._trees: OrderedDict[str, Optional[Expr]] = OrderedDict()

    def tree(self, text: str) -> Optional[Expr]:
        t = self._trees.get(text)
        if t is not None or text in self._trees:
            self._trees.move_to_end(text)
            return t
        try:
            t = parse_expression(text)
        except JdlError:
            t = None  # stored by an older version, or edited by hand: such a job matches nowhere
        self._trees[text] = t
        if len(self._trees) > self.size:
            self._trees.popitem(last=False)
        return t


def requirements_hold(text: Optional[str], attrs: Mapping[str, object], cache: RequirementCache) -> bool:
    if not text:
        return True
    tree = cache.tree(text)
    return tree is not None and evaluate(tree, attrs)


def choose(
    candidates: Sequence[Any],
    site: Site,
    attrs: Mapping[str, object],
    cache: RequirementCache,
    verdicts: MutableMapping[str, bool],
    misfits: Optional[List[int]] = None,
) -> Optional[Any]:
    """The best-ranked candidate that fits the site and whose Requirements hold there, or None.

    `verdicts` (req_hash -> holds) is filled as Requirements are evaluated, and may be carried over between calls
    for the same site map: each distinct Requirements text is evaluated once per match. The ids of candidates
    whose resources do not fit are appended to `misfits` when it is given.
    """
    for job in rank(candidates):
        if misfit(job, site) is not None:
            if misfits is not None:
                misfits.append(job.id)
            continue
        h = job.req_hash
        ok = verdicts.get(h)
        if ok is None:
            ok = verdicts[h] = requirements_hold(job.requirements, attrs, cache)
        if ok:
            return job
    return None
