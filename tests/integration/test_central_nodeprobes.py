"""Node probes at central (central/nodeprobes.py): POST /nodes/probe, GET /nodes' arch/GPU filters and probe
columns, GET /nodes/{host}/probes and the node gauges of /metrics, through the HTTP API, each on SQLite and on a real
PostgreSQL. The probes are the real probe (pilot/nodeprobe.py) of captured nodes (tests/fixtures: an aarch64 Ampere
Altra with NVIDIA cards, a riscv64 Milk-V Pioneer with an AMD card) and of this machine, read from files only."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import orjson
import pytest
import urllib3
from sqlalchemy import func, select, update
from support.central import CE, SITE, expect_error, module_world, site_map
from support.metrics import Exposition
from support.sysfs import ARCH_FIXTURES

from gridpilot import cli_codes, probedigest
from gridpilot.central import nodeprobes, schema
from gridpilot.config import PilotConfig
from gridpilot.pilot.nodeprobe import NodePaths, probe

NODES = ARCH_FIXTURES.parent / "nodes"
OTHER_SITE = "GRIDPILOT::OTHER"


def _capture(name: str) -> str:
    text = (ARCH_FIXTURES / name).read_text()
    return text.split("---- BEGIN CAPTURE (everything below this line is verbatim) ----\n", 1)[1]


def captured(root: Path, cpuinfo: str, lspci: str) -> Dict[str, Any]:
    """The probe of a captured node: its cpuinfo and `lspci -mm -nn -D`, nothing started."""
    (root / "proc").mkdir(parents=True)
    (root / "sys").mkdir()
    (root / "proc/cpuinfo").write_text(_capture(cpuinfo))
    paths = NodePaths(proc=str(root / "proc"), sys=str(root / "sys"), lspci_output=str(NODES / lspci), live=False)
    return probe(PilotConfig(workdir=str(root / "work")), paths, use_cache=False).to_dict()


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Dict[str, Dict[str, Any]]:
    root = tmp_path_factory.mktemp("probes")
    this = probe(PilotConfig(workdir=str(root / "this")), NodePaths(live=False), use_cache=False).to_dict()
    return {
        "aarch64": captured(root / "aarch64", "aarch64-ampere-altra-max-cpuinfo.txt",
                            "aarch64-ampere-altra-devkit-lspci-mm-nn-D.txt"),
        "riscv64": captured(root / "riscv64", "riscv64-milkv-pioneer-sg2042-cpuinfo.txt",
                            "riscv64-milkv-pioneer-sg2042-lspci-mm-nn-D.txt"),
        "this": this,
    }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    yield from module_world(request, tmp_path_factory, "nodeprobes")


def body(p: Dict[str, Any], host: str, **extra: Any) -> Dict[str, Any]:
    return dict(copy.deepcopy(p), host=host, pilot_version="1.2.3", **extra)


def raw(world, method: str, path: str, token: str, b: Any = None) -> Any:
    """The answer as sent (status and JSON body: the error's `field`)."""
    data = None if b is None else orjson.dumps(b)
    r = urllib3.request(method, world.url + "/api/v1" + path, body=data, retries=False, timeout=60,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    answer = orjson.loads(r.data) if r.data else None
    return r.status, answer["error"] if r.status >= 400 else answer


def stored(world, host: str) -> int:
    """Rows of `host` in the probe tables and nodes: what a refused probe must leave at 0."""
    with world.db.read() as conn:
        return sum(conn.execute(select(func.count()).select_from(t).where(t.c.host == host)).scalar_one()
                   for t in (schema.node_probes, schema.node_probe_history, schema.nodes))


def _set(path: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    """A change at a dotted path (list items as [i])."""
    def change(d: Dict[str, Any]) -> None:
        *parents, last = path.replace("[", ".[").split(".")
        for k in parents:
            d = d[int(k[1:-1])] if k.startswith("[") else d[k]
        if last.startswith("["):
            d[int(last[1:-1])] = value
        else:
            d[last] = value
    return change


def _deep(d: Dict[str, Any]) -> None:
    v: Dict[str, Any] = {}
    d["os"]["deep"] = v
    for _ in range(nodeprobes.MAX_DEPTH):
        v["x"] = {}
        v = v["x"]


#: A bad probe (a change of the aarch64 node's), the field the 400 names and a piece of its message.
BAD = {
    "no host": (lambda d: d.pop("host"), "host", "field 'host'"),
    "host too long": (_set("host", "n" * 300), "host", "at most 255"),
    "host with NUL": (_set("host", "node\0one"), "host", "NUL"),
    "cpu not an object": (_set("cpu", "aarch64"), "cpu", "must be an object"),
    "no cpu": (lambda d: d.pop("cpu"), "cpu", "must be an object"),
    "arch a number": (_set("cpu.arch", 64), "cpu.arch", "architecture name"),
    "arch with spaces": (_set("cpu.arch", "arm 64; drop"), "cpu.arch", "architecture name"),
    "x86 level v5": (_set("cpu.x86_64_level", "x86-64-v5"), "cpu.x86_64_level", "x86-64-v1 to x86-64-v4"),
    "avx a string": (_set("cpu.avx", "yes"), "cpu.avx", "true, false or null"),
    "runtimes a list": (_set("runtimes.found", ["podman"]), "runtimes.found", "object of runtimes"),
    "runtime starts a string": (_set("runtimes.found", {"podman": {"found": True, "starts": "yes"}}),
                                "runtimes.found.podman.starts", "true, false or null"),
    "runtime name odd": (_set("runtimes.found", {"pod man!": {"found": True, "starts": True}}),
                         "runtimes.found.pod man!", "runtime name"),
    "gpus an object": (_set("gpus.gpus", {"0": "RTX"}), "gpus.gpus", "list of GPUs"),
    "gpu not an object": (_set("gpus.gpus[0]", "RTX 3090"), "gpus.gpus[0]", "must be an object"),
    "gpu model too long": (_set("gpus.gpus[1].model", "M" * 300), "gpus.gpus[1].model", "at most 255"),
    "gpu model two lines": (_set("gpus.gpus[0].model", "RTX\nA100"), "gpus.gpus[0].model", "one line"),
    "too many list items": (_set("gpus.gpus", [{"model": "x"}] * (nodeprobes.MAX_LIST + 1)), "gpus.gpus",
                            f"at most {nodeprobes.MAX_LIST}"),
    "string too long": (_set("os.name", "D" * (nodeprobes.MAX_TEXT + 1)), "os.name",
                        f"at most {nodeprobes.MAX_TEXT}"),
    "NUL in a string": (_set("cvmfs.repositories", [{"name": "alice\0.cern.ch"}]), "cvmfs.repositories[0].name",
                        "NUL"),
    "too deep": (_deep, "os.deep" + ".x" * (nodeprobes.MAX_DEPTH - 2), "levels deep"),
    "too many keys": (_set("os", {f"k{i}": i for i in range(nodeprobes.MAX_KEYS + 1)}), "os",
                      f"at most {nodeprobes.MAX_KEYS}"),
    "key too long": (_set("os", {"k" * 100: 1}), "os." + "k" * 100, "not a key"),
    "too big": (_set("extra", {f"k{i}": "x" * 1000 for i in range(100)}), "probe",
                f"at most {nodeprobes.MAX_BYTES}"),
    "ok missing": (lambda d: d.pop("ok"), "ok", "true or false"),
    "ok a string": (_set("ok", "yes"), "ok", "true or false"),
    "pilot version with spaces": (_set("pilot_version", "1.0 beta"), "pilot_version", "PEP 440"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_probe_is_refused_naming_the_field_and_nothing_is_stored(world, probes, case):
    change, field, words = BAD[case]
    host = f"bad-{len(case)}-{abs(hash(case)) % 10_000}"
    b = body(probes["aarch64"], host)
    change(b)
    status, answer = raw(world, "POST", "/nodes/probe", world.admin.mint_token("agent", "a", site=SITE, ce=CE), b)
    assert status == 400, answer
    assert answer["field"] == field, answer
    assert words in answer["message"] and field.split(".")[0] in answer["message"], answer
    assert stored(world, host) == 0, "a refused probe stores nothing, not even the node"


def test_the_latest_probe_is_kept_and_history_only_when_it_changed(world, probes):
    agent = world.agent()
    first = body(probes["aarch64"], "hist-1")
    r = agent.post_node_probe(first)
    assert r["changed"] and r["history"] == 1 and r["site"] == SITE
    assert r["digest"] == probedigest.digest({k: v for k, v in first.items() if k != "host"})
    # The same node probed again later: timings, free memory and disk, clock offset and boot differ; no change.
    again = body(probes["aarch64"], "hist-1")
    again["seconds"] = 9.5
    again["disk"]["free_mb"] = 12
    again["memory"]["available_mb"] = 7
    again["boot_id"] = "another-boot"
    again["central"] = {"reachable": True, "clock_offset_s": 3.0, "round_trip_s": 0.2}
    again["warnings"] = ["clock is 3.0 s off central's"]
    r = agent.post_node_probe(again)
    assert not r["changed"] and r["history"] == 1 and r["digest"] == probedigest.digest(
        {k: v for k, v in first.items() if k != "host"})
    changed = body(probes["aarch64"], "hist-1")
    changed["runtimes"]["found"] = {"podman": {"found": True, "starts": True, "seconds": 1.2}}
    r = agent.post_node_probe(changed)
    assert r["changed"] and r["history"] == 2
    h = world.admin.node_probes("hist-1")
    assert [e["probe"]["runtimes"]["found"] for e in h["history"]] == [changed["runtimes"]["found"], {}], \
        "newest first"
    assert h["latest"]["probe"]["runtimes"]["found"] == changed["runtimes"]["found"]
    assert h["latest"]["changed"] == h["history"][0]["ts"] and h["latest"]["posted"] >= h["latest"]["changed"]
    assert h["site"] == SITE and "host" not in h["latest"]["probe"]
    assert [e["ts"] for e in world.admin.node_probes("hist-1", limit=1)["history"]] == [h["history"][0]["ts"]]


def test_history_keeps_the_newest_max_history_changes(world, probes):
    agent = world.agent()
    for i in range(nodeprobes.MAX_HISTORY + 3):
        b = body(probes["this"], "hist-many")
        b["pilot_version"] = f"1.0.{i}"
        agent.post_node_probe(b)
    h = world.admin.node_probes("hist-many")
    versions = [e["probe"]["pilot_version"] for e in h["history"]]
    assert len(versions) == nodeprobes.MAX_HISTORY
    assert versions[0] == f"1.0.{nodeprobes.MAX_HISTORY + 2}" and versions[-1] == "1.0.3"


def test_nodes_list_shows_the_probe_and_filters_by_site_arch_and_gpu_model(world, probes):
    agent, other = world.agent(), world.agent("agent2", site=OTHER_SITE, ce=OTHER_SITE + "::CE")
    agent.post_node_probe(body(probes["aarch64"], "list-arm"))
    agent.post_node_probe(body(probes["riscv64"], "list-riscv"))
    mine = body(probes["this"], "list-this")
    mine["runtimes"]["found"] = {"podman": {"found": True, "starts": True}, "bwrap": {"found": True, "starts": False}}
    other.post_node_probe(mine)

    def hosts(**q: Any):
        return sorted(n["host"] for n in world.admin.nodes(**q)["nodes"] if n["host"].startswith("list-"))

    assert hosts() == ["list-arm", "list-riscv", "list-this"]
    assert hosts(arch="aarch64") == ["list-arm"] and hosts(arch="riscv64") == ["list-riscv"]
    assert hosts(arch=probes["this"]["cpu"]["arch"]) == ["list-this"]
    assert hosts(arch="aarch") == [], "arch is exact"
    assert hosts(gpu="rtx 3090") == ["list-arm"], "a GPU model substring, in any case"
    assert hosts(gpu="radeon hd 6450") == ["list-riscv"] and hosts(gpu="GeForce") == ["list-arm"]
    assert hosts(gpu="%") == [] and hosts(gpu="_") == [], "LIKE wildcards are plain characters"
    assert hosts(site=OTHER_SITE) == ["list-this"] and hosts(site=SITE, arch="aarch64") == ["list-arm"]
    (arm,) = [n for n in world.admin.nodes(arch="aarch64")["nodes"] if n["host"] == "list-arm"]
    assert arm["arch"] == "aarch64" and arm["x86_64_level"] is None and arm["runtimes"] == []
    assert "GA102 [GeForce RTX 3090]" in arm["gpus"] and len(arm["gpus"]) == 3
    assert arm["pilot_version"] == "1.2.3" and arm["probe_ok"] is True and arm["probed"] >= arm["probe_changed"]
    # The keys of issue 14 stay.
    assert {"host", "site", "ce", "first_seen", "last_seen", "bad", "bad_reason", "failures"} <= set(arm)
    (this,) = [n for n in world.admin.nodes(site=OTHER_SITE)["nodes"] if n["host"] == "list-this"]
    assert this["runtimes"] == ["podman"], "only the runtimes that started a container"
    assert this["x86_64_level"] == probes["this"]["cpu"].get("x86_64_level")
    # A node central knows only from matching has no probe: its probe columns are null.
    assert agent.match(site_map(node="list-matched")) is None
    (matched,) = [n for n in world.admin.nodes(site=SITE)["nodes"] if n["host"] == "list-matched"]
    assert matched["arch"] is None and matched["runtimes"] is None and matched["gpus"] is None
    assert matched["probed"] is None and matched["probe_ok"] is None
    assert hosts(arch="aarch64") == ["list-arm"], "a node without a probe has no arch"
    ce = world.ce()
    assert {n["host"] for n in ce.nodes()["nodes"]} >= {"list-arm", "list-riscv"}
    with expect_error(403):
        ce.nodes(site=OTHER_SITE)
    status, answer = raw(world, "GET", "/nodes?arch=" + "a" * 40, world.admin.token)
    assert status == 400 and answer["field"] == "arch", answer


def test_metrics_count_nodes_by_site_arch_runtime_and_gpu_model(world, probes):
    site = "GRIDPILOT::METRICS"
    agent = world.agent("agent-m", site=site, ce=site + "::CE")
    for host in ("m-arm-1", "m-arm-2"):
        b = body(probes["aarch64"], host)
        b["runtimes"]["found"] = {"apptainer": {"found": True, "starts": True}}
        agent.post_node_probe(b)
    agent.post_node_probe(body(probes["riscv64"], "m-riscv"))
    m = Exposition(world.admin.metrics())
    assert m.value("gridpilot_nodes", site=site, arch="aarch64") == 2
    assert m.value("gridpilot_nodes", site=site, arch="riscv64") == 1
    assert m.value("gridpilot_nodes_runtime", site=site, runtime="apptainer") == 2
    assert m.value("gridpilot_nodes_gpu", site=site, model="GA102 [GeForce RTX 3090]") == 2, \
        "a node counts once per model"
    riscv_models = {g["model"] for g in probes["riscv64"]["gpus"]["gpus"]}
    for model in riscv_models:
        assert m.value("gridpilot_nodes_gpu", site=site, model=model) >= 1
    # A node not seen for longer than METRICS_SEEN_S is no longer part of its site.
    with world.db.write() as conn:
        conn.execute(update(schema.nodes).where(schema.nodes.c.host == "m-arm-2").values(
            last_seen=time.time() - nodeprobes.METRICS_SEEN_S - 60))
    m = Exposition(world.admin.metrics())
    assert m.value("gridpilot_nodes", site=site, arch="aarch64") == 1
    assert m.value("gridpilot_nodes_runtime", site=site, runtime="apptainer") == 1
    assert "m-arm" not in world.admin.metrics(), "no host name in /metrics"


def test_who_may_post_and_read(world, probes):
    b = body(probes["aarch64"], "authz-1")
    with expect_error(403):
        world.user("bob").post_node_probe(b)
    assert stored(world, "authz-1") == 0
    world.agent().post_node_probe(b)
    # Another site's pilot or CE may not rewrite this site's node.
    other = world.agent("agent2", site=OTHER_SITE, ce=OTHER_SITE + "::CE")
    with expect_error(403) as info:
        other.post_node_probe(b)
    assert "known at site" in info.value.message
    with expect_error(403):
        world.ce("ce2", site=OTHER_SITE, ce=OTHER_SITE + "::CE").post_node_probe(b)
    with expect_error(403):
        world.agent().post_node_probe(dict(b, site=OTHER_SITE))
    # A CE of the node's site may; an admin names the site.
    assert world.ce().post_node_probe(b)["site"] == SITE
    status, answer = raw(world, "POST", "/nodes/probe", world.admin.token, body(probes["aarch64"], "authz-2"))
    assert status == 400 and answer["field"] == "site", answer
    assert world.admin.post_node_probe(body(probes["aarch64"], "authz-2", site=SITE))["site"] == SITE
    # The history is an admin's.
    for who in (world.agent(), world.ce(), world.user("bob")):
        with expect_error(403):
            who.node_probes("authz-1")
    with expect_error(404, "node_not_found"):
        world.admin.node_probes("never-heard-of")
    status, answer = raw(world, "GET", f"/nodes/authz-1/probes?limit={nodeprobes.MAX_HISTORY + 1}",
                         world.admin.token)
    assert status == 400 and answer["field"] == "limit", answer
    status, answer = raw(world, "GET", "/nodes/" + "h" * 300 + "/probes", world.admin.token)
    assert status == 400 and answer["field"] == "host", answer


def cli(world, tmp_path, *args: str) -> subprocess.CompletedProcess:
    token = tmp_path / "admin.token"
    token.write_text(world.admin.token)
    return subprocess.run([sys.executable, "-m", "gridpilot", "central", "nodes", *args, "--url", world.url,
                           "--token-file", str(token)], capture_output=True, text=True, timeout=120)


def test_the_command_lists_filters_and_shows_a_nodes_history(world, probes, tmp_path):
    site = "GRIDPILOT::CLI"
    agent = world.agent("agent-cli", site=site, ce=site + "::CE")
    arm = body(probes["aarch64"], "cli-arm")
    arm["gpus"]["gpus"].append(dict(arm["gpus"]["gpus"][0], pci_address="0000:02:00.0"))
    agent.post_node_probe(arm)
    arm["runtimes"]["found"] = {"apptainer": {"found": True, "starts": True}}
    agent.post_node_probe(arm)
    agent.post_node_probe(body(probes["riscv64"], "cli-riscv"))

    out = cli(world, tmp_path, "--site", site, "--gpu", "rtx 3090")
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split("\t")[:7] == ["HOST", "SITE", "ARCH", "LEVEL", "RUNTIMES", "GPUS", "STATE"]
    assert len(rows) == 1, out.stdout
    host, s, arch, level, runtimes, gpus, state = rows[0].split("\t")[:7]
    assert (host, s, arch, level, runtimes, state) == ("cli-arm", site, "aarch64", "-", "apptainer", "ok")
    assert "2x GA102 [GeForce RTX 3090]" in gpus and "1x AD104GL [RTX 4000 SFF Ada Generation]" in gpus

    out = cli(world, tmp_path, "--site", site, "--arch", "riscv64", "--json")
    assert out.returncode == 0, out.stderr
    assert [n["host"] for n in orjson.loads(out.stdout)["nodes"]] == ["cli-riscv"]

    out = cli(world, tmp_path, "--history", "cli-arm")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("node cli-arm (GRIDPILOT::CLI): probe last posted") and "agent 'agent-cli'" in lines[0]
    assert len(lines) == 4 and "\tapptainer\t" in lines[2] and "\tnone\t" in lines[3], out.stdout
    as_json = orjson.loads(cli(world, tmp_path, "--history", "cli-arm", "--json").stdout)
    assert len(as_json["history"]) == 2

    out = cli(world, tmp_path, "--history", "no-such-node")
    assert out.returncode == cli_codes.FAILED and "has not heard of node 'no-such-node'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
