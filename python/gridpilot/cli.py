"""The `gridpilot` command: argument parsing and printing only; the work happens in the pieces it calls.

Whatever goes wrong ends in one line on stderr and an exit code of cli_codes, never a traceback: a bad argument
(argparse's message on one line), a missing `central` extra (which one to install), a reader that went away
(`| head`: quiet, BROKEN_PIPE); the user commands turn their own errors into lines (console.run_user_command).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import orjson

from gridpilot import __version__, cli_codes
from gridpilot.central.settings import (CONTROL_POLL_RATE_BOUND, DEFAULT_CONTROL_POLL_RATE,
                                       DEFAULT_DB_STATEMENT_TIMEOUT_S, DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_SUBJOBS,
                                       DEFAULT_MAX_USER_RESUBMITS, DEFAULT_RATE_BURST, DEFAULT_RATE_LIMIT,
                                       DEFAULT_USER_AREA, MAX_INFLIGHT_BOUND, MAX_SUBJOBS_BOUND,
                                       MAX_USER_RESUBMITS_BOUND, RATE_LIMIT_BOUND)
from gridpilot.endpoints import DEFAULT_CENTRAL_URL, DEFAULT_PORT

Handler = Callable[[argparse.Namespace], int]

#: The modules of the `central` extra (pyproject.toml): `central init|serve|token|keys` and `demo` import them.
CENTRAL_EXTRA_MODULES = frozenset({"starlette", "uvicorn", "sqlalchemy", "psycopg", "jwt", "cryptography",
                                   "rich", "prometheus_client"})


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one `--help` away) and its exit code USAGE."""

    def error(self, message: str) -> NoReturn:
        self.exit(cli_codes.USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    return port


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _node_bad_after(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number)") from None
    if not 0 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"{n} is not in 0-1000")
    return n


def _x86_level_flag(text: str) -> int:
    from gridpilot.jdl.platform import parse_cpu_level

    if text.strip().lower() == "none":
        return 0
    try:
        return parse_cpu_level(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _version_flag(text: str) -> str:
    from gridpilot.pilotversion import check_version

    try:
        return check_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _users_flag(text: str) -> Tuple[str, ...]:
    users = tuple(u.strip() for u in text.split(",") if u.strip())
    if len(users) > 1000 or any(len(u) > 255 for u in users):
        raise argparse.ArgumentTypeError("at most 1000 user names of at most 255 characters each")
    return users


def _max_user_resubmits(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number)") from None
    if not 0 <= n <= MAX_USER_RESUBMITS_BOUND:
        raise argparse.ArgumentTypeError(f"{n} is not in 0-{MAX_USER_RESUBMITS_BOUND}")
    return n


def _add_broker_policy_flags(serve: argparse.ArgumentParser) -> None:
    """What a node must be able to do for the broker to give it jobs (broker.Policy, docs/broker.md)."""
    serve.add_argument("--production-users", type=_users_flag, default=("aliprod",), metavar="U1,U2",
                       help="the users whose jobs are production (default aliprod, ALICE's production account)")
    serve.add_argument("--production-requires-avx", action=argparse.BooleanOptionalAction, default=True,
                       help="production users' jobs never go to an x86_64 node without AVX, as ALICE blocks such "
                            "nodes (default on)")
    serve.add_argument("--min-x86-level", type=_x86_level_flag, default=0, metavar="LEVEL",
                       help="every x86_64 job needs a node of at least this x86-64 level, x86-64-v2 to x86-64-v4 "
                            "(default none)")
    serve.add_argument("--min-pilot-version", type=_version_flag, default=None, metavar="VERSION",
                       help="pilots older than this (PEP 440, e.g. 1.4.0) are given no job, and `gridpilot why` says "
                            "so (default: any)")
    serve.add_argument("--require-container", action="store_true",
                       help="every job needs a node where a container runtime starts a container")


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` within [low, high]."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in {low:g}-{high:g}")
        return v

    return parse


def _add_admission_flags(serve: argparse.ArgumentParser) -> None:
    """Admission control and database timeouts (central/admission.py, docs/scaling.md)."""
    serve.add_argument("--max-inflight", type=_bounded(int, 1, MAX_INFLIGHT_BOUND), default=DEFAULT_MAX_INFLIGHT,
                       metavar="N", help="requests one process handles or queues at once; beyond, it answers 503 "
                                         "overloaded with Retry-After at once (1 to "
                                         f"{MAX_INFLIGHT_BOUND}; default %(default)s: the worker threads are 40)")
    serve.add_argument("--rate-limit", type=_bounded(float, 0, RATE_LIMIT_BOUND), default=DEFAULT_RATE_LIMIT,
                       metavar="PER_S", help="requests per second one token may make to one process after its "
                                             "burst; beyond, 429 rate_limited with Retry-After (0 to "
                                             f"{RATE_LIMIT_BOUND:g}; default %(default)s; 0: no limit)")
    serve.add_argument("--rate-burst", type=_bounded(int, 1, RATE_LIMIT_BOUND), default=DEFAULT_RATE_BURST,
                       metavar="N", help="requests one token may make at once before --rate-limit applies (1 to "
                                         f"{RATE_LIMIT_BOUND:g}; default %(default)s)")
    serve.add_argument("--control-poll-rate", type=_bounded(float, 0, CONTROL_POLL_RATE_BOUND),
                       default=DEFAULT_CONTROL_POLL_RATE, metavar="PER_S",
                       help="the pilots' kill polls, all together, are paced to this many a second: each answer says "
                            "how long to wait before the next (central/pacing.py; 0 to "
                            f"{CONTROL_POLL_RATE_BOUND:g}; default %(default)s, about one core; 0: no pace; every "
                            "process and host of one database should agree)")
    serve.add_argument("--db-statement-timeout", type=_bounded(float, 0, 86400), default=DEFAULT_DB_STATEMENT_TIMEOUT_S,
                       metavar="S", help="PostgreSQL: a request's statement running longer is cancelled and the "
                                         "request answered 503 database_unavailable with Retry-After (0 to 86400; "
                                         "default %(default)s; 0: no limit)")


def _max_subjobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number)") from None
    if not 1 <= n <= MAX_SUBJOBS_BOUND:
        raise argparse.ArgumentTypeError(f"{n} is not in 1-{MAX_SUBJOBS_BOUND}")
    return n


def _workers(text: str) -> int:
    from gridpilot.central.workers import MAX_WORKERS, MIN_WORKERS

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number of processes)") from None
    if not MIN_WORKERS <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{n} is not in {MIN_WORKERS}-{MAX_WORKERS}")
    return n


def _node_bad_window(text: str) -> float:
    s = _duration(text)
    if not 60 <= s <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 60 s and 7 days")
    return s


def _history_keep(text: str) -> float:
    from gridpilot.central.settings import HISTORY_KEEP_BOUNDS

    s = _duration(text)
    if not HISTORY_KEEP_BOUNDS[0] <= s <= HISTORY_KEEP_BOUNDS[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1h and 90d")
    return s


def _history_interval(text: str) -> float:
    s = _duration(text)
    if s != 0 and not 1 <= s <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 or between 1 s and 1h")
    return s


def _duration(text: str) -> float:
    """Seconds from `3600`, `90s`, `30m`, `12h` or `7d`."""
    t = text.strip().lower()
    scale = _UNITS.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (seconds, or a number and s, m, h or d)") from None
    if not (0 <= value < 1e10):
        raise argparse.ArgumentTypeError(f"duration {text!r} must be 0 or more and finite")
    return value


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def _cmd_node(args: argparse.Namespace) -> int:
    from gridpilot import _native
    from gridpilot.config import load_config
    from gridpilot.errors import ConfigError, NativeError
    from gridpilot.pilot.sitemap import node_gpus, site_map_gpu

    # The pilot's own configuration layers (file, GRIDPILOT_*, flags), so this shows the GPUs as the pilot names them.
    try:
        cfg = load_config(args.config, overrides={"sysfs": args.sys, "pci_ids": args.pci_ids})
    except ConfigError as e:
        sys.stderr.write(f"gridpilot node: {e}\n")
        return cli_codes.USAGE
    for flag, path in (("--proc", args.proc), ("--sys", cfg.sysfs)):
        if not os.path.isdir(path):
            print(f"gridpilot node: {flag} {path}: not a directory", file=sys.stderr)
            return cli_codes.USAGE
    if args.pci_ids is not None and not os.path.isfile(args.pci_ids):
        print(f"gridpilot node: --pci-ids {args.pci_ids}: no such file", file=sys.stderr)
        return cli_codes.USAGE
    try:
        cpu = _native.cpu_info(proc=args.proc, sys=cfg.sysfs)
        gpus = node_gpus(cfg.sysfs, cfg.pci_ids)
    except (NativeError, OSError) as e:
        print(f"gridpilot node: {e}", file=sys.stderr)
        return cli_codes.FAILED
    _print_json({"cpu": cpu.to_dict(), "gpus": [g.to_dict() for g in gpus],
                 "site_map_gpus": [site_map_gpu(g, cfg.sysfs) for g in gpus]})
    return cli_codes.OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from gridpilot.demo import run_demo

    return run_demo(args.files, as_json=args.json, timeout=args.timeout, cores=args.cores, serve=args.serve)


def _check_jdl_file(path: str, strict: bool) -> Dict[str, Any]:
    """One file of `jdl check`: its errors and its unknown-attribute warnings (errors under `strict`)."""
    from gridpilot.errors import JdlError
    from gridpilot.jdl.attributes import unknown_attributes
    from gridpilot.jdl.loader import decode, parse_job
    from gridpilot.jdl.parser import parse
    from gridpilot.jdl.split import split_spec

    errors: List[Dict[str, Any]] = []
    unknown: List[Dict[str, Any]] = []
    try:
        with open(path, "rb") as f:
            text = decode(f.read(), path)
        # Unknown attributes first, from the parsed document: they are there even when the model then refuses it.
        doc = parse(text, path)
        unknown = [dict(u.to_dict(), message=u.message()) for u in unknown_attributes(doc)]
        parse_job(text, path)
        split_spec(doc)  # Split and its limits, collections and #alien...# placeholders (jdl/split.py)
    except JdlError as e:
        errors.append({"line": e.line, "column": e.column, "message": e.message})
    except OSError as e:
        errors.append({"line": None, "column": None, "message": f"cannot read: {e.strerror or e}"})
    if strict:
        errors = unknown + errors
        unknown = []
    return {"file": path, "ok": not errors, "errors": errors, "warnings": unknown}


def _cmd_jdl_check(args: argparse.Namespace) -> int:
    results = [_check_jdl_file(path, args.strict) for path in args.files]
    bad = sum(not r["ok"] for r in results)
    code = cli_codes.FAILED if bad else cli_codes.OK
    if args.json:
        _print_json(results)
        return code
    for r in results:
        for w in r["warnings"]:
            print(f"{r['file']}:{w['line']}:{w['column']}: warning: {w['message']}")
        for e in r["errors"]:
            print(f"{r['file']}: {e['message']}" if e["line"] is None
                  else f"{r['file']}:{e['line']}:{e['column']}: {e['message']}")
    n = len(results)
    if bad:
        print(f"{bad} of {n} JDL file{'s' if n != 1 else ''} invalid", file=sys.stderr)
        return code
    warned = sum(len(r["warnings"]) for r in results)
    print(f"{n} JDL file{'s' if n != 1 else ''} OK" + (f", {warned} warning{'s' if warned != 1 else ''}"
                                                     if warned else ""))
    return code


def _cmd_jdl_show(args: argparse.Namespace) -> int:
    from gridpilot.errors import JdlError
    from gridpilot.jdl import load

    try:
        job = load(args.file)
    except JdlError as e:
        print(f"{args.file}:{e.line}:{e.column}: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{args.file}: cannot read: {e.strerror or e}", file=sys.stderr)
        return 1
    _print_json(job.to_dict())
    return 0


def _cmd_runner(args: argparse.Namespace) -> int:
    import logging

    from gridpilot import exitcodes
    from gridpilot.config import field_names, load_config
    from gridpilot.errors import ConfigError
    from gridpilot.pilot.runner import run_runner

    overrides = {name: getattr(args, name, None) for name in field_names()}
    try:
        cfg = load_config(args.config, overrides=overrides)
        cfg.agent_token()
    except ConfigError as e:
        sys.stderr.write(f"gridpilot runner: {e}\n")
        return exitcodes.CONFIG
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    return run_runner(cfg)


def _runner_epilog() -> str:
    from gridpilot import exitcodes as x

    rows = [
        (x.OK, "ran jobs, or found none to run (slot time up, no work left)"),
        (x.CRASHED, "an unexpected error: the log has the traceback"),
        (x.CONFIG, "a bad field, close_se missing or unknown to central, site/CE not the token's"),
        (x.CENTRAL_UNREACHABLE, "central did not answer within startup_window (later outages: ridden out)"),
        (x.TOKEN_REFUSED, "central refused the agent token (expired, revoked, not an agent token)"),
        (x.NODE_UNUSABLE, "require_container with no runtime, nodeBad, or an unwritable workdir"),
        (x.STOPPED, "SIGTERM or SIGINT before the slot's end (jobs wound down first)"),
    ]
    return ("central: --central-url, GRIDPILOT_CENTRAL_URL or central_url in the file, else the central.url that\n"
            "`central serve` wrote into the state directory, else " + DEFAULT_CENTRAL_URL + ".\n"
            "Site and CE come from the agent token; close_se (GRIDPILOT_CLOSE_SE, --close-se) is required.\n\n"
            "exit codes:\n" + "\n".join(f"  {code:>3}  {x.reason(code):<20} {what}" for code, what in rows))


def _add_runner(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runner", help="run the JobRunner of this batch slot (pulls and runs jobs)",
                       epilog=_runner_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML configuration file (default: $GRIDPILOT_CONFIG)")
    p.add_argument("--central-url", dest="central_url", help="URL of the central service (default: see below)")
    p.add_argument("--state-dir", dest="state_dir", help="where to read central.url (default: $GRIDPILOT_STATE_DIR "
                                                          "or ~/.local/state/gridpilot)")
    p.add_argument("--token-file", dest="token_file", help="file holding the agent token")
    p.add_argument("--ca-file", dest="ca_file", metavar="PEM",
                   help="CA bundle to verify an https central with (default: $GRIDPILOT_CA_FILE)")
    p.add_argument("--close-se", dest="close_se", help="close storage elements, closest first (comma-separated "
                                                        "names central knows); required")
    p.add_argument("--site", help="default: the agent token's (a different one is an error)")
    p.add_argument("--ce", help="default: the agent token's (a different one is an error)")
    p.add_argument("--startup-window", dest="startup_window", type=float,
                   help="seconds to keep trying to reach central at start-up (default 300)")
    p.add_argument("--partition")
    p.add_argument("--workdir", help="root of the jobs' work directories")
    p.add_argument("--cores", type=int, help="cores of this slot (default: from the batch system)")
    p.add_argument("--memory-mb", dest="memory_mb", type=int)
    p.add_argument("--slot-ttl", dest="slot_ttl", type=float, help="seconds this slot may run")
    p.add_argument("--max-empty-matches", dest="max_empty_matches", type=int)
    p.add_argument("--match-backoff", dest="match_backoff", type=float)
    p.add_argument("--heartbeat-interval", dest="heartbeat_interval", type=float)
    p.add_argument("--cgroups", choices=["auto", "off"])
    p.add_argument("--pci-ids", dest="pci_ids",
                   help="pci.ids file that names the node's GPUs (default: the usual places)")
    p.add_argument("--keep-workdir", dest="keep_workdir", action="store_const", const=True)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_cmd_runner)


def _cmd_ce(args: argparse.Namespace) -> int:
    import logging

    from gridpilot.ce.command import run_ce
    from gridpilot.ce.settings import SCHEMA, load_settings
    from gridpilot.errors import ConfigError
    from gridpilot.settings_loader import field_names

    try:
        settings = load_settings(args.config, {name: getattr(args, name, None) for name in field_names(SCHEMA)})
    except ConfigError as e:
        sys.stderr.write(f"gridpilot ce: {e}\n")
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_ce(settings, once=args.once)


def _add_ce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ce", help="the computing element: submit pilots to this site's batch system when central "
                                  "has work for it")
    p.add_argument("--config", help="YAML configuration file (flags override it)")
    p.add_argument("--central-url", dest="central_url", help="URL of the central service")
    p.add_argument("--token-file", dest="token_file", help="file holding the CE token (role ce)")
    p.add_argument("--ca-file", dest="ca_file", metavar="PEM",
                   help="CA bundle to verify an https central with (default: $GRIDPILOT_CA_FILE)")
    p.add_argument("--site", help="the site (default: the one the token is bound to)")
    p.add_argument("--ce", help="the CE name (default: the one the token is bound to)")
    p.add_argument("--backend", choices=["slurm", "htcondor", "local", "arc"])
    p.add_argument("--max-queued", dest="max_queued", type=int, help="pilots waiting in the batch queue, at most")
    p.add_argument("--max-running", dest="max_running", type=int, help="pilots in the batch system, at most")
    p.add_argument("--per-cycle", dest="per_cycle", type=int, help="new pilots per cycle, at most")
    p.add_argument("--max-queue-time", dest="max_queue_time", type=float,
                   help="seconds after which a pilot still queued is removed")
    p.add_argument("--cores", type=int, help="queue default: cores per pilot")
    p.add_argument("--memory-mb", dest="memory_mb", type=int, help="queue default: memory per pilot in MB")
    p.add_argument("--wall-time", dest="wall_time", type=int, help="queue default: wall time per pilot in seconds")
    p.add_argument("--install-path", dest="install_path",
                   help="the gridpilot installation pilots run (<path>/bin/gridpilot), e.g. a CVMFS directory")
    p.add_argument("--pilot-tree", dest="pilot_tree", metavar="ROOT",
                   help="a CVMFS tree of pilot installations, <ROOT>/<version>/<arch>/ (make cvmfs-tree)")
    p.add_argument("--pilot-version", dest="pilot_version", metavar="V",
                   help="the pilot version to run from the tree or install_paths: latest (default) or X.Y.Z")
    p.add_argument("--pilot-dir", dest="pilot_dir", help="where pilot scripts, token files and outputs go")
    p.add_argument("--pilot-user", dest="pilot_user", help="user the pilots run as")
    p.add_argument("--cycle-interval", dest="cycle_interval", type=float, help="seconds between cycles")
    p.add_argument("--slurm-partition", dest="slurm_partition")
    p.add_argument("--metrics-port", dest="metrics_port", type=int,
                   help="serve the CE's Prometheus /metrics on this port (0: any free one; needs gridpilot[ce])")
    p.add_argument("--metrics-address", dest="metrics_address", help="address for --metrics-port (default 127.0.0.1)")
    p.add_argument("--central-backoff-max", dest="central_backoff_max", type=float, metavar="S",
                   help="while central is unreachable, the longest wait between tries (default 15)")
    p.add_argument("--central-down-log-interval", dest="central_down_log_interval", type=float, metavar="S",
                   help="while central is unreachable, log that it still is every S seconds (default 600)")
    p.add_argument("--once", action="store_true",
                   help="one cycle, then exit (1 if it had errors, 10 if central did not answer)")
    p.add_argument("--log-level", dest="log_level")
    p.set_defaults(func=_cmd_ce)


def _add_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="show this worker node's CPU and GPUs as JSON")
    p.add_argument("--config",
                   help="the pilot's YAML configuration, for its sysfs and pci_ids (default: $GRIDPILOT_CONFIG)")
    p.add_argument("--proc", default="/proc", help="procfs root (default /proc)")
    p.add_argument("--sys", default=None, help="sysfs root (default: the configuration's sysfs, /sys)")
    p.add_argument("--pci-ids", dest="pci_ids", default=None,
                   help="pci.ids file naming the GPUs (default: the configuration's pci_ids, else the usual places)")
    _json_always(p)
    p.set_defaults(func=_cmd_node)
    from gridpilot.nodecheck import add_check

    add_check(p.add_subparsers(dest="node_command", metavar="ACTION"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run jobs through an embedded central and a local CE's pilots, with live progress")
    p.add_argument("files", nargs="*", help="JDL files to run instead of the examples")
    p.add_argument("--json", action="store_true", help="print one JSON line per job at the end")
    p.add_argument("--timeout", type=float, default=300.0, help="give up waiting after this many seconds")
    p.add_argument("--cores", type=int, default=0,
                   help="cores of every pilot (default: one pilot shape per CPUCores among the jobs)")
    p.add_argument("--serve", action="store_true",
                   help="keep central and its web view (/ui/) up after the jobs ended, until Ctrl-C")
    p.set_defaults(func=_cmd_demo)


def _add_jdl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jdl", help="check job descriptions (JDL) or show them as typed JSON")
    jdl = p.add_subparsers(dest="jdl_command", metavar="ACTION", required=True)
    check = jdl.add_parser("check", help="validate JDL files; print each error as file:line:column: message and "
                                         "warn of unknown attributes (with a did-you-mean)")
    check.add_argument("files", nargs="+", metavar="FILE", help="JDL files")
    check.add_argument("--strict", action="store_true",
                       help="unknown attributes are errors: the file is invalid (exit 1)")
    check.add_argument("--json", action="store_true",
                       help="print one JSON list: per file its errors and warnings (line, column, message)")
    check.set_defaults(func=_cmd_jdl_check)
    show = jdl.add_parser("show", help="print the typed job description of a JDL file as JSON")
    show.add_argument("file", metavar="FILE", help="a JDL file")
    _json_always(show)
    show.set_defaults(func=_cmd_jdl_show)


def _json_always(p: argparse.ArgumentParser) -> None:
    """--json on a command whose output is JSON anyway: taken, so a script may pass it to every command."""
    p.add_argument("--json", action="store_true", help="print JSON (what this command prints in any case)")


def _user_command(name: str) -> Handler:
    """A handler that runs gridpilot.console.<name>, imported only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        from gridpilot import console

        return console.run_user_command(getattr(console, name), args)

    return run


def _connection(p: argparse.ArgumentParser) -> None:
    from gridpilot.console import add_connection_args

    add_connection_args(p)


def _add_central(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("central", help="run the central services (task queue, broker, catalogue, tokens)")
    central = p.add_subparsers(dest="central_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", help="database URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
                                    "(default: $GRIDPILOT_DB_URL, else central.db in the state directory)")
        q.add_argument("--state-dir", help="state directory (default: $GRIDPILOT_STATE_DIR or "
                                           "~/.local/state/gridpilot)")
        q.add_argument("--signing-key", metavar="FILE", help="the token signing key's file, 0600 (default: "
                                                             "$GRIDPILOT_SIGNING_KEY, else signing.key in the state "
                                                             "directory)")

    init = central.add_parser("init", help="create or upgrade the database and write a new admin token to "
                                           "admin.token (0600) in the state directory (0700)")
    common(init)
    init.add_argument("--se", action="append", metavar="NAME=URL[,KIND]",
                      help="configure a storage element (repeatable; default: a file:// one in the state directory)")
    init.add_argument("--issuer", metavar="URL", help="the `iss` of central's tokens: its URL as clients reach it, "
                                                      "https://host:port (default and until set: gridpilot)")
    init.add_argument("--print-token", action="store_true", help="print the admin token on stdout too")
    init.add_argument("--no-token-file", action="store_true", help="do not write admin.token; print the token "
                                                                   "instead (implies --print-token)")
    init.add_argument("--json", action="store_true", help="print what was done as JSON on stdout (the admin token "
                                                          "in it only with --print-token)")
    init.set_defaults(func=_user_command("cmd_central_init"))

    serve = central.add_parser("serve", help="serve the HTTP API (several processes may share one PostgreSQL)")
    common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT,
                       help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="serve with N processes on the one port (1 to 64; default 1); the sweeper runs in one of "
                            "them, /metrics sums them all (docs/scaling.md)")
    serve.add_argument("--zombie-after", type=float, default=3600.0, metavar="S",
                       help="a held job without heartbeat for S seconds turns ZOMBIE (default 3600)")
    serve.add_argument("--expire-after", type=float, default=3600.0, metavar="S",
                       help="a ZOMBIE job turns EXPIRED S seconds later (default 3600)")
    serve.add_argument("--sweep-interval", type=float, default=60.0, metavar="S",
                       help="how often to look for lost jobs (default 60; 0 turns the sweeper off)")
    serve.add_argument("--history-interval", type=_history_interval, default=60.0, metavar="DURATION",
                       help="how often central snapshots its jobs per state and this host's matches and heartbeats "
                            "for the web view's overview, at the sweeper's passes (0 or 1 s to 1h; default 60; 0: "
                            "no history)")
    serve.add_argument("--history-keep", type=_history_keep, default=7 * 86400.0, metavar="DURATION",
                       help="how long the snapshots are kept (1h to 90d; default 604800, 7 days)")
    serve.add_argument("--user-area", default=DEFAULT_USER_AREA, metavar="TEMPLATE",
                       help="each user's own area of the catalogue, where its jobs may write: {user} is the user's "
                            "name, {initial} its first character (default %(default)s; ALICE's is "
                            "/alice/cern.ch/user/{initial}/{user}); every process on one database should agree")
    serve.add_argument("--node-bad-after", type=_node_bad_after, default=5, metavar="N",
                       help="a node with N counted failures (outages, monitoring stalls, sandbox failures, kernel OOM "
                            "kills) within --node-bad-window is nodeBad: no job is matched to it until an admin clears "
                            "it (0 to 1000; default 5; 0: never)")
    serve.add_argument("--node-bad-window", type=_node_bad_window, default=3600.0, metavar="DURATION",
                       help="the window nodeBad failures are counted in (60 s to 7d; default 3600)")
    serve.add_argument("--max-user-resubmits", type=_max_user_resubmits, default=DEFAULT_MAX_USER_RESUBMITS,
                       metavar="N", help="how many times a job's owner or an admin may resubmit one job (`gridpilot "
                                         f"resubmit`; 0 to {MAX_USER_RESUBMITS_BOUND}; default %(default)s; 0: never)")
    serve.add_argument("--max-subjobs", type=_max_subjobs, default=DEFAULT_MAX_SUBJOBS, metavar="N",
                       help="the most subjobs one masterjob (a JDL with Split) may have; a split into more is refused "
                            f"(1 to {MAX_SUBJOBS_BOUND}; default %(default)s)")
    serve.add_argument("--default-se", metavar="NAME",
                       help="the storage element users' own files go to when they name none (`gridpilot submit`'s "
                            "local Executable and InputFile files); default: the one `central init` made, else the "
                            "only one")
    _add_broker_policy_flags(serve)
    _add_admission_flags(serve)
    serve.add_argument("--certfile", metavar="PEM",
                       help="serve https with this certificate (chain), PEM; needs --keyfile")
    serve.add_argument("--keyfile", metavar="PEM", help="the certificate's private key, PEM, unencrypted")
    serve.add_argument("--verify-only", action="store_true",
                       help="serve without a signing key: verify tokens only (/match and token minting answer 503)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=_user_command("cmd_central_serve"))

    token = central.add_parser("token", help="mint a token with the signing key file (on the central machine)")
    common(token)
    token.add_argument("--role", required=True, choices=("user", "agent", "ce", "admin", "tower"))
    token.add_argument("--subject", required=True, help="who the token is for (user name, pilot, CE or tower name)")
    token.add_argument("--site", help="site an agent, ce or tower token is bound to")
    token.add_argument("--ce", help="CE an agent, ce or tower token is bound to")
    token.add_argument("--ttl", type=float, help="lifetime in seconds (default depends on the role)")
    token.add_argument("--scope", help="fewer scopes than the role's, space-separated (e.g. \"compute.read\")")
    token.add_argument("-o", "--output", help="write the token to this file (mode 0600) instead of printing it")
    token.add_argument("--json", action="store_true", help="print the token (or, with -o, its file) and what it is "
                                                           "for as JSON")
    token.set_defaults(func=_user_command("cmd_central_token"))

    keys = central.add_parser("keys", help="the token signing keys: list, rotate, retire (on the central machine)")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the keys central accepts, and which one this host signs with")
    common(listing)
    listing.add_argument("--json", action="store_true", help="print the answer as JSON")
    rotate = actions.add_parser("rotate", help="a new key in the key file that signs from now on; the others "
                                               "retire after --retire-after")
    common(rotate)
    rotate.add_argument("--retire-after", type=_duration, default=400 * 86400.0, metavar="DURATION",
                        help="keep accepting the old keys' tokens this long (seconds, or 30m, 12h, 7d; default "
                             "400d, the longest a token lives; 0 refuses them at once, after a leak)")
    retire = actions.add_parser("retire", help="stop accepting one key's tokens (hs256-legacy: the tokens from "
                                               "before signing keys)")
    common(retire)
    retire.add_argument("kid", help="the key's id (`central keys list`)")
    retire.add_argument("--after", type=_duration, default=0.0, metavar="DURATION",
                        help="from this long from now (default 0: at once)")
    for q in (rotate, retire):
        q.add_argument("--json", action="store_true", help="print the outcome as JSON")
    for q in (listing, rotate, retire):
        q.set_defaults(func=_user_command("cmd_central_keys"))


    nodes = central.add_parser("nodes", help="the worker nodes central knows, nodeBad ones among them; --clear HOST "
                                             "(admin) matches a nodeBad node again")
    nodes.add_argument("--site", help="only this site's nodes")
    nodes.add_argument("--bad", action="store_true", help="only nodeBad nodes")
    nodes.add_argument("--clear", metavar="HOST", help="clear HOST's nodeBad (admin): the broker matches it again, "
                                                      "its failures so far no longer count")
    nodes.add_argument("--arch", help="only nodes whose probe says this architecture (exact: x86_64, aarch64, ...)")
    nodes.add_argument("--gpu", metavar="MODEL", help="only nodes with a GPU whose model holds MODEL (any case)")
    nodes.add_argument("--history", metavar="HOST", help="(admin) HOST's node probes as they changed, newest first")
    nodes.add_argument("--json", action="store_true", help="print central's answer as JSON")
    _connection(nodes)
    nodes.set_defaults(func=_user_command("cmd_central_nodes"))


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a JDL file to central (its local Executable and InputFile files are "
                                      "shipped first; $1..$N take the arguments)")
    p.add_argument("file", metavar="FILE.jdl", help="the job description")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="replaces $1, $2, ... in the JDL text ($$ is a literal $); the arguments come together "
                        "right after FILE.jdl, with -- before one that starts with -")
    p.add_argument("--se", metavar="NAME", help="the storage element the JDL's local files go to (default: central's "
                                                "default one)")
    p.add_argument("--wait", action="store_true", help="follow the job live until it ends; exit 0 only for DONE")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --wait (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds (exit 3)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON (with --wait: nothing until the job "
                                                       "ends, then the job as `job ID --json` prints it)")
    _connection(p)
    p.set_defaults(func=_sandbox_submit)


def _sandbox_submit(args: argparse.Namespace) -> int:
    from gridpilot import console, sandbox

    return console.run_user_command(sandbox.cmd_submit, args)


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list jobs (newest first)")
    p.add_argument("--user", help="only this user's jobs")
    p.add_argument("--state", help="only jobs in these states (comma-separated names, e.g. RUNNING,SAVING)")
    p.add_argument("--site", help="only jobs at this site")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _connection(p)
    p.set_defaults(func=_user_command("cmd_jobs"))


def _add_job(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("job", help="show one job")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--jdl", action="store_true", help="print its JDL too")
    p.add_argument("--json", action="store_true", help="print JSON")
    _connection(p)
    p.set_defaults(func=_user_command("cmd_job"))


def _add_trace(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="show a job's trace")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--since", type=float, help="only entries after this unix time")
    p.add_argument("--category", action="append", choices=("state", "trace", "proc", "procfmt", "usage"),
                   help="only these categories (repeatable)")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the job ends")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")
    p.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    p.add_argument("--json", action="store_true", help="print JSON (with --follow: one record per line as it comes)")
    _connection(p)
    p.set_defaults(func=_user_command("cmd_trace"))


def _add_kill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kill", help="kill jobs (WAITING ones at once, running ones within seconds: kill_poll_interval)")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--json", action="store_true", help="print one JSON list of the results, one object per job: "
                                                       "id and state and kill_requested, or id and error")
    _connection(p)
    p.set_defaults(func=_user_command("cmd_kill"))


def _add_resubmit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resubmit", help="run jobs that ended without success (ERROR_*, EXPIRED, KILLED, FAULTY) again: "
                                        "back to WAITING, their trace kept")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--json", action="store_true", help="print one JSON list of the results, one object per job: "
                                                       "id, state, previous_state and resubmission, or id and error")
    _connection(p)
    p.set_defaults(func=_user_command("cmd_resubmit"))


def _add_why(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("why", help="why a WAITING job waits: per kind of slot that asked for work lately, the first "
                                   "clause that fails (like condor_q -better-analyze)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--json", action="store_true", help="print central's answer as JSON")
    _connection(p)
    p.set_defaults(func=_user_command("cmd_why"))


def _add_top(sub: argparse._SubParsersAction) -> None:
    from gridpilot import top

    p = sub.add_parser("top", help="a live view of your jobs: counts per state and site, the newest trace line of "
                                   "each running job; q quits (plain lines when the output is not a terminal)")
    p.add_argument("--user", help="whose jobs (a user's token: only its own; an admin's: anyone's, default all)")
    p.add_argument("--site", help="only jobs at this site")
    p.add_argument("--interval", type=float, default=top.DEFAULT_INTERVAL, metavar="SEC",
                   help=f"seconds between refreshes, {top.MIN_INTERVAL:g} to {top.MAX_INTERVAL:g} "
                        f"(default {top.DEFAULT_INTERVAL:g})")
    p.add_argument("--running", type=int, default=top.DEFAULT_RUNNING, metavar="N",
                   help=f"show the newest trace line of at most N running jobs, 0 to {top.MAX_RUNNING} "
                        f"(default {top.DEFAULT_RUNNING})")
    p.add_argument("--once", action="store_true", help="print one plain snapshot and exit")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON (central's summary) and exit")
    _connection(p)

    def run(args: argparse.Namespace) -> int:
        from gridpilot import console

        return console.run_user_command(top.cmd_top, args)

    p.set_defaults(func=run)


def _add_masterjob(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masterjob", help="a masterjob's subjobs (a JDL with Split) counted by state; kill and resubmit "
                                         "on a masterjob act on its subjobs")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("-v", "--verbose", action="store_true", help="list the subjobs' ids in each state too")
    p.add_argument("--json", action="store_true", help="print central's answer as JSON")
    _connection(p)

    def run(args: argparse.Namespace) -> int:
        from gridpilot import console, masterjobs

        return console.run_user_command(masterjobs.cmd_masterjob, args)

    p.set_defaults(func=run)


def _add_spy(sub: argparse._SubParsersAction) -> None:
    from gridpilot import spy

    def run(args: argparse.Namespace) -> int:
        from gridpilot import console

        return console.run_user_command(spy.cmd_spy, args)

    spy.add_spy_parser(sub).set_defaults(func=run)


def _add_area(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("area", help="the catalogue areas where a user's jobs may write (grant and revoke: admin)")
    area = p.add_subparsers(dest="area_command", metavar="ACTION", required=True)
    ls = area.add_parser("list", help="a user's areas: its own, then those an admin granted (an admin token with no "
                                      "--user: every grant)")
    ls.add_argument("--user", help="whose areas (an admin's token may name anyone; a user's only itself)")
    ls.add_argument("--json", action="store_true", help="print central's answer as JSON")
    _connection(ls)
    ls.set_defaults(func=_user_command("cmd_area_list"))
    for action, text in (("grant", "let USER's jobs have an OutputDir in PATH too"),
                         ("revoke", "take a grant back (jobs already queued keep their OutputDir)")):
        q = area.add_parser(action, help=text)
        q.add_argument("user", metavar="USER")
        q.add_argument("path", metavar="PATH", help="an absolute catalogue path, e.g. /alice/data")
        q.add_argument("--json", action="store_true", help="print central's answer as JSON")
        _connection(q)
        q.set_defaults(func=_user_command(f"cmd_area_{action}"))


def _add_files(sub: argparse._SubParsersAction) -> None:
    """get, ls and cp: a user's files on the grid (gridpilot/userfiles.py)."""
    def run(name: str) -> Handler:
        def handler(args: argparse.Namespace) -> int:
            from gridpilot import console, userfiles

            return console.run_user_command(getattr(userfiles, name), args)
        return handler

    p = sub.add_parser("get", help="download a job's registered outputs, verified (size and checksum)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--dest", metavar="DIR", help="where to put them (default: ./ID/, made if missing)")
    p.add_argument("--files", action="append", metavar="PATTERN",
                   help="only files whose name matches this glob (repeatable, or comma-separated: '*.root,stdout')")
    p.add_argument("--unpack", action="store_true", help="also extract the members of the .zip archives fetched, "
                                                         "beside them")
    p.add_argument("--json", action="store_true", help="print what was fetched as JSON")
    _connection(p)
    p.set_defaults(func=run("cmd_get"))

    p = sub.add_parser("ls", help="list a catalogue directory")
    p.add_argument("path", metavar="LFN_DIR", help="an absolute catalogue path")
    p.add_argument("-l", "--long", action="store_true", help="size, adler32, owner, replicas, time registered")
    p.add_argument("--json", action="store_true", help="print central's answer as JSON")
    _connection(p)
    p.set_defaults(func=run("cmd_ls"))

    p = sub.add_parser("cp", help="copy one file between the catalogue and this machine (file:PATH is local)")
    p.add_argument("src", metavar="SRC", help="an LFN, or file:PATH to upload")
    p.add_argument("dest", metavar="DEST", help="file:PATH (an existing directory keeps the file's name), or an LFN")
    p.add_argument("--json", action="store_true", help="print what was copied as JSON")
    _connection(p)
    p.set_defaults(func=run("cmd_cp"))


def _add_tower(sub: argparse._SubParsersAction) -> None:
    from gridpilot.tower.command import add_parser

    add_parser(sub)


def _cmd_offline(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gridpilot.errors import ConfigError
    from gridpilot.pilot import offline

    job_dir = Path(args.dir).resolve()
    try:
        job = offline.OfflineJob.read(job_dir)
        offline.log_to(job_dir, args.log_level)
        cfg = offline.offline_config(args.config, job_dir, job,
                                     overrides={"keep_workdir": True if args.keep_workdir else None})
    except (ConfigError, OSError) as e:
        sys.stderr.write(f"gridpilot offline: {e}\n")
        return cli_codes.USAGE
    offline.prepare()
    try:
        outcome = offline.run_offline(job_dir, cfg, job)
    except OSError as e:
        sys.stderr.write(f"gridpilot offline: {offline.RESULT_FILE} not written: {e}\n")
        return cli_codes.FAILED
    final = outcome.result["final"]
    if args.json:
        print(orjson.dumps({"job_id": job.job_id, "result": str(outcome.result_path), "final": final,
                            "outputs": len(outcome.result["outputs"])}).decode())
    else:
        reason = f" ({final['kill_reason']})" if final["kill_reason"] and final["kill_reason"] != "OK" else ""
        print(f"job {job.job_id}: {final['state']}{reason}, {len(outcome.result['outputs'])} output(s): "
              f"{outcome.result_path}")
    return cli_codes.OK


def _add_offline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("offline", help="run the job of a directory (job.json and its inputs) on a node without "
                                       "network, with no central: result.json and the outputs stay there "
                                       "(docs/offline.md)")
    p.add_argument("dir", nargs="?", default=".", help="the job directory (default: the current one)")
    p.add_argument("--config", help="the pilot's YAML configuration (default: $GRIDPILOT_CONFIG)")
    p.add_argument("--keep-workdir", dest="keep_workdir", action="store_true",
                   help="keep the job's work directory (DIR/workdir/alien-job-ID) after the job")
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON line")
    p.add_argument("--log-level", dest="log_level", default="INFO")
    p.set_defaults(func=_cmd_offline)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gridpilot", description="grid job pilot and central services", epilog=cli_codes.HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gridpilot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_node, _add_demo, _add_jdl, _add_central, _add_submit, _add_jobs, _add_job, _add_trace,
                _add_kill, _add_resubmit, _add_why, _add_spy, _add_area, _add_files, _add_runner, _add_ce,
                _add_top, _add_masterjob, _add_offline, _add_tower):
        add(sub)
    return parser


def _missing_extra(e: ModuleNotFoundError) -> Optional[str]:
    """The module of the `central` extra whose absence `e` reports, or None when it is about another module."""
    top = (e.name or "").split(".")[0]
    return top if top in CENTRAL_EXTRA_MODULES else None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered for a reader that went away is dropped at exit
    instead of failing there ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (a test's capture): nothing is flushed to a pipe at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Handler] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return cli_codes.USAGE
    try:
        code = func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at exit
        return code
    except KeyboardInterrupt:
        return cli_codes.INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return cli_codes.BROKEN_PIPE
    except ModuleNotFoundError as e:
        module = _missing_extra(e)
        if module is None:
            raise
        command = " ".join(x for x in ("gridpilot", args.command, getattr(args, "central_command", None)) if x)
        print(f"{command}: needs the central extra, which is not installed (no module {module!r}): "
              "pip install 'gridpilot[central]'", file=sys.stderr)
        return cli_codes.USAGE
