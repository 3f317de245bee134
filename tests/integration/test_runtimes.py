"""The exact command lines of each runtime (pure), "is it there" with fake binaries on a temporary PATH, bind
parsing, image choice, the JDL's Platform and the host pid found from a namespace pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridpilot.config import load_config
from gridpilot.errors import ConfigError, JdlError
from gridpilot.isolation import nspid
from gridpilot.isolation.images import choose_image, parse_image_name
from gridpilot.isolation.runtimes import (
    Apptainer,
    ApptainerCvmfs,
    Bind,
    Bubblewrap,
    Gpu,
    LaunchSpec,
    NoContainer,
    Podman,
    Singularity,
)
from gridpilot.jdl import parse_job
from gridpilot.jdl.platform import Platform, parse_platform, platform_from_packages

NVIDIA = Gpu("NVIDIA", "0000:41:00.0", ("/dev/nvidia1",))
AMD = Gpu("AMD", "0000:c1:00.0", ("/dev/dri/renderD129",))


def _fake_bin(dir_: Path, name: str) -> str:
    p = dir_ / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(0o755)
    return str(p)


@pytest.fixture
def spec(tmp_path) -> LaunchSpec:
    return LaunchSpec(
        ["/venv/bin/python", "-m", "gridpilot.pilot.wrapper", "--msg-fd", "3", "--ack-fd", "4"],
        "/images/el9-x86_64",
        binds=[Bind("/opt/py", "/opt/py"), Bind("/work/alien-job-7", "/workdir", read_only=False)],
        env={"HOME": "/workdir", "CUDA_VISIBLE_DEVICES": "0,1"},
        gpus=[NVIDIA],
        pass_fds=2,
        name="gridpilot-job-7-100",
    )


def test_apptainer_command(tmp_path, spec):
    exe = _fake_bin(tmp_path, "apptainer")
    launch = Apptainer(str(tmp_path)).command(spec)
    assert launch.argv == [
        # --no-init: without it Apptainer's shim (sinit) is pid 1 of the namespace and the wrapper pid 2, which a
        # payload's `kill -9 -1` reaches.
        exe, "exec", "--contain", "--ipc", "--pid", "--no-init", "--cleanenv", "--no-home",
        "--bind", "/opt/py:/opt/py:ro", "--bind", "/work/alien-job-7:/workdir:rw", "--nv",
        "--pwd", "/workdir", "/images/el9-x86_64",
        "/venv/bin/python", "-m", "gridpilot.pilot.wrapper", "--msg-fd", "3", "--ack-fd", "4",
    ]
    # The environment inside goes through APPTAINERENV_, whole (a comma in --env would split the value).
    assert launch.env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "0,1"
    assert launch.env["APPTAINERENV_HOME"] == "/workdir"
    assert not any(k.startswith("GRIDPILOT_TOKEN") for k in launch.env)


def test_apptainer_rocm_and_singularity_prefix(tmp_path, spec):
    _fake_bin(tmp_path, "singularity")
    spec.gpus = [AMD]
    launch = Singularity(str(tmp_path)).command(spec)
    assert launch.argv[0].endswith("/singularity") and "--rocm" in launch.argv and "--nv" not in launch.argv
    # Singularity has the same --no-init (its shim is sinit too): the wrapper must be the namespace's pid 1.
    assert launch.argv[2:6] == ["--contain", "--ipc", "--pid", "--no-init"]
    assert launch.env["SINGULARITYENV_HOME"] == "/workdir"


def test_apptainer_presence(tmp_path):
    assert Apptainer(str(tmp_path)).missing() == f"no apptainer in {tmp_path}"
    _fake_bin(tmp_path, "apptainer")
    assert Apptainer(str(tmp_path)).missing() is None
    assert Singularity(str(tmp_path)).missing() == f"no singularity in {tmp_path}"
    cvmfs = ApptainerCvmfs(str(tmp_path / "cvmfs" / "bin"))
    assert "does not exist" in (cvmfs.missing() or "")
    (tmp_path / "cvmfs" / "bin").mkdir(parents=True)
    assert cvmfs.missing() == f"no apptainer in {tmp_path / 'cvmfs' / 'bin'}"
    _fake_bin(tmp_path / "cvmfs" / "bin", "apptainer")
    assert cvmfs.missing() is None
    assert cvmfs.command(LaunchSpec(["true"], "/img")).argv[0] == str(tmp_path / "cvmfs" / "bin" / "apptainer")


def test_podman_command(tmp_path, spec):
    exe = _fake_bin(tmp_path, "podman")
    _fake_bin(tmp_path, "runc")
    rt = Podman(str(tmp_path), ulimits=[("nofile", 1024, 20000), ("nproc", 1024, 4096)])
    assert rt.missing() is None
    launch = rt.command(spec)
    assert launch.argv == [
        exe, "run", "--rm", "--interactive", "--name", "gridpilot-job-7-100",
        "--runtime", "runc", "--network", "host", "--cgroups", "no-conmon", "--log-driver", "passthrough",
        "--ulimit", "nofile=1024:20000", "--ulimit", "nproc=1024:4096", "--preserve-fds", "2", "--rootfs",
        "--volume", "/opt/py:/opt/py:ro", "--volume", "/work/alien-job-7:/workdir:rw",
        "--device", "/dev/nvidia1", "--device", "/dev/nvidiactl", "--device", "/dev/nvidia-uvm",
        "--device", "/dev/nvidia-uvm-tools",
        "--workdir", "/workdir", "--env", "HOME=/workdir", "--env", "CUDA_VISIBLE_DEVICES=0,1",
        "/images/el9-x86_64:O",
        "/venv/bin/python", "-m", "gridpilot.pilot.wrapper", "--msg-fd", "3", "--ack-fd", "4",
    ]
    assert rt.cleanup(spec) == [exe, "rm", "--force", "--ignore", "--time", "0", "gridpilot-job-7-100"]


def test_podman_presence(tmp_path):
    assert Podman(str(tmp_path)).missing() == "no podman in PATH"


def test_bwrap_command(tmp_path, spec):
    exe = _fake_bin(tmp_path, "bwrap")
    image = tmp_path / "image"
    for d in ("usr/bin", "etc", "opt", "proc", "dev", "tmp", "root"):
        (image / d).mkdir(parents=True)
    (image / "etc" / "os-release").write_text("ID=test\n")
    (image / "root" / ".profile").write_text("")
    os.symlink("usr/bin", image / "bin")
    spec.image = str(image)
    spec.binds = [Bind("/opt/py", "/opt/py"), Bind("/root/.pyenv", "/root/.pyenv"),
                  Bind("/work/alien-job-7", "/workdir", read_only=False)]
    spec.gpus = [AMD]
    launch = Bubblewrap(str(tmp_path)).command(spec)
    i = str(image)
    assert launch.argv == [
        exe, "--die-with-parent", "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--tmpfs", "/",
        # the image, entry by entry; /opt and /root are on the way to missing mount points (/opt/py, /root/.pyenv),
        # so they are directories of the tmpfs root with their own entries bound one by one
        "--symlink", "usr/bin", "/bin", "--dir", "/dev", "--ro-bind", f"{i}/etc", "/etc",
        "--dir", "/opt", "--dir", "/proc", "--dir", "/root", "--ro-bind", f"{i}/root/.profile",
        "/root/.profile", "--dir", "/tmp", "--ro-bind", f"{i}/usr", "/usr",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", "/sys", "/sys",
        # binds parents first (by depth), so a bind below another one lands on top of it
        "--bind", "/work/alien-job-7", "/workdir",
        "--ro-bind", "/opt/py", "/opt/py", "--ro-bind", "/root/.pyenv", "/root/.pyenv",
        "--dev-bind", "/dev/dri/renderD129", "/dev/dri/renderD129", "--dev-bind", "/dev/kfd", "/dev/kfd",
        "--chdir", "/workdir", "--clearenv", "--setenv", "HOME", "/workdir", "--setenv", "CUDA_VISIBLE_DEVICES", "0,1",
        "--", "/venv/bin/python", "-m", "gridpilot.pilot.wrapper", "--msg-fd", "3", "--ack-fd", "4",
    ]


def test_unshare_command(tmp_path):
    exe = _fake_bin(tmp_path, "unshare")
    spec = LaunchSpec(["/venv/bin/python", "-m", "w"], None, env={"A": "1"}, workdir="/w")
    root = NoContainer(True, str(tmp_path), uid=0).command(spec)
    assert root.argv == [exe, "--pid", "--fork", "--mount-proc", "--kill-child", "--", "/venv/bin/python", "-m", "w"]
    assert root.env == {"A": "1"}
    user = NoContainer(True, str(tmp_path), uid=1000).command(spec)
    assert user.argv[:3] == [exe, "--user", "--map-root-user"]
    assert NoContainer(False, str(tmp_path)).command(spec).argv == ["/venv/bin/python", "-m", "w"]
    assert NoContainer(True, str(tmp_path / "empty")).missing() == "no unshare in PATH (util-linux)"


def _fake_unshare(dir_: Path, exit_code: int) -> Path:
    """An `unshare` that logs each call to calls.log; it fails as unshare does where user namespaces are disabled
    (exit_code != 0), or runs the command after `--` (exit_code 0)."""
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "unshare").write_text(
        f'#!/bin/sh\necho "$@" >> {dir_}/calls.log\n'
        + (f'echo "unshare: unshare failed: No space left on device" >&2\nexit {exit_code}\n' if exit_code
           else 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"\n')
    )
    (dir_ / "unshare").chmod(0o755)
    return dir_ / "calls.log"


def test_unshare_probe_says_why_and_runs_once(tmp_path):
    calls = _fake_unshare(tmp_path / "bin", 1)
    rt = NoContainer(True, str(tmp_path / "bin"), uid=1000)
    why = rt.namespace_problem(10)
    assert why is not None and "exited with 1" in why and "No space left on device" in why, why
    # The probe ran the namespaces the wrapper would get, around `true`.
    (line,) = calls.read_text().splitlines()
    assert line.startswith("--user --map-root-user --pid --fork --mount-proc --kill-child -- ")
    assert line.endswith("/true")
    # Asked again (the next job of this process): the first answer, without running unshare again.
    assert NoContainer(True, str(tmp_path / "bin"), uid=1000).namespace_problem(10) == why
    assert len(calls.read_text().splitlines()) == 1
    assert NoContainer(False, str(tmp_path / "bin")).namespace_problem(10) is None


def _choose_none(trace: list):
    from gridpilot.isolation import containers

    cfg = load_config(environ={}, overrides={"container_runtime": "none"})
    iso, _ = containers.choose(cfg, choose_image([], images_dir=None, platform=None, host_arch="x86_64"), trace.append)
    return iso


def test_no_pid_namespace_when_unshare_fails(tmp_path, monkeypatch):
    """A node where unshare cannot make the namespaces (user namespaces disabled): the wrapper runs without one,
    traced with what that exposes, instead of every job's wrapper failing to start."""
    _fake_unshare(tmp_path / "failing", 1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'failing'}:{os.environ['PATH']}")
    trace: list = []
    iso = _choose_none(trace)
    assert iso is not None and not iso.own_pid_namespace and not iso.runtime.pid_namespace
    spec = LaunchSpec(["/venv/bin/python", "-m", "w"], None)
    assert iso.runtime.command(spec).argv == spec.argv
    (line,) = [t for t in trace if t.startswith("No PID namespace for the JobWrapper")]
    assert "No space left on device" in line and "a payload's kill -9 -1 can reach" in line, line
    assert ("every process on this node" if os.geteuid() == 0 else "the pilot's own among them") in line


def test_pid_namespace_kept_when_unshare_works(tmp_path, monkeypatch):
    _fake_unshare(tmp_path / "working", 0)
    monkeypatch.setenv("PATH", f"{tmp_path / 'working'}:{os.environ['PATH']}")
    trace: list = []
    iso = _choose_none(trace)
    assert iso is not None and iso.own_pid_namespace
    assert iso.runtime.command(LaunchSpec(["w"], None)).argv[0] == str(tmp_path / "working" / "unshare")
    assert not any("No PID namespace" in t for t in trace), trace


@pytest.mark.parametrize("text,bind", [
    ("/cvmfs", Bind("/cvmfs", "/cvmfs", True)),
    ("/data:/in", Bind("/data", "/in", True)),
    ("/scratch:/scratch:rw", Bind("/scratch", "/scratch", False)),
])
def test_bind_parse(text, bind):
    assert Bind.parse(text) == bind


@pytest.mark.parametrize("text", ["data", "/a:b", "/a:/b:rx", "/a:/b:ro:x"])
def test_bind_parse_refuses(text):
    with pytest.raises(ConfigError, match="container_binds"):
        Bind.parse(text)


def test_config_keys_and_errors(tmp_path):
    cfg = load_config(environ={}, overrides={"container_runtime": "podman", "container_binds": "/a:/b:rw,/c"})
    assert cfg.container_runtime == "podman" and cfg.container_binds == ["/a:/b:rw", "/c"]
    assert cfg.pid_namespace is True and cfg.require_container is False
    assert cfg.container_order[0] == "apptainer-cvmfs"
    bad = tmp_path / "pilot.yaml"
    bad.write_text("container_runtime: docker\n")
    with pytest.raises(ConfigError, match="container_runtime"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="'container_order' names an unknown runtime 'rkt'"):
        load_config(environ={"GRIDPILOT_CONTAINER_ORDER": "podman,rkt"})
    with pytest.raises(ConfigError, match="container_binds"):
        load_config(environ={"GRIDPILOT_CONTAINER_BINDS": "relative/path"})


# -- images --

LISTING = ["el9-x86_64", "el9.4-x86_64", "el9.2-x86_64-2024.06", "el8-x86_64", "el9-aarch64", "debian12-x86_64",
           "README", "el7.sif"]


@pytest.mark.parametrize("platform,expected", [
    ("el9", "el9.4-x86_64"),
    ("el9-aarch64", "el9-aarch64"),
    ("alma9", "el9.4-x86_64"),
    ("el8", "el8-x86_64"),
    ("el7", "el7.sif"),
    ("debian12", "debian12-x86_64"),
])
def test_image_choice_by_platform(platform, expected):
    got = choose_image(LISTING, images_dir="/img", platform=parse_platform(platform), host_arch="x86_64")
    assert got.path == f"/img/{expected}", got


def test_image_choice_default_and_site():
    none = choose_image(LISTING, images_dir="/img", platform=parse_platform("el6"), host_arch="x86_64")
    assert none.path is None and "no image in /img suits platform el6 on x86_64" in none.why
    dflt = choose_image(LISTING, images_dir="/img", platform=parse_platform("el6"), host_arch="x86_64",
                        default_image="el9-x86_64")
    assert dflt.path == "/img/el9-x86_64"
    site = choose_image(LISTING, images_dir="/img", platform=parse_platform("el8"), host_arch="x86_64",
                        default_image="el9-x86_64", site_image="/site/custom")
    assert site.path == "/site/custom" and "site_image" in site.why
    nothing = choose_image([], images_dir=None, platform=None, host_arch="x86_64")
    assert nothing.path is None and nothing.why == "the job names no platform and no default_image is configured"


def test_image_tags_order_by_version():
    names = ["el9-x86_64-2024.9", "el9-x86_64-2024.10", "el9-x86_64"]
    assert choose_image(names, images_dir="/i", platform=Platform("el", 9), host_arch="x86_64").path == "/i/el9-x86_64-2024.10"
    assert parse_image_name("notanimage") is None


def test_jdl_platform():
    job = parse_job('Executable = "/bin/true";\nPlatform = "el9-x86_64";\n')
    assert job.platform == Platform("el", 9, "x86_64")
    with pytest.raises(JdlError, match=r"Platform: 'windows' is not a platform") as e:
        parse_job('Executable = "/bin/true";\nPlatform = "windows";\n')
    assert e.value.line == 2
    assert platform_from_packages(["VO_ALICE@O2PDPSuite::async-async-v1-02-01-slc9-alidist-async-v1-01-01-1"]) == Platform("el", 9)
    assert platform_from_packages(["VO_ALICE@AliPhysics::vAN-20240101_O2-1"]) is None


# -- host pid from a namespace pid --


def test_host_pid_of_a_process_in_its_own_pid_namespace():
    if os.geteuid() != 0 and not os.path.exists("/proc/sys/kernel/unprivileged_userns_clone"):
        pytest.skip("needs root or user namespaces for unshare")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]
    code = ("import os,sys,time; from gridpilot.isolation import nspid; "
            "c=os.fork()\nif c==0: time.sleep(60)\n"
            "print(c, nspid.pid_namespace_inode(), flush=True); time.sleep(60)")
    proc = subprocess.Popen([*argv, sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ns_child, ns_inode = (int(x) for x in proc.stdout.readline().split())
        assert ns_child == 2  # the namespace's pid 1 is the python above, its first child 2
        found = nspid.host_pid(ns_inode, ns_child, nspid.descendants(os.getpid()))
        assert found is not None and found != ns_child
        assert nspid.ns_pids(found)[-1] == ns_child
        assert nspid.pid_namespace_inode(str(found)) == ns_inode != nspid.pid_namespace_inode()
        # The same namespace pid in our own namespace is not the process (wrong namespace inode).
        assert nspid.host_pid(nspid.pid_namespace_inode(), ns_child, nspid.descendants(os.getpid())) is None
    finally:
        proc.kill()
        proc.wait()


def test_podman_job_cgroups_go_in_as_descriptors_never_as_mounts(tmp_path):
    """Under Podman the wrapper joins the job's cgroups through their cgroup.procs, passed after the two pipes: no
    cgroup directory is bound into the container (a payload as root there could raise its own limits). Other
    runtimes keep the cgroups the agent's child joined before exec, and get neither."""
    from gridpilot.isolation import containers

    _fake_bin(tmp_path, "podman")
    cgroups = ["/sys/fs/cgroup/unified/slot/job", "/sys/fs/cgroup/memory/slot/job", "/sys/fs/cgroup/pids/slot/job"]
    iso = containers.Isolation(Podman(str(tmp_path)), "/images/el9")
    spec = containers.launch_spec(iso, ["wrapper"], workdir=str(tmp_path), env={}, cfg=load_config(environ={}),
                                  gpus=[], storage=None, job_cgroups=cgroups, name="gridpilot-job-1-x", pass_fds=2)
    assert spec.pass_fds == 5
    assert spec.cgroup_procs == {5: cgroups[0] + "/cgroup.procs", 6: cgroups[1] + "/cgroup.procs",
                                 7: cgroups[2] + "/cgroup.procs"}
    assert spec.env["GRIDPILOT_JOIN_CGROUP_FDS"] == "5:6:7"
    assert not [b for b in spec.binds if b.src.startswith("/sys/fs/cgroup")], spec.binds
    assert "--preserve-fds" in (argv := iso.runtime.command(spec).argv) and argv[argv.index("--preserve-fds") + 1] == "5"
    bwrap = containers.Isolation(Bubblewrap(str(tmp_path)), "/images/el9")
    other = containers.launch_spec(bwrap, ["wrapper"], workdir=str(tmp_path), env={}, cfg=load_config(environ={}),
                                   gpus=[], storage=None, job_cgroups=cgroups, name="n", pass_fds=2)
    assert other.pass_fds == 2 and other.cgroup_procs == {} and "GRIDPILOT_JOIN_CGROUP_FDS" not in other.env


def test_cgroup_procs_that_cannot_be_opened_are_named(tmp_path):
    from gridpilot.errors import CgroupError
    from gridpilot.isolation import containers

    spec = LaunchSpec(["wrapper"], "/img", pass_fds=1, cgroup_procs={3: str(tmp_path / "gone" / "cgroup.procs")})
    with pytest.raises(CgroupError, match=f"cannot open {tmp_path}/gone/cgroup.procs to pass into the container"):
        containers.open_cgroup_procs(spec)


@pytest.mark.parametrize("fds, words", [("x", "'x' in GRIDPILOT_JOIN_CGROUP_FDS is not a descriptor number"),
                                        ("999", "cannot join the job cgroup through descriptor 999: Bad file descriptor")])
def test_wrapper_refuses_to_start_outside_its_cgroups(fds, words):
    from gridpilot.pilot.wrapper import join_cgroups

    with pytest.raises(SystemExit, match=f"JobWrapper: {words}; not starting the job outside its cgroups"):
        join_cgroups(fds)
    join_cgroups("")  # nothing to join (no Podman): nothing done


def test_the_probe_runs_the_jobs_tmp_bind(tmp_path, monkeypatch):
    """The probe binds a /tmp as the job's launch will (Apptainer: --bind <dir>:/tmp with --no-mount tmp), so a
    runtime that cannot (Singularity before 3.7 has no --no-mount) fails its probe instead of every job's start.
    The directory is the probe's own, gone afterwards."""
    from gridpilot.isolation import containers

    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    cfg = load_config(environ={}, overrides={"container_runtime": "apptainer", "default_image": "/images/el9"})
    trace: list = []
    iso, reasons = containers.choose(cfg, containers.job_image(cfg, None, "x86_64", environ={}), trace.append,
                                     environ={})
    assert iso is not None and iso.runtime.name == "apptainer" and reasons == []
    (line,) = calls.read_text().splitlines()
    words = line.split()
    tmp_bind = [words[i + 1] for i, w in enumerate(words) if w == "--bind" and words[i + 1].endswith(":/tmp:rw")]
    assert len(tmp_bind) == 1 and "/gridpilot-probe-tmp-" in tmp_bind[0], line
    assert "--no-mount tmp --pwd / /images/el9" in line, line
    assert not os.path.exists(tmp_bind[0].split(":")[0])
