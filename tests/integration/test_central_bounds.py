"""Every input from outside has a bound, checked at the edge: one table of bad inputs, run on SQLite and PostgreSQL.

Each case is one HTTP request a caller could send: a route, whose token, and one bad value in one field (a path
id, a query parameter, a body field, a JDL value that becomes a column). Central must answer 400 with an error
that names the field (`field` in the error body, and in the message), or 404 / 413 where that is the truth, on
both databases alike; never 500. The bounds are central/bounds.py's, documented in docs/central-api.md.

The table runs against one central per database (module scope); every case is refused, so nothing it sends may
change what the next case sees, and the last test checks that nothing was written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Union
from urllib.parse import urlencode

import orjson
import pytest
import urllib3
from support.central import jdl, site_map, start_world
from sqlalchemy import func, select

from gridpilot.central import bounds, schema, tokens
from support import paths

API = "/api/v1"
#: Stands for the id of the bench's held job in paths and bodies (`"$JOB"` in a JSON body: the bare number).
JOB = "$JOB"

BIG_ID = 1 << 63  # one past BIGINT
HUGE_DIGITS = "9" * 5000  # more digits than Python's int() takes from a string
NUL = "a\x00b"
DEEP = b'{"a":' * 300 + b"1" + b"}" * 300  # deeper than orjson.dumps goes (it loads deeper)
DEEP_LIST = b"[" * 300 + b"1" + b"]" * 300
TOO_DEEP_TO_PARSE = b"[" * 5000 + b"]" * 5000
POISON_TTL = int(tokens.MAX_TTL_S - tokens.JOB_TOKEN_MARGIN_S) + 1  # 34,473,601 s: accepted, then unmatchable


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    role: str
    body: Union[None, bytes, Dict[str, Any]] = None
    query: Optional[Dict[str, str]] = None
    field: Optional[str] = None  # the field the error must name (None: no single field, e.g. malformed JSON)
    status: int = 400

    def __str__(self) -> str:
        return self.name


def C(name: str, method: str, path: str, role: str, body: Any = None, *, field: Optional[str], status: int = 400,
      query: Optional[Dict[str, str]] = None) -> Any:
    return pytest.param(Case(name, method, path, role, body, query, field, status), id=name)


def raw(template: str, value: bytes) -> bytes:
    """A JSON body with a value orjson cannot write (too deep): `template` holds `@` where it goes."""
    before, after = template.encode().split(b"@")
    return before + value + after


def hb(**item: Any) -> Dict[str, Any]:
    one = {"job_id": JOB, "resubmission": 0, "sample": {"cpu_s": 1.0}}
    one.update(item)
    return {"heartbeats": [one]}


def status(**fields: Any) -> Dict[str, Any]:
    body = {"state": "RUNNING", "resubmission": 0}
    body.update(fields)
    return body


def entry(**fields: Any) -> Dict[str, Any]:
    e = {"category": "trace", "text": "hello"}
    e.update(fields)
    return {"entries": [e]}


def reg(**fields: Any) -> Dict[str, Any]:
    body = {"lfn": "/gridpilot/user/alice/f", "size": 1, "se": "TEST::SE", "pfn": "file:///se/f"}
    body.update(fields)
    return body


def sm(**over: Any) -> Dict[str, Any]:
    return site_map(**over)


def submit(text: str, **fields: Any) -> Dict[str, Any]:
    return {"jdl": text, **fields}


def ids_in_path(route: str, method: str, body: Any = None) -> list:
    """The bad job ids of one route with a job id in its path."""
    short = route.replace("/", "_").strip("_") or "job"
    path = f"{API}/jobs/{{}}{route}"
    return [
        C(f"{method}-jobs{short}-id-2^63", method, path.format(BIG_ID), "admin", body, field="job_id"),
        C(f"{method}-jobs{short}-id-5000-digits", method, path.format(HUGE_DIGITS), "admin", body, field="job_id"),
        C(f"{method}-jobs{short}-id-0", method, path.format(0), "admin", body, field="job_id"),
        # The largest id is a valid id: no such job.
        C(f"{method}-jobs{short}-id-2^63-1", method, path.format(BIG_ID - 1), "admin", body, field=None, status=404),
    ]


GB_JDL = jdl(TTL=600)
#: A GPU record as the pilot sends it (pilot/gpuuse.py), for cases that spoil one of its fields.
GPU_USE = {"pci_address": "0000:41:00.0", "vendor": "NVIDIA", "source": "nvml", "util_percent": 37.0,
           "memory_used_bytes": 3 << 30, "memory_total_bytes": 16 << 30, "job_memory_bytes": 1 << 30,
           "job_processes": 1}

CASES = [
    # -- job ids in paths --
    *ids_in_path("", "GET"),
    *ids_in_path("/kill", "POST", {}),
    *ids_in_path("/trace", "GET"),
    *ids_in_path("/trace", "POST", entry()),
    *ids_in_path("/status", "POST", status()),
    C("GET-jobs-id-letters", "GET", f"{API}/jobs/abc", "admin", field=None, status=404),
    C("GET-jobs-id-negative", "GET", f"{API}/jobs/-1", "admin", field=None, status=404),

    # -- submit --
    C("submit-no-jdl", "POST", f"{API}/jobs", "user", {"name": "x"}, field="jdl"),
    C("submit-jdl-not-text", "POST", f"{API}/jobs", "user", {"jdl": 42}, field="jdl"),
    C("submit-jdl-nul", "POST", f"{API}/jobs", "user", submit(jdl(Comment=NUL)), field="jdl"),
    C("submit-jdl-too-long", "POST", f"{API}/jobs", "user",
      submit(GB_JDL + "// " + "x" * bounds.MAX_JDL + "\n"), field="jdl"),
    C("submit-name-nul", "POST", f"{API}/jobs", "user", submit(GB_JDL, name=NUL), field="name"),
    C("submit-name-too-long", "POST", f"{API}/jobs", "user", submit(GB_JDL, name="n" * 256), field="name"),
    C("submit-name-not-text", "POST", f"{API}/jobs", "user", submit(GB_JDL, name=["x"]), field="name"),
    C("submit-priority-not-int", "POST", f"{API}/jobs", "admin", submit(GB_JDL, priority="high"), field="priority"),
    C("submit-priority-bool", "POST", f"{API}/jobs", "admin", submit(GB_JDL, priority=True), field="priority"),
    C("submit-priority-2^63", "POST", f"{API}/jobs", "admin", submit(GB_JDL, priority=BIG_ID), field="priority"),
    C("submit-TTL-int4-overflow", "POST", f"{API}/jobs", "user", submit(jdl(TTL=2147483648)), field="jdl.TTL"),
    C("submit-TTL-poison", "POST", f"{API}/jobs", "user", submit(jdl(TTL=POISON_TTL)), field="jdl.TTL"),
    C("submit-TTL-int4-max", "POST", f"{API}/jobs", "user", submit(jdl(TTL=(1 << 31) - 1)), field="jdl.TTL"),
    C("submit-GPU-2^40", "POST", f"{API}/jobs", "user", submit(jdl(GPU=1099511627776)), field="jdl.GPU"),
    C("submit-GPU-int4-overflow", "POST", f"{API}/jobs", "user", submit(jdl(GPU=2147483648)), field="jdl.GPU"),
    C("submit-GPU-more-than-a-site-lists", "POST", f"{API}/jobs", "user",
      submit(jdl(GPU=bounds.MAX_GPUS + 1)), field="jdl.GPU"),
    C("submit-GPU-name-too-long", "POST", f"{API}/jobs", "user", submit(jdl(GPU="N" * 256)), field="jdl.GPU"),
    C("submit-GPU-exact-model-too-long", "POST", f"{API}/jobs", "user", submit(jdl(GPU="=" + "N" * 256)),
      field="jdl.GPU"),
    C("submit-GPUCount-more-than-a-site-lists", "POST", f"{API}/jobs", "user",
      submit(jdl(GPU="MI50", GPUCount=bounds.MAX_GPUS + 1)), field="jdl.GPUCount"),
    C("submit-MemorySize-huge", "POST", f"{API}/jobs", "user",
      submit(jdl(MemorySize="999999999999999TB")), field="jdl.MemorySize"),
    C("submit-WorkDirectorySize-huge", "POST", f"{API}/jobs", "user",
      submit(jdl(WorkDirectorySize="999999999999999TB")), field="jdl.WorkDirectorySize"),
    C("submit-User-too-long", "POST", f"{API}/jobs", "admin", submit(jdl(User="u" * 256)), field="jdl.User"),
    C("submit-OutputDir-too-long", "POST", f"{API}/jobs", "user",
      submit(jdl(OutputDir="/gridpilot/user/alice/" + "d" * 1100)), field="jdl.OutputDir"),

    # -- list --
    C("list-limit-5000-digits", "GET", f"{API}/jobs", "admin", query={"limit": HUGE_DIGITS}, field="limit"),
    C("list-limit-negative", "GET", f"{API}/jobs", "admin", query={"limit": "-1"}, field="limit"),
    C("list-limit-word", "GET", f"{API}/jobs", "admin", query={"limit": "ten"}, field="limit"),
    C("list-offset-2^63", "GET", f"{API}/jobs", "admin", query={"offset": str(BIG_ID)}, field="offset"),
    C("list-offset-negative", "GET", f"{API}/jobs", "admin", query={"offset": "-5"}, field="offset"),
    C("list-state-5000-digits", "GET", f"{API}/jobs", "admin", query={"state": HUGE_DIGITS}, field="state"),
    C("list-state-superscript-digit", "GET", f"{API}/jobs", "admin", query={"state": "\u00b2"}, field="state"),
    C("list-state-unknown", "GET", f"{API}/jobs", "admin", query={"state": "NOPE"}, field="state"),
    C("list-state-too-many", "GET", f"{API}/jobs", "admin", query={"state": ",".join(["DONE"] * 1000)},
      field="state"),
    C("list-user-nul", "GET", f"{API}/jobs", "admin", query={"user": NUL}, field="user"),
    C("list-user-too-long", "GET", f"{API}/jobs", "admin", query={"user": "u" * 256}, field="user"),
    C("list-site-nul", "GET", f"{API}/jobs", "admin", query={"site": NUL}, field="site"),
    C("list-site-too-long", "GET", f"{API}/jobs", "admin", query={"site": "s" * 256}, field="site"),

    # -- trace read --
    C("trace-since-word", "GET", f"{API}/jobs/{JOB}/trace", "admin", query={"since": "now"}, field="since"),
    C("trace-since-inf", "GET", f"{API}/jobs/{JOB}/trace", "admin", query={"since": "1e999"}, field="since"),
    C("trace-limit-0", "GET", f"{API}/jobs/{JOB}/trace", "admin", query={"limit": "0"}, field="limit"),
    C("trace-limit-5000-digits", "GET", f"{API}/jobs/{JOB}/trace", "admin", query={"limit": HUGE_DIGITS},
      field="limit"),

    # -- trace append --
    C("trace-entries-missing", "POST", f"{API}/jobs/{JOB}/trace", "job", {}, field="entries"),
    C("trace-entries-not-list", "POST", f"{API}/jobs/{JOB}/trace", "job", {"entries": "x"}, field="entries"),
    C("trace-entries-too-many", "POST", f"{API}/jobs/{JOB}/trace", "job",
      {"entries": [{"category": "trace", "text": "x"}] * 1001}, field="entries"),
    C("trace-text-nul", "POST", f"{API}/jobs/{JOB}/trace", "job", entry(text=NUL), field="entries[0].text"),
    C("trace-text-too-long", "POST", f"{API}/jobs/{JOB}/trace", "job", entry(text="x" * (64 << 10 | 1)),
      field="entries[0].text"),
    C("trace-text-not-text", "POST", f"{API}/jobs/{JOB}/trace", "job", entry(text=5), field="entries[0].text"),
    C("trace-category-unknown", "POST", f"{API}/jobs/{JOB}/trace", "job", entry(category="root"),
      field="entries[0].category"),
    C("trace-ts-text", "POST", f"{API}/jobs/{JOB}/trace", "job", entry(ts="yesterday"), field="entries[0].ts"),
    C("trace-key-nul", "POST", f"{API}/jobs/{JOB}/trace", "job", entry(key=NUL), field="entries[0].key"),
    C("trace-entry-not-object", "POST", f"{API}/jobs/{JOB}/trace", "job", {"entries": [1]}, field="entries[0]"),

    # -- status --
    C("status-state-unknown", "POST", f"{API}/jobs/{JOB}/status", "agent", status(state="FLYING"), field="state"),
    C("status-resubmission-2^63", "POST", f"{API}/jobs/{JOB}/status", "agent", status(resubmission=BIG_ID),
      field="resubmission"),
    C("status-resubmission-negative", "POST", f"{API}/jobs/{JOB}/status", "agent", status(resubmission=-1),
      field="resubmission"),
    C("status-resubmission-text", "POST", f"{API}/jobs/{JOB}/status", "agent", status(resubmission="0"),
      field="resubmission"),
    C("status-exit-code-2^63", "POST", f"{API}/jobs/{JOB}/status", "agent", status(exit_code=BIG_ID),
      field="exit_code"),
    C("status-kill-reason-unknown", "POST", f"{API}/jobs/{JOB}/status", "agent", status(kill_reason="BORED"),
      field="kill_reason"),
    C("status-message-nul", "POST", f"{API}/jobs/{JOB}/status", "agent", status(message=NUL), field="message"),
    C("status-message-not-text", "POST", f"{API}/jobs/{JOB}/status", "agent", status(message=1), field="message"),
    C("status-resources-nul", "POST", f"{API}/jobs/{JOB}/status", "agent", status(resources={"k": NUL}),
      field="resources"),
    C("status-resources-nul-key", "POST", f"{API}/jobs/{JOB}/status", "agent", status(resources={NUL: 1}),
      field="resources"),
    C("status-resources-deep", "POST", f"{API}/jobs/{JOB}/status", "agent",
      raw('{"state": "RUNNING", "resubmission": 0, "resources": @}', DEEP), field="resources"),
    C("status-resources-deep-list", "POST", f"{API}/jobs/{JOB}/status", "agent",
      raw('{"state": "RUNNING", "resubmission": 0, "resources": {"l": @}}', DEEP_LIST), field="resources"),
    C("status-resources-too-big", "POST", f"{API}/jobs/{JOB}/status", "agent",
      status(resources={"k": "x" * bounds.MAX_SAMPLE_BYTES}), field="resources"),
    C("status-resources-not-object", "POST", f"{API}/jobs/{JOB}/status", "agent", status(resources=[1]),
      field="resources"),
    C("status-at-text", "POST", f"{API}/jobs/{JOB}/status", "agent", status(at="noon"), field="at"),

    # -- match and probe: the site map --
    C("match-users-100000", "POST", f"{API}/match", "agent", sm(users=[f"u{i}" for i in range(100_000)]),
      field="users"),
    C("match-nousers-100000", "POST", f"{API}/match", "agent", sm(nousers=[f"u{i}" for i in range(100_000)]),
      field="nousers"),
    C("match-users-nul", "POST", f"{API}/match", "agent", sm(users=[NUL]), field="users"),
    C("match-users-too-long", "POST", f"{API}/match", "agent", sm(users=["u" * 256]), field="users"),
    C("match-users-not-strings", "POST", f"{API}/match", "agent", sm(users=[1]), field="users"),
    C("match-partition-too-many", "POST", f"{API}/match", "agent", sm(partition=["p"] * 100_000),
      field="partition"),
    C("match-close-se-too-many", "POST", f"{API}/match", "agent", sm(close_se=["SE"] * 100_000),
      field="close_se"),
    C("match-node-too-long", "POST", f"{API}/match", "agent", sm(node="n" * 256), field="node"),
    C("match-node-nul", "POST", f"{API}/match", "agent", sm(node=NUL), field="node"),
    C("match-platform-nul", "POST", f"{API}/match", "agent", sm(platform=NUL), field="platform"),
    C("match-ttl-negative", "POST", f"{API}/match", "agent", sm(ttl=-1), field="ttl"),
    C("match-ttl-text", "POST", f"{API}/match", "agent", sm(ttl="long"), field="ttl"),
    C("match-cores-fraction", "POST", f"{API}/match", "agent", sm(cores=1.5), field="cores"),
    C("match-gpus-too-many", "POST", f"{API}/match", "agent", sm(gpus=[{"vendor": "NVIDIA"}] * 257),
      field="gpus"),
    C("match-gpu-arch-not-a-name", "POST", f"{API}/match", "agent", sm(gpus=[{"vendor": "AMD", "arch": "gfx 906"}]),
      field="gpus[0].arch"),
    C("match-gpu-arch-too-long", "POST", f"{API}/match", "agent", sm(gpus=[{"vendor": "AMD", "arch": "g" * 33}]),
      field="gpus[0].arch"),
    C("match-gpu-memory-negative", "POST", f"{API}/match", "agent",
      sm(gpus=[{"vendor": "AMD"}, {"vendor": "AMD", "memory_mb": -1}]), field="gpus[1].memory_mb"),
    C("match-gpu-memory-1e30", "POST", f"{API}/match", "agent", sm(gpus=[{"vendor": "AMD", "memory_mb": 1e30}]),
      field="gpus[0].memory_mb"),
    C("match-extra-too-many-keys", "POST", f"{API}/match", "agent", sm(**{f"X{i}": 1 for i in range(1000)}),
      field="site map"),
    C("match-extra-long-list", "POST", f"{API}/match", "agent", sm(Packages=["p"] * 100_000), field="Packages"),
    C("probe-users-100000", "POST", f"{API}/queue/probe", "ce", sm(users=[f"u{i}" for i in range(100_000)]),
      field="users"),
    C("probe-admin-users-100000", "POST", f"{API}/queue/probe", "admin",
      sm(users=[f"u{i}" for i in range(100_000)]), field="users"),
    C("probe-admin-nousers-nul", "POST", f"{API}/queue/probe", "admin", sm(nousers=[NUL]), field="nousers"),

    # -- heartbeats --
    C("hb-not-list", "POST", f"{API}/heartbeats", "agent", {"heartbeats": {}}, field="heartbeats"),
    C("hb-too-many", "POST", f"{API}/heartbeats", "agent",
      {"heartbeats": [{"job_id": 1, "resubmission": 0}] * 10_001}, field="heartbeats"),
    C("hb-job-id-2^63", "POST", f"{API}/heartbeats", "agent", hb(job_id=BIG_ID), field="heartbeats[0].job_id"),
    C("hb-job-id-2^64", "POST", f"{API}/heartbeats", "agent",  # orjson reads it as a float
      raw('{"heartbeats": [{"job_id": @, "resubmission": 0}]}', str(1 << 64).encode()), field="heartbeats[0].job_id"),
    C("hb-job-id-5000-digits", "POST", f"{API}/heartbeats", "agent",
      raw('{"heartbeats": [{"job_id": @, "resubmission": 0}]}', HUGE_DIGITS.encode()), field=None),
    C("hb-job-id-0", "POST", f"{API}/heartbeats", "agent", hb(job_id=0), field="heartbeats[0].job_id"),
    C("hb-job-id-text", "POST", f"{API}/heartbeats", "agent", hb(job_id="1"), field="heartbeats[0].job_id"),
    C("hb-resubmission-2^63", "POST", f"{API}/heartbeats", "agent", hb(resubmission=BIG_ID),
      field="heartbeats[0].resubmission"),
    C("hb-sample-deep", "POST", f"{API}/heartbeats", "agent",
      raw('{"heartbeats": [{"job_id": "$JOB", "resubmission": 0, "sample": @}]}', DEEP),
      field="heartbeats[0].sample"),
    C("hb-sample-too-deep-to-parse", "POST", f"{API}/heartbeats", "agent",
      raw('{"heartbeats": [{"job_id": "$JOB", "resubmission": 0, "sample": @}]}', TOO_DEEP_TO_PARSE), field=None),
    C("hb-sample-nul", "POST", f"{API}/heartbeats", "agent", hb(sample={"k": NUL}), field="heartbeats[0].sample"),
    C("hb-sample-nul-key", "POST", f"{API}/heartbeats", "agent", hb(sample={NUL: 1}), field="heartbeats[0].sample"),
    C("hb-sample-too-big", "POST", f"{API}/heartbeats", "agent",
      hb(sample={"k": "x" * bounds.MAX_SAMPLE_BYTES}), field="heartbeats[0].sample"),
    C("hb-sample-not-object", "POST", f"{API}/heartbeats", "agent", hb(sample="x"), field="heartbeats[0].sample"),
    C("hb-item-not-object", "POST", f"{API}/heartbeats", "agent", {"heartbeats": [1]}, field="heartbeats[0]"),
    # The sample fields central knows (bounds.sample_fields; docs/monitoring.md): counters, texts, GPU records.
    *[C(f"hb-sample-{k}-{name}", "POST", f"{API}/heartbeats", "agent", hb(sample={k: v}),
        field=f"heartbeats[0].sample.{k}")
      for k in ("nprocs", "nthreads", "read_bytes", "write_bytes", "rchar_bytes", "wchar_bytes", "net_rx_bytes",
                "net_tx_bytes")
      for name, v in (("2^63", BIG_ID), ("negative", -1), ("fraction", 1.5), ("text", "1"), ("true", True))],
    C("hb-sample-io-source-nul", "POST", f"{API}/heartbeats", "agent", hb(sample={"io_source": NUL}),
      field="heartbeats[0].sample"),  # json_object's NUL check comes first
    C("hb-sample-io-source-long", "POST", f"{API}/heartbeats", "agent",
      hb(sample={"io_source": "x" * (bounds.MAX_SAMPLE_TEXT + 1)}), field="heartbeats[0].sample.io_source"),
    C("hb-sample-io-source-number", "POST", f"{API}/heartbeats", "agent", hb(sample={"io_source": 3}),
      field="heartbeats[0].sample.io_source"),
    C("hb-sample-gpus-not-list", "POST", f"{API}/heartbeats", "agent", hb(sample={"gpus": {"a": 1}}),
      field="heartbeats[0].sample.gpus"),
    C("hb-sample-gpus-too-many", "POST", f"{API}/heartbeats", "agent",
      hb(sample={"gpus": [GPU_USE] * (bounds.MAX_GPUS + 1)}), field="heartbeats[0].sample.gpus"),
    C("hb-sample-gpu-not-object", "POST", f"{API}/heartbeats", "agent", hb(sample={"gpus": [GPU_USE, 1]}),
      field="heartbeats[0].sample.gpus[1]"),
    C("hb-sample-gpu-no-address", "POST", f"{API}/heartbeats", "agent",
      hb(sample={"gpus": [{**GPU_USE, "pci_address": None}]}), field="heartbeats[0].sample.gpus[0].pci_address"),
    C("hb-sample-gpu-util-101", "POST", f"{API}/heartbeats", "agent",
      hb(sample={"gpus": [{**GPU_USE, "util_percent": 100.5}]}), field="heartbeats[0].sample.gpus[0].util_percent"),
    C("hb-sample-gpu-util-negative", "POST", f"{API}/heartbeats", "agent",
      hb(sample={"gpus": [{**GPU_USE, "util_percent": -1}]}), field="heartbeats[0].sample.gpus[0].util_percent"),
    *[C(f"hb-sample-gpu-{k}-{name}", "POST", f"{API}/heartbeats", "agent", hb(sample={"gpus": [{**GPU_USE, k: v}]}),
        field=f"heartbeats[0].sample.gpus[0].{k}")
      for k in ("memory_used_bytes", "memory_total_bytes", "job_memory_bytes", "job_processes")
      for name, v in (("2^63", BIG_ID), ("negative", -1), ("fraction", 0.5))],
    *[C(f"hb-sample-gpu-{k}-long", "POST", f"{API}/heartbeats", "agent",
        hb(sample={"gpus": [{**GPU_USE, k: "x" * (bounds.MAX_SAMPLE_TEXT + 1)}]}),
        field=f"heartbeats[0].sample.gpus[0].{k}") for k in ("pci_address", "vendor", "source", "error")],
    # The same check on a status report's resources.
    C("status-resources-nthreads-negative", "POST", f"{API}/jobs/{JOB}/status", "agent",
      status(resources={"nthreads": -1}), field="resources.nthreads"),
    C("status-resources-gpu-util", "POST", f"{API}/jobs/{JOB}/status", "agent",
      status(resources={"gpus": [{**GPU_USE, "util_percent": 1e9}]}), field="resources.gpus[0].util_percent"),

    # -- catalogue --
    C("reg-size-2^63", "POST", f"{API}/catalogue/files", "admin", reg(size=BIG_ID), field="size"),
    C("reg-size-negative", "POST", f"{API}/catalogue/files", "admin", reg(size=-1), field="size"),
    C("reg-size-fraction", "POST", f"{API}/catalogue/files", "admin", reg(size=1.5), field="size"),
    C("reg-job-id-2^63", "POST", f"{API}/catalogue/files", "admin", reg(job_id=BIG_ID), field="job_id"),
    C("reg-job-id-0", "POST", f"{API}/catalogue/files", "admin", reg(job_id=0), field="job_id"),
    C("reg-job-id-text", "POST", f"{API}/catalogue/files", "admin", reg(job_id="7"), field="job_id"),
    C("reg-job-token-job-id-2^63", "POST", f"{API}/catalogue/files", "job", reg(job_id=BIG_ID), field="job_id"),
    C("reg-pfn-nul", "POST", f"{API}/catalogue/files", "admin", reg(pfn="file:///se/" + NUL), field="pfn"),
    C("reg-pfn-too-long", "POST", f"{API}/catalogue/files", "admin", reg(pfn="file:///" + "p" * 4096),
      field="pfn"),
    C("reg-pfn-not-text", "POST", f"{API}/catalogue/files", "admin", reg(pfn=1), field="pfn"),
    C("reg-se-nul", "POST", f"{API}/catalogue/files", "admin", reg(se=NUL), field="se"),
    C("reg-se-too-long", "POST", f"{API}/catalogue/files", "admin", reg(se="S" * 256), field="se"),
    C("reg-lfn-nul", "POST", f"{API}/catalogue/files", "admin", reg(lfn="/a/" + NUL), field="lfn"),
    C("reg-lfn-too-long", "POST", f"{API}/catalogue/files", "admin", reg(lfn="/" + "l" * 1100), field="lfn"),
    C("reg-adler32-not-hex", "POST", f"{API}/catalogue/files", "admin", reg(adler32="xyz"), field="adler32"),
    C("reg-md5-too-long", "POST", f"{API}/catalogue/files", "admin", reg(md5="0" * 33), field="md5"),
    C("lookup-lfn-nul", "GET", f"{API}/catalogue/files", "admin", query={"lfn": "/a/" + NUL}, field="lfn"),
    C("lookup-lfn-too-long", "GET", f"{API}/catalogue/files", "admin", query={"lfn": "/" + "l" * 1100},
      field="lfn"),
    C("lookup-lfn-missing", "GET", f"{API}/catalogue/files", "admin", field="lfn"),
    C("dirs-path-nul", "GET", f"{API}/catalogue/dirs", "admin", query={"path": "/a" + NUL}, field="path"),
    C("job-files-limit-0", "GET", f"{API}/jobs/{JOB}/files", "admin", query={"limit": "0"}, field="limit"),
    C("job-files-limit-over", "GET", f"{API}/jobs/{JOB}/files", "admin", query={"limit": "1001"}, field="limit"),
    C("job-files-offset-negative", "GET", f"{API}/jobs/{JOB}/files", "admin", query={"offset": "-1"},
      field="offset"),
    C("job-files-offset-5000-digits", "GET", f"{API}/jobs/{JOB}/files", "admin", query={"offset": HUGE_DIGITS},
      field="offset"),
    C("job-files-id-too-big", "GET", f"{API}/jobs/{BIG_ID}/files", "admin", field="job_id"),

    # -- storage elements --
    C("se-url-nul", "POST", f"{API}/storage", "admin", {"name": "X::SE", "url": "file:///" + NUL}, field="url"),
    C("se-url-too-long", "POST", f"{API}/storage", "admin", {"name": "X::SE", "url": "file:///" + "u" * 4096},
      field="url"),
    C("se-name-too-long", "POST", f"{API}/storage", "admin", {"name": "S" * 256, "url": "file:///se"},
      field="name"),
    C("se-kind-unknown", "POST", f"{API}/storage", "admin", {"name": "X::SE", "url": "file:///se", "kind": "cloud"},
      field="kind"),

    # -- tokens --
    C("mint-subject-nul", "POST", f"{API}/tokens", "admin", {"role": "user", "subject": NUL}, field="subject"),
    C("mint-subject-too-long", "POST", f"{API}/tokens", "admin", {"role": "user", "subject": "s" * 256},
      field="subject"),
    C("mint-site-nul", "POST", f"{API}/tokens", "admin", {"role": "ce", "subject": "c", "site": NUL, "ce": "CE"},
      field="site"),
    C("mint-site-too-long", "POST", f"{API}/tokens", "admin",
      {"role": "ce", "subject": "c", "site": "s" * 256, "ce": "CE"}, field="site"),
    C("mint-ce-nul", "POST", f"{API}/tokens", "admin", {"role": "agent", "subject": "a", "site": "S", "ce": NUL},
      field="ce"),
    C("mint-role-unknown", "POST", f"{API}/tokens", "admin", {"role": "root", "subject": "r"}, field="role"),
    C("mint-ttl-negative", "POST", f"{API}/tokens", "admin", {"role": "user", "subject": "u", "ttl_s": -1},
      field="ttl_s"),
    C("mint-ttl-2^63", "POST", f"{API}/tokens", "admin", {"role": "user", "subject": "u", "ttl_s": BIG_ID},
      field="ttl_s"),
    C("mint-ttl-text", "POST", f"{API}/tokens", "admin", {"role": "user", "subject": "u", "ttl_s": "1d"},
      field="ttl_s"),
    C("revoke-token-not-text", "POST", f"{API}/tokens/revoke", "admin", {"token": 1}, field="token"),
    C("revoke-token-too-long", "POST", f"{API}/tokens/revoke", "admin", {"token": "t" * 20_000}, field="token"),
    C("ce-token-subject-nul", "POST", f"{API}/ce/tokens", "ce", {"subject": NUL}, field="subject"),
    C("ce-token-subject-too-long", "POST", f"{API}/ce/tokens", "ce", {"subject": "s" * 256}, field="subject"),
    C("ce-token-ttl-2^63", "POST", f"{API}/ce/tokens", "ce", {"subject": "p", "ttl_s": BIG_ID}, field="ttl_s"),
    C("ce-token-admin-site-nul", "POST", f"{API}/ce/tokens", "admin", {"subject": "p", "site": NUL, "ce": "CE"},
      field="site"),
    C("ce-pilots-backend-nul", "POST", f"{API}/ce/pilots", "ce", {"pilots": {"queued": 1}, "backend": NUL},
      field="backend"),
    C("ce-pilots-count-2^63", "POST", f"{API}/ce/pilots", "ce", {"pilots": {"queued": BIG_ID}},
      field="pilots.queued"),
    C("ce-pilots-not-object", "POST", f"{API}/ce/pilots", "ce", {"pilots": [1]}, field="pilots"),
    C("ce-pilots-unknown-state", "POST", f"{API}/ce/pilots", "ce", {"pilots": {"lost": 1}}, field="pilots"),
    C("ce-pilots-ended-not-object", "POST", f"{API}/ce/pilots", "ce", {"pilots": {}, "ended": [1]}, field="ended"),
    C("ce-pilots-ended-too-many", "POST", f"{API}/ce/pilots", "ce",
      {"pilots": {}, "ended": {f"exit_{i}": 1 for i in range(65)}}, field="ended"),
    C("ce-pilots-ended-bad-reason", "POST", f"{API}/ce/pilots", "ce", {"pilots": {}, "ended": {"<b>": 1}},
      field="ended"),
    C("ce-pilots-ended-long-reason", "POST", f"{API}/ce/pilots", "ce", {"pilots": {}, "ended": {"x" * 65: 1}},
      field="ended"),
    C("ce-pilots-ended-count-2^63", "POST", f"{API}/ce/pilots", "ce", {"pilots": {}, "ended": {"ok": BIG_ID}},
      field="ended.ok"),
    C("ce-pilots-ended-count-negative", "POST", f"{API}/ce/pilots", "ce", {"pilots": {}, "ended": {"ok": -1}},
      field="ended.ok"),
    C("ce-pilots-admin-ce-nul", "POST", f"{API}/ce/pilots", "admin",
      {"pilots": {"queued": 1}, "site": "S", "ce": NUL}, field="ce"),

    # -- bodies --
    C("body-not-json", "POST", f"{API}/jobs", "user", b"{nope", field=None),
    C("body-not-object", "POST", f"{API}/heartbeats", "agent", b"[1]", field=None),
    C("body-over-the-cap", "POST", f"{API}/heartbeats", "agent",
      b'{"heartbeats": [], "pad": "' + b"x" * (4 << 20) + b'"}', field=None, status=413),
]


@dataclass
class Bench:
    """A central with one job held by an agent (RUNNING, with its job token) and one WAITING job that any of the
    table's site maps would match, so a bad site map that slipped through would reach the assigning UPDATE."""

    url: str
    tokens: Dict[str, str]
    held: int
    embedded: Any
    backend: str

    def counts(self) -> Dict[str, int]:
        t = {"jobs": schema.jobs, "files": schema.files, "traces": schema.traces,
             "storage": schema.storage_elements, "revoked": schema.revoked_tokens, "pilots": schema.ce_pilots}
        with self.embedded.db.read() as conn:
            return {k: conn.execute(select(func.count()).select_from(v)).scalar_one() for k, v in t.items()}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def bench(request, tmp_path_factory) -> Iterator[Bench]:
    url: Optional[str] = None
    server = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        url = server.create_database()
    try:
        for world in start_world(tmp_path_factory.mktemp("bounds"), url):
            admin = world.admin
            admin.add_storage_element("TEST::SE", "file:///se")
            alice, agent = world.user("alice"), world.agent("agent1")
            held = alice.submit(jdl(TTL=600))
            job = agent.match(site_map())
            assert job is not None and job["id"] == held
            agent.set_status(held, "STARTED", 0)
            agent.set_status(held, "RUNNING", 0)
            alice.submit(jdl(TTL=600))  # WAITING
            toks = {"admin": admin.token, "user": alice.token, "agent": agent.token, "job": job["token"],
                    "ce": world.ce("ce1").token}
            b = Bench(world.url, toks, held, world.embedded, request.param)
            b.before = b.counts()  # type: ignore[attr-defined]
            yield b
    finally:
        if server is not None and url is not None:
            server.drop_database(url)


def send(bench: Bench, case: Case) -> Any:
    path = case.path.replace(JOB, str(bench.held))
    if case.query is not None:
        path += "?" + urlencode(case.query)
    headers = {"Authorization": f"Bearer {bench.tokens[case.role]}"}
    data = None
    if case.body is not None:
        data = case.body if isinstance(case.body, bytes) else orjson.dumps(case.body)
        data = data.replace(b'"$JOB"', str(bench.held).encode())
        headers["Content-Type"] = "application/json"
    return urllib3.request(case.method, bench.url + path, body=data, headers=headers, retries=False, timeout=120)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_refused_naming_its_field(bench, case):
    r = send(bench, case)
    assert r.status != 500, f"{case} on {bench.backend}: 500 {r.data[:300]!r}"
    assert r.status == case.status, f"{case}: expected {case.status}, got {r.status} {r.data[:300]!r}"
    error = orjson.loads(r.data)["error"]
    assert error["code"] and error["message"] and "Traceback" not in error["message"]
    if case.field is not None:
        assert error.get("field") == case.field, f"{case}: the error names {error.get('field')!r}: {error}"
        leaf = case.field.rsplit(".", 1)[-1].split("[")[0]
        assert leaf in error["message"], f"{case}: the message does not say {leaf!r}: {error['message']}"


def test_the_table_changed_nothing(bench):
    assert bench.counts() == bench.before  # type: ignore[attr-defined]


# -- the edges themselves: values at their bounds are taken, and work --


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def nested(depth: int) -> Dict[str, Any]:
    """A JSON object `depth` levels deep."""
    value: Dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_a_job_at_the_ttl_bound_is_matched_with_a_token_and_one_past_it_is_refused(world):
    alice, agent = world.user("alice"), world.agent("agent1")
    with pytest.raises(Exception) as info:
        alice.submit(jdl(TTL=bounds.MAX_JOB_TTL_S + 1))
    assert info.value.status == 400 and info.value.code == "invalid_jdl" and (info.value.line, info.value.column) == (2, 7)
    jid = alice.submit(jdl(TTL=bounds.MAX_JOB_TTL_S))
    job = agent.match(site_map(ttl=bounds.MAX_JOB_TTL_S))
    assert job is not None and job["id"] == jid
    claims = tokens.decode(world.embedded.central.key, job["token"])
    assert claims.expires - claims.issued == pytest.approx(tokens.MAX_TTL_S, abs=1)
    assert world.client(job["token"]).whoami()["job_id"] == jid


def test_sample_fields_at_their_bounds_are_stored_and_shown(world):
    """The largest counters, the longest texts and the most GPUs a sample may hold are taken by a heartbeat and a
    status report, stored, and read back as sent (GET /jobs/{id}, as every other resource field)."""
    alice, agent = world.user("alice"), world.agent("agent1")
    jid = alice.submit(jdl(TTL=600))
    assert agent.match(site_map())["id"] == jid
    gpu = {**GPU_USE, "util_percent": 100, "memory_used_bytes": bounds.MAX_COUNTER, "job_processes": 0,
           "error": "e" * bounds.MAX_SAMPLE_TEXT}
    sample = {k: bounds.MAX_COUNTER for k in ("nprocs", "nthreads", "read_bytes", "write_bytes", "rchar_bytes",
                                               "wchar_bytes", "net_rx_bytes", "net_tx_bytes")}
    # One GPU with the longest error text, the rest plain: 256 long ones would pass MAX_SAMPLE_BYTES.
    sample.update(io_source="s" * bounds.MAX_SAMPLE_TEXT, gpus=[gpu] + [GPU_USE] * (bounds.MAX_GPUS - 1))
    answer = agent.heartbeats_full([{"job_id": jid, "resubmission": 0, "sample": sample}])
    assert answer["updated"] == 1 and not answer["rejected"]
    assert alice.get_job(jid)["resources"] == sample
    low = {**{k: 0 for k in sample if k not in ("io_source", "gpus")}, "gpus": [{**gpu, "util_percent": 0}]}
    agent.set_status(jid, "STARTED", 0, resources=low)
    assert alice.get_job(jid)["resources"] == low


def test_a_stored_ttl_past_the_bound_does_not_fail_the_match(world):
    """A row written before the bound (or by hand) is still matched; its token lives the longest a token may."""
    alice, agent = world.user("alice"), world.agent("agent1")
    jid = alice.submit(jdl(TTL=600))
    with world.db.write() as conn:
        conn.execute(schema.jobs.update().where(schema.jobs.c.id == jid).values(ttl=(1 << 31) - 1))
    job = agent.match(site_map(ttl=None))
    assert job is not None and job["id"] == jid
    claims = tokens.decode(world.embedded.central.key, job["token"])
    assert claims.expires - claims.issued == pytest.approx(tokens.MAX_TTL_S, abs=1)


def test_values_at_their_bounds_are_taken(world):
    admin, alice, agent = world.admin, world.user("alice"), world.agent("agent1")
    admin.add_storage_element("TEST::SE", "file:///se")
    # Submit: the largest GPU count, sizes and name; a site map listing the most users (bind parameters).
    big = alice.submit(jdl(GPU=bounds.MAX_GPUS, MemorySize="1024TB", WorkDirectorySize="1024TB"), name="n" * 255)
    assert alice.get_job(big)["name"] == "n" * 255
    jid = alice.submit(jdl(TTL=600))
    users = [f"user{i}" for i in range(bounds.MAX_SITE_LIST - 1)] + ["alice"]
    assert agent.probe(site_map(users=users, nousers=[f"x{i}" for i in range(bounds.MAX_SITE_LIST)]))["waiting"] == 1
    job = agent.match(site_map(users=users, node="n" * bounds.MAX_NAME))
    assert job is not None and job["id"] == jid
    # Reports: the deepest sample and resources, the largest resubmission counter and id.
    deep = nested(bounds.MAX_SAMPLE_DEPTH)
    answer = agent.heartbeats_full([{"job_id": jid, "resubmission": 0, "sample": deep},
                                    {"job_id": bounds.MAX_ID, "resubmission": bounds.MAX_INT4}])
    assert answer["updated"] == 1 and answer["rejected"] == [{"job_id": bounds.MAX_ID, "code": "job_not_found"}]
    assert alice.get_job(jid)["resources"] == deep
    agent.set_status(jid, "STARTED", 0, resources=deep, message="m" * 10_000)
    got = alice.get_job(jid)
    assert got["state"] == "STARTED" and got["resources"] == deep and len(got["message"]) == 4096
    # The catalogue: the largest size.
    token = job["token"]
    f = world.client(token).register_file(lfn=f"{got['output_dir']}/big", size=bounds.MAX_FILE_SIZE,
                                          se="TEST::SE", pfn="file:///se/" + "p" * (bounds.MAX_URL - 11))
    assert f["size"] == bounds.MAX_FILE_SIZE
    # Lists: every state in one filter.
    assert {j["id"] for j in admin.list_jobs(state=",".join(s for s in ("WAITING", "STARTED", "DONE")))} == {big, jid}


# -- the catch-all: a bug answers a generic 500 and is logged with its traceback --


def test_an_unexpected_error_is_logged_with_its_traceback_and_answered_generically(world, monkeypatch, caplog):
    from gridpilot.central import app as central_app
    from gridpilot.central import jobs

    caplog.set_level(logging.ERROR, logger="gridpilot.central")
    secret = "secret-detail-4711 /etc/shadow SELECT"

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError(secret)

    def answer(path: str) -> Any:
        # A fresh connection each time: the server closes one after a bug escaped the route (uvicorn's rule).
        r = urllib3.PoolManager().request("GET", world.url + path, retries=False,
                                          headers={"Authorization": f"Bearer {world.admin.token}"})
        return r.status, r.data

    # Inside an operation, and after it (where the route's own handling no longer reaches): the same answer.
    for target, name, path in ((jobs, "get_job", f"{API}/jobs/1"), (central_app, "note_principal", f"{API}/whoami")):
        caplog.clear()
        with monkeypatch.context() as m:
            m.setattr(target, name, broken)
            status_code, data = answer(path)
        assert status_code == 500, data
        assert orjson.loads(data) == {"error": {"code": "internal",
                                                "message": "internal error; the server log has the details"}}
        assert secret.encode() not in data
        logged = [r for r in caplog.records if r.exc_info and secret in str(r.exc_info[1])]
        assert logged and path in logged[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert answer(f"{API}/whoami")[0] == 200


def test_the_documented_bounds_are_the_code_s():
    """docs/central-api.md's table names each bound's constant: the number it shows must be that constant's."""
    import re

    doc = (paths.ROOT / "docs" / "central-api.md").read_text()
    rows = re.findall(r"^\|[^|]*\|([^|]*)\| `(MAX_[A-Z0-9_]+)` \|", doc, re.M)
    assert len(rows) >= 15, rows
    for bound, name in rows:
        shown = [int(n) for n in re.findall(r"\d+", bound)]
        assert getattr(bounds, name) in shown, f"{name} is {getattr(bounds, name)}, the docs say {bound.strip()!r}"
    assert {name for _, name in rows} >= {n for n in bounds.__all__ if n.startswith("MAX_")}


def test_a_client_gone_before_its_body_arrived_is_not_an_error(world, caplog):
    import socket
    import time

    caplog.set_level(logging.INFO, logger="gridpilot.central")
    host, port = world.url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST {API}/heartbeats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {world.admin.token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"heart".encode())
    deadline = time.monotonic() + 60
    while not any("went away" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("went away" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("gridpilot")]
