"""Containers as ALICE sites have them, pure: the exact Apptainer and Singularity command lines and the environment
they hand down (the job's tmp at /tmp, the image and runtime for nested containers, DISABLE_NESTED_CONTAINERS), the
/tmp bind in Podman and bubblewrap, an image's container.properties, and the choices a pilot inside a container
makes. Nothing here starts a process: the choices tested are those that end before any probe runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import pytest

from gridpilot.config import PilotConfig, load_config
from gridpilot.errors import ConfigError
from gridpilot.isolation import containers, nesting
from gridpilot.isolation.container_properties import MAX_BYTES, ContainerProperties, read_properties
from gridpilot.isolation.images import choose_image
from gridpilot.isolation.runtimes import (
    Apptainer,
    ApptainerCvmfs,
    Bind,
    Bubblewrap,
    LaunchSpec,
    Podman,
    Singularity,
    make_runtime,
)

WRAPPER = ["/venv/bin/python", "-m", "gridpilot.pilot.wrapper", "--msg-fd", "3", "--ack-fd", "4"]
#: The agent's environment: what passes (locale, GRIDPILOT_* settings), what never does (the token, the rest).
AGENT_ENV = {"LANG": "C.UTF-8", "GRIDPILOT_LOG_LEVEL": "DEBUG", "GRIDPILOT_TOKEN": "secret",
             "GRIDPILOT_CONTAINER_RUNTIME": "auto", "SSH_AUTH_SOCK": "/run/x", "JOB_CONTAINER_PATH": "/outer"}


def _bin(dir_: Path, name: str) -> str:
    dir_.mkdir(parents=True, exist_ok=True)
    p = dir_ / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(0o755)
    return str(p)


def _spec(iso: containers.Isolation, work: Path, environ=AGENT_ENV, cfg: Optional[PilotConfig] = None) -> LaunchSpec:
    return containers.launch_spec(iso, list(WRAPPER), workdir=str(work), env={"CUDA_VISIBLE_DEVICES": "0,1"},
                                  cfg=cfg or PilotConfig(), gpus=[], storage=None, job_cgroups=[], name="gridpilot-job-7-x",
                                  pass_fds=2, environ=environ)


def _binds_argv(flag: str, spec: LaunchSpec) -> list:
    return [x for b in spec.binds for x in (flag, b.spec())]


def _fixed_binds(work: Path) -> list:
    """The binds every container gets, in order: the pilot's Python, the work directory, its tmp at /tmp, /cvmfs."""
    out = [*containers.python_binds(), Bind(str(work), "/workdir", False), Bind(f"{work}/tmp", "/tmp", False)]
    if os.path.isdir("/cvmfs"):
        out.append(Bind("/cvmfs", "/cvmfs"))
    return out


def _inside(image: str, runtime: str, binary: str) -> dict:
    """The whole environment inside the container for AGENT_ENV."""
    return {
        "LANG": "C.UTF-8", "GRIDPILOT_LOG_LEVEL": "DEBUG",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/workdir",
        "TMPDIR": "/workdir/tmp", "PYTHONNOUSERSITE": "1", "CUDA_VISIBLE_DEVICES": "0,1",
        "JOB_CONTAINER_PATH": image, "GRIDPILOT_CONTAINER_RUNTIME": runtime, "FORCE_BINPATH": binary,
    }


@pytest.mark.parametrize("cls, name, prefix", [(Apptainer, "apptainer", "APPTAINERENV_"),
                                               (Singularity, "singularity", "SINGULARITYENV_")])
def test_apptainer_and_singularity_command_and_environment(tmp_path, cls, name, prefix):
    exe = _bin(tmp_path / "bin", name)
    iso = containers.Isolation(cls(str(tmp_path / "bin")), "/cvmfs/alice.cern.ch/containers/fs/singularity/default")
    spec = _spec(iso, tmp_path / "alien-job-7")
    assert spec.binds == _fixed_binds(tmp_path / "alien-job-7")
    launch = iso.runtime.command(spec)
    assert launch.argv == [
        exe, "exec", "--contain", "--ipc", "--pid", "--no-init", "--cleanenv", "--no-home",
        *_binds_argv("--bind", spec),
        # The job's tmp is bound at /tmp: not Apptainer's own tmp under it (JAliEn: -B <workdir>/tmp:/tmp --no-mount tmp).
        "--no-mount", "tmp",
        "--pwd", "/workdir", "/cvmfs/alice.cern.ch/containers/fs/singularity/default", *WRAPPER,
    ]
    assert f"{tmp_path}/alien-job-7/tmp:/tmp:rw" in launch.argv
    # The environment inside, handed over whole through <PREFIX>NAME in the runtime's own environment: the token,
    # the outer JOB_CONTAINER_PATH and the rest of the agent's never; the image and the runtime this job runs in.
    inside = {k[len(prefix):]: v for k, v in launch.env.items() if k.startswith(prefix)}
    assert inside == _inside("/cvmfs/alice.cern.ch/containers/fs/singularity/default", name, exe)
    assert not [k for k in launch.env if k.startswith(("APPTAINERENV_", "SINGULARITYENV_")) and not k.startswith(prefix)]
    assert "GRIDPILOT_TOKEN" not in launch.env and f"{prefix}GRIDPILOT_TOKEN" not in launch.env


def test_apptainer_from_cvmfs_hands_down_its_cvmfs_binary(tmp_path):
    exe = _bin(tmp_path / "cvmfs" / "bin", "apptainer")
    iso = containers.Isolation(ApptainerCvmfs(str(tmp_path / "cvmfs" / "bin")), "/images/el9")
    launch = iso.runtime.command(_spec(iso, tmp_path / "w"))
    assert launch.argv[0] == exe
    assert launch.env["APPTAINERENV_GRIDPILOT_CONTAINER_RUNTIME"] == "apptainer-cvmfs"
    assert launch.env["APPTAINERENV_FORCE_BINPATH"] == exe
    assert launch.env["APPTAINERENV_JOB_CONTAINER_PATH"] == "/images/el9"


def test_force_binpath_is_the_binary_wherever_it_is(tmp_path):
    """FORCE_BINPATH (JAliEn's override of the Apptainer binary): the runtime runs it, whatever PATH or the CVMFS
    directory hold; one that is not an executable file is why the runtime is missing."""
    forced = _bin(tmp_path / "elsewhere", "apptainer-1.3")
    for name in ("apptainer", "apptainer-cvmfs", "singularity"):
        rt = make_runtime(name, apptainer_cvmfs_path="/nonexistent/cvmfs", path=str(tmp_path / "empty"),
                          forced_binary=forced)
        assert rt.missing() is None, name
        assert rt.command(LaunchSpec(["true"], "/img")).argv[0] == forced
    rt = make_runtime("apptainer", forced_binary=str(tmp_path / "nope"))
    assert rt.missing() == f"FORCE_BINPATH {tmp_path / 'nope'} is not an executable file"


def test_probe_without_the_tmp_bind_keeps_the_runtimes_own_tmp(tmp_path):
    exe = _bin(tmp_path, "apptainer")
    argv = Apptainer(str(tmp_path)).command(containers.probe_spec("/img", [])).argv
    assert "--no-mount" not in argv and argv[0] == exe


def test_podman_binds_the_job_tmp_at_tmp(tmp_path):
    _bin(tmp_path / "bin", "podman")
    iso = containers.Isolation(Podman(str(tmp_path / "bin"), ulimits=[]), "/images/el9")
    spec = _spec(iso, tmp_path / "w")
    argv = iso.runtime.command(spec).argv
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert volumes == [b.spec() for b in spec.binds]
    assert f"{tmp_path}/w/tmp:/tmp:rw" in volumes
    envs = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--env")
    assert envs["JOB_CONTAINER_PATH"] == "/images/el9" and envs["GRIDPILOT_CONTAINER_RUNTIME"] == "podman"
    assert "FORCE_BINPATH" not in envs  # no binary inside a nested start could reuse


def test_bwrap_binds_the_job_tmp_instead_of_a_tmpfs(tmp_path):
    image = tmp_path / "image"
    for d in ("usr", "tmp", "etc"):
        (image / d).mkdir(parents=True)
    _bin(tmp_path / "bin", "bwrap")
    iso = containers.Isolation(Bubblewrap(str(tmp_path / "bin")), str(image))
    argv = iso.runtime.command(_spec(iso, tmp_path / "w")).argv
    triples = [tuple(argv[i:i + 3]) for i in range(len(argv) - 2)]
    assert ("--bind", f"{tmp_path}/w/tmp", "/tmp") in triples
    assert ("--tmpfs", "/tmp") not in [tuple(argv[i:i + 2]) for i in range(len(argv) - 1)]
    assert ("--setenv", "GRIDPILOT_CONTAINER_RUNTIME", "bwrap") in triples
    # Without that bind (the probe) bwrap's own tmpfs is there.
    probe = iso.runtime.command(containers.probe_spec(str(image), [])).argv
    assert ("--tmpfs", "/tmp") in [tuple(probe[i:i + 2]) for i in range(len(probe) - 1)]


# -- DISABLE_NESTED_CONTAINERS ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, disabled", [(None, False), ("", True), ("1", True), ("yes", True), ("true", True),
                                             ("0", False), ("false", False), (" Off ", False), ("no", False)])
def test_disable_nested_containers_values(value, disabled):
    """Presence disables, as in JAliEn (where the variable's presence among the site's META_VARIABLES is what
    counts), an empty value too; only an explicit 0/false/no/off reads as not set."""
    assert nesting.disabled_by(value) is disabled


def test_disable_nested_containers_is_handed_down(tmp_path):
    _bin(tmp_path / "bin", "apptainer")
    iso = containers.Isolation(Apptainer(str(tmp_path / "bin")), "/images/el9")
    env = _spec(iso, tmp_path / "w", environ={**AGENT_ENV, "DISABLE_NESTED_CONTAINERS": "yes"}).env
    assert env["DISABLE_NESTED_CONTAINERS"] == "yes"
    assert "DISABLE_NESTED_CONTAINERS" not in _spec(iso, tmp_path / "w").env
    assert "DISABLE_NESTED_CONTAINERS" not in _spec(iso, tmp_path / "w",
                                                    environ={**AGENT_ENV, "DISABLE_NESTED_CONTAINERS": "0"}).env
    # An image that asks for it in its container.properties.
    iso.properties = ContainerProperties("/images/el9/container.properties", disable_nested=True)
    spec = _spec(iso, tmp_path / "w")
    assert spec.env["DISABLE_NESTED_CONTAINERS"] == "true"
    notes = containers.launch_notes(iso, spec, str(tmp_path / "w"), environ=AGENT_ENV)
    assert notes[1] == ("Nested containers disabled for the job (DISABLE_NESTED_CONTAINERS=true, from "
                        "/images/el9/container.properties)")


def test_launch_notes_trace_runtime_image_tmp_and_what_is_handed_down(tmp_path):
    exe = _bin(tmp_path / "bin", "apptainer")
    iso = containers.Isolation(Apptainer(str(tmp_path / "bin")), "/images/el9")
    spec = _spec(iso, tmp_path / "w")
    assert containers.launch_notes(iso, spec, str(tmp_path / "w"), environ=AGENT_ENV) == [
        f"Container runtime apptainer ({exe}), image /images/el9; /tmp inside is the job's {tmp_path}/w/tmp",
        f"Nested containers get the same image and runtime: JOB_CONTAINER_PATH=/images/el9, FORCE_BINPATH={exe}, "
        "GRIDPILOT_CONTAINER_RUNTIME=apptainer",
    ]
    assert containers.launch_notes(containers.Isolation(containers.NoContainer(False), None), spec, "/w") == []


def test_a_pilot_told_not_to_nest_starts_no_container():
    """DISABLE_NESTED_CONTAINERS in the pilot's own environment: no container for its jobs, said in the trace (and
    with require_container, no job at all: nothing is probed)."""
    cfg = load_config(environ={}, overrides={"require_container": True, "default_image": "/images/el9"})
    trace: list = []
    iso, reasons = containers.choose(cfg, containers.job_image(cfg, None, "x86_64", environ={}), trace.append,
                                     environ={"DISABLE_NESTED_CONTAINERS": "", "JOB_CONTAINER_PATH": "/outer/el9"})
    why = ("DISABLE_NESTED_CONTAINERS is set in this pilot's environment (DISABLE_NESTED_CONTAINERS='', "
           "JOB_CONTAINER_PATH=/outer/el9): it starts no container of its own")
    assert iso is None and reasons == [why]
    assert trace == [f"No container: {why}"]


def test_a_pilot_in_a_container_uses_its_image_and_runtime():
    """JOB_CONTAINER_PATH names the image the pilot's jobs run in (before site_image and the platform's choice);
    GRIDPILOT_CONTAINER_RUNTIME, the variable of container_runtime, makes that runtime the one used."""
    environ = {"JOB_CONTAINER_PATH": "/cvmfs/alice.cern.ch/containers/fs/singularity/default",
               "GRIDPILOT_CONTAINER_RUNTIME": "apptainer-cvmfs"}
    cfg = load_config(environ=environ, overrides={"site_image": "/images/site"})
    assert cfg.container_runtime == "apptainer-cvmfs"
    image = containers.job_image(cfg, None, "x86_64", environ=environ)
    assert image.path == "/cvmfs/alice.cern.ch/containers/fs/singularity/default"
    assert image.why == "image /cvmfs/alice.cern.ch/containers/fs/singularity/default from JOB_CONTAINER_PATH"
    assert containers.job_image(cfg, None, "x86_64", environ={}).path == "/images/site"
    assert choose_image([], images_dir="/images", platform=None, host_arch="x86_64",
                        inherited_image="el9-x86_64").path == "/images/el9-x86_64"


# -- container.properties ---------------------------------------------------------------------------------------------

def _image(tmp_path: Path, text: str) -> Path:
    image = tmp_path / "el9-x86_64"
    image.mkdir()
    (image / "container.properties").write_text(text)
    return image


def test_properties_read(tmp_path, caplog):
    image = _image(tmp_path, "# options of this image\n! also a comment\n\n"
                             "RUNTIMES = apptainer-cvmfs, apptainer podman\n"
                             "ADDITIONAL_BINDS=/etc/alternatives:/etc/alternatives, /opt/data:/data:rw\n"
                             "DISABLE_NESTED_CONTAINERS: yes\n"
                             "env.X509_CERT_DIR = /cvmfs/grid.cern.ch/etc/grid-security/certificates\n"
                             "env.EMPTY=\n"
                             "jobagent.version = 1.9\n")
    with caplog.at_level(logging.WARNING, logger="gridpilot.isolation.container_properties"):
        props = read_properties(str(image))
    path = f"{image}/container.properties"
    assert props == ContainerProperties(
        path, ("apptainer-cvmfs", "apptainer", "podman"),
        (Bind("/etc/alternatives", "/etc/alternatives"), Bind("/opt/data", "/data", read_only=False)), True,
        {"X509_CERT_DIR": "/cvmfs/grid.cern.ch/etc/grid-security/certificates", "EMPTY": ""})
    assert [r.getMessage() for r in caplog.records] == [f"{path}:9: unknown key 'jobagent.version' ignored"]
    assert props.describe() == ("RUNTIMES=apptainer-cvmfs,apptainer,podman, ADDITIONAL_BINDS=/etc/alternatives:"
                                "/etc/alternatives:ro,/opt/data:/data:rw, DISABLE_NESTED_CONTAINERS=true, "
                                "env.EMPTY=, env.X509_CERT_DIR=/cvmfs/grid.cern.ch/etc/grid-security/certificates")


def test_no_properties(tmp_path):
    assert read_properties(str(tmp_path)) == ContainerProperties()
    sif = tmp_path / "el9.sif"
    sif.write_bytes(b"SIF")
    assert read_properties(str(sif)) == ContainerProperties()
    assert ContainerProperties().describe() == "no options"


@pytest.mark.parametrize("text, line, words", [
    ("RUNTIMES = docker\n", 1, "RUNTIMES must name runtimes among apptainer-cvmfs, apptainer, singularity, podman, "
                               "bwrap, got 'docker'"),
    ("RUNTIMES =\n", 1, "RUNTIMES must name runtimes"),
    ("# ok\nADDITIONAL_BINDS = relative:/x\n", 2, "ADDITIONAL_BINDS: 'relative:/x' is not \"src[:dst[:ro|rw]]\""),
    ("DISABLE_NESTED_CONTAINERS = maybe\n", 1, "DISABLE_NESTED_CONTAINERS must be true or false, got 'maybe'"),
    ("env.PATH = /opt/bin\n", 1, "PATH is set by the pilot, not by the image"),
    ("env.GRIDPILOT_TOKEN = x\n", 1, "GRIDPILOT_TOKEN is set by the pilot, not by the image"),
    ("env.JOB_CONTAINER_PATH = /x\n", 1, "JOB_CONTAINER_PATH is set by the pilot"),
    ("env.1X = y\n", 1, "'env.1X' does not name an environment variable"),
    ("\n\njust words\n", 3, "not \"KEY = value\": 'just words'"),
    ("= value\n", 1, "not \"KEY = value\""),
    ("ADDITIONAL_BINDS = /a,\\\n  /b\n", 1, "a line continued with a backslash is not supported"),
    ("env.X = " + "v" * 4097 + "\n", 1, "the value of env.X is longer than 4096 characters"),
])
def test_bad_properties_name_file_and_line(tmp_path, text, line, words):
    image = _image(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        read_properties(str(image))
    assert str(e.value).startswith(f"{image}/container.properties:{line}: "), str(e.value)
    assert words in str(e.value)


def test_properties_are_bounded(tmp_path):
    image = _image(tmp_path, "# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=f"container.properties: longer than {MAX_BYTES} bytes"):
        read_properties(str(image))
    (image / "container.properties").write_bytes(b"env.X = \xff\n")
    with pytest.raises(ConfigError, match=r"container.properties: not UTF-8 \(byte 8\)"):
        read_properties(str(image))
    (image / "container.properties").unlink()
    (image / "container.properties").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="container.properties: cannot be read"):
        read_properties(str(image))
    (image / "container.properties").unlink()
    (image / "container.properties").mkdir()
    with pytest.raises(ConfigError, match="container.properties: not a regular file"):
        read_properties(str(image))


def test_properties_options_reach_the_launch(tmp_path):
    """The image's binds follow the site's, its variables are inside (under what the pilot sets)."""
    _bin(tmp_path / "bin", "apptainer")
    props = ContainerProperties("/img/container.properties", None, (Bind("/opt/data", "/data", False),), False,
                                {"X509_CERT_DIR": "/certs", "CUDA_VISIBLE_DEVICES": "from-image"})
    iso = containers.Isolation(Apptainer(str(tmp_path / "bin")), "/img", props)
    cfg = load_config(environ={}, overrides={"container_binds": "/site"})
    spec = _spec(iso, tmp_path / "w", cfg=cfg)
    assert spec.binds == [*_fixed_binds(tmp_path / "w"), Bind("/site", "/site"), Bind("/opt/data", "/data", False)]
    assert spec.env["X509_CERT_DIR"] == "/certs"
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0,1"  # the agent's GPUs, not the image's


def test_properties_runtimes_filter_the_probe_order(tmp_path):
    """RUNTIMES keeps the site's order and drops the others, each with its reason; a bad file means no container
    for that image, naming the file and line. Neither probes anything here (require_container: no fallback)."""
    image = _image(tmp_path, "RUNTIMES = bwrap\n")
    cfg = load_config(environ={}, overrides={"require_container": True, "default_image": str(image),
                                             "container_order": "podman,apptainer"})
    trace: list = []
    iso, reasons = containers.choose(cfg, containers.job_image(cfg, None, "x86_64", environ={}), trace.append,
                                     environ={})
    path = f"{image}/container.properties"
    assert iso is None
    assert reasons == [f"podman: not among the RUNTIMES of {path}", f"apptainer: not among the RUNTIMES of {path}"]
    assert trace[0] == f"{path}: RUNTIMES=bwrap"
    (image / "container.properties").write_text("RUNTIMES = bwrap\nDISABLE_NESTED_CONTAINERS = perhaps\n")
    trace.clear()
    iso, reasons = containers.choose(cfg, containers.job_image(cfg, None, "x86_64", environ={}), trace.append,
                                     environ={})
    why = (f"the image's container.properties is invalid: {path}:2: DISABLE_NESTED_CONTAINERS must be true or "
           "false, got 'perhaps'")
    assert iso is None and reasons == [why] and trace == [f"No container: {why}"]


def test_the_runtime_variable_alone_is_a_plain_setting():
    """GRIDPILOT_CONTAINER_RUNTIME without JOB_CONTAINER_PATH is what a site sets to force a runtime: nothing is
    said about a container the pilot runs in."""
    cfg = load_config(environ={"GRIDPILOT_CONTAINER_RUNTIME": "podman"}, overrides={"require_container": True})
    trace: list = []
    iso, _ = containers.choose(cfg, containers.job_image(cfg, None, "x86_64", environ={}), trace.append,
                               environ={"GRIDPILOT_CONTAINER_RUNTIME": "podman"})
    assert iso is None
    assert trace == ["No container: the job names no platform and no default_image is configured"]
