"""Real jobs with JDL Packages through the pilot, set up by Environment Modules (Debian's environment-modules, the
mechanism alienv is built on), in every runtime (none, bubblewrap, Podman): a payload that needs its module's
environment (a variable, and a tool found through the PATH the module prepends) ends DONE and its output proves both
came through; a job naming a package that does not exist ends ERROR_E with kill reason PACKAGES, the trace naming the
packages and carrying Modules' own error; and the payload never ran.

The site's software area stands in for ALICE's CVMFS: one directory, bound into the container at the same path,
holding the module files and Environment Modules itself (its modulecmd.tcl with the Tcl shell and library it runs
on, copied from this host's installation: the test image has none), behind a small `modulecmd` launcher. The packages
command is the documented Environment Modules form, `env MODULEPATH=<area>/modulefiles <area>/bin/modulecmd sh load`
with `packages_arguments: separate`; a last test runs Debian's own /usr/bin/modulecmd without a container.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from support.pilot import shell_jdl
from support.require import require_or_skip

#: What the payload runs: the module's variable, and a tool only the module's PATH holds.
SCRIPT = "echo root=$O2PDPSUITE_ROOT; echo quoted=$O2_QUOTED; o2-hello; echo home=$HOME; echo loaded=$LOADEDMODULES"
PACKAGES = ["VO_ALICE@O2PDPSuite::v1"]
MISSING = ["VO_ALICE@O2PDPSuite::v1", "VO_ALICE@NoSuchPackage::v9"]


def _modules_or_skip() -> Path:
    exe = shutil.which("modulecmd")
    if exe is None:
        require_or_skip("no modulecmd (Debian package environment-modules)")
    return Path(exe)


def _tcl_files(modulecmd: Path) -> Dict[str, Path]:
    """Where this host's Environment Modules keeps modulecmd.tcl, and the Tcl shell, library and script library it
    runs on: from the launcher's exec line, the script's #! line, ldd and the shell itself."""
    script = Path(re.search(r'exec "?(/\S+?modulecmd\.tcl)"?', modulecmd.read_text())[1])
    tclsh = Path(script.read_text().splitlines()[0][2:].strip())
    ldd = subprocess.run(["ldd", str(tclsh)], capture_output=True, text=True, check=True).stdout
    libtcl = Path(re.search(r"(libtcl\S*\.so\S*) => (\S+)", ldd)[2])
    library = subprocess.run([str(tclsh)], input="puts [info library]\n", capture_output=True, text=True,
                             check=True).stdout.strip()
    return {"script": script, "tclsh": tclsh, "libtcl": libtcl, "library": Path(library)}


@pytest.fixture(scope="module")
def software_area(tmp_path_factory) -> Path:
    """The site's software area: Environment Modules, a modulefiles tree with O2PDPSuite/v1, and the package."""
    files = _tcl_files(_modules_or_skip())
    area = tmp_path_factory.mktemp("software")
    (area / "bin").mkdir()
    (area / "lib").mkdir()
    shutil.copy2(files["tclsh"], area / "bin" / "tclsh")
    shutil.copy2(files["libtcl"], area / "lib" / files["libtcl"].name)
    shutil.copy2(files["script"], area / "lib" / "modulecmd.tcl")
    shutil.copytree(files["library"], area / "lib" / "tcl")
    launcher = area / "bin" / "modulecmd"
    launcher.write_text(f"""#!/bin/sh
# Environment Modules from the software area, as alienv runs its own from CVMFS.
exec env LD_LIBRARY_PATH={area}/lib TCL_LIBRARY={area}/lib/tcl {area}/bin/tclsh {area}/lib/modulecmd.tcl "$@"
""")
    launcher.chmod(0o755)
    # The package: a tool, and its module file.
    tool = area / "sw" / "O2PDPSuite" / "v1" / "bin" / "o2-hello"
    tool.parent.mkdir(parents=True)
    tool.write_text('#!/bin/sh\necho "tool=o2-hello from $(dirname "$0")"\n')
    tool.chmod(0o755)
    module = area / "modulefiles" / "O2PDPSuite" / "v1"
    module.parent.mkdir(parents=True)
    module.write_text(f"""#%Module1.0
prepend-path PATH {tool.parent}
setenv O2PDPSUITE_ROOT {area}/sw/O2PDPSuite/v1
setenv O2_QUOTED {{a value; with "quotes" and spaces}}
setenv HOME /not/the/job/home
""")
    return area


def _config(area: Path) -> dict:
    return dict(packages_command=["env", f"MODULEPATH={area}/modulefiles", f"{area}/bin/modulecmd", "sh", "load"],
                packages_arguments="separate", container_binds=[str(area)])


def _payload_stdout(pilot, job_id: int) -> Dict[str, str]:
    """The payload's stdout, read from the file:// storage element it was uploaded to (named in the trace)."""
    m = re.search(r"stage-out stdout: \S+ file://(\S+) verified", pilot.trace_text(job_id))
    assert m, pilot.trace_text(job_id)
    return dict(line.split("=", 1) for line in Path(m.group(1)).read_text().splitlines() if "=" in line)


def _lines(trace: str, text: str) -> List[str]:
    return [line for line in trace.splitlines() if text in line]


def test_the_payload_gets_its_packages_environment(pilot, software_area, runtime_config):
    job_id = pilot.submit(shell_jdl(SCRIPT, Packages=PACKAGES, OutputFile=["stdout@disk=1"]))
    pilot.start(**_config(software_area), **runtime_config)
    job = pilot.wait_final([job_id], timeout=120)[0]
    described = pilot.describe(job_id)
    assert job["state"] == "DONE", described
    out = _payload_stdout(pilot, job_id)
    assert out["root"] == f"{software_area}/sw/O2PDPSuite/v1", out
    assert out["quoted"] == 'a value; with "quotes" and spaces', out
    assert out["tool"] == f"o2-hello from {software_area}/sw/O2PDPSuite/v1/bin", out
    assert out["loaded"] == "O2PDPSuite/v1", out
    # The job's HOME is gridpilot's (the work directory), whatever the module says.
    assert out["home"] != "/not/the/job/home" and out["home"].endswith(("/workdir", "/alien-job-1")), out
    trace = pilot.trace_text(job_id)
    runtime = runtime_config["container_runtime"]
    if runtime != "none":
        assert f"Support for containers detected. Will use: {runtime}" in trace, trace
    took = _lines(trace, "to generate the environment for [VO_ALICE@O2PDPSuite::v1]")
    assert len(took) == 1, trace
    assert "variables set" in took[0] and "O2PDPSUITE_ROOT" in took[0] and "PATH" in took[0], took
    assert "kept gridpilot's own HOME, which the packages may not change" in took[0], took
    pilot.assert_clean()


def test_a_missing_package_ends_the_job_with_kill_reason_packages(pilot, software_area, runtime_config):
    job_id = pilot.submit(shell_jdl("echo the payload ran", Packages=MISSING))
    pilot.start(**_config(software_area), **runtime_config)
    job = pilot.wait_final([job_id], timeout=120)[0]
    described = pilot.describe(job_id)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "PACKAGES"), described
    pilot.assert_kill_reason_shown(job_id, "PACKAGES")
    trace = pilot.trace_text(job_id)
    failed = _lines(trace, "Cannot set up the packages environment. Error setting the environment for "
                           "[VO_ALICE@O2PDPSuite::v1, VO_ALICE@NoSuchPackage::v9]: ")
    assert len(failed) == 1, trace
    assert "ERROR: Unable to locate a modulefile for 'NoSuchPackage/v9'" in failed[0], failed
    assert "Execution completed" not in trace and "RUNNING" not in [s for _, s in pilot.states(job_id)], trace
    pilot.assert_clean()


def test_debians_own_modulecmd_without_a_container(pilot, software_area):
    """The plain Debian installation, as a site without containers would configure it: /usr/bin/modulecmd."""
    modulecmd = _modules_or_skip()
    job_id = pilot.submit(shell_jdl(SCRIPT, Packages=PACKAGES, OutputFile=["stdout@disk=1"]))
    pilot.start(container_runtime="none", packages_arguments="separate",
                packages_command=["env", f"MODULEPATH={software_area}/modulefiles", str(modulecmd), "sh", "load"])
    job = pilot.wait_final([job_id], timeout=120)[0]
    assert job["state"] == "DONE", pilot.describe(job_id)
    out = _payload_stdout(pilot, job_id)
    assert out["root"] == f"{software_area}/sw/O2PDPSuite/v1" and out["tool"].startswith("o2-hello from "), out
    pilot.assert_clean()


def test_alices_default_command_missing_ends_the_job_with_kill_reason_packages(pilot):
    """No CVMFS on this node: the default command, alienv on CVMFS, cannot run."""
    if Path("/cvmfs/alice.cern.ch/bin/alienv").exists():
        pytest.skip("this node has ALICE's CVMFS")
    job_id = pilot.submit(shell_jdl("echo the payload ran", Packages=PACKAGES))
    pilot.start(container_runtime="none")
    job = pilot.wait_final([job_id], timeout=120)[0]
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "PACKAGES"), pilot.describe(job_id)
    assert "Cannot set up the packages environment. Error setting the environment for [VO_ALICE@O2PDPSuite::v1]: " \
           "/cvmfs/alice.cern.ch/bin/alienv cannot be run: No such file or directory" in pilot.trace_text(job_id)
    pilot.assert_clean()


def test_an_empty_packages_command_leaves_packages_unset_and_says_so(pilot):
    job_id = pilot.submit(shell_jdl("echo the payload ran", Packages=PACKAGES))
    pilot.start(container_runtime="none", packages_command=[])
    job = pilot.wait_final([job_id], timeout=120)[0]
    assert job["state"] == "DONE", pilot.describe(job_id)
    assert "Packages [VO_ALICE@O2PDPSuite::v1] are not set up: packages_command is empty here" in \
        pilot.trace_text(job_id)
    pilot.assert_clean()


def _hanging_command(tmp_path: Path) -> str:
    """A packages command that hangs, as alienv does on a CVMFS that does not answer."""
    script = tmp_path / "alienv"
    script.write_text("#!/bin/sh\nsleep 300\n")
    script.chmod(0o755)
    return str(script)


def test_a_hanging_command_ends_the_job_at_packages_timeout(pilot, tmp_path):
    job_id = pilot.submit(shell_jdl("echo the payload ran", Packages=PACKAGES))
    pilot.start(container_runtime="none", packages_command=[_hanging_command(tmp_path), "printenv"],
                packages_timeout=2)
    job = pilot.wait_final([job_id], timeout=120)[0]
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "PACKAGES"), pilot.describe(job_id)
    assert f"Cannot set up the packages environment. Error setting the environment for [VO_ALICE@O2PDPSuite::v1]: " \
           f"`{tmp_path}/alienv printenv O2PDPSuite/v1` did not finish within 2 s (packages_timeout)" \
           in pilot.trace_text(job_id)
    pilot.assert_clean()


def test_a_job_killed_during_its_packages_setup_ends_at_once(pilot, tmp_path):
    """The JobWrapper's SIGTERM (here from central's kill) ends the setup: the job does not wait for the timeout."""
    job_id = pilot.submit(shell_jdl("echo the payload ran", Packages=PACKAGES))
    pilot.start(container_runtime="none", packages_command=[_hanging_command(tmp_path), "printenv"],
                packages_timeout=600)
    pilot.wait_state(job_id, ["STARTED"], timeout=60)
    pilot.grid.user.kill(job_id)
    job = pilot.wait_final([job_id], timeout=120)[0]
    trace = pilot.trace_text(job_id)
    assert job["state"] == "KILLED", pilot.describe(job_id)
    assert "The packages environment was not set up: the job is being ended" in trace, trace
    assert "Cannot set up the packages environment" not in trace and "Execution completed" not in trace, trace
    pilot.assert_clean()
