"""Podman and bubblewrap for real, in the Debian 12 test image: a command, the probe, binds, the environment (the
agent token never inside), a PID namespace, the descriptors passed at 3 and 4, and (Podman) the container's
processes in the job cgroup. Apptainer and Singularity where their binary exists."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.require import require_or_skip
from gridpilot.isolation import cgroupfs, limits
from gridpilot.isolation.runtimes import Apptainer, Bind, Bubblewrap, LaunchSpec, NoContainer, Podman, Singularity
from gridpilot.isolation import containers
from test_cgroupv1 import v1_job  # noqa: F401 (a fixture)

MB = 1 << 20

RUNTIMES = {"podman": (Podman, "podman runc"), "bwrap": (Bubblewrap, "bubblewrap")}


def _runtime(name: str):
    cls, package = RUNTIMES[name]
    rt = cls()
    why = rt.missing()
    if why is not None:
        require_or_skip(f"{why} (Debian package {package})")
    return rt


def _run(rt, spec: LaunchSpec, timeout: float = 120) -> subprocess.CompletedProcess:
    launch = rt.command(spec)
    try:
        return subprocess.run(launch.argv, env=launch.env, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    finally:
        cleanup = rt.cleanup(spec)
        if cleanup:
            subprocess.run(cleanup, capture_output=True)


@pytest.fixture(params=sorted(RUNTIMES))
def runtime(request):
    return _runtime(request.param)


def test_probe_works_and_fails(runtime, image_dir, tmp_path):
    binds = containers.python_binds()
    assert runtime.probe(containers.probe_spec(str(image_dir), binds), 60) is None
    # Without the Python's binds the interpreter is not in the image: the probe says so.
    why = runtime.probe(containers.probe_spec(str(image_dir), []), 60)
    assert why is not None and "exited with" in why
    empty = tmp_path / "empty-image"
    empty.mkdir()
    assert runtime.probe(containers.probe_spec(str(empty), binds), 60) is not None


def test_binds_env_and_pid_namespace(runtime, image_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from-the-host\n")
    script = (
        "import os, sys;"
        "print('pid', os.getpid());"
        "print('cwd', os.getcwd());"
        "print('token', os.environ.get('GRIDPILOT_TOKEN', 'none'));"
        "print('mark', os.environ.get('GRIDPILOT_TEST_SOMETHING', 'none'));"
        "print('in', open('/data/in.txt').read().strip());"
        "open('/workdir/out.txt', 'w').write('written-inside');"
        "ro = True\n"
        "try: open('/data/x', 'w')\n"
        "except OSError: ro = False\n"
        "print('data-writable', ro);"
        "print('debian', open('/etc/debian_version').read().strip())"
    )
    env = containers.container_env({}, {"GRIDPILOT_TOKEN": "secret", "GRIDPILOT_TOKEN_FILE": "/x",
                                        "GRIDPILOT_TEST_SOMETHING": "kept", "AWS_SECRET": "no"})
    spec = LaunchSpec([sys.executable, "-c", script], str(image_dir),
                      binds=[*containers.python_binds(), Bind(str(work), "/workdir", read_only=False),
                             Bind(str(data), "/data")],
                      env=env, stdin=False, name=f"gridpilot-test-{os.getpid()}")
    out = _run(runtime, spec)
    assert out.returncode == 0, out.stderr.decode()
    got = dict(line.split(" ", 1) for line in out.stdout.decode().splitlines())
    assert got["pid"] == "1"  # the first process of its own PID namespace
    assert got["cwd"] == "/workdir"
    assert got["token"] == "none" and got["mark"] == "kept"
    assert got["in"] == "from-the-host" and got["data-writable"] == "False"
    assert got["debian"].startswith("12.")
    assert (work / "out.txt").read_text() == "written-inside"
    assert "AWS_SECRET" not in env and "GRIDPILOT_TOKEN_FILE" not in env


def test_tmp_is_the_job_work_directory_tmp(runtime, image_dir, tmp_path):
    """In the spec the agent makes, /tmp inside is the job's <workdir>/tmp: a file the payload writes to /tmp/x is
    in the work directory's tmp on the host, not in the node's /tmp nor in a tmpfs gone with the container. And the
    environment inside names the image and the runtime, for a container started in there."""
    work = tmp_path / "alien-job-1"
    name = f"gridpilot-tmp-test-{os.getpid()}-{time.monotonic_ns()}"
    script = (f"import os; open('/tmp/{name}', 'w').write('from-the-payload');"
              "print(os.environ['JOB_CONTAINER_PATH']); print(os.environ['GRIDPILOT_CONTAINER_RUNTIME']);"
              "print(sorted(os.listdir('/workdir/tmp')))")
    spec = containers.launch_spec(containers.Isolation(runtime, str(image_dir)), [sys.executable, "-c", script],
                                  workdir=str(work), env={}, cfg=containers.PilotConfig(), gpus=[], storage=None,
                                  job_cgroups=[], name=f"gridpilot-test-tmp-{os.getpid()}", pass_fds=0)
    spec.stdin = False
    (work / "tmp").mkdir(parents=True)
    out = _run(runtime, spec)
    assert out.returncode == 0, out.stderr.decode()
    # Beside the payload's file, only the mount points of other binds under /tmp (the pilot's own Python when it is
    # installed there, as in a checkout under /tmp): the runtime makes them in the bound directory.
    under_tmp = {b.dst.split("/")[2] for b in spec.binds if b.dst.startswith("/tmp/")}
    assert out.stdout.decode().splitlines() == [str(image_dir), runtime.name, repr(sorted({name} | under_tmp))]
    assert (work / "tmp" / name).read_text() == "from-the-payload"
    assert not os.path.lexists(f"/tmp/{name}")


def test_descriptors_3_and_4_pass_through(runtime, image_dir):
    """The agent's pipes reach the JobWrapper at fds 3 and 4, in every runtime."""
    r, w = os.pipe()
    spec = LaunchSpec([sys.executable, "-c", "import os; os.write(4, os.read(3, 100).upper())"], str(image_dir),
                      binds=containers.python_binds(), env=containers.container_env({}), pass_fds=2, stdin=False, workdir="/",
                      name=f"gridpilot-test-fds-{os.getpid()}")
    to_child_r, to_child_w = os.pipe()
    os.write(to_child_w, b"ping")
    os.close(to_child_w)

    def fds() -> None:
        a = os.dup(to_child_r)
        b = os.dup(w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    launch = runtime.command(spec)
    try:
        proc = subprocess.run(launch.argv, env=launch.env, close_fds=False, preexec_fn=fds, capture_output=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    finally:
        os.close(w)
        os.close(to_child_r)
        cleanup = runtime.cleanup(spec)
        if cleanup:
            subprocess.run(cleanup, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert os.read(r, 100) == b"PING"
    os.close(r)


def _run_joining(rt, spec: LaunchSpec, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `spec` as the agent does: the job cgroups' cgroup.procs opened here and passed in at their descriptors."""
    passed = containers.open_cgroup_procs(spec)
    launch = rt.command(spec)
    try:
        return subprocess.run(launch.argv, env=launch.env, capture_output=True, timeout=timeout, close_fds=False,
                              preexec_fn=lambda: containers.place_fds(passed), stdin=subprocess.DEVNULL)
    finally:
        containers.close_fds(passed)
        cleanup = rt.cleanup(spec)
        if cleanup:
            subprocess.run(cleanup, capture_output=True)


def _job_spec(rt, image_dir, job_cgroups, script: str, work: Path) -> LaunchSpec:
    """The spec the agent makes for a job in `work` (made here, with its tmp, as the agent makes them)."""
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    spec = containers.launch_spec(containers.Isolation(rt, str(image_dir)), [sys.executable, "-c", script],
                                  workdir=str(work), env={}, cfg=containers.PilotConfig(), gpus=[], storage=None,
                                  job_cgroups=[str(d) for d in job_cgroups], name=f"gridpilot-test-cg-{os.getpid()}",
                                  pass_fds=0)
    spec.stdin = False
    return spec


JOIN = ("import os; from gridpilot.pilot.wrapper import join_cgroups; "
        "join_cgroups(os.environ.pop('GRIDPILOT_JOIN_CGROUP_FDS'))\n")


def test_wrapper_joins_through_a_passed_descriptor_and_closes_it(cgroup_dir):
    """No container needed: a child given the job cgroup's cgroup.procs as fd 3 joins it with wrapper.join_cgroups,
    and fd 3 is closed afterwards (nothing for a payload to inherit or find in /proc/<pid>/fd)."""
    spec = LaunchSpec(["unused"], None, pass_fds=1, cgroup_procs={3: str(cgroup_dir / "cgroup.procs")})
    passed = containers.open_cgroup_procs(spec)
    script = JOIN.replace("os.environ.pop('GRIDPILOT_JOIN_CGROUP_FDS')", "'3'") + (
        "import sys\ntry:\n    os.fstat(3)\n    print('fd 3 still open')\nexcept OSError:\n    pass\n"
        "print(open('/proc/self/cgroup').read())")
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                             close_fds=False, preexec_fn=lambda: containers.place_fds(passed))
    finally:
        containers.close_fds(passed)
    assert out.returncode == 0, out.stderr
    assert "fd 3 still open" not in out.stdout
    want = cgroupfs.own_v2_path().rstrip("/") + "/" + cgroup_dir.name
    assert f"0::{want}" in out.stdout.splitlines(), out.stdout


def test_podman_container_stays_in_the_job_cgroup(image_dir, cgroup_dir, tmp_path):
    """The JobWrapper's first act (wrapper.join_cgroups) puts the container in the job cgroup, where the agent's
    cgroup kill and the limits reach it, instead of the libpod cgroup runc made at the hierarchy's root."""
    rt = _runtime("podman")
    out = _run_joining(rt, _job_spec(rt, image_dir, [cgroup_dir], JOIN + "print(open('/proc/self/cgroup').read())",
                                     tmp_path / "work"))
    assert out.returncode == 0, out.stderr.decode()
    own = [line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")][0]
    want = own.split("::", 1)[1].rstrip("/") + "/" + cgroup_dir.name
    assert f"0::{want}" in out.stdout.decode().splitlines(), out.stdout.decode()


#: Inside the container, after the join: every directory of its own cgroups that any mount shows in there, and which
#: of the files a payload would like to write it could open for writing. Limits are written back with the value they
#: have (a real write, changing nothing); control files (kill, freeze, moving processes) are only opened.
LOOK_FOR_LIMITS = JOIN + r"""
import json, subprocess, sys
passed = [int(fd) for fd in sys.argv[1].split(":")]
own = {}
for line in open("/proc/self/cgroup"):
    _, controllers, path = line.rstrip("\n").split(":", 2)
    own[controllers or "v2"] = path
dirs, mounts = set(), []
for line in open("/proc/self/mountinfo"):
    f = line.split()
    sep = f.index("-")
    fstype, root, point, options = f[sep + 1], f[3], f[4], set(f[sep + 3].split(","))
    if fstype in ("cgroup", "cgroup2"):
        mounts.append([point, root])
    for controllers, path in own.items():
        if fstype == "cgroup2" and controllers == "v2" or fstype == "cgroup" and options & set(controllers.split(",")):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                dirs.add(os.path.normpath(point + "/" + path[len(root):]))
limits = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.high", "pids.max", "cpu.max",
          "cpu.cfs_quota_us"]
control = ["cgroup.kill", "cgroup.freeze", "freezer.state", "cgroup.procs", "tasks", "cgroup.subtree_control"]
writable = []
for d in sorted(dirs):
    for name in limits + control:
        p = os.path.join(d, name)
        try:
            if name in limits:
                value = open(p).read()
                with open(p, "w") as f:
                    f.write(value)
            else:
                os.close(os.open(p, os.O_WRONLY))
            writable.append(p)
        except OSError:
            pass
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
hog = subprocess.run([sys.executable, "-c", "b = b'x' * (300 << 20)"]).returncode
print(json.dumps({"own": own, "dirs": sorted(dirs), "mounts": mounts, "writable": writable,
                  "still_open": [fd for fd in passed if is_open(fd)], "run": os.path.exists("/run/gridpilot"),
                  "hog": hog}))
"""


def test_podman_payload_finds_no_limit_of_its_job_to_write(image_dir, cgroup_dir, v1_job, tmp_path):
    """Root inside the container, after the wrapper joined the job's cgroups (v2 and the v1 memory, pids and cpu of
    this hybrid host), finds none of them mounted and no descriptor left open to them: nothing to raise
    memory.limit_in_bytes or pids.max through, nor cgroup.kill or cgroup.freeze. The join still works, and the
    memory limit still holds: 300 MB against 64 MB is OOM-killed in the job's memory cgroup."""
    import json

    rt = _runtime("podman")
    v1_job.apply(limits.job_limits(64 * MB, 1))
    limit_before = (v1_job.dirs["memory"] / "memory.limit_in_bytes").read_text()
    job_cgroups = [cgroup_dir, *v1_job.dirs.values()]
    spec = _job_spec(rt, image_dir, job_cgroups, LOOK_FOR_LIMITS, tmp_path / "work")
    spec.argv.append(spec.env["GRIDPILOT_JOIN_CGROUP_FDS"])
    assert not [b for b in spec.binds if b.src.startswith("/sys/fs/cgroup")], spec.binds
    out = _run_joining(rt, spec)
    assert out.returncode == 0, out.stderr.decode()
    seen = json.loads(out.stdout.decode().splitlines()[-1])
    assert seen["writable"] == [] and not seen["run"], seen
    # The container's own cgroups (runc's libpod-<id>, read-only) are mounted; none of the job's is.
    assert not [m for m in seen["mounts"] if any(m[1].endswith("/" + Path(d).name) for d in job_cgroups)], seen
    assert seen["still_open"] == [], seen
    # Joined: v2 and every v1 job cgroup hold the container's processes.
    own_v2 = cgroupfs.own_v2_path().rstrip("/")
    assert seen["own"]["v2"] == f"{own_v2}/{cgroup_dir.name}", seen
    for controller, d in v1_job.dirs.items():
        path = next(p for c, p in seen["own"].items() if controller in c.split(","))
        assert d.as_posix().endswith(path), (controller, d, seen)
    # The limit holds, unchanged: the hog was killed (SIGKILL) by the kernel in the job's memory cgroup.
    assert seen["hog"] == -signal.SIGKILL, seen
    assert v1_job.oom_kills() >= 1
    assert (v1_job.dirs["memory"] / "memory.limit_in_bytes").read_text() == limit_before


def test_podman_names_never_collide_between_pilots(image_dir):
    """Two pilots on one node (each with its own central and PID namespace) may run the same job id from the same
    pid; Podman's store is the node's. Each container gets a name of its own, and one pilot's cleanup (podman rm
    --force <name>) leaves the other's container running."""
    rt = _runtime("podman")
    specs = [LaunchSpec(["/bin/sleep", "60"], str(image_dir), env=containers.container_env({}), stdin=False,
                        workdir="/", name=containers.container_name(1)) for _ in range(2)]
    assert specs[0].name != specs[1].name
    procs = []
    try:
        for spec in specs:
            launch = rt.command(spec)
            procs.append(subprocess.Popen(launch.argv, env=launch.env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))

        def running() -> set:
            out = subprocess.run([rt.binary(), "ps", "--format", "{{.Names}}"], capture_output=True, text=True)
            return set(out.stdout.split())

        deadline = time.monotonic() + 60
        while not {s.name for s in specs} <= running():
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, running()
            time.sleep(0.2)
        subprocess.run(rt.cleanup(specs[0]), capture_output=True, check=True)
        assert procs[0].wait(30) is not None
        time.sleep(0.5)
        assert specs[1].name in running() and procs[1].poll() is None
    finally:
        for spec, p in zip(specs, procs):
            subprocess.run(rt.cleanup(spec), capture_output=True)
            p.wait(30)


@pytest.mark.parametrize("cls", [Apptainer, Singularity])
def test_apptainer_real_run(cls, image_dir):
    rt = cls()
    why = rt.missing()
    if why is not None:
        # Not packaged for Debian 12 (the CI machines): a plain skip, not require_or_skip, so CI accepts it.
        pytest.skip(f"{why}: Apptainer and Singularity are not packaged for Debian 12; the command line is tested "
                    "in test_runtimes.py")
    assert rt.probe(containers.probe_spec(str(image_dir), containers.python_binds()), 120) is None


def test_unshare_gives_the_wrapper_pid_1():
    rt = NoContainer(True)
    if rt.missing():
        require_or_skip(rt.missing() or "")
    spec = LaunchSpec([sys.executable, "-c", "import os; print(os.getpid(), len([p for p in os.listdir('/proc') if p.isdigit()]))"],
                      None, env=dict(os.environ), stdin=False)
    out = _run(rt, spec)
    assert out.returncode == 0, out.stderr.decode()
    pid, nprocs = (int(x) for x in out.stdout.split())
    assert pid == 1 and nprocs == 1


def test_wrapper_as_pid_1_ends_the_orphans_of_its_namespace():
    """terminate_tree refuses pid 1 as a root, and in a container or under unshare the JobWrapper is pid 1 and every
    orphan is its child: end_orphans ends each child's subtree instead, and leaves the payload's zombie waitable."""
    if NoContainer(True).missing():
        require_or_skip(NoContainer(True).missing() or "")
    code = (
        "import os, subprocess, time\n"
        "from gridpilot.pilot.wrapper import end_orphans\n"
        "p = subprocess.Popen(['sh', '-c', '(setsid sleep 300 &); exec sleep 0.2'], start_new_session=True)\n"
        "os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)\n"
        "time.sleep(0.3)\n"
        "print(len([x for x in os.listdir('/proc') if x.isdigit()]))\n"
        "end_orphans(exclude=p.pid)\n"
        "print(len([x for x in os.listdir('/proc') if x.isdigit()]), os.waitpid(p.pid, 0)[1])\n"
    )
    spec = LaunchSpec([sys.executable, "-c", code], None, env=dict(os.environ), stdin=False)
    out = _run(NoContainer(True), spec)
    assert out.returncode == 0, out.stderr.decode()
    before, after = out.stdout.decode().splitlines()
    assert before == "3"  # the wrapper, the payload's zombie, the daemon
    assert after == "2 0"  # the daemon is gone; the payload's exit status was still there to read


# -- unshare as an unprivileged user, for real --

NOBODY = 65534
#: setpriv (util-linux) drops to nobody with no supplementary groups, as a pilot started by a grid user runs.
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _need_root_setpriv_unshare() -> None:
    if os.geteuid() != 0:
        require_or_skip("needs root to run commands as user nobody (setpriv) and to map a user namespace's ids")
    for tool in ("setpriv", "unshare"):
        if shutil.which(tool) is None:
            require_or_skip(f"no {tool} (Debian package util-linux)")


def _need_python_for_nobody() -> None:
    """The process under test runs this checkout's Python as nobody: its interpreter and sources must be readable."""
    out = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import gridpilot.isolation.containers"], capture_output=True)
    if out.returncode != 0:
        require_or_skip(f"user nobody cannot run {sys.executable} with this checkout: {out.stderr.decode()[-300:]}")


def _as_nobody_in_user_namespace(argv, max_user_namespaces: int, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `argv` as nobody inside a user namespace of its own whose `user.max_user_namespaces` is the given value:
    with 0 it is a node where unprivileged users may not make user namespaces, without touching the host's sysctl
    (the limit is per user namespace and applies to every namespace below it).

    The namespace maps ids 0-65535 to the same host ids, so nobody is nobody and the pilot's files stay readable.
    Only a process holding CAP_SETUID over the parent namespace may write such a map, so this process (root) writes
    it once unshare(1) has made the namespace; the shell inside then execs again, because capabilities are
    recomputed at execve and it had none while its uid was still unmapped."""
    inner = ('read go; exec sh -c \'echo "$0" > /proc/sys/user/max_user_namespaces && exec "$@"\' '
             f'{max_user_namespaces} {" ".join(AS_NOBODY)} "$@"')
    proc = subprocess.Popen(["unshare", "--user", "--", "sh", "-c", inner, "sh", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ours = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/user") == ours:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        for ids in ("uid_map", "gid_map"):
            Path(f"/proc/{proc.pid}/{ids}").write_text("0 0 65536\n")
        out, err = proc.communicate(b"go\n", timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


#: In the process under test: choose() for a node without containers, and what it chose, as JSON.
CHOOSE_NONE = """
import json, os, sys
from gridpilot.config import load_config
from gridpilot.isolation.images import choose_image
from gridpilot.isolation.runtimes import LaunchSpec
from gridpilot.isolation import containers
trace = []
cfg = load_config(environ={}, overrides={"container_runtime": "none", "container_probe_timeout": 20})
iso, _ = containers.choose(cfg, choose_image([], images_dir=None, platform=None, host_arch="x86_64"), trace.append)
argv = iso.runtime.command(LaunchSpec([sys.executable, "-c", "import os; print(os.getpid())"], None)).argv
print(json.dumps({"uid": os.geteuid(), "own_pid_namespace": iso.own_pid_namespace, "trace": trace, "argv": argv}))
"""


@pytest.mark.parametrize("limit", [0, 100])
def test_unshare_probe_where_user_namespaces_are_disabled(limit):
    """The agent's choice for real, as nobody: with user.max_user_namespaces 0 the kernel refuses unshare's user
    namespace (ENOSPC), the probe says so and the wrapper goes without a PID namespace; with a limit above 0 (the
    control) the same user gets one."""
    _need_root_setpriv_unshare()
    _need_python_for_nobody()
    out = _as_nobody_in_user_namespace([sys.executable, "-c", CHOOSE_NONE], limit)
    assert out.returncode == 0, out.stderr.decode()
    got = json.loads(out.stdout)
    assert got["uid"] == NOBODY
    if limit == 0:
        assert got["own_pid_namespace"] is False
        assert got["argv"][0] == sys.executable  # the wrapper itself, no unshare around it
        (line,) = [t for t in got["trace"] if t.startswith("No PID namespace for the JobWrapper")]
        assert "No space left on device" in line, line
        assert f"kill -9 -1 can reach every process of user {NOBODY} outside the job" in line, line
    else:
        assert got["own_pid_namespace"] is True
        assert got["argv"][1:3] == ["--user", "--map-root-user"], got["argv"]
        assert not any("No PID namespace" in t for t in got["trace"]), got["trace"]


#: The wrapper's stand-in under `unshare` as nobody, in sh with builtins only (no process of its own beside it; and
#: the pilot's Python may live where nobody cannot reach it): its pid, the pids its /proc shows, whether the process
#: outside (pid $1, a namespace away) can be signalled, and whether `kill -9 -1` found anything to kill.
FENCED = """
seen=""
for p in /proc/[0-9]*; do seen="$seen ${p#/proc/}"; done
echo "pid=$$"
echo "seen=$seen"
if kill -0 "$1" 2>/dev/null; then echo outside=reachable; else echo outside=not-there; fi
if kill -9 -1 2>/dev/null; then echo killed=something; else echo killed=nothing; fi
"""

#: Run as root inside a PID namespace of the test's own (so that a fence that fails kills nothing of the machine's):
#: a process of nobody outside the job, then the unprivileged NoContainer command, as nobody, around FENCED.
DRIVER = """
import json, os, subprocess, sys, time
from gridpilot.isolation.runtimes import LaunchSpec, NoContainer
as_nobody, fenced = sys.argv[1].split(), sys.argv[2]
neighbour = subprocess.Popen(as_nobody + ["sleep", "60"])
while os.stat(f"/proc/{neighbour.pid}").st_uid != 65534 or open(f"/proc/{neighbour.pid}/comm").read() != "sleep\\n":
    time.sleep(0.01)
launch = NoContainer(True, uid=65534).command(LaunchSpec(["/bin/sh", "-c", fenced, "sh", str(neighbour.pid)], None))
out = subprocess.run(as_nobody + launch.argv, capture_output=True, timeout=60)
time.sleep(0.2)
print(json.dumps({"argv": launch.argv, "code": out.returncode, "stdout": out.stdout.decode(),
                  "stderr": out.stderr.decode(), "neighbour": neighbour.poll()}))
neighbour.kill()
"""


def test_unprivileged_unshare_fences_the_wrapper():
    """The path a pilot started by an ordinary user takes: `unshare --user --map-root-user --pid ...` run by nobody.
    The stand-in is pid 1 of its namespace, sees only its own namespace's processes, cannot reach a process of the
    same user outside, and its `kill -9 -1` finds nothing to kill, while that process lives on."""
    _need_root_setpriv_unshare()
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
                          sys.executable, "-c", DRIVER, " ".join(AS_NOBODY), FENCED],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    got = json.loads(out.stdout)
    assert got["argv"][1:3] == ["--user", "--map-root-user"], got["argv"]
    if got["code"] != 0 and ("Operation not permitted" in got["stderr"] or "No space left" in got["stderr"]):
        require_or_skip(f"this machine does not let an unprivileged user make user namespaces: {got['stderr']}")
    assert got["code"] == 0, got
    assert got["stdout"].split() == ["pid=1", "seen=", "1", "outside=not-there", "killed=nothing"], got
    assert got["neighbour"] is None  # still running
