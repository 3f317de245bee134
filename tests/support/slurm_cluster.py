"""A real single-node Slurm 22.05 for the computing element's tests (pytest plugin, loaded from conftest.py).

Everything lives in one temp directory: munged with its own key and socket, slurmctld and slurmd with a slurm.conf
written as ENVIRONMENT.md describes, except for the node's name: slurmd names its cgroups `slurm_<NodeName>` (in
the v1 freezer hierarchy, for proctrack/cgroup), so a node named after the host would share them with any other
cluster started on this host at the same time (another checkout's test session) and one session's cleanup would
remove the other's. Each cluster's node has a name of its own (NodeHostname is the host; slurmd is told its name
with -N). The cluster is session-scoped (about 10 s from nothing to an idle node), its
clients find it through SLURM_CONF, and its daemons are stopped by the pids they wrote, never by name.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import List, Optional

import pytest
from support.require import require_or_skip

#: More CPUs than this 2-core machine has (SlurmdParameters=config_overrides lets slurmd believe the config), so
#: several pilots run at once, as on a real worker node.
NODE_CPUS = 8
NODE_MEMORY_MB = 16000
PARTITION = "gridpilot"
_READY_TIMEOUT_S = 60.0
_CGROUP_ROOT = Path("/sys/fs/cgroup")

_SLURM_CONF = """\
ClusterName=gridpilot
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
MailProg=/bin/true
# cgroup v1 on this hybrid host: it finds and kills setsid'd and double-forked processes, linuxproc and pgid leak them.
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to `scontrol show job` this long (there is no accounting to ask afterwards).
MinJobAge=600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
# The node's arch as a feature, as a mixed-arch site tags its nodes (the CE's per-arch shapes: --constraint).
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Features={arch} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""

_CGROUP_CONF = """\
CgroupPlugin=autodetect
CgroupMountpoint=/sys/fs/cgroup
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_reason() -> Optional[str]:
    for tool, package in (("munged", "munge"), ("slurmctld", "slurmctld (slurm-wlm)"), ("slurmd", "slurmd (slurm-wlm)"),
                          ("sbatch", "slurm-client (slurm-wlm)")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"no {tool} (Debian package {package})"
    if os.geteuid() != 0:
        return "a private Slurm needs root here (SlurmUser=root, proctrack/cgroup)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """One running single-node cluster. `env` is what a Slurm client needs (SLURM_CONF)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.host = socket.gethostname().split(".")[0]
        #: This cluster's node, and the name of the cgroups its slurmd makes (slurm_<node>).
        self.node = "gridpilot" + os.urandom(4).hex()
        self.conf = base / "etc" / "slurm.conf"
        self.munge_socket = base / "munge" / "socket" / "munge.socket"
        self.pidfiles: List[Path] = [base / "run" / "slurmd.pid", base / "run" / "slurmctld.pid",
                                     base / "munge" / "munged.pid"]

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": str(self.conf)}

    def log_tail(self, n: int = 3000) -> str:
        out = []
        for p in sorted((self.base / "log").glob("*.log")) + [self.base / "munge" / "munged.log"]:
            if p.exists():
                out.append(f"--- {p.name}:\n{p.read_text(errors='replace')[-n:]}")
        return "\n".join(out)

    # -- start ---------------------------------------------------------------------------------------------------
    def start(self) -> None:
        b = self.base
        for d in ("etc", "state", "spool", "run", "log", "munge/key"):
            (b / d).mkdir(parents=True, exist_ok=True)
        # munged checks the permissions of its directories: the socket's must be 0755, the key's 0700.
        (b / "munge" / "socket").mkdir(mode=0o755, exist_ok=True)
        os.chmod(b / "munge" / "socket", 0o755)
        os.chmod(b / "munge" / "key", 0o700)
        key = b / "munge" / "key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self._run([_tool("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                   f"--pid-file={b / 'munge' / 'munged.pid'}", f"--log-file={b / 'munge' / 'munged.log'}",
                   f"--seed-file={b / 'munge' / 'munged.seed'}"], "munged")
        self.conf.write_text(_SLURM_CONF.format(
            host=self.host, node=self.node, base=b, munge_socket=self.munge_socket, ctld_port=_free_port(),
            slurmd_port=_free_port(), cpus=NODE_CPUS, memory=NODE_MEMORY_MB, partition=PARTITION,
            arch=platform.machine()))
        (b / "etc" / "cgroup.conf").write_text(_CGROUP_CONF)
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._run([_tool("slurmctld"), "-f", str(self.conf), "-i"], "slurmctld", env)
        self._run([_tool("slurmd"), "-f", str(self.conf), "-N", self.node], "slurmd", env)
        self._wait_idle(env)

    def _run(self, cmd: List[str], name: str, env: Optional[dict] = None) -> None:
        # Each daemon forks into the background and writes its pid file; we stop it by that pid.
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, start_new_session=True)
        if r.returncode != 0:
            raise RuntimeError(f"{name} did not start (exit {r.returncode}): {r.stderr.strip()}\n{self.log_tail()}")

    def _wait_idle(self, env: dict) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
            last = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and last.split() == ["idle"]:
                return
            time.sleep(0.3)
        raise RuntimeError(f"the Slurm node is not idle after {_READY_TIMEOUT_S:.0f} s (sinfo: {last!r})\n"
                           + self.log_tail())

    # -- stop ----------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what is left, stop the daemons by their pids (slurmd first), remove the empty cgroups they leave."""
        if self.conf.exists():
            subprocess.run(["scancel", "--full", "--partition", PARTITION], env=dict(os.environ, **self.env),
                           capture_output=True, timeout=30)
        for pidfile in self.pidfiles:
            _stop_pid(pidfile)
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        # proctrack/cgroup makes slurm_<node>/uid_*/job_*/step_* (in the freezer hierarchy here) and leaves the
        # empty tree. Only this cluster's node name: another cluster on this host has its own.
        for top in _CGROUP_ROOT.glob(f"*/slurm_{self.node}"):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    d.rmdir()
                except OSError:
                    pass
            try:
                top.rmdir()
            except OSError:
                pass


def _stop_pid(pidfile: Path, timeout: float = 20.0) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A private single-node Slurm for the session; SLURM_CONF is exported for the clients while it runs."""
    reason = missing_reason()
    if reason is not None:
        require_or_skip(reason)
    base = Path(tempfile.mkdtemp(prefix="gridpilot-slurm-"))
    os.chmod(base, 0o755)  # slurmd and the job steps read the config from here
    cluster = SlurmCluster(base)
    old = os.environ.get("SLURM_CONF")
    try:
        try:
            cluster.start()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            pytest.fail(f"Slurm did not start: {e}", pytrace=False)
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
