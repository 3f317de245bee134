"""The packages environment: what a job's JDL `Packages` give its payload, as ALICE's `alienv printenv` does over CVMFS.

The site's packages_command (config.py; default `/cvmfs/alice.cern.ch/bin/alienv printenv`) is run with the
packages, each `VO_ALICE@Name::Version` given as `Name/Version` (the module name alienv and Environment Modules know),
joined by commas into one argument (alienv's form) or each an argument of its own (`modulecmd sh load`'s form). What
it prints is shell code (`X=...; export X;`, `export X=...;`, `unset X;`), which a shell evaluates; the environment
the shell then holds, dumped by `env -0`, against the one it started with, is what the packages set and unset.

Where it runs: in the JobWrapper, just before the payload, so inside the job's container whatever the runtime (none,
bubblewrap, Podman, Apptainer). That is where ALICE runs it (CVMFS is bind-mounted there), and the only place where
it is right: the paths and the shell it prints are read by the container's OS, the command sees the container's
view of the package area, and what it prints needs no passing across the container boundary.

Why a shell and `env -0`, not a parser of the printed text: the output is shell code, quoted as the shell quotes
(backslashes, both quotes, `$'...'`), and only a shell reads it exactly; JAliEn splits it on ";" and "=", which
breaks a value holding either. Environment Modules also reports a failure in the code itself (`test 0 = 1;` after
"ERROR: Unable to locate a modulefile" on stderr, exit status 0), which an evaluation sees and a parser would not.
The command is the site's own, trusted as the code it prints is: the shell adds no new trust. Both steps are
bounded: packages_timeout seconds together, MAX_OUTPUT_BYTES of output each, MAX_VALUE_BYTES per variable (the
kernel's own limit on one environment string, past which the payload could not even start).

The order, last wins (docs/packages.md): the JobWrapper's environment without the pilot's private variables, then
gridpilot's job variables (HOME, TMPDIR, TMP, ALIEN_*), the JDL's JDLVariables and the GPU variables: that is the
base the command runs with and its changes apply to; then what the packages set or unset, except gridpilot's job
variables, which always keep their values (a package that sets one is traced), and PWD, OLDPWD, SHLVL and `_`, which
the shell itself sets. JAliEn's order is the same: packages first, then the JDL's variables and its own.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from gridpilot.config import PilotConfig
from gridpilot.pilot import fdlimit

#: ALICE's command, on CVMFS.
DEFAULT_COMMAND = ("/cvmfs/alice.cern.ch/bin/alienv", "printenv")
DEFAULT_TIMEOUT_S = 300.0
#: The most the command (and the evaluating shell) may print: far above what O2PDPSuite's environment takes, below
#: what would be refused anyway (the kernel takes some 2 MB of environment and arguments for a new program).
MAX_OUTPUT_BYTES = 2 << 20
#: MAX_ARG_STRLEN: the kernel refuses to start a program with one environment string ("NAME=value") longer than this.
MAX_VALUE_BYTES = 128 << 10
#: How much of the command's stderr is kept, and how much of it the trace shows.
MAX_STDERR_BYTES = 64 << 10
MAX_ERROR_CHARS = 1000
#: A package name: VO@Name::Version, Name::Version or Name; ALICE's characters, never a leading "-" (an option to the
#: command) nor a comma (the joined form's separator).
_PACKAGE = re.compile(r"(?:(?P<vo>[A-Za-z0-9_.-]+)@)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.+-]*)(?:::(?P<version>[A-Za-z0-9_][A-Za-z0-9_.+~-]*))?")
MAX_PACKAGE_CHARS = 256
MAX_PACKAGES = 64
#: Set by the evaluating shell itself, never by a package.
SHELL_OWN = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})
#: How long the command's output may stay open after it exited (held by something it left outside its session).
DRAIN_S = 5.0
#: How long a loop turn waits at most: the JobWrapper's SIGTERM is seen within this.
_TURN_S = 0.1

#: The evaluating shell: everything but the dump goes to stderr (fd 3 keeps the dump's stdout, closed for the
#: evaluated code); `env` is found before the packages change PATH; the status of the evaluated code is the verdict.
_EVALUATE = r"""exec 3>&1 1>&2
gridpilot_env=$(command -v env) || { echo "no env command in PATH" >&2; exit 125; }
gridpilot_text=$(cat) || exit 125
eval "$gridpilot_text" 3>&- </dev/null
gridpilot_rc=$?
[ "$gridpilot_rc" -eq 0 ] || exit "$gridpilot_rc"
exec "$gridpilot_env" -0 >&3
"""


class PackagesError(Exception):
    """The packages environment could not be set up; the text says why (bounded)."""


@dataclass(frozen=True)
class PackagesSettings:
    """The site's packages settings, as the JobAgent hands them to its JobWrapper (protocol.Handover.packages)."""

    command: Tuple[str, ...] = DEFAULT_COMMAND
    #: "joined" (one argument, commas) or "separate".
    arguments: str = "joined"
    timeout: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_config(cls, cfg: PilotConfig) -> PackagesSettings:
        return cls(tuple(cfg.packages_command), cfg.packages_arguments, cfg.packages_timeout)

    def to_dict(self) -> Dict[str, Any]:
        return {"command": list(self.command), "arguments": self.arguments, "timeout": self.timeout}

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> PackagesSettings:
        """From the hand-over; absent (an older agent): ALICE's defaults."""
        if not d:
            return cls()
        return cls(tuple(str(w) for w in d.get("command", DEFAULT_COMMAND)), str(d.get("arguments", "joined")),
                   float(d.get("timeout", DEFAULT_TIMEOUT_S)))


@dataclass
class PackagesEnvironment:
    """The payload's environment with the packages', and what was done to get it."""

    env: Dict[str, str]
    #: Names the packages set (to a new value) and unset.
    set: List[str] = field(default_factory=list)
    unset: List[str] = field(default_factory=list)
    #: gridpilot's job variables the packages tried to change: kept as they were.
    kept: List[str] = field(default_factory=list)
    seconds: float = 0.0


def listing(packages: Sequence[str]) -> str:
    """The packages as JAliEn traces them: `[VO_ALICE@A::v1, VO_ALICE@B::v2]`."""
    return "[" + ", ".join(packages) + "]"


def failure_text(packages: Sequence[str], why: str) -> str:
    """The trace line of a failure: ALICE's kill reason text, JAliEn's sentence, the packages and why."""
    return f"Cannot set up the packages environment. Error setting the environment for {listing(packages)}: {why}"


def module_name(package: str) -> str:
    """`VO_ALICE@O2PDPSuite::v1` as alienv and Environment Modules name it: `O2PDPSuite/v1` (no version: the name)."""
    if len(package) > MAX_PACKAGE_CHARS:
        raise PackagesError(f"a package name is longer than {MAX_PACKAGE_CHARS} characters: {package[:60]!r}...")
    m = _PACKAGE.fullmatch(package)
    if m is None:
        raise PackagesError(f"{package!r} is not a package name (VO@Name::Version, with letters, digits and _.+-~)")
    return m["name"] + (f"/{m['version']}" if m["version"] else "")


def command_argv(settings: PackagesSettings, packages: Sequence[str]) -> List[str]:
    names = list(dict.fromkeys(module_name(p) for p in packages))
    if settings.arguments == "separate":
        return [*settings.command, *names]
    return [*settings.command, ",".join(names)]


def parse_env_dump(data: bytes) -> Dict[str, str]:
    """The environment `env -0` printed: NAME=value entries, each ended by a NUL. Decoded as os.environ decodes
    (the file system encoding with surrogateescape, so bytes that are not UTF-8 pass through unchanged).
    PackagesError for a dump that is cut short or holds an entry that is not NAME=value, or a variable longer than
    the kernel lets a program start with."""
    if not data:
        raise PackagesError("the evaluating shell printed no environment")
    if not data.endswith(b"\0"):
        raise PackagesError("the environment printed by the evaluating shell is cut short (no final NUL)")
    env: Dict[str, str] = {}
    for entry in data[:-1].split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if not eq or not name:
            raise PackagesError(f"the evaluating shell printed {bounded(os.fsdecode(entry), 80)!r}, not NAME=value")
        if len(entry) + 1 > MAX_VALUE_BYTES:
            raise PackagesError(f"{os.fsdecode(name)[:80]} is {len(entry) + 1} bytes long, more than the "
                                f"{MAX_VALUE_BYTES} a program's environment string may take")
        env[os.fsdecode(name)] = os.fsdecode(value)
    return env


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> Tuple[Dict[str, str], Set[str]]:
    """What turned `before` into `after`: the variables set (new, or to a new value) and the ones unset, leaving out
    the shell's own (SHELL_OWN)."""
    set_ = {k: v for k, v in after.items() if k not in SHELL_OWN and before.get(k) != v}
    unset = {k for k in before if k not in after and k not in SHELL_OWN}
    return set_, unset


def apply(base: Mapping[str, str], set_: Mapping[str, str], unset: Collection[str],
          protected: Collection[str]) -> PackagesEnvironment:
    """`base` with the packages' changes, except to the `protected` names (gridpilot's job variables)."""
    env = dict(base)
    out = PackagesEnvironment(env)
    for k in sorted(set_):
        if k in protected:
            out.kept.append(k)
        else:
            env[k] = set_[k]
            out.set.append(k)
    for k in sorted(unset):
        if k in protected:
            out.kept.append(k)
        else:
            env.pop(k, None)
            out.unset.append(k)
    return out


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def one_line(err: bytes) -> str:
    """A command's stderr for one trace line: its lines joined by " / ", control characters (a terminal's escapes)
    shown as "?", bounded."""
    text = _CONTROL.sub("?", err.decode("utf-8", "replace").replace("\r\n", "\n").replace("\t", " "))
    return bounded(" / ".join(line.strip() for line in text.split("\n") if line.strip()))


def _stderr_text(err: bytes) -> str:
    text = one_line(err)
    return f": {text}" if text else ""


@dataclass
class _Run:
    returncode: int
    out: bytes
    err: bytes


def run_bounded(argv: Sequence[str], *, what: str, env: Mapping[str, str], cwd: str, deadline: float, timeout: float,
                stdin: bytes = b"", stopping: Callable[[], bool] = lambda: False) -> _Run:
    """Run `argv` in a session of its own, feed it `stdin`, keep at most MAX_OUTPUT_BYTES of its stdout and
    MAX_STDERR_BYTES of its stderr, until it has exited and closed both, or `deadline` (monotonic) passes. What it
    leaves behind (its session) is killed once it has exited; all of it at the deadline, when it prints too much, or
    when `stopping()` says the job is ending. PackagesError says which, naming it `what`."""
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=fdlimit.payload_limit)  # the site's descriptor limit, as the payload's
    except OSError as e:
        raise PackagesError(f"{argv[0]} cannot be run: {e.strerror}") from e
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    pending = memoryview(stdin)
    if stdin:
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, None)
    problem: Optional[str] = None
    exited: Optional[float] = None
    try:
        while problem is None and (exited is None or sel.get_map()):
            now = time.monotonic()
            if exited is None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                # Exited, not reaped: its pid is still its session's id, so what it left there can be ended safely.
                exited = now
                _kill_session(proc.pid)
                continue
            if stopping():
                problem = "the job is being ended"
                break
            if exited is not None and now > exited + DRAIN_S:
                problem = f"the output of {what} was still held open {DRAIN_S:g} s after it exited, by a process it left"
                break
            left = deadline - now
            if left <= 0:
                problem = f"{what} did not finish within {timeout:g} s (packages_timeout)"
                break
            for key, _ in sel.select(min(left, _TURN_S)):
                if key.data is None:  # its stdin
                    try:
                        n = os.write(key.fd, pending[:1 << 16])
                    except BrokenPipeError:
                        n = len(pending)  # it stopped reading: its exit status says what that means
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                if buf is out and len(out) + len(chunk) > MAX_OUTPUT_BYTES:
                    problem = f"{what} printed more than {MAX_OUTPUT_BYTES} bytes"
                    break
                if buf is err:
                    chunk = chunk[:max(0, MAX_STDERR_BYTES - len(err))]
                buf += chunk
    finally:
        if problem is not None or exited is None:
            _kill_session(proc.pid)
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None and not f.closed:
                f.close()
        proc.wait()
    if problem is not None:
        raise PackagesError(f"{problem}{_stderr_text(bytes(err))}")
    return _Run(proc.returncode, bytes(out), bytes(err))


def _kill_session(pid: int) -> None:
    """SIGKILL the session `pid` leads (its process group: start_new_session). Called only while `pid` is not reaped,
    so the group's id cannot have passed to anyone else."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def environment(settings: PackagesSettings, packages: Sequence[str], base: Mapping[str, str], *,
                protected: Collection[str], cwd: str, stopping: Callable[[], bool] = lambda: False,
                shell: str = "/bin/sh") -> PackagesEnvironment:
    """The payload's environment: `base` with what `packages` set and unset, through the site's command. PackagesError
    (the text for failure_text) when the command is missing or empty, fails, prints what the shell cannot evaluate
    or what evaluates to a failure, or takes longer than settings.timeout."""
    if len(packages) > MAX_PACKAGES:
        raise PackagesError(f"{len(packages)} packages, more than the {MAX_PACKAGES} a job may name")
    if not settings.command:
        raise PackagesError("no packages_command is configured on this site")
    argv = command_argv(settings, packages)
    shown = bounded(" ".join(argv), 300)
    t0 = time.monotonic()
    deadline = t0 + settings.timeout
    printed = run_bounded(argv, what=f"`{shown}`", env=base, cwd=cwd, deadline=deadline, timeout=settings.timeout, stopping=stopping)
    if printed.returncode != 0:
        raise PackagesError(f"`{shown}` {_status(printed.returncode)}{_stderr_text(printed.err)}")
    evaluated = run_bounded([shell, "-c", _EVALUATE], what="the shell evaluating its output", env=base, cwd=cwd, deadline=deadline, timeout=settings.timeout,
                            stdin=printed.out, stopping=stopping)
    if evaluated.returncode != 0:
        # Environment Modules' "not found" ends here: the output's `test 0 = 1;`, its message on the command's stderr.
        raise PackagesError(f"what `{shown}` printed evaluates to a failure (exit status {evaluated.returncode})"
                            f"{_stderr_text(printed.err + evaluated.err)}")
    try:
        after = parse_env_dump(evaluated.out)
    except PackagesError as e:
        raise PackagesError(f"what `{shown}` printed: {e}") from None
    set_, unset = changes(base, after)
    out = apply(base, set_, unset, protected)
    out.seconds = time.monotonic() - t0
    return out


def _status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with {returncode}"


def success_text(packages: Sequence[str], result: PackagesEnvironment, settings: PackagesSettings) -> str:
    """The trace line of a success: JAliEn's sentence (its log's), what was set and unset, and by what command."""
    names = result.set + [f"-{n}" for n in result.unset]
    shown = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
    line = (f"It took {result.seconds:.2f} s to generate the environment for {listing(packages)} "
            f"({' '.join(settings.command)}): {len(result.set)} variables set, {len(result.unset)} unset"
            + (f" ({shown})" if shown else ""))
    if result.kept:
        line += f"; kept gridpilot's own {', '.join(result.kept)}, which the packages may not change"
    return line
